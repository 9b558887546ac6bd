"""`python -m cnnc ...`: the `cnnc` command, for when its script is not on PATH (or under mpiexec)."""
import sys

from .cli import main

sys.exit(main())
