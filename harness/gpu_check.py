"""`python -m harness.gpu_check`: the older form of `python -m harness gpu-check`, kept working."""

import sys

from harness.commands.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
