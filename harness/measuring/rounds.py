"""The timed rounds of one measurement, or of several interleaved, each judged for interference.

A round is one `setup()` (untimed) and one timed `target(...)`, as in pytest-benchmark's pedantic
mode; its duration is read with pytest-benchmark's timer and handed to pytest-benchmark's stats
(harness.measuring.measure), so the results stay its JSON. What is added here:

- Rounds run in blocks that last long enough for the interference counters to resolve a fraction of
  a core (harness.measuring.interference); a block in which other processes used more than the
  threshold is disturbed: its rounds are discarded and run again, while the redo budget lasts. When
  the budget is spent, disturbed blocks are kept, and the measurement is flagged.
- Several contestants (the implementations of one point, interleaved) take their rounds in turn, a
  round each per cycle, each spread evenly over the whole stretch (a contestant with fewer planned
  rounds skips cycles), so a slow drift of the machine falls on each alike; a disturbed block is
  redone for every contestant in it.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.measuring.interference import DEFAULT_THRESHOLD, Interference, Reading

DEFAULT_REDO_BUDGET = 1.0  # rounds redone, at most, as a multiple of the rounds planned


@dataclass(frozen=True)
class RoundPolicy:
    threshold: float = DEFAULT_THRESHOLD  # cores used by others that disturb a block
    redo_budget: float = DEFAULT_REDO_BUDGET  # redone rounds at most this many times the planned rounds


class Dropped(Exception):
    """Raised by a contestant's `after_round` check: the contestant leaves the run (its reason is the
    message); the block it was in is redone for the others, who may have run under its doing."""


@dataclass
class Contestant:
    """One measurement's calls and what its rounds gave."""

    name: str
    setup: Callable[[], tuple[tuple, dict]]
    target: Callable
    planned: int
    after_round: Callable[[], None] | None = None  # raises Dropped when the contestant must leave
    kept: list[float] = field(default_factory=list)  # seconds of each kept round, in order
    kept_calls: list[int] = field(default_factory=list)  # each kept round's call number (0 = first call)
    kept_cores: list[float] = field(default_factory=list)  # per kept round: its block's cores used by others
    kept_disturbed: int = 0  # kept rounds of disturbed blocks (the redo budget was spent)
    disturbed: int = 0  # rounds of disturbed blocks, redone or kept
    redone: int = 0
    redo_seconds: float = 0.0  # its share of the wall time of the blocks that were redone
    calls: int = 0
    dropped: str | None = None
    error: BaseException | None = None  # what its call raised: it left the run; the caller re-raises it

    @property
    def flagged(self) -> bool:
        """Its kept rounds include disturbed ones: not enough quiet rounds were had."""
        return self.kept_disturbed > 0

    @property
    def interference_cores(self) -> float | None:
        return statistics.median(self.kept_cores) if self.kept_cores else None

    def summary(self, policy: RoundPolicy) -> dict:
        """The row's interference fields (see harness.record.schema.Measurement)."""
        return {"disturbed_rounds": self.disturbed, "redone_rounds": self.redone,
                "interference_cores": self.interference_cores, "interference_flagged": self.flagged,
                "redo_seconds": self.redo_seconds, "interference_threshold": policy.threshold}


@dataclass
class _Block:
    rounds: dict[int, list[tuple[float, int]]]  # contestant index -> (seconds, call number)
    cycles: int = 0


def _one_round(c: Contestant, timer, disable_gc: bool) -> float:
    args, kwargs = c.setup()
    enabled = gc.isenabled()
    if disable_gc:
        gc.disable()
    try:
        start = timer()
        c.target(*args, **kwargs)
        end = timer()
    finally:
        if enabled:
            gc.enable()
    c.calls += 1
    return end - start


def run_rounds(contestants: list[Contestant], warmup: int, interference: Interference | None,
               policy: RoundPolicy = RoundPolicy(), timer: Callable[[], float] = time.perf_counter,
               disable_gc: bool = False, clock: Callable[[], float] = time.perf_counter,
               next_cycle: Callable[[], None] | None = None) -> list[Reading]:
    """Run every contestant's warm-up and planned rounds; fills each contestant's fields. Returns the
    readings of every block (kept and redone), for tests and diagnostics. A contestant whose call (or
    after-round check) raises leaves the run with the exception kept on it (`error`, `dropped`), and the
    block it left in is redone for the others. `next_cycle` is called before every cycle (a round of each
    contestant that runs in it), warm-up ones included: the contestants of a cycle share its inputs."""
    next_cycle = next_cycle or (lambda: None)
    for _ in range(warmup):
        next_cycle()
        for c in contestants:
            _guarded(c, lambda c=c: _one_round(c, timer, disable_gc))
    planned_total = sum(c.planned for c in contestants)
    budget = math.floor(policy.redo_budget * planned_total)
    most = max((c.planned for c in contestants), default=0)
    min_block = interference.min_block if interference is not None and interference.available else 0.0
    readings, redone, kept_cycles = [], 0, 0
    while any(c.dropped is None and len(c.kept) < c.planned for c in contestants):
        token = interference.start() if interference is not None else None
        started = clock()
        block, left = _Block({}), set()
        while True:
            progress = (kept_cycles + block.cycles + 1) / most
            ran = False
            next_cycle()
            for i, c in enumerate(contestants):
                if c.dropped is not None:
                    continue
                have = len(c.kept) + len(block.rounds.get(i, []))
                if have < min(c.planned, math.ceil(progress * c.planned - 1e-9)):
                    seconds = _guarded(c, lambda c=c: _one_round(c, timer, disable_gc))
                    if c.dropped is not None:
                        block.rounds.pop(i, None)
                        left.add(i)
                        continue
                    block.rounds.setdefault(i, []).append((seconds, c.calls - 1))
                    ran = True
            block.cycles += 1
            done = all(c.dropped is not None or len(c.kept) + len(block.rounds.get(i, [])) >= c.planned
                       for i, c in enumerate(contestants))
            if done or clock() - started >= min_block or (not ran and block.cycles > most):
                break
        reading = interference.stop(token) if interference is not None else None
        if reading is not None:
            readings.append(reading)
        count = sum(len(r) for r in block.rounds.values())
        disturbed = reading is not None and reading.disturbed(policy.threshold)
        if count and (left or (disturbed and redone + count <= budget)):  # an empty block has nothing to redo
            redone += count if disturbed else 0
            wall = reading.wall if reading is not None else clock() - started
            timed = sum(s for rounds in block.rounds.values() for s, _ in rounds) or 1.0
            for i, rounds in block.rounds.items():
                c = contestants[i]
                c.disturbed += len(rounds) if disturbed else 0
                c.redone += len(rounds)
                # Its share of the block's wall time (by its rounds' time), so the rows of a group add up to it.
                c.redo_seconds += wall * sum(s for s, _ in rounds) / timed
            continue
        for i, rounds in block.rounds.items():
            c = contestants[i]
            c.kept += [s for s, _ in rounds]
            c.kept_calls += [n for _, n in rounds]
            if reading is not None:
                c.kept_cores += [reading.cores] * len(rounds)
            if disturbed:
                c.disturbed += len(rounds)
                c.kept_disturbed += len(rounds)
        kept_cycles += block.cycles
    return readings


def _guarded(c: Contestant, run: Callable[[], float]) -> float:
    """One round of `c`, and its after-round check: a Dropped, or any exception, takes it out of the run
    (an exception is kept on it, pytest.skip's included: it is the contestant's own outcome). KeyboardInterrupt
    and the like stop everything."""
    if c.dropped is not None:
        return 0.0
    try:
        seconds = run()
        if c.after_round is not None:
            c.after_round()
        return seconds
    except Dropped as exc:
        c.dropped = str(exc)
    except STOP_EVERYTHING:
        raise
    except BaseException as exc:  # noqa: BLE001 - re-raised by whoever owns the contestant (pytest.skip too)
        c.error, c.dropped = exc, f"raised {type(exc).__name__}: {exc}"
    return 0.0


STOP_EVERYTHING = (KeyboardInterrupt, SystemExit, GeneratorExit)
