"""`python -m nanoseek` runs the `nanoseek` command."""

import sys

from nanoseek.cli import main

sys.exit(main())
