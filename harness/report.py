"""`python -m harness.report`: the older form of `python -m harness report`, kept working.

`python -m harness.report [args]` is `python -m harness report [args]`, and
`python -m harness.report --compare OLD NEW [args]` is `python -m harness compare OLD NEW [args]` (the
report's own options, which the old command line accepted beside --compare, are set aside with a note);
usage lines and error messages keep the old names (`harness.report: error: ...`,
`harness.report --compare: error: ...`).
"""

import sys

PROG = "python -m harness.report"
COMPARE_ONLY = ("--fail-above", "--normalize-by", "--allow-missing")


def _option(arg: str) -> str:
    return arg.split("=", 1)[0]


# The report's own options, which the old command line took beside --compare and did not use there:
# option -> whether it takes a value.
REPORT_ONLY = {"--no-plots": False, "--baseline": True, "--name": True, "--out-dir": True, "--csv": True,
               "--storage": True}


def _without_report_options(args: list[str]) -> tuple[list[str], list[str]]:
    """`args` less the report's own options (and any results files named beside --compare), and those dropped."""
    kept, dropped, i = [], [], 0
    while i < len(args):
        arg, name = args[i], _option(args[i])
        if name in REPORT_ONLY:
            takes = REPORT_ONLY[name] and "=" not in arg
            dropped += args[i:i + 1 + takes]
            i += 1 + takes
            continue
        if not arg.startswith("-") and (not kept or kept[-1] not in ("--fail-above", "--normalize-by")):
            dropped.append(arg)  # a results file: the old parser took it, and compared OLD and NEW only
        else:
            kept.append(arg)
        i += 1
    return kept, dropped


def translate(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """The new command line, the program name its messages show, and what the old one took but did not use."""
    argv = list(argv)
    if "--compare" in argv:
        at = argv.index("--compare")
        rest, dropped = _without_report_options([*argv[:at], *argv[at + 3:]])
        return ["compare", *argv[at + 1:at + 3], *rest], f"{PROG} --compare", dropped
    return ["report", *argv], PROG, []


def main(argv: list[str] | None = None) -> int:
    from harness.__main__ import main as harness_main

    argv = list(sys.argv[1:] if argv is None else argv)
    given = [o for o in COMPARE_ONLY if any(_option(a) == o for a in argv)]
    if given and "--compare" not in argv and not {"-h", "--help"} & set(argv):
        print(f"usage: {PROG} [RESULTS.json ...] [options]  (or: {PROG} --compare OLD NEW [options])\n"
              f"{PROG}: error: {', '.join(given)}: only with --compare OLD NEW", file=sys.stderr)
        return 2
    new, prog, dropped = translate(argv)
    if dropped:
        print(f"{prog}: not used when comparing: {' '.join(dropped)}", file=sys.stderr)
    return harness_main(new, command_prog=prog)


if __name__ == "__main__":
    sys.exit(main())
