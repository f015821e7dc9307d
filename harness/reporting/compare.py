"""Run-to-run comparison (`python -m harness compare OLD.json NEW.json`: harness.commands.compare).

Per implementation, problem and phase: the ratio of medians new/old, its 95 % bootstrap confidence
interval over the raw per-round timings saved with the results (harness.reporting.confidence), and the
verdict the interval supports: faster, slower, same, or uncertain (a difference the rounds cannot
resolve). With --normalize-by IMPL every timing is
first divided by IMPL's median at the same problem and phase of the same run, so drift of the
whole machine between the runs cancels. With --fail-above, exits 1 when any point is slower
than that ratio with confidence (its whole interval above RATIO), when no point was
in both runs, or when a point of OLD is missing from NEW (unless --allow-missing).
Differences of device or software between the two runs are printed before anything else.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from harness.contract.problem import Problem
from harness.record.schema import PROBLEM_FIELDS, problem_label
from harness.reporting.confidence import LEVEL, ratio_interval
from harness.reporting.results import ResultsError, load_results

PROG = "harness.report --compare"
SAME_BAND = 0.02  # a change smaller than 2 % is never called faster or slower
RESOLVE_BAND = 0.05  # an unresolved change of over 5 % is "uncertain", not "same"
ENV_KEYS = ("device_name", "gpu", "gpu_driver", "torch", "torch_cuda", "cudnn", "cupy", "numpy", "python",
            "cpu_model", "torch_threads", "harness", "harness_commit")
# Rows are matched on structured fields: the Problem's fields, the implementation and the phase, and the
# device (its kind in the Problem, its name from the environment) when both runs ran on the same one.
DEVICE_KEY = ["device", "device_name"]
POINT = [f for f in PROBLEM_FIELDS if f not in DEVICE_KEY]  # what a point is on any device
KEY = [*POINT, "impl", "phase", *DEVICE_KEY]
JUDGED = ["ratio", "low", "high", "verdict", "regression"]
ONE_SIDED = {"left_only": "only in old", "right_only": "only in new"}


class CompareError(Exception):
    """The comparison cannot be made as asked (a bad option value): exit 2."""


def environment_differences(old: dict, new: dict) -> list[str]:
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in ENV_KEYS if old.get(key) != new.get(key)]


def judge(old: list[float], new: list[float], fail_above: float | None = None) -> dict:
    """The ratio of medians new/old, its bootstrap confidence interval over the rounds of both runs, and
    the verdict that interval supports; a regression only when the whole interval is above fail_above."""
    old_a, new_a = np.asarray(old, dtype=float), np.asarray(new, dtype=float)
    ratio = float(np.median(new_a) / np.median(old_a))
    interval = ratio_interval(new_a, old_a)  # None with too few rounds on either side
    if interval is None:
        return {"ratio": ratio, "low": float("nan"), "high": float("nan"), "verdict": "uncertain",
                "regression": False}
    low, high = interval
    if low > 1 and ratio >= 1 + SAME_BAND:
        verdict = "slower"
    elif high < 1 and ratio <= 1 - SAME_BAND:
        verdict = "faster"
    elif abs(ratio - 1) <= RESOLVE_BAND:
        verdict = "same"  # no change the interval can resolve, and the medians within 5 % (the interval says how sure)
    else:
        verdict = "uncertain"  # a change of over 5 % that the interval cannot tell from none
    regression = bool(fail_above is not None and low > fail_above)
    return {"ratio": ratio, "low": low, "high": high, "verdict": verdict, "regression": regression}


def _timings(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """One run's timings and not-timed points, keyed by structured fields, and its environment."""
    results = load_results([path])
    timings = results.timings.reindex(columns=[*KEY, "median_ms", "data"])
    if not timings.data.map(lambda d: isinstance(d, list) and len(d) > 0).all():
        raise ResultsError(f"{path}: lacks raw timings (stats.data); save runs with --benchmark-json "
                           "or --benchmark-save-data")
    return timings, results.not_timed, results.runs[0].environment


def _label(row) -> str:
    """How a point is named in the table and the messages: its problem without the device."""
    return problem_label(Problem(**{f: getattr(row, f) if f in POINT else "cpu" for f in PROBLEM_FIELDS}))


def _labels(frame: pd.DataFrame) -> pd.Series:
    return pd.Series([_label(r) for r in frame[POINT].astype(object).itertuples()], index=frame.index, dtype=object)


def _devices(timings: pd.DataFrame, not_timed: pd.DataFrame) -> set[tuple]:
    frames = [f[DEVICE_KEY] for f in (timings, not_timed) if not f.empty]
    return set(map(tuple, pd.concat(frames).drop_duplicates().to_numpy())) if frames else set()


def _normalised(timings: pd.DataFrame, impl: str, point: list[str], path: Path) -> pd.DataFrame:
    """Every raw timing of one run divided by IMPL's median at the same point of the same run: drift of
    the whole machine between two runs then cancels in the ratio new/old (a ratio of ratios). Points
    where IMPL has no timing keep their raw timings and a missing ref_median, an error if compared."""
    ref = timings[timings.impl == impl]
    if ref.empty:
        known = ", ".join(sorted(set(timings.impl))) or "none"
        raise CompareError(f"--normalize-by {impl}: {path} has no timings of {impl!r} (it has: {known})")
    ref = ref.assign(ref_median=ref.data.map(np.median))[[*point, "ref_median"]]
    if not (ref.ref_median > 0).all():
        zero = ref[~(ref.ref_median > 0)].iloc[0]
        raise CompareError(f"--normalize-by {impl}: {path} times {impl!r} at {_label(zero)} {zero.phase} "
                           "as 0 seconds; nothing can be divided by it")
    out = timings.merge(ref, on=point, how="left")
    out["data"] = [d if pd.isna(m) else list(np.asarray(d) / m) for d, m in zip(out.data, out.ref_median, strict=True)]
    return out


def _check_reference(merged: pd.DataFrame, impl: str, point: list[str], paths: tuple[Path, Path]) -> None:
    """Every point compared must have IMPL's timing in both runs."""
    both = merged[merged.side == "both"]
    for side, path in zip(("old", "new"), paths, strict=True):
        lacking = both[both[f"ref_median_{side}"].isna()]
        if not lacking.empty:
            where = lacking.groupby(point, sort=False).impl.agg(", ".join).reset_index()
            raise CompareError(f"--normalize-by {impl}: {path} has no timing of {impl!r} at "
                               + "; ".join(f"{_label(r)} {r.phase} (needed by {r.impl})"
                                           for r in where.itertuples()))


def _judged(merged: pd.DataFrame, fail_above: float | None, reference: str | None) -> pd.DataFrame:
    both = merged[merged.side == "both"]
    judged = pd.DataFrame([judge(o, n, fail_above) for o, n in zip(both.data_old, both.data_new, strict=True)],
                          index=both.index, columns=JUDGED)
    if reference is not None:
        # Its normalised timings are 1 by construction (up to rounding): say so exactly, and judge nothing.
        judged.loc[both.impl == reference, JUDGED] = [1.0, 1.0, 1.0, "same", False]
    return judged


def _why_not_timed(merged: pd.DataFrame, not_timed: pd.DataFrame, key: list[str]) -> pd.Series:
    """For rows only in OLD: NEW's record of why it did not time them (failed agreement, crash ...), if any."""
    if not_timed.empty:
        return pd.Series(pd.NA, index=merged.index, dtype=object)
    why = (not_timed.assign(why=not_timed.outcome + ": " + not_timed.reason)
           .drop_duplicates(key)[[*key, "why"]])
    found = merged[key].merge(why, how="left").why
    return found.set_axis(merged.index).where(merged.side == "left_only")


def compare_runs(old_path: Path, new_path: Path, fail_above: float | None = None,
            normalize_by: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    (o, not_timed_old, env_old), (n, not_timed_new, env_new) = _timings(old_path), _timings(new_path)
    notes = environment_differences(env_old, env_new)
    # Rows are matched by problem fields, implementation and phase, and by device when both runs ran on
    # the same one; runs on different devices (named above) are matched on the problem alone, so the
    # comparison still happens, openly.
    same_device = _devices(o, not_timed_old) == _devices(n, not_timed_new)
    key = KEY if same_device else [k for k in KEY if k not in DEVICE_KEY]
    point = [k for k in key if k != "impl"]
    if normalize_by is not None:
        o, n = _normalised(o, normalize_by, point, old_path), _normalised(n, normalize_by, point, new_path)
    merged = o.merge(n, on=key, how="outer", suffixes=("_old", "_new"), indicator="side")
    if normalize_by is not None:
        _check_reference(merged, normalize_by, point, (old_path, new_path))
    table = (merged[["impl", "phase", "median_ms_old", "median_ms_new"]]
             .rename(columns={"median_ms_old": "old_ms", "median_ms_new": "new_ms"})
             .join(_judged(merged, fail_above, normalize_by)))
    table.insert(1, "problem", _labels(merged))
    table["verdict"] = table.verdict.fillna(merged.side.astype(str).map(ONE_SIDED))
    table["why"] = _why_not_timed(merged, not_timed_new, key)
    return table, notes


def _print_table(table: pd.DataFrame, notes: list[str], normalize_by: str | None) -> None:
    if notes:
        print("The two runs differ in environment; read the ratios with that in mind:")
        print("\n".join(f"  {n}" for n in notes) + "\n")
    ratio = "new/old"
    if normalize_by is not None:
        ratio = f"new/old normalised by {normalize_by}"
        print(f"Ratios are normalised by {normalize_by}: each time is divided by {normalize_by}'s median at the same "
              f"problem and phase of the same run, so drift of the whole machine cancels ({normalize_by}'s own "
              "rows are 1.00 by construction; a change of its own cannot be seen here). old_ms and new_ms are raw.\n")
    shown = table.drop(columns="why")
    for col, fmt in (("old_ms", "{:.3g}"), ("new_ms", "{:.3g}"), ("ratio", "{:.3f}"), ("regression", "{}")):
        shown[col] = [fmt.format(v) if pd.notna(v) else "-" for v in shown[col]]
    interval = f"{LEVEL:.0%} interval"
    shown.insert(shown.columns.get_loc("ratio") + 1, interval,
                 [f"[{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else "-"
                  for lo, hi in zip(shown.low, shown.high, strict=True)])
    shown = shown.drop(columns=["low", "high"])
    # disable_numparse: tabulate would otherwise reprint "1.000" as "1".
    shown = shown.rename(columns={"ratio": ratio})
    print(shown.to_markdown(index=False, disable_numparse=True))
    counts = table.verdict.value_counts().to_dict()
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


def _regressions(table: pd.DataFrame, fail_above: float) -> str | None:
    bad = table[table.regression.eq(True)]
    if bad.empty:
        return None
    return (f"slower than {fail_above}x with confidence (the whole {LEVEL:.0%} interval above it): "
            + ", ".join(f"{r.impl} {r.problem} {r.phase} ({r.ratio:.2f}x, [{r.low:.2f}, {r.high:.2f}])"
                        for r in bad.itertuples()))


def _nothing_compared(table: pd.DataFrame, reference: str | None, paths: list[Path]) -> str | None:
    judged = table[(table.verdict != ONE_SIDED["left_only"]) & (table.verdict != ONE_SIDED["right_only"])
                   & (table.impl != reference)]
    if not judged.empty:
        return None
    what = "no implementation, problem and phase" + (f" other than {reference}'s own" if reference else "")
    return (f"{what} was timed in both {paths[0]} and {paths[1]}, so nothing was compared "
            "(different grids, devices or implementations?); an empty comparison does not pass")


def _missing(table: pd.DataFrame, paths: list[Path]) -> str | None:
    gone = table[table.verdict == ONE_SIDED["left_only"]]
    if gone.empty:
        return None
    # One entry per implementation and problem (its phases together), with NEW's reason when it has one.
    groups = gone.groupby(["impl", "problem", "why"], sort=False, dropna=False).phase.agg(", ".join).reset_index()
    listed = "; ".join(f"{r.impl} {r.problem} {r.phase}" + (f" ({r.why})" if pd.notna(r.why) else "")
                       for r in groups.itertuples())
    return f"{len(gone)} row(s) of OLD {paths[0]} missing from NEW {paths[1]}: {listed}"


def compare_main(paths: list[Path], fail_above: float | None, normalize_by: str | None = None,
                 allow_missing: bool = False, prog: str = PROG) -> int:
    """Print the comparison and apply the gate; the exit status. prog: the prefix of error lines."""
    try:
        table, notes = compare_runs(paths[0], paths[1], fail_above, normalize_by)
    except (ResultsError, CompareError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    _print_table(table, notes, normalize_by)
    missing = _missing(table, paths)
    if missing and (fail_above is None or allow_missing):
        print(f"\n{missing}" + (" (reported only: --allow-missing)" if allow_missing else ""))
    if fail_above is None:
        return 0
    failures = [_nothing_compared(table, normalize_by, paths), _regressions(table, fail_above),
                None if allow_missing or not missing else
                f"{missing}; an implementation that failed or was dropped fails the gate "
                "(--allow-missing only reports such rows)"]
    failures = [f for f in failures if f]
    if failures:
        print(f"\ngate failed (--fail-above {fail_above}):\n" + "\n".join(f"- {f}" for f in failures))
        return 1
    print(f"\nnothing slower than {fail_above}x with confidence")
    return 0
