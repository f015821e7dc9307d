"""One benchmark run's settings and state: what to run, and the agreement verdicts so far.

The pytest plugin builds a BenchSession from the command line; the suites ask it for
validated implementations. It keeps only the current (implementation, problem) prepared, so a
large grid does not hold every implementation's buffers at once.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from dataclasses import dataclass, field

import torch

from harness.contract.agreement import (
    SATURATION_TOLERANCES,
    Agreement,
    AgreementError,
    new_agreement,
    precision_ratio,
    rounding_floors,
    run_and_compare,
)
from harness.contract.fast_reference import fast_reference_for
from harness.contract.grid import Grid, parse_run_options, resolve_device
from harness.contract.impl import Impl
from harness.contract.inputs import (
    AGREEMENT_SET,
    SATURATING,
    ZERO_STATE_SET,
    Inputs,
    make_inputs,
    max_preactivation,
    saturating_inputs,
    saturating_problem,
    zero_state,
)
from harness.contract.problem import PHASES, Problem
from harness.contract.reference import reference_for
from harness.contract.registry import Registration, Registry, RegistryError, discover
from harness.measuring.call_checks import CallSets, fast_reference_agrees
from harness.measuring.interference import DEFAULT_THRESHOLD, Interference
from harness.measuring.isolation import private_copies, written_call_inputs, written_inputs
from harness.measuring.memory import allocated_bytes, retained, saved_bytes
from harness.measuring.process_state import ProcessState
from harness.measuring.roofline import Ceiling, measure_ceiling
from harness.measuring.rounds import DEFAULT_REDO_BUDGET, RoundPolicy
from harness.measuring.timing import TimedCalls, synchronize
from harness.record.schema import NotTimed


@dataclass
class Settings:
    device: str
    grid: Grid
    problems: list[Problem]
    impls: list[Registration]
    seed: int = 0
    rounds: int | None = None  # None: as many as fit in max_time, at least min_rounds
    min_rounds: int = 5
    warmup: int = 1
    max_time: float = 1.0
    # The implementations of a point take their rounds in turn: ratios then come from the same stretch of time
    # (measured against one after another under a bursty load: reports/interference-notes.md).
    interleave: bool = True
    threshold: float = DEFAULT_THRESHOLD  # cores used by others that make a block of rounds disturbed
    redo_budget: float = DEFAULT_REDO_BUDGET  # disturbed rounds redone, at most, per planned round
    explicit: dict = field(default_factory=dict)  # axis values given on the command line
    allocator: str = ""  # what harness.measuring.allocator did, recorded with the results

    @property
    def round_policy(self) -> RoundPolicy:
        return RoundPolicy(self.threshold, self.redo_budget)

    @classmethod
    def from_options(cls, get, registry: Registry | None = None) -> Settings:
        """Validate every option (get(name) returns its raw value) before anything runs."""
        plugins = get("lstm_plugin") or []
        if registry is None:
            before = ProcessState.capture()
            registry = discover(plugins)
            changed = ProcessState.capture().changes_since(before)
            if changed:
                # Left in place it would slow or alter every implementation of the run alike.
                before.restore()
                raise RegistryError("importing the implementations changed process-wide state ("
                                    + ", ".join(changed) + "); a plugin or implementation module must not do "
                                    "this at import (plugins: " + (", ".join(plugins) or "none") + ")")
        device = resolve_device("--lstm-device", get("lstm_device") or "auto")
        run = parse_run_options(get, device, registry.names())
        return cls(device=device, grid=run.grid, problems=run.problems, impls=registry.select(run.impls),
                   seed=run.seed if run.seed is not None else 0, explicit=run.explicit, **run.timing)


def state_faults(before: ProcessState) -> list[str]:
    """What changed since `before`, undone; and what could not be undone."""
    changed = ProcessState.capture().changes_since(before)
    if not changed:
        return []
    stuck = before.restore()
    return ["changed process-wide state: " + ", ".join(changed)
            + (f" (could not be undone: {', '.join(stuck)}; later implementations run with it)" if stuck else "")]


@dataclass
class Prepared:
    """An implementation that passed every check on a point before timing, with its own inputs."""

    impl: Impl
    inputs: dict[int | str, Inputs]  # its private copies of the point's input sets
    agreement: Agreement  # input set 0
    saturation: Agreement  # the saturating set
    zero_state: Agreement  # set 0 with h0 = c0 = 0
    precision_ratio: float | None  # set 0's largest error / the dtype's rounding floor (agreement.precision_ratio)
    # Device bytes allocated before the implementation was built, plus what the harness allocated
    # since and still holds (references, timing buffers): its peak memory is measured above this,
    # so what it allocated at construction or capture counts. None on the CPU.
    memory_baseline: int | None = None
    setup_seconds: float | None = None  # building `impl`, device completion included

    def harness_holds(self, nbytes: int | None) -> None:
        """The harness allocated `nbytes` more since the baseline and keeps them: not the implementation's."""
        if self.memory_baseline is not None and nbytes is not None:
            self.memory_baseline += nbytes


class BenchSession:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The verdict per (implementation, problem): set 0's agreement when everything passed,
        # else the first check that failed.
        self.agreements: dict[tuple[str, Problem], Agreement] = {}
        self.checks: list[Agreement] = []  # every check before timing, passed or not (harness.measuring.calibration)
        self.saved: dict[tuple[str, Problem], int | None] = {}  # bytes kept from forward for backward
        self.ceilings: dict[tuple[str, str], Ceiling] = {}
        self.outcomes: list[NotTimed] = []  # points that were skipped or failed, for the results file
        # Finished measurements per (implementation, problem): a later phase that fails its check
        # takes the earlier phases' times of the point with it.
        self.measured: dict[tuple[str, Problem], list[tuple[str, object]]] = {}
        self.calls_run = 0  # speed tests that reached their call (not deselected, skipped by option, ...)
        self._sets: tuple[Problem, dict[int | str, Inputs]] | None = None
        # Prepared implementations: one at a time, or those of the current point when interleaved.
        self._prepared: dict[tuple[str, Problem], Prepared] = {}
        self.group: tuple | None = None  # interleaved: ((problem, phase), rounds of each implementation)
        self._fast_checked: Problem | None = None  # the point whose fast reference was checked against the plain
        self.interference = Interference.for_device(settings.device)

    def timed_cases(self) -> dict[str, tuple[Registration, Problem, str]]:
        """Timed measurements by test id, problem-major so each (implementation, problem) is
        prepared once for its three phases (interleaved: all the point's implementations at once)."""
        if self.settings.interleave:  # phase-major: the implementations of a point and phase come together
            return {f"{reg.name}-{problem.id}-{phase}": (reg, problem, phase)
                    for problem in self.settings.problems for phase in PHASES for reg in self.settings.impls}
        return {f"{reg.name}-{problem.id}-{phase}": (reg, problem, phase)
                for problem in self.settings.problems for reg in self.settings.impls for phase in PHASES}

    def agreement_points(self) -> dict[str, tuple[Registration, Problem]]:
        """Agreement checks by test id."""
        return {f"{reg.name}-{problem.id}": (reg, problem)
                for problem in self.settings.problems for reg in self.settings.impls}

    def input_sets(self, problem: Problem) -> dict[int | str, Inputs]:
        """The point's pristine input sets checked before timing: set 0, set 0 with a zero state (its
        weights), the saturating set (weights of its own)."""
        if self._sets is None or self._sets[0] != problem:
            self._sets = None  # let the previous problem's tensors go before the new ones exist
            reference_for.cache_clear()  # and its references (on a GPU, gigabytes at the Caffe LSTM's shapes)
            fast_reference_for.cache_clear()
            seed = self.settings.seed
            sets: dict[int | str, Inputs] = {AGREEMENT_SET: make_inputs(problem, seed)}
            sets[ZERO_STATE_SET] = zero_state(sets[AGREEMENT_SET])
            sets[SATURATING] = saturating_inputs(saturating_problem(problem), seed)
            self._sets = (problem, sets)
        return self._sets[1]

    def call_sets(self, problem: Problem, phase: str) -> CallSets:
        """The inputs of the timed calls of `problem` and `phase`, on set 0's weights."""
        return CallSets(problem, self.input_sets(problem)[AGREEMENT_SET].weights, self.settings.seed, phase)

    def validated(self, reg: Registration, problem: Problem, keep_others: bool = False) -> Prepared:
        """The prepared implementation, once it has passed every check on `problem`: agreement on
        input set 0 (outputs checked before backward runs), agreement in the saturating range,
        no write into its inputs, no change of process-wide state. keep_others: the others prepared on
        the same problem stay (interleaved timing); otherwise they are released first.

        Raises AgreementError (naming what was wrong) when it has not.
        """
        key = (reg.name, problem)
        verdict = self.agreements.get(key)
        if verdict is not None and not verdict.passed:
            raise AgreementError(verdict)
        if key in self._prepared:
            return self._prepared[key]
        others = [k for k in self._prepared if keep_others and k[1] == problem]
        self.release(keep=others)
        before = allocated_bytes(problem.device)
        prepared, verdict = self._check_before_timing(reg, problem)
        self.agreements[key] = verdict
        if prepared is None:
            raise AgreementError(verdict)
        if before is not None:
            # What it holds now is not in the peaks of those prepared before it.
            for other in others:
                self._prepared[other].harness_holds(allocated_bytes(problem.device) - before)
        self._prepared[key] = prepared
        return prepared

    def reject(self, reg: Registration, problem: Problem, check: Agreement) -> None:
        """A check after validation failed: the verdict for the point, and the implementation released."""
        self.agreements[(reg.name, problem)] = check
        self.release(drop=[(reg.name, problem)])

    def _check_before_timing(self, reg: Registration, problem: Problem) -> tuple[Prepared | None, Agreement]:
        seed = self.settings.seed
        pristine = self.input_sets(problem)
        # The harness's own device memory before the baseline: set 0's reference (cached for the
        # point) and the private copy of set 0. The zero-state and saturating sets are copied after it and
        # dropped before timing, so they are in no peak.
        checking = time.perf_counter()
        if self._fast_checked != problem:
            fast_reference_agrees(problem, seed)  # before it serves any check of this point
            self._fast_checked = problem
        reference = fast_reference_for(problem, seed, AGREEMENT_SET)
        own = private_copies({AGREEMENT_SET: pristine[AGREEMENT_SET]})
        checking = time.perf_counter() - checking
        before = ProcessState.capture()
        baseline = allocated_bytes(problem.device)  # before the instance: what it allocates is its own
        short = saturating_problem(problem)
        reach = max_preactivation(pristine[SATURATING])
        saturation = new_agreement(reg.name, short, f"saturating input set, batch {short.batch}, length "
                                   f"{short.length}, |pre-activation| up to {reach:.0f}", SATURATION_TOLERANCES)
        zero = new_agreement(reg.name, problem, "input set 0 with zero initial state (h0 = c0 = 0)")
        ratio = None
        try:
            started = time.perf_counter()
            impl = reg.cls(problem, own[AGREEMENT_SET].weights)
            synchronize(problem.device)
            setup_seconds = time.perf_counter() - started
            started = time.perf_counter()
            verdict = run_and_compare(impl, own[AGREEMENT_SET], reference,
                                      new_agreement(reg.name, problem, "input set 0"))
            self.checks.append(verdict)
            # State after each check, not only at the end: a change undone by a later call would pass.
            verdict.faults += state_faults(before)
            verdict.seconds = checking + time.perf_counter() - started
            if verdict.passed:
                floors = rounding_floors({**reference[0].named(), **reference[1].named()}, problem.torch_dtype)
                ratio = precision_ratio(verdict.errors, floors)
                # The same instance, set 0's weights: what nn.LSTM runs when given no state.
                own.update(private_copies({ZERO_STATE_SET: pristine[ZERO_STATE_SET]}))
                started = time.perf_counter()
                expected, held = retained(problem.device, lambda: fast_reference_for(problem, seed, ZERO_STATE_SET))
                baseline = None if baseline is None else baseline + held  # cached: the harness keeps it
                run_and_compare(impl, own[ZERO_STATE_SET], expected, zero)
                self.checks.append(zero)
                zero.faults += state_faults(before)
                zero.seconds = time.perf_counter() - started
                verdict.seconds += zero.seconds
                if not zero.passed:
                    verdict = zero
            if verdict.passed:
                # A second instance: the saturating set has weights of its own (large biases).
                own.update(private_copies({SATURATING: pristine[SATURATING]}))
                started = time.perf_counter()
                saturated, held = retained(problem.device, lambda: reference_for(short, seed, SATURATING))
                baseline = None if baseline is None else baseline + held  # cached: the harness keeps it
                run_and_compare(reg.cls(short, own[SATURATING].weights), own[SATURATING], saturated, saturation)
                self.checks.append(saturation)
                saturation.faults += state_faults(before)
                saturation.seconds = time.perf_counter() - started
                if not saturation.passed:
                    verdict = saturation
            if verdict.passed:
                # On a throwaway instance: an autograd forward keeps its graph until a backward,
                # which would sit in the next phase's peak memory.
                self.saved[(reg.name, problem)] = saved_bytes(reg.cls(problem, own[AGREEMENT_SET].weights),
                                                              own[AGREEMENT_SET])
        finally:
            faults = state_faults(before)
        verdict.faults += written_inputs(pristine, own) + faults
        if not verdict.passed:
            return None, verdict
        own.pop(SATURATING, None)  # checked: the timed calls never see them
        own.pop(ZERO_STATE_SET, None)
        return Prepared(impl, own, verdict, saturation, zero, ratio, baseline, setup_seconds), verdict

    def check_after_timing(self, reg: Registration, problem: Problem, prepared: Prepared, calls: TimedCalls,
                           before: ProcessState) -> Agreement:
        """The last timed call's result against the reference for its own inputs (unless it was checked
        right after it returned), and the same input and state checks as before timing. Runs outside every
        timed region; anything the check itself raises is a failed check."""
        which = calls.result_set
        latest = calls.check_latest(f"the last timed {calls.phase} call, on its own inputs (set {which})")
        checked = f"{calls.checked_calls} of {calls.timed_calls or 1} timed {calls.phase} call(s)"
        check = dataclasses.replace(latest, check=f"after timing: {checked} checked, each on its own inputs; "
                                    f"{latest.check}", faults=list(latest.faults))
        try:
            check.faults += written_call_inputs(calls.sets.inputs(calls.last_set), calls.passed, calls.last_set)
        except Exception as exc:  # noqa: BLE001 - a tensor that cannot be compared is a failed check
            check.faults.append(f"its inputs could not be compared: {type(exc).__name__}: {exc}")
        pristine = self.input_sets(problem)
        check.faults += written_inputs({k: pristine[k] for k in prepared.inputs}, prepared.inputs)
        check.faults += state_faults(before)
        if not check.passed:
            self.reject(reg, problem, check)
        return check

    def ceiling(self, problem: Problem) -> Ceiling:
        """The device's GEMM ceiling for the problem's dtype, measured once per run."""
        ceiling = measure_ceiling(problem.device, problem.dtype)
        self.ceilings[(problem.device, problem.dtype)] = ceiling
        return ceiling

    def release(self, keep: list | None = None, drop: list | None = None) -> None:
        """Drop the prepared implementations (after a crash or out-of-memory too), all but `keep`, or only
        `drop`; and give the memory their allocators keep cached back to the device."""
        if drop is not None:
            device = next(iter(self._prepared))[1].device if self._prepared else "cpu"
            before = allocated_bytes(device)
            for key in drop:
                self._prepared.pop(key, None)
            gc.collect()
            if before is not None:
                # The others' baselines counted what the dropped ones held (interleaved: all were built by then).
                for other in self._prepared.values():
                    other.harness_holds(allocated_bytes(device) - before)
        else:
            self._prepared = {k: v for k, v in self._prepared.items() if k in (keep or ())}
            if not keep:
                self.group = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        free_cupy_pools()


def free_cupy_pools() -> None:
    """Empty CuPy's default device and pinned-host pools, where CuPy is in use: an implementation that
    allocated through them leaves their blocks cached after it is gone. Only if someone imported CuPy:
    importing it here would start CUDA for nothing."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return
    for pool in ("get_default_memory_pool", "get_default_pinned_memory_pool"):
        try:
            getattr(cupy, pool)().free_all_blocks()
        except Exception:  # noqa: BLE001 - a CuPy without a device (or a partial one) has nothing to free
            pass
