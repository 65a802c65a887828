"""`python -m base.job_array` as before the stage layout: the module lives in base/training/job_array.py."""

import sys

from base.errors import run_cli
from base.training.job_array import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
