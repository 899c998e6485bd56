"""`python -m stack ...` (see stack/cli.py)."""
import sys

from .cli import main

sys.exit(main())
