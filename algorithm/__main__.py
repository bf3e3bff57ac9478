"""``python -m algorithm``: see :mod:`algorithm.cli`."""

import sys

from algorithm.cli import main

if __name__ == "__main__":
    sys.exit(main())
