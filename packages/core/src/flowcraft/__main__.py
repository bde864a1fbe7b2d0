"""``python -m flowcraft``: the ``flowcraft`` command (see :mod:`flowcraft.cli`)."""

from flowcraft.cli import main

if __name__ == "__main__":
    main()
