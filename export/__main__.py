"""``python -m export <subcommand>``: see :mod:`export.cli`."""

import sys

from export.cli import main

sys.exit(main())
