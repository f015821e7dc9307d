"""pytest-benchmark JSON files -> one pandas row per (implementation, problem, phase)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.pytest_plugin import RESULTS_KEY

DEFAULT_STORAGE = Path(".benchmarks")
PROBLEM_FIELDS = ("batch", "length", "input_size", "hidden", "layers", "dtype", "device")


class ResultsError(Exception):
    """No results, or a results file that cannot be read or is not ours."""


@dataclass
class Run:
    path: Path
    environment: dict  # harness.environment.describe() of the machine that ran it
    settings: dict  # grid, rounds, warm-up ... as the plugin recorded them
    datetime: str
    commit: dict


@dataclass
class Results:
    timings: pd.DataFrame  # one row per implementation x problem x phase
    not_timed: pd.DataFrame  # points that were skipped or failed (agreement, crash), with the reason
    runs: list[Run]


def latest_results(storage: Path = DEFAULT_STORAGE) -> Path:
    files = sorted(Path(storage).glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise ResultsError(f"no benchmark results under {storage}/: run `pytest suites/ --benchmark-only` "
                           "first, or name a results file (pytest --benchmark-json FILE)")
    return files[-1]


def _read(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc}); is the file truncated or corrupt?") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ResultsError(f"{path}: not a pytest-benchmark results file (no 'benchmarks' list)")
    return data


def _row(path: Path, index: int, bench: dict, device_name: str) -> dict:
    info, stats = bench.get("extra_info") or {}, bench.get("stats") or {}
    try:
        row = {"impl": info["impl"], "backend": info["backend"], "origin": info.get("origin", ""),
               "phase": info["phase"], "problem_id": info["problem_id"],
               **{f: info[f] for f in PROBLEM_FIELDS}, "flops": info["flops"],
               "agreement_max_error": info["agreement_max_error"],
               "agreement_tolerance": info["agreement_tolerance"],
               "median_ms": stats["median"] * 1e3, "q1_ms": stats["q1"] * 1e3, "q3_ms": stats["q3"] * 1e3,
               "iqr_ms": stats["iqr"] * 1e3, "mean_ms": stats["mean"] * 1e3, "min_ms": stats["min"] * 1e3,
               "stddev_ms": stats["stddev"] * 1e3, "rounds": stats["rounds"],
               "warmup_rounds": info.get("warmup_rounds"), "device_name": device_name, "run": path.name,
               # Added later: absent from older results files.
               "ceiling_gflops": info.get("ceiling_gflops"), "saved_bytes": info.get("saved_bytes"),
               "peak_bytes": info.get("peak_bytes"),
               # Raw per-round timings (seconds), kept for --compare's statistical test.
               "data": stats.get("data")}
    except (KeyError, TypeError) as exc:
        raise ResultsError(f"{path}: benchmark #{index} ({bench.get('name', '?')}) lacks field {exc}; "
                           "the file is corrupt or from another tool") from None
    row["gflops_per_s"] = row["flops"] / (row["median_ms"] * 1e-3) / 1e9 if row["median_ms"] > 0 else float("nan")
    ceiling = row["ceiling_gflops"]
    row["percent_of_ceiling"] = 100 * row["gflops_per_s"] / ceiling if ceiling else float("nan")
    return row


def load_results(paths: list[Path]) -> Results:
    rows, not_timed, runs = [], [], []
    for path in map(Path, paths):
        data = _read(path)
        env = (data.get("machine_info") or {}).get(RESULTS_KEY)
        ours = [b for b in data["benchmarks"] if isinstance(b, dict) and "impl" in (b.get("extra_info") or {})]
        if env is None or (data["benchmarks"] and not ours):
            raise ResultsError(f"{path}: not an LSTM harness results file (written by another benchmark suite?)")
        device_name = env.get("device_name", env.get("device", "?"))
        rows += [_row(path, i, b, device_name) for i, b in enumerate(ours)]
        settings = data.get(RESULTS_KEY) or {}
        for entry in settings.get("not_timed", []):
            not_timed.append({"impl": entry["impl"], "phase": entry["phase"], "outcome": entry["outcome"],
                              "reason": entry["reason"], **entry["problem"], "device_name": device_name,
                              "run": path.name})
        runs.append(Run(path, env, settings, data.get("datetime", ""), data.get("commit_info") or {}))
    if not rows and not not_timed:
        raise ResultsError(f"{', '.join(map(str, paths))}: holds no LSTM results (did every test fail or skip?)")
    timings = pd.DataFrame(rows)
    if not timings.empty:
        # The same point measured in several files: the file named last wins.
        timings = timings.drop_duplicates(["device_name", "problem_id", "impl", "phase"], keep="last")
    return Results(timings.reset_index(drop=True), pd.DataFrame(not_timed), runs)
