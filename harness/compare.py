"""`python -m harness.report --compare OLD.json NEW.json [--fail-above RATIO]`.

Per implementation, problem and phase: the ratio of medians new/old and a verdict from a
Mann-Whitney U test on the raw per-round timings saved with the results: faster, slower, same,
or uncertain (a difference the rounds cannot resolve). With --fail-above, exits 1 when any
point is slower than that ratio with confidence (one-sided test of new against old x RATIO).
Differences of device or software between the two runs are printed before anything else.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from harness.results import ResultsError, load_results

ALPHA = 0.01  # significance of every test
SAME_BAND = 0.02  # a significant change smaller than 2 % is reported as "same"
RESOLVE_BAND = 0.05  # an insignificant change larger than 5 % is "uncertain", not "same"
MIN_ROUNDS = 3
ENV_KEYS = ("device_name", "gpu", "gpu_driver", "torch", "torch_cuda", "cudnn", "cupy", "numpy", "python",
            "cpu_model", "torch_threads", "harness", "harness_commit")
KEY = ["device_name", "problem_id", "impl", "phase"]


def environment_differences(old: dict, new: dict) -> list[str]:
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in ENV_KEYS if old.get(key) != new.get(key)]


def judge(old: list[float], new: list[float], fail_above: float | None = None) -> dict:
    old_a, new_a = np.asarray(old, dtype=float), np.asarray(new, dtype=float)
    ratio = float(np.median(new_a) / np.median(old_a))
    if len(old_a) < MIN_ROUNDS or len(new_a) < MIN_ROUNDS:
        return {"ratio": ratio, "p": float("nan"), "verdict": "uncertain", "regression": False}
    p = float(mannwhitneyu(new_a, old_a, alternative="two-sided").pvalue)
    if p < ALPHA and abs(ratio - 1) >= SAME_BAND:
        verdict = "slower" if ratio > 1 else "faster"
    elif p >= ALPHA and abs(ratio - 1) > RESOLVE_BAND:
        verdict = "uncertain"
    else:
        verdict = "same"
    regression = bool(fail_above is not None
                      and mannwhitneyu(new_a, old_a * fail_above, alternative="greater").pvalue < ALPHA)
    return {"ratio": ratio, "p": p, "verdict": verdict, "regression": regression}


def compare(old_path: Path, new_path: Path, fail_above: float | None = None) -> tuple[pd.DataFrame, list[str]]:
    old, new = load_results([old_path]), load_results([new_path])
    env_old, env_new = old.runs[0].environment, new.runs[0].environment
    notes = environment_differences(env_old, env_new)
    # Rows are matched by problem and implementation; a different device is named above, and
    # its rows are matched on the problem alone so the comparison still happens, openly.
    key = KEY if not notes else ["problem_id", "impl", "phase"]
    o = old.timings.assign(problem_id=old.timings.problem_id.str.replace(r"-(cpu|cuda)$", "", regex=True))
    n = new.timings.assign(problem_id=new.timings.problem_id.str.replace(r"-(cpu|cuda)$", "", regex=True))
    merged = o.merge(n, on=key, how="outer", suffixes=("_old", "_new"), indicator="side")
    rows = []
    for r in merged.itertuples():
        base = {"impl": r.impl, "problem": r.problem_id, "phase": r.phase}
        if r.side != "both":
            rows.append({**base, "verdict": f"only in {'old' if r.side == 'left_only' else 'new'}"})
            continue
        if not r.data_old or not r.data_new:
            raise ResultsError("a results file lacks raw timings (stats.data); save runs with "
                               "--benchmark-json or --benchmark-save-data")
        rows.append({**base, "old_ms": r.median_ms_old, "new_ms": r.median_ms_new,
                     **judge(r.data_old, r.data_new, fail_above)})
    return pd.DataFrame(rows), notes


def compare_main(paths: list[Path], fail_above: float | None) -> int:
    try:
        table, notes = compare(paths[0], paths[1], fail_above)
    except ResultsError as exc:
        print(f"harness.report: error: {exc}", file=sys.stderr)
        return 2
    if notes:
        print("The two runs differ in environment; read the ratios with that in mind:")
        print("\n".join(f"  {n}" for n in notes) + "\n")
    shown = table.copy()
    for col, fmt in (("old_ms", "{:.3g}"), ("new_ms", "{:.3g}"), ("ratio", "{:.3f}"), ("p", "{:.1e}")):
        if col in shown:
            shown[col] = [fmt.format(v) if pd.notna(v) else "-" for v in shown[col]]
    print(shown.rename(columns={"ratio": "new/old", "p": "p (Mann-Whitney)"}).to_markdown(index=False))
    counts = table.verdict.value_counts().to_dict()
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if fail_above is not None:
        bad = table[table.get("regression", pd.Series(False, index=table.index)).fillna(False).astype(bool)]
        if not bad.empty:
            print(f"\nslower than {fail_above}x with confidence (p < {ALPHA}): "
                  + ", ".join(f"{r.impl} {r.problem} {r.phase} ({r.ratio:.2f}x)" for r in bad.itertuples()))
            return 1
        print(f"\nnothing slower than {fail_above}x with confidence")
    return 0
