"""`python -m harness.sequence_plot`: kept working as it always has; the code lives in harness.example.plot."""

import sys

from harness.example.plot import main

if __name__ == "__main__":
    sys.exit(main())
