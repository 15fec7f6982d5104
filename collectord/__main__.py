"""`python -m collectord`: the same command line as the `collectord` script."""

import sys

from collectord.cli import main

sys.exit(main())
