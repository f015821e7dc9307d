"""pytest-benchmark JSON files -> one pandas row per (implementation, problem, phase).

Every field the report reads is checked on the way in: a file that is valid JSON but wrong
inside is a ResultsError naming the file and the field, never a traceback further on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.record.schema import (
    PROBLEM_FIELDS,  # noqa: F401  (re-exported: the problem columns of a results table)
    RESULTS_KEY,
    SHARD_KEY,
    Measurement,
    RecordError,
    RunSection,
    SchemaError,
    read_field,
    shown,
)

DEFAULT_STORAGE = Path(".benchmarks")
STATS_MS = ("median", "q1", "q3", "iqr", "mean", "min", "stddev")  # seconds in the file, ms in the table


class ResultsError(Exception):
    """No results, or a results file that cannot be read or is not ours."""


_Invalid = RecordError  # a field of a results file is missing or of the wrong kind; load_results adds the file's name


class _Foreign(Exception):
    """A pytest-benchmark file that holds no LSTM harness results."""


@dataclass
class Run:
    path: Path
    environment: dict  # harness.measuring.environment.describe() of the machine that ran it
    section: RunSection  # grid, rounds, warm-up, ceilings, interference ... as the plugin recorded them
    datetime: str
    commit: dict
    # A sweep's results (python -m harness sweep): one harness.record.schema.Shard per shard, each with the
    # environment it ran in; its rows take their device from their own shard. Empty for a pytest run's file.
    shards: list = field(default_factory=list)


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


_field = read_field
_shown = shown


def _stats(bench: dict) -> dict:
    stats = _field(bench, "stats", "object")
    out = {f"{k}_ms": _field(stats, k, "positive" if k == "median" else "number", "stats.") * 1e3 for k in STATS_MS}
    return out | {"rounds": _field(stats, "rounds", "integer", "stats.")}


UNFINISHED = "device unknown (its shard did not finish)"  # a failed shard's entries, when devices differ


def _shard_devices(section: RunSection, device_name: str) -> dict[str, str]:
    """A sweep's shard key -> the device name its rows get: the shard's own environment's; a shard that never
    finished has none, and gets the sweep's one device, or UNFINISHED when the finished shards ran on several."""
    names = {s.key: s.device_name for s in section.shards}
    known = set(filter(None, names.values()))
    fallback = next(iter(known)) if len(known) == 1 else UNFINISHED if known else device_name
    return {key: name or fallback for key, name in names.items()}


def _row(path: Path, bench: dict, device_name: str) -> dict:
    """One table row: the record's own fields (Measurement.columns), the statistics, where it ran."""
    m = Measurement.from_json(bench["extra_info"])
    row = {**m.columns(), **_stats(bench), "device_name": device_name, "run": path.name,
           "shard": bench.get(SHARD_KEY),
           # Raw per-round timings (seconds), kept for --compare's statistical test.
           "data": _field(bench["stats"], "data", "numbers", "stats.", optional=True)}
    row["gflops_per_s"] = row["flops"] / (row["median_ms"] * 1e-3) / 1e9  # median_ms > 0: checked
    ceiling = row["ceiling_gflops"]
    row["percent_of_ceiling"] = 100 * row["gflops_per_s"] / ceiling if ceiling else float("nan")
    return row


def _benchmarks(path: Path, benchmarks: list, device_name: str, shards: dict[str, str]) -> list[dict]:
    """Rows of the benchmarks that are ours (extra_info names an implementation); a sweep's row takes the
    device of its shard."""
    rows = []
    for index, bench in enumerate(benchmarks):
        if not isinstance(bench, dict):
            raise _Invalid(f"benchmark #{index} must be an object, not {_shown(bench)}")
        try:
            info = _field(bench, "extra_info", "object", optional=True) or {}
            shard = _field(bench, SHARD_KEY, "string", optional=True)
            if shard is not None and shard not in shards:
                raise _Invalid(f"{SHARD_KEY!r} names shard {shard!r}, which {RESULTS_KEY}.shards lacks")
            if "impl" in info:
                rows.append(_row(path, bench, shards.get(shard, device_name)))
        except _Invalid as exc:
            raise _Invalid(f"benchmark #{index} ({bench.get('name', '?')}): {exc}") from None
    return rows


def _not_timed(section: RunSection, device_name: str, run: str, shards: dict[str, str]) -> list[dict]:
    return [{"impl": n.impl, "phase": n.phase, "outcome": n.outcome, "reason": n.reason, **n.problem.as_dict(),
             "problem_id": n.problem.id, "device_name": shards.get(n.shard, device_name), "run": run,
             "shard": n.shard} for n in section.not_timed]


def _environment(data: dict) -> dict:
    machine = _field(data, "machine_info", "object", optional=True) or {}
    env = _field(machine, RESULTS_KEY, "object", "machine_info.", optional=True)
    if env is None:
        raise _Foreign()
    for key in ("device_name", "device"):
        _field(env, key, "string", f"machine_info.{RESULTS_KEY}.", optional=True)
    return env


def _load(path: Path) -> tuple[list[dict], list[dict], Run]:
    data = _read(path)
    try:
        env = _environment(data)
        section = RunSection.from_json(data.get(RESULTS_KEY))
        device_name = env.get("device_name") or env.get("device") or "?"
        shards = _shard_devices(section, device_name)
        rows = _benchmarks(path, data["benchmarks"], device_name, shards)
        if data["benchmarks"] and not rows:
            # Our plugin is loaded in every pytest session of this environment: another suite's run has our
            # machine_info too, but none of its benchmarks names an implementation.
            raise _Foreign()
        not_timed = _not_timed(section, device_name, path.name, shards)
        commit = _field(data, "commit_info", "object", optional=True) or {}
    except _Foreign:
        raise ResultsError(f"{path}: not an LSTM harness results file (written by another benchmark suite?)") from None
    except SchemaError as exc:
        raise ResultsError(f"{path}: {exc}") from None
    except _Invalid as exc:
        raise ResultsError(f"{path}: {exc}; the file is corrupt or from another tool") from None
    return rows, not_timed, Run(path, env, section, str(data.get("datetime", "")), commit, section.shards)


def load_results(paths: list[Path]) -> Results:
    rows, not_timed, runs = [], [], []
    for path in map(Path, paths):
        file_rows, file_not_timed, run = _load(path)
        rows += file_rows
        not_timed += file_not_timed
        runs.append(run)
    if not rows and not not_timed:
        raise ResultsError(f"{', '.join(map(str, paths))}: holds no LSTM results (did every test fail or skip?)")
    timings = pd.DataFrame(rows)
    if not timings.empty:
        # The same point measured in several files: the file named last wins.
        timings = timings.drop_duplicates(["device_name", "problem_id", "impl", "phase"], keep="last")
    return Results(timings.reset_index(drop=True), pd.DataFrame(not_timed), runs)
