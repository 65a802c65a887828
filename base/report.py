"""`python -m base.report RUNS [--output DIR]`: the results table of the runs (base/training/report.py)."""

import sys

from base.errors import run_cli
from base.training.report import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
