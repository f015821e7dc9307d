"""`python -m harness.sequence`: the older form of `python -m harness sequence`, kept working
(its usage line and errors keep the old name: `python -m harness.sequence: error: ...`)."""

import sys


def main(argv: list[str] | None = None) -> int:
    from harness.__main__ import main as harness_main

    return harness_main(["sequence", *(sys.argv[1:] if argv is None else argv)],
                        command_prog="python -m harness.sequence")


if __name__ == "__main__":
    sys.exit(main())
