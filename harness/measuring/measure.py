"""One timed measurement: checks before, pytest-benchmark's timing, checks after.

The suites call `measure_phase` with pytest-benchmark's fixture; everything between a grid
point and its row in the results file happens here, in this order:
support -> agreement, saturation, inputs, state (BenchSession.validated) -> probe and round
sizing -> timed rounds over rotating input sets -> the last timed call checked against the
reference, inputs and state checked again. A failed check anywhere discards the time.
"""

from __future__ import annotations

import dataclasses
import time
import traceback

import pytest
import torch

from harness.contract.agreement import AgreementError
from harness.contract.inputs import TIMED_SETS
from harness.contract.problem import PHASES, Problem
from harness.contract.reference import reference_for
from harness.contract.registry import Registration
from harness.measuring.memory import PEAK_INCLUDES, retained
from harness.measuring.process_state import ProcessState
from harness.measuring.session import BenchSession
from harness.measuring.timing import TimedCalls, choose_rounds, precision, probe, synchronize
from harness.reporting.record import Measurement, NotTimed

# Out of memory, whichever library ran out: torch's error is a RuntimeError; CuPy's
# (cupy.cuda.memory.OutOfMemoryError) and Python's own for the host are MemoryErrors.
OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


def skip_unless_supported(reg: Registration, problem: Problem, timed: bool = False) -> None:
    support = reg.cls.supports(problem)
    if not support.ok:
        pytest.skip(f"{reg.name} cannot run {problem.id} here: {support.reason}")
    if timed and not support.timed:
        pytest.skip(f"{reg.name} is not timed on {problem.id} here: {support.reason}")


def discard_timing(benchmark, config) -> None:
    """Take a finished measurement back out of pytest-benchmark: out of its JSON (has_error is
    its own way to leave a benchmark out) and out of its terminal table."""
    benchmark.has_error = True
    collected = getattr(getattr(config, "_benchmarksession", None), "benchmarks", [])
    if getattr(benchmark, "stats", None) in collected:
        collected.remove(benchmark.stats)


def discard_point(benchmark, config, session: BenchSession, reg: Registration, problem: Problem, phase: str,
                  check) -> None:
    """A failed check after timing discards every time of the point, the earlier phases' too: a
    forward that looked right may have done backward's work on a remembered input."""
    discard_timing(benchmark, config)
    why = f"failed its check ({check.check})" if check is not None else "did not finish"
    for earlier_phase, earlier in session.measured.pop((reg.name, problem), []):
        discard_timing(earlier, config)
        session.outcomes.append(NotTimed(
            impl=reg.name, phase=earlier_phase, problem=problem, outcome="failed",
            reason=f"time discarded: the {phase} phase of this point then {why}",
        ).to_json())


def out_of_memory(reg: Registration, problem: Problem, exc: BaseException) -> str:
    """The failure of a point whose implementation ran out of memory."""
    traceback.clear_frames(exc.__traceback__)  # the frames hold the point's tensors
    return f"{reg.name} ran out of memory on {problem.id}: {str(exc) or type(exc).__name__}"


def check_agreement_only(session: BenchSession, reg: Registration, problem: Problem):
    """The agreement suite: every check that precedes timing, nothing timed."""
    skip_unless_supported(reg, problem)
    release = False
    try:
        with precision(problem.dtype):
            return session.validated(reg, problem).agreement
    except AgreementError as exc:
        failure = str(exc)
    except OUT_OF_MEMORY as exc:
        failure, release = out_of_memory(reg, problem, exc), True
    if release:
        session.release()  # here, not in the except block: its traceback would keep the memory alive
    pytest.fail(failure, pytrace=False)


def measure_phase(benchmark, config, session: BenchSession, reg: Registration, problem: Problem, phase: str) -> None:
    """Time one phase of one implementation on one point, or fail (or skip) with the reason."""
    crashed, release = None, False
    try:
        _measure(benchmark, config, session, reg, problem, phase)
    except AgreementError as exc:
        failure = f"not timed: {exc}"
    except OUT_OF_MEMORY as exc:
        failure, release = out_of_memory(reg, problem, exc), True
    except Exception as exc:
        traceback.clear_frames(exc.__traceback__)
        crashed = exc
    else:
        return
    if crashed is not None or release:
        session.release()  # here, not in the except block: its traceback would keep the memory alive
    if crashed is not None:
        raise crashed
    # Outside the except block: a failure raised inside it would print the message twice.
    pytest.fail(failure, pytrace=False)


def _measure(benchmark, config, session: BenchSession, reg: Registration, problem: Problem, phase: str) -> None:
    with precision(problem.dtype) as flags:
        before = ProcessState.capture()
        try:
            _timed_and_checked(benchmark, config, session, reg, problem, phase, flags, before)
        finally:
            before.restore()  # after a crash too: the next implementation starts from the same state


def _timed_and_checked(benchmark, config, session: BenchSession, reg: Registration, problem: Problem, phase: str,
                       flags: dict, before: ProcessState) -> None:
    settings = session.settings
    skip_unless_supported(reg, problem, timed=True)
    ceiling = session.ceiling(problem)  # measured before any implementation is timed
    prepared = session.validated(reg, problem)
    timed_sets = {k: v for k, v in prepared.inputs.items() if k in TIMED_SETS}
    # The timing buffers are the harness's: held above the implementation's baseline, not in its peak.
    calls, buffers = retained(problem.device, lambda: TimedCalls(prepared.impl, timed_sets, phase, problem.device))
    baseline = None if prepared.memory_baseline is None else prepared.memory_baseline + buffers
    seconds, peak = probe(calls, baseline)
    rounds = settings.rounds or choose_rounds(seconds, settings.max_time, settings.min_rounds)
    calls.plan(1 if benchmark.disabled else settings.warmup + rounds)
    benchmark.group = f"{problem.id} {phase}"
    agreement = prepared.agreement
    measurement = Measurement(
        impl=reg.name, backend=reg.cls.backend(problem), origin=reg.origin, phase=phase, problem=problem,
        flops=problem.flops(phase), agreement_max_error=agreement.max_error,
        agreement_tolerance=agreement.tolerance, agreement_errors=agreement.errors,
        saturation_max_error=prepared.saturation.max_error, saturation_check=prepared.saturation.check,
        saturation_seconds=prepared.saturation.seconds, seed=settings.seed, warmup_rounds=settings.warmup,
        ceiling_gflops=ceiling.gflops, saved_bytes=session.saved.get((reg.name, problem)),
        peak_bytes=peak, peak_includes=PEAK_INCLUDES if peak is not None else None,
        threads=before.as_dict()["torch.get_num_threads()"], process_state=before.as_dict(), precision=flags,
        setup_seconds=prepared.setup_seconds,
    )
    benchmark.extra_info.update(measurement.to_json())
    # The reference the check needs, made before timing: nothing runs long between the last
    # timed call and its check.
    started = time.perf_counter()
    # Once per point: cached for the other phases, whose peaks must not count it.
    _, held = retained(problem.device, lambda: reference_for(problem, settings.seed, TIMED_SETS[0]))
    prepared.harness_holds(held)
    check_seconds = time.perf_counter() - started
    synchronize(problem.device)  # nothing queued (backend detection, the reference) drains into round 1
    try:
        calls.reset_costs()
        benchmark.pedantic(calls.target, setup=calls.setup, rounds=rounds, warmup_rounds=settings.warmup)
        # The implementation's share is read with perf_counter: with another timer the difference means nothing.
        own_clock = getattr(benchmark, "_timer", None) is time.perf_counter
        costs = calls.harness_costs(list(benchmark.stats.stats.data), settings.warmup) \
            if own_clock and not benchmark.disabled else None
        started = time.perf_counter()
        check = session.check_after_timing(reg, problem, prepared, calls, before)
    except BaseException:
        # Left by anything at all (a crash from round N, Ctrl-C, a timeout, pytest.skip inside the
        # implementation): pytest-benchmark may already hold the rounds so far. None of them is checked.
        discard_point(benchmark, config, session, reg, problem, phase, None)
        raise
    if not check.passed:
        discard_point(benchmark, config, session, reg, problem, phase, check)
        raise AgreementError(check)
    measurement = dataclasses.replace(measurement, verified=check.check, verified_max_error=check.max_error,
                                      check_seconds=check_seconds + time.perf_counter() - started,
                                      harness_seconds=costs[0] if costs else None,
                                      rotation_seconds=costs[1] if costs else None)
    benchmark.extra_info.update(measurement.to_json())
    if phase == PHASES[-1]:
        session.measured.pop((reg.name, problem), None)  # the point is complete: nothing left to take back
    else:
        session.measured.setdefault((reg.name, problem), []).append((phase, benchmark))
