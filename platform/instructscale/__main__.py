"""`python -m instructscale ...`: the command line (what a submitted Ray job runs)."""

import sys

from instructscale.cli import main

sys.exit(main())
