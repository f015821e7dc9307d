"""pytest-benchmark JSON files -> one pandas row per (implementation, problem, phase).

Every field the report reads is checked on the way in: a file that is valid JSON but wrong
inside is a ResultsError naming the file and the field, never a traceback further on.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.contract.problem import PHASES
from harness.reporting.record import RESULTS_KEY

DEFAULT_STORAGE = Path(".benchmarks")
PROBLEM_FIELDS = ("batch", "length", "input_size", "hidden", "layers", "dtype", "device")
PROBLEM_KINDS = {**dict.fromkeys(PROBLEM_FIELDS[:5], "integer"), "dtype": "string", "device": "string"}
STATS_MS = ("median", "q1", "q3", "iqr", "mean", "min", "stddev")  # seconds in the file, ms in the table


class ResultsError(Exception):
    """No results, or a results file that cannot be read or is not ours."""


class _Invalid(ValueError):
    """A field of a results file is missing or of the wrong kind; load_results adds the file's name."""


class _Foreign(Exception):
    """A pytest-benchmark file that holds no LSTM harness results."""


@dataclass
class Run:
    path: Path
    environment: dict  # harness.measuring.environment.describe() of the machine that ran it
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


def _is_number(v) -> bool:
    # bool is an int to Python, not to JSON; NaN and Infinity parse, but are no time or count.
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


KINDS = {  # kind: (test, words for the message)
    "object": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "string": (lambda v: isinstance(v, str), "a string"),
    "integer": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (_is_number, "a finite number"),
    "positive": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "numbers": (lambda v: isinstance(v, list) and all(map(_is_number, v)), "a list of finite numbers"),
}
JSON_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
              float: "a number"}


def _shown(value) -> str:
    """A wrong value as the message shows it: its JSON kind and a short repr."""
    if value is None:
        return "null"
    return f"{JSON_NAMES.get(type(value), type(value).__name__)} {reprlib.repr(value)}"


def _check(value, kind: str, name: str):
    test, words = KINDS[kind]
    if not test(value):
        raise _Invalid(f"{name!r} must be {words}, not {_shown(value)}")
    return value


def _field(obj: dict, key: str, kind: str, prefix: str = "", optional: bool = False):
    """obj[key] checked to be of `kind`; an optional field may be absent or null (older files lack it)."""
    name = prefix + key
    if key not in obj:
        if optional:
            return None
        raise _Invalid(f"lacks field {name!r}")
    if obj[key] is None and optional:
        return None
    return _check(obj[key], kind, name)


def _problem(obj: dict, prefix: str = "") -> dict:
    return {f: _field(obj, f, PROBLEM_KINDS[f], prefix) for f in PROBLEM_FIELDS}


def _stats(bench: dict) -> dict:
    stats = _field(bench, "stats", "object")
    out = {f"{k}_ms": _field(stats, k, "positive" if k == "median" else "number", "stats.") * 1e3 for k in STATS_MS}
    return out | {"rounds": _field(stats, "rounds", "integer", "stats.")}


def _extra(info: dict) -> dict:
    p = "extra_info."
    row = {"impl": _field(info, "impl", "string", p), "backend": _field(info, "backend", "string", p),
           "origin": _field(info, "origin", "string", p, optional=True) or "",
           "phase": _field(info, "phase", "string", p), "problem_id": _field(info, "problem_id", "string", p),
           **_problem(info, p), "flops": _field(info, "flops", "number", p),
           "agreement_max_error": _field(info, "agreement_max_error", "number", p),
           "agreement_tolerance": _field(info, "agreement_tolerance", "number", p)}
    if row["phase"] not in PHASES:
        raise _Invalid(f"'extra_info.phase' must be one of {', '.join(PHASES)}, not {row['phase']!r}")
    return row


def _row(path: Path, bench: dict, device_name: str) -> dict:
    info = bench["extra_info"]
    row = {**_extra(info), **_stats(bench),
           "warmup_rounds": _field(info, "warmup_rounds", "integer", "extra_info.", optional=True),
           "device_name": device_name, "run": path.name,
           # Added later: absent from older results files.
           **{k: _field(info, k, "number", "extra_info.", optional=True)
              for k in ("ceiling_gflops", "saved_bytes", "peak_bytes", "saturation_max_error", "verified_max_error",
                        "check_seconds", "saturation_seconds")},
           # What peak_bytes includes (its definition changed; older files lack it).
           "peak_includes": _field(info, "peak_includes", "string", "extra_info.", optional=True),
           # Raw per-round timings (seconds), kept for --compare's statistical test.
           "data": _field(bench["stats"], "data", "numbers", "stats.", optional=True)}
    row["gflops_per_s"] = row["flops"] / (row["median_ms"] * 1e-3) / 1e9  # median_ms > 0: checked
    ceiling = row["ceiling_gflops"]
    row["percent_of_ceiling"] = 100 * row["gflops_per_s"] / ceiling if ceiling else float("nan")
    return row


def _benchmarks(path: Path, benchmarks: list, device_name: str) -> list[dict]:
    """Rows of the benchmarks that are ours (extra_info names an implementation)."""
    rows = []
    for index, bench in enumerate(benchmarks):
        if not isinstance(bench, dict):
            raise _Invalid(f"benchmark #{index} must be an object, not {_shown(bench)}")
        try:
            info = _field(bench, "extra_info", "object", optional=True) or {}
            if "impl" in info:
                rows.append(_row(path, bench, device_name))
        except _Invalid as exc:
            raise _Invalid(f"benchmark #{index} ({bench.get('name', '?')}): {exc}") from None
    return rows


def _not_timed(entries: list, device_name: str, run: str) -> list[dict]:
    rows = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _Invalid(f"not_timed entry #{index} must be an object, not {_shown(entry)}")
        try:
            problem = _problem(_field(entry, "problem", "object"), "problem.")
            rows.append({**{k: _field(entry, k, "string") for k in ("impl", "phase", "outcome", "reason")},
                         **problem, "device_name": device_name, "run": run})
        except _Invalid as exc:
            raise _Invalid(f"not_timed entry #{index}: {exc}") from None
    return rows


def _settings(data: dict) -> dict:
    """The harness's own top-level section: not_timed and the ceilings are read from it."""
    settings = _field(data, RESULTS_KEY, "object", optional=True) or {}
    _field(settings, "not_timed", "list", f"{RESULTS_KEY}.", optional=True)
    for index, ceiling in enumerate(_field(settings, "ceilings", "list", f"{RESULTS_KEY}.", optional=True) or []):
        name = f"{RESULTS_KEY}.ceilings[{index}]"
        _check(ceiling, "object", name)
        _field(ceiling, "gflops", "number", name + ".")
        _field(ceiling, "how", "string", name + ".")
    return settings


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
        settings = _settings(data)
        device_name = env.get("device_name") or env.get("device") or "?"
        rows = _benchmarks(path, data["benchmarks"], device_name)
        if data["benchmarks"] and not rows:
            # Our plugin is loaded in every pytest session of this environment: another suite's run has our
            # machine_info too, but none of its benchmarks names an implementation.
            raise _Foreign()
        not_timed = _not_timed(settings.get("not_timed") or [], device_name, path.name)
        commit = _field(data, "commit_info", "object", optional=True) or {}
    except _Foreign:
        raise ResultsError(f"{path}: not an LSTM harness results file (written by another benchmark suite?)") from None
    except _Invalid as exc:
        raise ResultsError(f"{path}: {exc}; the file is corrupt or from another tool") from None
    return rows, not_timed, Run(path, env, settings, str(data.get("datetime", "")), commit)


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
