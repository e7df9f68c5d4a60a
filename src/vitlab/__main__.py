"""`python -m vitlab ...` (and `torchrun -m vitlab ...`) runs the command line."""

import sys

from vitlab.cli.main import main

sys.exit(main())
