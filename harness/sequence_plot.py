"""`python -m harness.sequence_plot LOG ...`: the older form of `python -m harness replot LOG ...`, kept working."""

import sys


def main(argv: list[str] | None = None) -> int:
    from harness.__main__ import main as harness_main

    return harness_main(["replot", *(sys.argv[1:] if argv is None else argv)],
                        command_prog="python -m harness.sequence_plot")


if __name__ == "__main__":
    sys.exit(main())
