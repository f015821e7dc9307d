"""`python -m harness.gpu_check`: kept working as it always has; the code lives in harness.commands.gpu_check."""

import sys

from harness.commands.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
