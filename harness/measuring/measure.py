"""One timed measurement: checks before, pytest-benchmark's timing, checks after.

The suites call `measure_phase` with pytest-benchmark's fixture; everything between a grid
point and its row in the results file happens here, in this order:
support -> agreement, saturation, zero state, inputs, state (BenchSession.validated) -> probe and
round sizing -> timed rounds, each call on inputs of its own, calls drawn at random checked right after
they return (harness.measuring.call_checks), judged for interference and redone when disturbed
(harness.measuring.rounds; by default the implementations of a point take their rounds in turn,
--lstm-interleave off times them one after another) -> the last timed call checked against the
reference for its inputs, inputs and state checked again. A failed check anywhere discards the time.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import traceback

import pytest
import torch

from harness.contract.agreement import AgreementError, new_agreement
from harness.contract.problem import PHASES, Problem
from harness.contract.registry import Registration
from harness.measuring.call_checks import CallSets
from harness.measuring.memory import PEAK_INCLUDES, retained
from harness.measuring.process_state import ProcessState
from harness.measuring.rounds import STOP_EVERYTHING, Contestant, Dropped, run_rounds
from harness.measuring.session import BenchSession, Prepared
from harness.measuring.timing import TimedCalls, choose_rounds, precision, probe, synchronize
from harness.record.schema import Measurement, NotTimed

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
        ))


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
    session.ceiling(problem)  # measured before any implementation is timed
    benchmark.group = f"{problem.id} {phase}"
    if benchmark.disabled:  # --benchmark-disable: one call, checked like a timed one
        timed = _prepare(session, reg, problem, phase, settings.warmup, rounds=1, flags=flags)
        timed.calls.sets.next_cycle()
        args, kwargs = timed.calls.setup()
        timed.calls.target(*args, **kwargs)
    else:
        try:
            timed = _timed(session, reg, problem, phase, flags, RoundClock.of(benchmark))
        except BaseException as exc:
            # Its rounds did not finish (a timed call failed its check, a crash, pytest.skip inside the
            # implementation, a change of state): the point's earlier phases go too.
            discard_point(benchmark, config, session, reg, problem, phase,
                          exc.agreement if isinstance(exc, AgreementError) else None)
            raise
    _publish(benchmark, config, session, reg, problem, phase, timed, before)


@dataclasses.dataclass(frozen=True)
class RoundClock:
    """How pytest-benchmark would time a round: its timer (--benchmark-timer) and its gc setting."""

    timer: object = time.perf_counter
    disable_gc: bool = False

    @classmethod
    def of(cls, benchmark) -> RoundClock:
        return cls(getattr(benchmark, "_timer", time.perf_counter), bool(getattr(benchmark, "_disable_gc", False)))


@dataclasses.dataclass
class Timed:
    """One implementation's timed calls on a point and phase, with its rounds once they ran."""

    prepared: Prepared
    calls: TimedCalls
    measurement: Measurement
    contestant: Contestant


def _prepare(session: BenchSession, reg: Registration, problem: Problem, phase: str, warmup: int,
             rounds: int | None = None, flags: dict | None = None, keep_others: bool = False,
             sets: CallSets | None = None) -> Timed:
    """Checks before timing, the timing buffers, the probe and the round count, and which calls are
    checked: everything before the first timed round. `sets`: the inputs of the calls, shared by the
    implementations timed together."""
    settings = session.settings
    ceiling = session.ceiling(problem)
    prepared = session.validated(reg, problem, keep_others=keep_others)
    sets = sets or session.call_sets(problem, phase)
    # The timing buffers are the harness's: held above the implementation's baseline, not in its peak.
    calls, buffers = retained(problem.device,
                              lambda: TimedCalls(prepared.impl, sets, phase, problem.device, reg.name))
    baseline = None if prepared.memory_baseline is None else prepared.memory_baseline + buffers
    seconds, peak = probe(calls, baseline)
    rounds = rounds or settings.rounds or choose_rounds(seconds, settings.max_time, settings.min_rounds)
    calls.plan(warmup, rounds)
    agreement = prepared.agreement
    measurement = Measurement(
        impl=reg.name, backend=reg.cls.backend(problem), origin=reg.origin, phase=phase, problem=problem,
        flops=problem.flops(phase), agreement_max_error=agreement.max_error,
        agreement_tolerance=agreement.tolerance, agreement_errors=agreement.errors,
        saturation_max_error=prepared.saturation.max_error, saturation_check=prepared.saturation.check,
        saturation_seconds=prepared.saturation.seconds, seed=settings.seed, warmup_rounds=warmup,
        ceiling_gflops=ceiling.gflops, saved_bytes=session.saved.get((reg.name, problem)),
        peak_bytes=peak, peak_includes=PEAK_INCLUDES if peak is not None else None,
        threads=torch.get_num_threads(), process_state=ProcessState.capture().as_dict(), precision=flags or {},
        setup_seconds=prepared.setup_seconds, zero_state_max_error=prepared.zero_state.max_error,
        agreement_seconds=prepared.agreement.seconds,
        precision_ratio=prepared.precision_ratio,
    )
    return Timed(prepared, calls, measurement,
                 Contestant(reg.name, calls.setup, calls.target, rounds, after_round=calls.after_call))


def _timed(session: BenchSession, reg: Registration, problem: Problem, phase: str, flags: dict,
           clock: RoundClock) -> Timed:
    """`reg`'s rounds at this point and phase: on its own, or, interleaved, taken from the group's run (the
    first of the group's tests runs every implementation of the point; the others collect theirs)."""
    settings = session.settings
    if not settings.interleave:
        group = _time_group(session, [reg], problem, phase, flags, clock)
    else:
        key = (problem, phase)
        if session.group is None or session.group[0] != key:
            session.group = None  # the previous group's buffers go before the next one's exist
            session.group = (key, _time_group(session, list(settings.impls), problem, phase, flags, clock))
        group = session.group[1]
    outcome = group.pop(reg.name, None)
    if outcome is None:  # not in the group's run: e.g. this test ran on its own (-k), after the group
        outcome = _time_group(session, [reg], problem, phase, flags, clock)[reg.name]
    if isinstance(outcome, BaseException):
        raise outcome
    if outcome.contestant.error is not None:
        if isinstance(outcome.contestant.error, AgreementError):  # a timed call failed its check
            session.reject(reg, problem, outcome.contestant.error.agreement)
        raise outcome.contestant.error
    if outcome.contestant.dropped is not None:
        check = new_agreement(reg.name, problem, f"during timing ({phase}, interleaved)")
        check.faults.append(outcome.contestant.dropped)
        session.reject(reg, problem, check)
        raise AgreementError(check)
    return outcome


def _time_group(session: BenchSession, regs: list[Registration], problem: Problem, phase: str,
                flags: dict, clock: RoundClock) -> dict[str, Timed | BaseException]:
    """Prepare each of `regs` that can be timed here, then run their rounds together (interleaved when there
    are several). An implementation that fails before its rounds has its exception in the result instead."""
    settings = session.settings
    out: dict[str, Timed | BaseException] = {}
    sets = session.call_sets(problem, phase)  # one set per cycle, shared: one reference serves every contestant
    guard = ProcessState.capture()
    for reg in regs:
        support = reg.cls.supports(problem)
        if not (support.ok and support.timed):
            continue
        try:
            out[reg.name] = _prepare(session, reg, problem, phase, settings.warmup, flags=flags,
                                     keep_others=len(regs) > 1, sets=sets)
            if len(regs) > 1:
                # Its probe call ran outside every check of state: a change would be blamed on the others.
                _unchanged(guard)
        except Dropped as exc:
            check = new_agreement(reg.name, problem, f"its probe call ({phase}, interleaved)")
            check.faults.append(str(exc))
            session.reject(reg, problem, check)
            out[reg.name] = AgreementError(check)
        except STOP_EVERYTHING:
            raise
        except BaseException as exc:  # noqa: BLE001 - raised again by the implementation's own test (pytest.skip too)
            traceback.clear_frames(exc.__traceback__)
            out[reg.name] = exc
    timed = [t for t in out.values() if isinstance(t, Timed)]
    if len(regs) > 1:
        # Interleaved, an implementation that changes process-wide state would change the others' rounds, and
        # the group runs inside one implementation's test, whose state is restored after it: checked after
        # each of its rounds, it leaves the run, its block redone for the others.
        for t in timed:
            t.contestant.after_round = functools.partial(_unchanged_then_checked, guard, t.calls)
    synchronize(problem.device)  # nothing queued (backend detection, the reference) drains into round 1
    for t in timed:
        t.calls.reset_costs()
    run_rounds([t.contestant for t in timed], settings.warmup, session.interference, settings.round_policy,
               timer=clock.timer, disable_gc=clock.disable_gc, next_cycle=sets.next_cycle)
    return out


def _unchanged(before: ProcessState) -> None:
    changed = ProcessState.capture().changes_since(before)
    if changed:
        before.restore()
        raise Dropped("changed process-wide state during timing: " + ", ".join(changed))


def _unchanged_then_checked(before: ProcessState, calls: TimedCalls) -> None:
    """After each interleaved round: the state first (a change leaves the run), then the call's own check."""
    _unchanged(before)
    calls.after_call()


def _publish(benchmark, config, session: BenchSession, reg: Registration, problem: Problem, phase: str,
             timed: Timed, before: ProcessState) -> None:
    """The kept rounds into pytest-benchmark's stats, then the check after timing; a failed check discards
    them (and the point's earlier phases)."""
    calls, contestant, measurement = timed.calls, timed.contestant, timed.measurement
    settings = session.settings
    benchmark.extra_info.update(measurement.to_json())
    try:
        costs = None
        if not benchmark.disabled:
            record_rounds(benchmark, contestant.kept)
            # The implementation's share is read with perf_counter: with another timer the difference means nothing.
            if RoundClock.of(benchmark).timer is time.perf_counter:
                costs = calls.harness_costs(contestant.kept, contestant.kept_calls)
        started, during = time.perf_counter(), calls.check_seconds
        check = session.check_after_timing(reg, problem, timed.prepared, calls, before)
    except BaseException:
        # Left by anything at all (Ctrl-C, a timeout, pytest.skip inside the implementation): none of the
        # rounds is checked.
        discard_point(benchmark, config, session, reg, problem, phase, None)
        raise
    if not check.passed:
        discard_point(benchmark, config, session, reg, problem, phase, check)
        raise AgreementError(check)
    interference = contestant.summary(settings.round_policy) if not benchmark.disabled else {}
    measurement = dataclasses.replace(measurement, verified=check.check,
                                      verified_max_error=max(check.max_error, calls.worst_error),
                                      checked_calls=calls.checked_calls, timed_calls=calls.timed_calls,
                                      check_seconds=during + time.perf_counter() - started,
                                      harness_seconds=costs[0] if costs else None,
                                      rotation_seconds=costs[1] if costs else None,
                                      interleaved=settings.interleave and not benchmark.disabled,
                                      **interference)
    benchmark.extra_info.update(measurement.to_json())
    if phase == PHASES[-1]:
        session.measured.pop((reg.name, problem), None)  # the point is complete: nothing left to take back
    else:
        session.measured.setdefault((reg.name, problem), []).append((phase, benchmark))


def record_rounds(benchmark, seconds: list[float]) -> None:
    """Hand the kept rounds to pytest-benchmark as its pedantic mode would have: one stats entry of one
    iteration per round, so its statistics, table, JSON and comparisons are its own."""
    benchmark._mode = "benchmark.pedantic(...)"  # the fixture can be used once; this is that once
    stats = benchmark._make_stats(1)
    for value in seconds:
        stats.update(value)
