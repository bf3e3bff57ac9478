"""``python -m evaluation``: the Grand Challenge evaluation container's entry point."""

import sys

from evaluation.cli import main

sys.exit(main())
