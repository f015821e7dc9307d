"""`python -m harness compare OLD.json NEW.json [--fail-above RATIO] [--normalize-by IMPL] [--allow-missing]`.

Per implementation, problem and phase: the ratio of medians new/old, its 95 % bootstrap confidence
interval over the raw per-round timings saved with the results, and the verdict the interval
supports: faster, slower, same, or uncertain (an interval too wide to say). With --normalize-by IMPL every timing is
first divided by IMPL's median at the same problem and phase of the same run, so drift of the
whole machine between the runs cancels. With --fail-above, exits 1 when any point is slower
than that ratio with confidence (the whole interval above it), when no point was in both runs, or when a point of OLD is
missing from NEW (unless --allow-missing).
"""

from __future__ import annotations

from pathlib import Path

from harness.commands import options

HELP = "compare two results files, optionally as a regression gate"
EXAMPLE = "python -m harness compare old.json new.json --fail-above 1.05 --normalize-by cudnn"


def add_arguments(parser) -> None:
    parser.add_argument("old", type=Path, metavar="OLD", help="results JSON of the earlier run")
    parser.add_argument("new", type=Path, metavar="NEW", help="results JSON of the later run")
    parser.add_argument("--fail-above", type=options.positive(float), metavar="RATIO",
                        help="exit 1 when anything is slower than RATIO (e.g. 1.05) with confidence, "
                             "when no point is in both runs, or when a point of OLD is missing from NEW")
    parser.add_argument("--normalize-by", metavar="IMPL",
                        help="divide every time by IMPL's median at the same problem and phase of "
                             "the same run (e.g. cudnn), so drift of the whole machine between the runs cancels")
    parser.add_argument("--allow-missing", action="store_true",
                        help="with --fail-above: only report points of OLD missing from NEW instead of failing")


def run(args) -> int:
    from harness.reporting.compare import compare_main

    if args.allow_missing and args.fail_above is None:
        args.parser.error("--allow-missing: only relaxes the gate of --fail-above RATIO, which is not given")
    return compare_main([args.old, args.new], args.fail_above, args.normalize_by, args.allow_missing,
                        prog=options.error_prefix(args))
