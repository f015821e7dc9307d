"""`python -m harness report [RESULTS.json ...]`: the Caffe LSTM's tables from benchmark results.

One table per problem, `| Code | Forward (ms) | Backward (ms) | Total (ms) |` with medians,
the fastest of each column in bold, and speedups against a baseline implementation.
Writes reports/<name>.md (and --csv FILE), and prints the markdown. With no file it takes the
newest run saved under .benchmarks/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.commands import options

HELP = "render the Caffe LSTM's tables (markdown, figures, CSV) from benchmark results"
EXAMPLE = "python -m harness report results.json --baseline cudnn --name run1 --csv run1.csv"


def add_arguments(parser) -> None:
    from harness.reporting.results import DEFAULT_STORAGE

    parser.add_argument("results", nargs="*", type=Path,
                        help=f"results JSON files (default: the newest under {DEFAULT_STORAGE}/)")
    parser.add_argument("--baseline", help="implementation the speedups are against (default: modular if it has "
                                           "results, else cudnn, else the first implementation in the results)")
    parser.add_argument("--name", help="report name: writes <out-dir>/<name>.md (default: the results file's stem)")
    parser.add_argument("--out-dir", type=Path, default=Path("reports"), help="where the report goes")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write every timing as a flat CSV table")
    parser.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help="where the benchmark run saved")
    options.add_no_plots(parser, help="skip the seaborn figures")


PREFERRED_BASELINES = ("modular", "cudnn")  # the Caffe LSTM's baseline, then the vendor's


def default_baseline(known: list[str]) -> str:
    """The baseline when none is named: the first of PREFERRED_BASELINES with results, else the first
    implementation the results hold (a run of only other implementations still gets its speedups)."""
    return next((name for name in PREFERRED_BASELINES if name in known), known[0] if known else "modular")


def run(args) -> int:
    from harness.reporting.report import render
    from harness.reporting.results import ResultsError, latest_results, load_results

    prefix = options.error_prefix(args)
    try:
        paths = args.results or [latest_results(args.storage)]
        results = load_results(paths)
    except ResultsError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2
    known = list(dict.fromkeys(results.timings.get("impl", [])))
    if args.baseline is None:
        args.baseline = default_baseline(known)
    elif known and args.baseline not in known:
        print(f"{prefix}: error: --baseline {args.baseline!r} has no results; "
              f"choose from {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    name = args.name or paths[0].stem
    args.out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    if not args.no_plots and not results.timings.empty:
        from harness.reporting.figures import render_figures

        figures = render_figures(results.timings, args.baseline, args.out_dir / f"{name}-figures")
    text = render(results, args.baseline, name, figures, args.out_dir)
    out = args.out_dir / f"{name}.md"
    out.write_text(text)
    if args.csv:
        results.timings.drop(columns=["data"], errors="ignore").to_csv(args.csv, index=False)
    print(text)
    print(f"(written to {out}{' and ' + str(args.csv) if args.csv else ''})", file=sys.stderr)
    return 0
