"""`python -m harness.report [RESULTS.json ...]`: the seed's tables from benchmark results.

One table per problem, `| Code | Forward (ms) | Backward (ms) | Total (ms) |` with medians,
the fastest of each column in bold, and speedups against a baseline implementation.
Writes reports/<name>.md (and --csv FILE), and prints the markdown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from harness.problem import PHASES
from harness.results import DEFAULT_STORAGE, Results, ResultsError, latest_results, load_results

PHASE_TITLES = {"forward": "Forward (ms)", "backward": "Backward (ms)", "total": "Total (ms)"}
NOISY = 0.10  # IQR / median above this: the row is flagged (torch.utils.benchmark warns at the same)
NOISE_MARK = "†"


def format_ms(value: float) -> str:
    """Three significant figures without scientific notation."""
    if pd.isna(value):
        return "-"
    for limit, digits in ((100, 0), (10, 1), (1, 2)):
        if value >= limit:
            return f"{value:.{digits}f}"
    return f"{value:.3f}"


def format_bytes(value) -> str:
    if value is None or pd.isna(value):
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def problem_table(rows: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The seed's table for one problem: median ms per phase, bold minima, speedups."""
    medians = rows.pivot_table(index="impl", columns="phase", values="median_ms", aggfunc="last")
    medians = medians.reindex(columns=[p for p in PHASES if p in medians.columns])
    medians = medians.sort_values("total" if "total" in medians else medians.columns[0])
    table = pd.DataFrame(index=medians.index)
    noise = (rows.assign(rel_iqr=rows.iqr_ms / rows.median_ms)
             .pivot_table(index="impl", columns="phase", values="rel_iqr", aggfunc="last").reindex(medians.index))
    for phase in medians.columns:
        best = medians[phase].min()
        cells = []
        for impl, v in medians[phase].items():
            cell = f"**{format_ms(v)}**" if v == best else format_ms(v)
            cells.append(cell + NOISE_MARK if noise.at[impl, phase] > NOISY else cell)
        table[PHASE_TITLES[phase]] = cells
    if baseline in medians.index:
        for phase in medians.columns:
            table[f"{phase.capitalize()} vs {baseline}"] = [
                f"{medians.at[baseline, phase] / v:.2f}x" for v in medians[phase]]
    by_phase = rows.set_index(["impl", "phase"])
    main_phase = "total" if "total" in medians.columns else medians.columns[0]
    rate = by_phase.xs(main_phase, level="phase").reindex(medians.index)
    gpu = (rows.device == "cuda").any()
    unit, scale = ("TFLOP/s", 1e-3) if gpu else ("GFLOP/s", 1)
    table[f"{main_phase.capitalize()} {unit}"] = [f"{v * scale:.3g}" for v in rate.gflops_per_s]
    if rate.percent_of_ceiling.notna().any():
        table["% of ceiling"] = [f"{v:.0f}%" if pd.notna(v) else "-" for v in rate.percent_of_ceiling]
    if rate.saved_bytes.notna().any():
        table["Kept for backward"] = [format_bytes(v) for v in rate.saved_bytes]
    if gpu and rows.peak_bytes.notna().any():
        peaks = rows.pivot_table(index="impl", columns="phase", values="peak_bytes", aggfunc="last")
        for phase in ("forward", "backward"):
            if phase in peaks:
                table[f"Peak {phase}"] = [format_bytes(v) for v in peaks[phase].reindex(medians.index)]
    table.index.name = "Code"
    return table


def _versions(env: dict) -> str:
    parts = [f"torch {env.get('torch')}", f"CUDA {env.get('torch_cuda') or 'none (CPU build)'}",
             *([f"driver {env['gpu_driver']}"] if env.get("gpu_driver") else []),
             f"cuDNN {env.get('cudnn') or 'none'}", f"CuPy {env.get('cupy') or 'not installed'}",
             f"NumPy {env.get('numpy')}", f"Python {env.get('python')}"]
    return ", ".join(parts)


def render(results: Results, baseline: str, title: str, figures: list[Path] = (), base: Path = Path(".")) -> str:
    t = results.timings
    lines = [f"# LSTM benchmark report: {title}", ""]
    for run in results.runs:
        env, s = run.environment, run.settings
        commit = env.get("harness_commit") or "unknown commit"
        lines += [
            f"- **Device**: {env.get('device_name')} ({env.get('cpu_count')} CPU cores visible)",
            f"- **Software**: {_versions(env)}; lstm-harness {env.get('harness')} at {commit}",
            f"- **Run**: {run.path.name}, {run.datetime}; grid `{s.get('grid', '?')}` ({s.get('grid_about', '')})",
        ]
        if s.get("allocator"):
            lines.append(f"- **Memory allocator**: {s['allocator']}")
    for run in results.runs:
        for c in run.settings.get("ceilings", []):
            lines.append(f"- **Ceiling**: {c['gflops']:.1f} GFLOP/s, measured: {c['how']}; "
                         "each row's rate counts its phase's GEMM FLOPs (forward 2*T*B*4H*(I+H) per layer, "
                         "backward twice that)")
    if not t.empty:
        rounds = f"{int(t['rounds'].min())} to {int(t['rounds'].max())}"
        warmups = sorted({int(w) for w in t["warmup_rounds"].dropna()}) or ["?"]
        tol = ", ".join(f"{d} {g:.0e}" for d, g in t.groupby("dtype")["agreement_tolerance"].max().items())
        lines += [
            f"- **Precision**: {', '.join(sorted(t['dtype'].unique()))}; TF32 off for cuDNN and cuBLAS",
            f"- **Timing**: pytest-benchmark, median of {rounds} rounds after {'/'.join(map(str, warmups))} "
            "warm-up round(s) (and one untimed probe call); every timed region ends with device completion; "
            f"{NOISE_MARK} marks a time whose interquartile range is above {NOISY:.0%} of its median",
            f"- **Agreement**: every time below comes from an implementation that first matched the float64 "
            f"reference on that problem (norm-wise relative error of outputs and all gradients; tolerance "
            f"{tol}; worst seen {t['agreement_max_error'].max():.1e})",
            "",
            "## Implementations",
            "",
        ]
        backends = t.drop_duplicates(["impl", "backend"])[["impl", "backend", "origin"]]
        backends.columns = ["Code", "Backend that ran", "Registered from"]
        lines += [backends.to_markdown(index=False), ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{f.stem}]({f.relative_to(base).as_posix()})" for f in figures] + [""]
    problem_cols = ["device_name", "problem_id", "batch", "length", "input_size", "hidden", "layers", "dtype"]
    order = t.drop_duplicates(problem_cols)[problem_cols] if not t.empty else pd.DataFrame(columns=problem_cols)
    not_timed = results.not_timed
    for _, p in order.iterrows():
        p = p.to_dict()  # (a Series' .dtype would be the Series' own)
        rows = t[(t.problem_id == p["problem_id"]) & (t.device_name == p["device_name"])]
        lines += [f"## Batch size = {p['batch']}, Length = {p['length']}", "",
                  f"{p['layers']} layer(s), input {p['input_size']}, hidden {p['hidden']}, {p['dtype']}; "
                  f"{p['device_name']}", ""]
        lines += [problem_table(rows, baseline).to_markdown(), ""]
        noisy = rows[rows.iqr_ms / rows.median_ms > NOISY]
        if not noisy.empty:
            lines += [f"{NOISE_MARK} noisy: interquartile range above {NOISY:.0%} of the median ("
                      + ", ".join(f"{r.impl} {r.phase} {r.iqr_ms / r.median_ms:.0%}" for r in noisy.itertuples())
                      + ")", ""]
        if baseline not in set(rows.impl):
            lines += [f"(no speedup columns: baseline `{baseline}` has no time on this problem)", ""]
        if not not_timed.empty:
            same = [c for c in problem_cols if c != "problem_id"]
            missing = not_timed[(not_timed[same] == pd.Series({c: p[c] for c in same})).all(axis=1)]
            lines += _not_timed_lines(missing)
    return "\n".join(lines).rstrip() + "\n"


def _not_timed_lines(missing: pd.DataFrame) -> list[str]:
    if missing.empty:
        return []
    lines = ["Not timed:", ""]
    for (impl, outcome, reason), group in missing.groupby(["impl", "outcome", "reason"], sort=False):
        lines.append(f"- `{impl}` ({', '.join(group.phase)}): {outcome}: {reason}")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", type=Path,
                        help=f"results JSON files (default: the newest under {DEFAULT_STORAGE}/)")
    parser.add_argument("--baseline", default="modular", help="implementation the speedups are against")
    parser.add_argument("--name", help="report name: writes <out-dir>/<name>.md (default: the results file's stem)")
    parser.add_argument("--out-dir", type=Path, default=Path("reports"), help="where the report goes")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write every timing as a flat CSV table")
    parser.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help="where the benchmark run saved")
    parser.add_argument("--no-plots", action="store_true", help="skip the seaborn figures")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"),
                        help="compare two results files instead: new/old per implementation, problem and phase")
    parser.add_argument("--fail-above", type=float, metavar="RATIO",
                        help="with --compare: exit 1 when anything is slower than RATIO (e.g. 1.05) with confidence")
    args = parser.parse_args(argv)
    if args.compare:
        from harness.compare import compare_main

        return compare_main(args.compare, args.fail_above)
    try:
        paths = args.results or [latest_results(args.storage)]
        results = load_results(paths)
    except ResultsError as exc:
        print(f"harness.report: error: {exc}", file=sys.stderr)
        return 2
    known = set(results.timings.get("impl", []))
    if known and args.baseline not in known:
        print(f"harness.report: error: --baseline {args.baseline!r} has no results; "
              f"choose from {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    name = args.name or paths[0].stem
    args.out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    if not args.no_plots and not results.timings.empty:
        from harness.figures import render_figures

        figures = render_figures(results.timings, args.baseline, args.out_dir / f"{name}-figures")
    text = render(results, args.baseline, name, figures, args.out_dir)
    out = args.out_dir / f"{name}.md"
    out.write_text(text)
    if args.csv:
        results.timings.drop(columns=["data"]).to_csv(args.csv, index=False)
    print(text)
    print(f"(written to {out}{' and ' + str(args.csv) if args.csv else ''})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
