"""`python -m harness.report`: the older form of `python -m harness report`, kept working.

`python -m harness.report [args]` is `python -m harness report [args]`, and
`python -m harness.report --compare OLD NEW [args]` is `python -m harness compare OLD NEW [args]`;
usage lines and error messages keep the old names (`harness.report: error: ...`,
`harness.report --compare: error: ...`).
"""

import sys

PROG = "python -m harness.report"
COMPARE_ONLY = ("--fail-above", "--normalize-by", "--allow-missing")


def _option(arg: str) -> str:
    return arg.split("=", 1)[0]


def translate(argv: list[str]) -> tuple[list[str], str]:
    """The new command line and the program name its messages show."""
    argv = list(argv)
    if "--compare" in argv:
        at = argv.index("--compare")
        return ["compare", *argv[at + 1:at + 3], *argv[:at], *argv[at + 3:]], f"{PROG} --compare"
    return ["report", *argv], PROG


def main(argv: list[str] | None = None) -> int:
    from harness.__main__ import main as harness_main

    argv = list(sys.argv[1:] if argv is None else argv)
    given = [o for o in COMPARE_ONLY if any(_option(a) == o for a in argv)]
    if given and "--compare" not in argv and not {"-h", "--help"} & set(argv):
        print(f"usage: {PROG} [RESULTS.json ...] [options]  (or: {PROG} --compare OLD NEW [options])\n"
              f"{PROG}: error: {', '.join(given)}: only with --compare OLD NEW", file=sys.stderr)
        return 2
    new, prog = translate(argv)
    return harness_main(new, command_prog=prog)


if __name__ == "__main__":
    sys.exit(main())
