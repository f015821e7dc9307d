"""`python -m harness.sequence`: kept working as it always has; the code lives in harness.example.command."""

import sys

from harness.example.command import main

if __name__ == "__main__":
    sys.exit(main())
