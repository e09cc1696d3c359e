"""`python -m distill_assets.cli`: the same as the `distill` console script."""

import sys

from distill_assets.cli import main

sys.exit(main())
