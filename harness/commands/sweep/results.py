"""The results file of a sweep (`python -m harness sweep`): every shard's `pytest suites/` results merged into
one pytest-benchmark file that `harness report` and `harness compare` read like any other.

What the merge adds to a plain results file (schema 1.2 on, harness.record.schema):

- output[RESULTS_KEY]["shards"]: one `Shard` per shard, done or failed, with the environment its run
  recorded (host, device, GPU model, versions: its machine_info[RESULTS_KEY]), its settings and ceilings;
- output[RESULTS_KEY]["sweep"]: how the sweep was asked for (its options, the split, the planned shard keys);
- every benchmark row carries the key of its shard (row[SHARD_KEY]), every not-timed entry too (`shard`),
  so a reader takes each row's device from its own shard;
- a failed shard (its worker died on every attempt, it timed out, a plugin was missing there ...) is one
  not-timed entry per implementation and phase of its problem, with the reason.

The top-level machine_info is the first finished shard's, so a reader that knows nothing of shards still
reads the file (as if everything ran there). `write` replaces the file atomically (a temporary file in the
same folder, then os.replace): a reader, or an interrupted sweep, never sees half a file.

No torch, no pytest.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import tempfile
from pathlib import Path

from harness.contract.problem import PHASES, Problem
from harness.record.schema import (
    RESULTS_KEY,
    SHARD_KEY,
    Measurement,
    NotTimed,
    RecordError,
    RunSection,
    Shard,
    check,
)

# The run-level settings a sweep records once for all its shards (each shard's own run records them too).
SETTINGS = ("grid", "grid_about", "device", "seed", "warmup", "rounds", "min_rounds", "max_time")
NO_DEVICE = "no shard finished"  # the top-level device name of a sweep none of whose shards finished


class SweepFileError(Exception):
    """A file given to --resume that is not the results of a sweep, or cannot be read."""


def shard_output_error(output) -> str | None:
    """Why one shard's pytest-benchmark JSON cannot be merged (None: it can): it is checked as the report
    will read it, so a bad shard fails alone instead of making the whole file unreadable."""
    try:
        check(output, "object", "the shard's results")
        if not isinstance(output.get("benchmarks"), list):
            return "its results file has no 'benchmarks' list"
        machine = check(output.get("machine_info"), "object", "machine_info")
        check(machine.get(RESULTS_KEY), "object", f"machine_info.{RESULTS_KEY}")
        RunSection.from_json(output.get(RESULTS_KEY))
        for index, bench in enumerate(output["benchmarks"]):
            info = check(bench, "object", f"benchmark #{index}").get("extra_info") or {}
            if "impl" in info:
                Measurement.from_json(info)
    except RecordError as exc:
        return f"its results file cannot be read: {exc}"
    return None


class SweepResults:
    """The merged results of a sweep, shard by shard; `to_json` is the results file."""

    def __init__(self, settings: dict, sweep: dict) -> None:
        self.settings = {k: settings.get(k) for k in SETTINGS}
        self.sweep = dict(sweep)
        self.shards: dict[str, Shard] = {}
        self.benchmarks: dict[str, list[dict]] = {}
        self.not_timed: dict[str, list[NotTimed]] = {}

    # ---- adding shards -----------------------------------------------------------------------------

    def _forget(self, key: str) -> None:
        for store in (self.shards, self.benchmarks, self.not_timed):
            store.pop(key, None)

    def add_done(self, key: str, problem: Problem, impls: list[str], output: dict, info: dict) -> None:
        """A shard whose run finished (its points timed, or failed and listed): its rows and entries, tagged."""
        self._forget(key)  # a shard run again (--resume after a failure) replaces what it had
        section = RunSection.from_json(output.get(RESULTS_KEY))
        machine = dict(output["machine_info"])
        environment = machine.pop(RESULTS_KEY)
        if isinstance(machine.get("cpu"), dict):  # pytest-benchmark's list of CPU flags: long, and in no table
            machine["cpu"] = {k: v for k, v in machine["cpu"].items() if k != "flags"}
        self.benchmarks[key] = [{**b, SHARD_KEY: key} for b in output["benchmarks"]]
        self.not_timed[key] = [dataclasses.replace(n, shard=key) for n in section.not_timed]
        settings = {k: v for k, v in section.to_json().items() if k not in ("not_timed", "ceilings", "schema")}
        info = dict(info)
        host = info.pop("device_label_host", None)
        if host:  # --on-each node: the same device on two nodes is reported as two
            info["device_label"] = f"{environment.get('device_name') or environment.get('device')} on {host}"
        timed = sum("impl" in (b.get("extra_info") or {}) for b in output["benchmarks"])
        self.shards[key] = Shard(key, "done", problem, list(impls), environment, None, {
            **info, "timed": timed, "not_timed": len(section.not_timed), "settings": settings,
            "ceilings": section.ceilings, "machine_info": machine, "commit_info": output.get("commit_info") or {},
            "datetime": output.get("datetime"), "pytest_benchmark": output.get("version")})

    def add_failed(self, key: str, problem: Problem, impls: list[str], reason: str, info: dict) -> None:
        """A shard that did not finish: every implementation and phase of it is not timed, for `reason`."""
        self._forget(key)
        why = f"shard {key} failed: {reason}"
        self.not_timed[key] = [NotTimed(impl, phase, problem, "failed", why, shard=key)
                               for impl in impls for phase in PHASES]
        self.shards[key] = Shard(key, "failed", problem, list(impls), None, reason, dict(info))

    def done(self) -> set[str]:
        return {k for k, s in self.shards.items() if s.status == "done"}

    def failed(self) -> set[str]:
        return {k for k, s in self.shards.items() if s.status == "failed"}

    # ---- the file ----------------------------------------------------------------------------------

    def _order(self) -> list[str]:
        planned = {k: i for i, k in enumerate(self.sweep.get("planned") or [])}
        return sorted(self.shards, key=lambda k: planned.get(k, len(planned)))

    def to_json(self) -> dict:
        order = self._order()
        first = next((self.shards[k] for k in order if self.shards[k].status == "done"), None)
        if first is None:
            machine = {RESULTS_KEY: {"device": self.settings.get("device"), "device_name": NO_DEVICE}}
            head = {"commit_info": {}, "version": None}
        else:
            machine = {**(first.info.get("machine_info") or {}), RESULTS_KEY: first.environment}
            head = {"commit_info": first.info.get("commit_info") or {}, "version": first.info.get("pytest_benchmark")}
        head["datetime"] = self.sweep.get("started") or (first.info.get("datetime") if first else None)
        section = RunSection(**self.settings, not_timed=[n for k in order for n in self.not_timed.get(k, [])],
                             sweep=self.sweep, shards=[self.shards[k] for k in order])
        return {"machine_info": copy.deepcopy(machine), **head,
                "benchmarks": [b for k in order for b in self.benchmarks.get(k, [])],
                RESULTS_KEY: section.to_json()}

    def write(self, path: Path) -> None:
        write_atomically(Path(path), json.dumps(self.to_json(), indent=1))

    @classmethod
    def read(cls, path: Path) -> SweepResults:
        """The results of an earlier sweep (--resume): its shards, rows and entries as written."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SweepFileError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SweepFileError(f"{path}: cannot read it: {exc}") from None
        try:
            section = RunSection.from_json(check(data, "object", "the file").get(RESULTS_KEY))
        except RecordError as exc:
            raise SweepFileError(f"{path}: {exc}") from None
        if section.sweep is None:
            raise SweepFileError(f"{path}: not the results of a sweep (no {RESULTS_KEY}.sweep): only a file "
                                 "written by `python -m harness sweep` can be resumed")
        out = cls({k: getattr(section, k) for k in SETTINGS}, section.sweep)
        rows: dict[str, list[dict]] = {}
        for bench in data.get("benchmarks") or []:
            rows.setdefault(bench.get(SHARD_KEY), []).append(bench)
        for n in section.not_timed:
            out.not_timed.setdefault(n.shard, []).append(n)
        for shard in section.shards:
            out.shards[shard.key] = shard
            out.benchmarks[shard.key] = rows.get(shard.key, [])
        return out


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` at once: a temporary file in the same folder (same file system), flushed to
    disk, then renamed over it. An interruption at any moment leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
