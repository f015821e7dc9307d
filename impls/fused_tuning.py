"""How `fused` runs on this machine, chosen by measuring it here (as cuDNN picks its algorithms).

The fastest per-step product differs by CPU, not only by size: MKL's packed GEMM was best on an
Intel Xeon and far from it on an AMD EPYC. So at construction `fused` times every way it can run a
problem's shape, forward and backward, on a short version of the problem (at most TUNING_STEPS
steps: everything in `fused` is per step or linear in the steps), and takes the fastest:

- the per-step product: the C++ loop's own register-blocked kernel (each step split between the threads
  by columns, or the batch split between them for all steps: no barrier per step, each thread reading
  the whole weight), MKL's packed GEMM, oneDNN's prepacked one, or ATen's addmm;
- the threads of the whole call: one, or all the process has. More threads must win by MARGIN to
  be chosen: a step's fork/join waits on every thread, and a thread the OS has given to another
  process's work stalls each step (on 2 cores beside one busy process the two-thread loop lost 78 %
  of its rate);
- the big GEMMs (input projection of all steps, dx, dW): on oneDNN (prepacked weights; dW by its
  matmul on a transposed view) or ATen's.

Split by columns, each step waits on every thread twice and moves its values between the cores' caches,
so it slows when the cores are far apart or one is busy, and tuning measures in whichever state the
machine is: on the 2-vCPU VM, whose host moves the two vCPUs now near each other and now apart (a cache
line's round trip 110 vs 400 ns), the loop at batch 20 x hidden 512 took 22.4 / 26.9 ms a layer forward
split by columns and 21.4 / 23.9 split by batch; at batch 4 the column split won (4.6 vs 5.9 ms). On 10
tuning steps of the whole call the two differ by ~1 % (the big GEMMs dominate it) and the choice flipped
between runs; so where the chosen plan is one of the two (on more than one thread), both are measured
again, the loop alone (one layer's forward and backward steps, at most SPLIT_STEPS of them, SPLIT_ROUNDS
rounds in turns), and the faster kept, provided it passed the rule for more threads on the whole call.

Candidates run in turns, each round every candidate once, so a change of load hits all alike; a
candidate's time is its fastest round (a round repeats a tiny call until it lasts MIN_MEASURE_SECONDS).
The choice is cached per machine (CPU model, vector capability, torch, threads, the loop's source),
shape and candidate set in a JSON file (LSTM_HARNESS_TUNING_CACHE, default
~/.cache/lstm-harness/fused-tuning.json), so later runs skip the measuring; the measuring is part of
construction, so its cost is in the report's Setup column. LSTM_HARNESS_NO_TUNING=1 runs
the fixed rule instead (impls.fused.FusedLSTM.default_plan).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

VERSION = 3  # bump when what is measured changes: older entries are then measured again
TUNING_STEPS = 10
ROUNDS = 5
MARGIN = 1.2
SPLIT_STEPS = 20
SPLIT_ROUNDS = 9
MIN_MEASURE_SECONDS = 2e-3  # a measurement repeats a candidate's call until it lasts about this long
CACHE_VARIABLE = "LSTM_HARNESS_TUNING_CACHE"
DISABLE_VARIABLE = "LSTM_HARNESS_NO_TUNING"
# The per-step products of the C++ loop (its GemmMode, impls/native/lstm_steps.cpp).
GEMM_ATEN, GEMM_PACKED, GEMM_LOOP, GEMM_MKL, GEMM_LOOP_BATCH = 0, 1, 2, 3, 4
STEP_NAMES = {GEMM_ATEN: "ATen addmm", GEMM_PACKED: "oneDNN-prepacked GEMM", GEMM_LOOP: "own blocked kernel",
              GEMM_MKL: "MKL packed GEMM", GEMM_LOOP_BATCH: "own blocked kernel, the batch split between threads"}
SPLITS = {GEMM_LOOP: GEMM_LOOP_BATCH, GEMM_LOOP_BATCH: GEMM_LOOP}  # the own kernel's two splits, each to the other


@dataclass(frozen=True)
class Plan:
    """How one `fused` instance runs."""

    step: int  # the per-step product (GEMM_* below)
    threads: int  # threads of the whole call; 0: as many as the process has
    big_packed: bool  # the big GEMMs on oneDNN: input projection and dx prepacked, dW by its matmul where it works

    def label(self) -> str:
        threads = "the process's threads" if self.threads == 0 else f"{self.threads} thread(s)"
        big = "oneDNN" if self.big_packed else "ATen"
        return f"per-step products: {STEP_NAMES[self.step]}, {threads}; big GEMMs: {big}"


@dataclass(frozen=True)
class Tuned:
    plan: Plan
    seconds: dict[str, float]  # each candidate's fastest round (s), by Plan.label()
    cached: bool  # True: read from the cache, not measured in this process


_memory: dict[str, Tuned] = {}


def tuning_enabled() -> bool:
    return os.environ.get(DISABLE_VARIABLE, "") in ("", "0")


def cache_path() -> Path:
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "lstm-harness" / "fused-tuning.json")


def machine_key() -> str:
    """What makes a choice this machine's: the CPU, its vector capability, torch, the threads, the loop."""
    from harness.measuring.environment import cpu_model
    from impls.native import SOURCE

    source = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return (f"v{VERSION}|{cpu_model()}|{torch.backends.cpu.get_cpu_capability()}|torch {torch.__version__}|"
            f"{torch.get_num_threads()} threads|loop {source}")


def shape_key(problem) -> str:
    return (f"B{problem.batch}-T{min(problem.length, TUNING_STEPS)}-I{problem.input_size}-H{problem.hidden}-"
            f"L{problem.layers}-{problem.dtype}-{problem.device}")


def key_for(problem, candidates: list[Plan]) -> str:
    """The cache's key: the machine, the shape and the candidates (a subclass may offer fewer)."""
    offered = hashlib.sha256(repr(sorted(candidates, key=repr)).encode()).hexdigest()[:8]
    return f"{machine_key()}|{shape_key(problem)}|candidates {offered}"


def lookup(problem, candidates: list[Plan]) -> Tuned | None:
    """The choice for `problem` among `candidates` if this process or the cache has one (no measuring)."""
    key = key_for(problem, candidates)
    if key in _memory:
        return _memory[key]
    entry = _read_cache().get(key)
    if entry is None:
        return None
    try:
        tuned = Tuned(Plan(**entry["plan"]), dict(entry["seconds"]), cached=True)
    except (TypeError, KeyError, ValueError):
        return None  # an entry of another shape of file: measured again
    _memory[key] = tuned
    return tuned


def tune(problem, candidates: list[Plan], run_for: Callable[[Plan], Callable[[], None]],
         timer: Callable[[], float] = time.perf_counter, rounds: int = ROUNDS,
         loop_for: Callable[[Plan], Callable[[], None]] | None = None) -> Tuned:
    """The cached choice, or measure every candidate (run_for(plan) gives a call that runs one
    forward and backward) and keep the fastest by the rule in the module's docstring; loop_for(plan)
    gives a call of the time loop alone, to choose between the own kernel's two splits."""
    known = lookup(problem, candidates)
    if known is not None and known.plan in candidates:
        return known
    best = _fastest_rounds(candidates, run_for, timer, rounds)
    plan = choose(best)
    seconds = {p.label(): s for p, s in best.items()}
    other = Plan(SPLITS[plan.step], plan.threads, plan.big_packed) if plan.step in SPLITS else None
    if loop_for is not None and other in candidates and _beats_one_thread(other, best):
        loops = _fastest_rounds([plan, other], loop_for, timer, SPLIT_ROUNDS)
        seconds.update({f"{p.label()} (loop alone)": s for p, s in loops.items()})
        plan = min(loops, key=loops.get)
    tuned = Tuned(plan, seconds, cached=False)
    key = key_for(problem, candidates)
    _memory[key] = tuned
    _write_cache(key, tuned)
    return tuned


def _fastest_rounds(plans: list[Plan], run_for: Callable[[Plan], Callable[[], None]], timer: Callable[[], float],
                    rounds: int) -> dict[Plan, float]:
    """Each plan's fastest round (seconds a call), the plans in turns."""
    runs = {plan: run_for(plan) for plan in plans}
    repeats = {}
    for plan, run in runs.items():  # warm-up: first-touch allocations, packing, caches; and the repeats
        start = timer()
        run()
        repeats[plan] = max(1, min(1000, round(MIN_MEASURE_SECONDS / max(timer() - start, 1e-9))))
    best = {plan: float("inf") for plan in plans}
    for _ in range(rounds):
        for plan, run in runs.items():
            start = timer()
            for _ in range(repeats[plan]):
                run()
            best[plan] = min(best[plan], (timer() - start) / repeats[plan])
    return best


def choose(seconds: dict[Plan, float]) -> Plan:
    fastest = min(seconds, key=seconds.get)
    if not _beats_one_thread(fastest, seconds):
        return min((p for p in seconds if p.threads == 1), key=seconds.get)
    return fastest


def _beats_one_thread(plan: Plan, seconds: dict[Plan, float]) -> bool:
    """A plan on one thread, or one on more that beats every one-thread plan by MARGIN (or has none to beat)."""
    single = [seconds[p] for p in seconds if p.threads == 1]
    return plan.threads == 1 or not single or seconds[plan] * MARGIN <= min(single)


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}  # none yet, unreadable or corrupt: a cache, measured again and rewritten
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, tuned: Tuned) -> None:
    path = cache_path()
    data = _read_cache()
    data[key] = {"plan": asdict(tuned.plan), "seconds": tuned.seconds,
                 "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        partial.replace(path)  # whole or not at all, also with two processes writing
    except OSError:
        pass  # a read-only home: the choice is kept in this process only
