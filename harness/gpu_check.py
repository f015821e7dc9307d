"""`python -m harness.gpu_check`: the older form of `python -m harness gpu-check`, kept working."""

import sys


def main(argv: list[str] | None = None) -> int:
    from harness.__main__ import main as harness_main

    return harness_main(["gpu-check", *(sys.argv[1:] if argv is None else argv)],
                        command_prog="python -m harness.gpu_check")


if __name__ == "__main__":
    sys.exit(main())
