"""`python -m widefunnel.cli`: the same command line as `widefunnel`."""

import sys

from widefunnel.cli.main import main

sys.exit(main())
