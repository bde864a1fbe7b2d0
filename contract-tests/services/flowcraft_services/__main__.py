"""`python -m flowcraft_services ...`."""

import sys

from .cli import main

sys.exit(main())
