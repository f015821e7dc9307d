"""`python -m harness.report`: kept working as it always has; the code lives in harness.reporting.report."""

import sys

from harness.reporting.report import main

if __name__ == "__main__":
    sys.exit(main())
