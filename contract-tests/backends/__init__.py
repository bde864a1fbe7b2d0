"""One fixture module per backend; ``conftest.py`` loads the one named by ``--backend``."""
