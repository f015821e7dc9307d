"""The results record, with one owner: what a results file holds beyond pytest-benchmark's own.

- `Measurement`: one timed measurement, the `extra_info` of one benchmark row. measure.py builds it,
  results.py reads rows back through `Measurement.from_json`.
- `RunSection`: the run-level section, output[RESULTS_KEY], with its `NotTimed` entries (the points
  that were skipped or failed). The pytest plugin builds it; a sweep (harness.commands.sweep.results) adds
  its shards, each with the environment it ran in, and tags rows and entries with their shard.
- `SCHEMA_VERSION`: written into the run-level section of every results file; a reader refuses a
  file of a newer major version (`check_schema`). Files written before the field existed are 1.0.

The JSON keys are those the harness always wrote, so older files read and older readers read new
ones. Every `from_json` validates and raises `RecordError` naming the bad field. The problem's
fields are `dataclasses.fields(Problem)`, never a list written out here.

No torch, no pytest.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass, field

from harness.contract.problem import PHASES, Problem, ProblemError

RESULTS_KEY = "lstm_harness"  # machine_info[RESULTS_KEY]: the environment; output[RESULTS_KEY]: the run
SCHEMA_KEY = "schema"  # output[RESULTS_KEY][SCHEMA_KEY]: the version of this record
SCHEMA_VERSION = "1.5"  # 1.1: setup_seconds; 1.2: a sweep's shards (each with its environment), not_timed.shard;
# 1.3: harness_seconds and rotation_seconds (the harness's own cost per round); 1.4: interference per row;
# 1.5: the calls checked during timing, the zero-state check, the error against the dtype's rounding floor
# (disturbed_rounds, interference_cores ...) and the run's interference settings
ABSENT_SCHEMA = "1.0"  # files written before the version was recorded

PROBLEM_FIELDS = tuple(f.name for f in dataclasses.fields(Problem))
_TYPE_KINDS = {int: "integer", "int": "integer", str: "string", "str": "string"}
PROBLEM_KINDS = {f.name: _TYPE_KINDS[f.type] for f in dataclasses.fields(Problem)}
OUTCOMES = ("skipped", "failed")


class RecordError(ValueError):
    """A field of a results record is missing or of the wrong kind; the message names the field."""


class SchemaError(RecordError):
    """A results file written by a newer lstm-harness than this one can read."""


# ---- validation shared by every reader of the record -------------------------------------------------

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
    "boolean": (lambda v: isinstance(v, bool), "a boolean"),
    "any": (lambda v: True, "anything"),
}
JSON_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
              float: "a number"}


def shown(value) -> str:
    """A wrong value as the message shows it: its JSON kind and a short repr."""
    if value is None:
        return "null"
    return f"{JSON_NAMES.get(type(value), type(value).__name__)} {reprlib.repr(value)}"


def check(value, kind: str, name: str):
    test, words = KINDS[kind]
    if not test(value):
        raise RecordError(f"{name!r} must be {words}, not {shown(value)}")
    return value


def read_field(obj: dict, key: str, kind: str, prefix: str = "", optional: bool = False):
    """obj[key] checked to be of `kind`; an optional field may be absent or null (older files lack it)."""
    name = prefix + key
    if key not in obj:
        if optional:
            return None
        raise RecordError(f"lacks field {name!r}")
    if obj[key] is None and optional:
        return None
    return check(obj[key], kind, name)


def problem_from_json(obj: dict, prefix: str = "") -> Problem:
    """The Problem whose fields `obj` holds (the fields of the Problem dataclass, each checked)."""
    values = {f: read_field(obj, f, PROBLEM_KINDS[f], prefix) for f in PROBLEM_FIELDS}
    try:
        return Problem(**values)
    except ProblemError as exc:
        name = next((f for f in PROBLEM_FIELDS if str(exc).startswith(f)), "")
        raise RecordError(f"{prefix + name!r}: {exc}") from None


def problem_label(problem: Problem) -> str:
    """The problem's id without its device: what two runs on different devices share."""
    return problem.id.removesuffix(f"-{problem.device}")


def _phase(value: str, name: str) -> str:
    if value not in PHASES:
        raise RecordError(f"{name!r} must be one of {', '.join(PHASES)}, not {value!r}")
    return value


# ---- schema version ----------------------------------------------------------------------------------

def _major(version: str) -> int:
    return int(str(version).split(".")[0])


def check_schema(section: dict | None) -> str:
    """The schema version of a run-level section (absent: 1.0); a newer major version is refused."""
    version = (section or {}).get(SCHEMA_KEY, ABSENT_SCHEMA)
    name = f"{RESULTS_KEY}.{SCHEMA_KEY}"
    check(version, "string", name)
    try:
        major = _major(version)
    except ValueError:
        raise RecordError(f"{name!r} must be a version like {SCHEMA_VERSION!r}, not {shown(version)}") from None
    if major > _major(SCHEMA_VERSION):
        raise SchemaError(f"written by a newer lstm-harness (schema {version}; this one reads "
                          f"{_major(SCHEMA_VERSION)}.x): upgrade")
    return version


# ---- one timed measurement ---------------------------------------------------------------------------

# field name: (JSON kind, optional); the problem, precision and extra fields are written flat, apart.
_MEASUREMENT_KINDS = {
    "impl": ("string", False), "backend": ("string", False), "origin": ("string", True),
    "phase": ("string", False), "flops": ("number", False),
    "agreement_max_error": ("number", False), "agreement_tolerance": ("number", False),
    "agreement_errors": ("object", True),
    "saturation_max_error": ("number", True), "saturation_check": ("string", True),
    "saturation_seconds": ("number", True),
    "verified": ("string", True), "verified_max_error": ("number", True), "check_seconds": ("number", True),
    "checked_calls": ("integer", True), "timed_calls": ("integer", True), "zero_state_max_error": ("number", True),
    "precision_ratio": ("number", True), "agreement_seconds": ("number", True),
    "seed": ("integer", True), "warmup_rounds": ("integer", True),
    "ceiling_gflops": ("number", True), "saved_bytes": ("number", True), "peak_bytes": ("number", True),
    "peak_includes": ("string", True), "threads": ("integer", True), "process_state": ("object", True),
    "setup_seconds": ("number", True), "harness_seconds": ("number", True), "rotation_seconds": ("number", True),
    "interleaved": ("boolean", True), "disturbed_rounds": ("integer", True), "redone_rounds": ("integer", True),
    "interference_cores": ("number", True), "interference_flagged": ("boolean", True),
    "redo_seconds": ("number", True), "interference_threshold": ("number", True),
}


@dataclass(frozen=True)
class Measurement:
    """The record of one timed measurement: the `extra_info` of its benchmark row.

    In JSON the problem is written flat (problem_id and each field of Problem) and so are the
    precision flags (`precision`: what timing.precision() reported held, e.g. matmul_allow_tf32).
    Fields after `agreement_tolerance` are absent from some older files (None when read).
    """

    impl: str
    backend: str
    origin: str
    phase: str
    problem: Problem
    flops: float
    agreement_max_error: float
    agreement_tolerance: float
    agreement_errors: dict | None = None
    saturation_max_error: float | None = None
    saturation_check: str | None = None
    saturation_seconds: float | None = None
    verified: str | None = None  # the check after timing, as it described itself; unset: not checked yet
    verified_max_error: float | None = None
    check_seconds: float | None = None
    # Of the calls made in the timed rounds (kept and redone, not the warm-up), how many were checked against
    # the reference for their own inputs (harness.measuring.call_checks), the worst error in verified_max_error.
    checked_calls: int | None = None
    timed_calls: int | None = None
    zero_state_max_error: float | None = None  # the check before timing with h0 = c0 = 0
    agreement_seconds: float | None = None  # the checks on set 0 and the zero state (references included)
    # Largest agreement error / the error of the float64 reference merely rounded to the dtype, over the
    # tensors of input set 0: about 1 for results computed in a wider type and rounded at the end.
    precision_ratio: float | None = None
    seed: int | None = None
    warmup_rounds: int | None = None
    ceiling_gflops: float | None = None
    saved_bytes: int | None = None
    peak_bytes: int | None = None
    peak_includes: str | None = None
    threads: int | None = None
    process_state: dict | None = None
    # Wall time of building the instance that was checked and timed (weight conversion, compilation,
    # extension builds: whatever __init__ does), measured by the harness, outside every timed region.
    setup_seconds: float | None = None
    # The harness's own cost per timed round (medians): inside the timed region but outside the
    # implementation's calls and the device sync (pytest-benchmark's timer, the target's Python),
    # and the fresh inputs of each round's setup, drawn and copied (outside the timed region).
    harness_seconds: float | None = None
    rotation_seconds: float | None = None
    # What the machine was doing (harness.measuring.rounds): whether the point's implementations took their
    # rounds in turn; rounds in blocks where others used more than `interference_threshold` cores, how many
    # of them were redone and the wall time that cost; the median cores others used during the kept rounds
    # (None where not measured); flagged: the redo budget ran out, so disturbed rounds were kept.
    interleaved: bool | None = None
    disturbed_rounds: int | None = None
    redone_rounds: int | None = None
    interference_cores: float | None = None
    interference_flagged: bool | None = None
    redo_seconds: float | None = None
    interference_threshold: float | None = None
    precision: dict = field(default_factory=dict)  # flag name -> value, written flat
    extra: dict = field(default_factory=dict)  # keys of a newer minor version, kept as they were

    def __post_init__(self) -> None:
        _phase(self.phase, "phase")
        clash = (set(self.precision) | set(self.extra)) & (_KNOWN_KEYS | set(PROBLEM_FIELDS) | {"problem_id"})
        if clash:
            raise RecordError(f"precision flags may not reuse a field's name: {', '.join(sorted(clash))}")

    @property
    def problem_id(self) -> str:
        return self.problem.id

    def columns(self) -> dict:
        """The record as one flat table row: every scalar field (None where an older file lacks it), the
        problem's fields and id in place of the problem; the nested objects (per-tensor errors, process state),
        the precision flags and unknown keys left out."""
        out = {"impl": self.impl, "backend": self.backend, "origin": self.origin, "phase": self.phase,
               "problem_id": self.problem.id, **self.problem.as_dict()}
        return out | {k: getattr(self, k) for k, (kind, _) in _MEASUREMENT_KINDS.items()
                      if k not in out and kind != "object"}

    def to_json(self) -> dict:
        out = {"impl": self.impl, "backend": self.backend, "origin": self.origin, "phase": self.phase,
               "problem_id": self.problem.id, **self.problem.as_dict()}
        out.update({k: getattr(self, k) for k in _MEASUREMENT_KINDS if k not in out})
        for k in ("verified", "verified_max_error", "check_seconds", "harness_seconds", "rotation_seconds",
                  *INTERFERENCE_FIELDS):  # written only once checked
            if out[k] is None:
                del out[k]
        return out | self.precision | self.extra

    @classmethod
    def from_json(cls, info: dict, prefix: str = "extra_info.") -> Measurement:
        """Read and validate one row's extra_info; a RecordError names the bad field (with `prefix`)."""
        check(info, "object", prefix.rstrip("."))
        values = {k: read_field(info, k, kind, prefix, optional) for k, (kind, optional) in _MEASUREMENT_KINDS.items()}
        values["origin"] = values["origin"] or ""
        _phase(values["phase"], prefix + "phase")
        problem_id = read_field(info, "problem_id", "string", prefix)
        problem = problem_from_json(info, prefix)
        if problem_id != problem.id:
            raise RecordError(f"{prefix + 'problem_id'!r} is {problem_id!r}, but the problem's fields make "
                              f"{problem.id!r}")
        rest = {k: v for k, v in info.items() if k not in _KNOWN_KEYS | set(PROBLEM_FIELDS) | {"problem_id"}}
        precision = {k: v for k, v in rest.items() if k.startswith(PRECISION_PREFIXES)}
        extra = {k: v for k, v in rest.items() if k not in precision}
        return cls(problem=problem, precision=precision, extra=extra, **values)


_KNOWN_KEYS = frozenset(_MEASUREMENT_KINDS)
INTERFERENCE_FIELDS = ("interleaved", "disturbed_rounds", "redone_rounds", "interference_cores",
                       "interference_flagged", "redo_seconds", "interference_threshold")
PRECISION_PREFIXES = ("matmul_", "cudnn_", "mkldnn_", "cupy_")  # the flags timing.precision() reports


# ---- the run-level section ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NotTimed:
    """A point of the run that was not timed: skipped (unsupported) or failed (agreement, a crash ...)."""

    impl: str
    phase: str
    problem: Problem
    outcome: str
    reason: str
    shard: str | None = None  # in a sweep's results: the key of the shard that recorded it

    def to_json(self) -> dict:
        out = {"impl": self.impl, "phase": self.phase, "problem": self.problem.as_dict(),
               "problem_id": self.problem.id, "outcome": self.outcome, "reason": self.reason}
        return out | ({"shard": self.shard} if self.shard is not None else {})

    @classmethod
    def from_json(cls, entry: dict, prefix: str = "") -> NotTimed:
        check(entry, "object", prefix.rstrip(".") or "not_timed entry")
        problem = problem_from_json(read_field(entry, "problem", "object", prefix), prefix + "problem.")
        values = {k: read_field(entry, k, "string", prefix) for k in ("impl", "phase", "outcome", "reason")}
        return cls(problem=problem, shard=read_field(entry, "shard", "string", prefix, optional=True), **values)


# field name: (JSON kind, optional) of the run-level section
_RUN_KINDS = {
    "grid": ("string", True), "grid_about": ("string", True), "device": ("string", True),
    "seed": ("integer", True), "warmup": ("integer", True), "rounds": ("integer", True),
    "min_rounds": ("integer", True), "max_time": ("number", True), "allocator": ("string", True),
    "interleave": ("boolean", True), "interference": ("string", True), "interference_threshold": ("number", True),
    "redo_budget": ("number", True),
}


@dataclass(frozen=True)
class RunSection:
    """output[RESULTS_KEY]: how the run was made, what it did not time, and the ceilings it measured."""

    grid: str | None = None
    grid_about: str | None = None
    device: str | None = None
    seed: int | None = None
    warmup: int | None = None
    rounds: int | None = None  # None: sized to max_time per measurement
    min_rounds: int | None = None
    max_time: float | None = None
    allocator: str | None = None
    interleave: bool | None = None
    interference: str | None = None  # how interference was measured (or why not)
    interference_threshold: float | None = None
    redo_budget: float | None = None
    not_timed: list[NotTimed] = field(default_factory=list)
    ceilings: list[dict] = field(default_factory=list)  # roofline.Ceiling.as_dict(): gflops, how, ...
    schema: str = SCHEMA_VERSION
    # A sweep's results only (absent from a pytest run's): how the sweep was made, and one record per shard
    # (`Shard`: its key, done or failed, where it ran and the environment it recorded, its ceilings).
    sweep: dict | None = None
    shards: list[Shard] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {SCHEMA_KEY: self.schema, **{k: getattr(self, k) for k in _RUN_KINDS},
               "not_timed": [n.to_json() for n in self.not_timed], "ceilings": list(self.ceilings)}
        if self.sweep is not None:
            out |= {"sweep": dict(self.sweep), "shards": [s.to_json() for s in self.shards]}
        return out

    @classmethod
    def from_json(cls, section: dict | None) -> RunSection:
        """Read and validate the section (absent: an empty one); refuses a newer major schema."""
        p = f"{RESULTS_KEY}."
        section = {} if section is None else check(section, "object", RESULTS_KEY)
        schema = check_schema(section)
        values = {k: read_field(section, k, kind, p, optional) for k, (kind, optional) in _RUN_KINDS.items()}
        not_timed = []
        for index, entry in enumerate(read_field(section, "not_timed", "list", p, optional=True) or []):
            if not isinstance(entry, dict):
                raise RecordError(f"not_timed entry #{index} must be an object, not {shown(entry)}")
            try:
                not_timed.append(NotTimed.from_json(entry))
            except RecordError as exc:
                raise RecordError(f"not_timed entry #{index}: {exc}") from None
        ceilings = read_field(section, "ceilings", "list", p, optional=True) or []
        for index, ceiling in enumerate(ceilings):
            name = f"{RESULTS_KEY}.ceilings[{index}]"
            check(ceiling, "object", name)
            read_field(ceiling, "gflops", "number", name + ".")
            read_field(ceiling, "how", "string", name + ".")
        sweep = read_field(section, "sweep", "object", p, optional=True)
        shards = []
        for index, entry in enumerate(read_field(section, "shards", "list", p, optional=True) or []):
            try:
                shards.append(Shard.from_json(entry, f"{RESULTS_KEY}.shards[{index}]."))
            except RecordError as exc:
                raise RecordError(f"shard #{index}: {exc}") from None
        return cls(**values, not_timed=not_timed, ceilings=ceilings, schema=schema, sweep=sweep, shards=shards)


# ---- a sweep's shards --------------------------------------------------------------------------------

SHARD_STATUSES = ("done", "failed")
SHARD_KEY = "lstm_harness_shard"  # a sweep's benchmark rows: the key of the shard that timed the row


@dataclass(frozen=True)
class Shard:
    """One shard of a sweep (`python -m harness sweep`): one problem of the grid (all its implementations, or
    one) timed by one `pytest suites/` run on one device. `environment` is what that run recorded as its
    machine_info[RESULTS_KEY] (absent when the shard never finished); `info` holds the rest as written (host,
    GPU ids, seconds, the run's settings and ceilings ...), for the report and for people."""

    key: str
    status: str
    problem: Problem
    impls: list[str]
    environment: dict | None = None
    reason: str | None = None  # a failed shard: why
    info: dict = field(default_factory=dict)

    @property
    def device_name(self) -> str | None:
        """The device its rows are reported under: its environment's device name, or the label the sweep gave it
        (--on-each node: the device and its host, since identical devices on two nodes are two devices there)."""
        env = self.environment or {}
        return self.info.get("device_label") or env.get("device_name") or env.get("device")

    def to_json(self) -> dict:
        out = {"key": self.key, "status": self.status, "problem": self.problem.as_dict(),
               "impls": list(self.impls), "environment": self.environment, "reason": self.reason}
        return {**self.info, **out}

    @classmethod
    def from_json(cls, entry: dict, prefix: str = "") -> Shard:
        check(entry, "object", prefix.rstrip(".") or "shard")
        key = read_field(entry, "key", "string", prefix)
        status = read_field(entry, "status", "string", prefix)
        if status not in SHARD_STATUSES:
            raise RecordError(f"{prefix + 'status'!r} must be one of {', '.join(SHARD_STATUSES)}, not {status!r}")
        problem = problem_from_json(read_field(entry, "problem", "object", prefix), prefix + "problem.")
        impls = read_field(entry, "impls", "list", prefix)
        for i, name in enumerate(impls):
            check(name, "string", f"{prefix}impls[{i}]")
        environment = read_field(entry, "environment", "object", prefix, optional=True)
        if environment is not None:
            for k in ("device_name", "device"):
                read_field(environment, k, "string", prefix + "environment.", optional=True)
        reason = read_field(entry, "reason", "string", prefix, optional=True)
        for index, ceiling in enumerate(read_field(entry, "ceilings", "list", prefix, optional=True) or []):
            name = f"{prefix}ceilings[{index}]"
            check(ceiling, "object", name)
            read_field(ceiling, "gflops", "number", name + ".")
            read_field(ceiling, "how", "string", name + ".")
        for name in ("host", "device_label"):
            read_field(entry, name, "string", prefix, optional=True)
        info = {k: v for k, v in entry.items() if k not in ("key", "status", "problem", "impls", "environment",
                                                              "reason")}
        return cls(key, status, problem, impls, environment, reason, info)
