"""`python -m ipsolve` runs the `ipsolve` command."""
import sys

from ipsolve.cli import main

sys.exit(main())
