"""The timed calls' own inputs, which of the calls are checked, and the references they are checked against.

Every call of a point's timed rounds runs on values of its own (harness.contract.inputs.fresh_inputs): set n
for the n-th cycle of the rounds (the probe's is cycle 0). Interleaved, the implementations of a point take
their rounds in turn, so those running in one cycle run the same set: one float64 reference serves them all,
while none of them sees a set twice. A cache keyed by the inputs' values then never hits, and one keyed by
their addresses returns a wrong answer.

Which calls are checked is drawn by the harness from the operating system's randomness (nothing an
implementation could replay): of the N timed calls planned, `calls_to_check(N)`, chosen without replacement,
so that a defect present on 10 % of the calls (a race, an uninitialised buffer, stale state every fifth
call) is among the checked ones with probability at least 0.999: every call up to N = 10, 48 of 100, 64 of
1000.
Calls added by redone blocks are checked at the same rate. A call is checked right after it returns,
outside the timed region, before the next call could overwrite a result that aliases the implementation's
workspace: nothing needs to be copied.
"""

from __future__ import annotations

import math
import random
import time

import torch

from harness.contract.agreement import (
    Agreement,
    ContractError,
    named_grads,
    named_outputs,
    new_agreement,
    relative_error,
)
from harness.contract.fast_reference import fast_reference
from harness.contract.inputs import Inputs, LayerWeights, fresh_inputs, input_set
from harness.contract.problem import Problem
from harness.contract.reference import compute_reference

DEFECT_SHARE = 0.1  # a defect on this share of the calls ...
MISS_PROBABILITY = 0.001  # ... escapes the checks with at most this probability
# The fast reference against the plain one before it serves any check of a point: both are float64, so they
# differ by float64 rounding only (measured: 1e-15 .. 1e-14).
FAST_REFERENCE_AGREEMENT = 1e-10
# ... on set 0 of the point with its batch and length capped: the same layers and widths, whose handling is
# what could differ, at a small share of the plain reference's cost at the point's own size.
CROSS_CHECK_BATCH, CROSS_CHECK_LENGTH = 2, 8


def calls_to_check(n: int, share: float = DEFECT_SHARE, miss: float = MISS_PROBABILITY) -> int:
    """The fewest of `n` calls that, drawn at random without replacement, include at least one of any
    ceil(share * n) wrong calls with probability >= 1 - miss (the hypergeometric tail)."""
    if n <= 0:
        return 0
    wrong = max(1, math.ceil(share * n))
    escape = 1.0  # probability that k draws all miss the wrong calls
    for k in range(1, n + 1):
        escape *= (n - wrong - (k - 1)) / (n - (k - 1))
        if escape <= miss:
            return k
    return n


_SYSTEM_RANDOM = random.SystemRandom()


class CheckPlan:
    """Which of a measurement's timed calls are checked: `calls_to_check(planned)` of the planned ones, drawn
    at random; each call beyond the plan (redone blocks) with the same probability."""

    def __init__(self, planned: int, rng: random.Random = _SYSTEM_RANDOM) -> None:
        self.planned = max(planned, 0)
        self.count = calls_to_check(self.planned)
        self.rng = rng
        self.selected = set(rng.sample(range(self.planned), self.count))

    def wants(self, call: int) -> bool:
        """Whether timed call `call` (0: the first after the warm-up) is checked."""
        if call < self.planned:
            return call in self.selected
        return self.planned > 0 and self.rng.random() < self.count / self.planned


def fast_reference_agrees(problem: Problem, seed: int) -> None:
    """The fast reference against the plain one on set 0 of `problem` with its batch and length capped
    (CROSS_CHECK_BATCH, CROSS_CHECK_LENGTH): a difference beyond float64 rounding is a defect of the harness,
    which then times nothing."""
    problem = problem.replace(batch=min(problem.batch, CROSS_CHECK_BATCH),
                              length=min(problem.length, CROSS_CHECK_LENGTH))
    plain = compute_reference(input_set(problem, seed, 0))
    fast = fast_reference(input_set(problem, seed, 0))
    named = {**plain[0].named(), **plain[1].named()}
    mine = {**fast[0].named(), **fast[1].named()}
    worst = max(relative_error(mine[name], ref) for name, ref in named.items())
    if not worst <= FAST_REFERENCE_AGREEMENT:
        raise RuntimeError(f"harness defect: the fast float64 reference differs from the plain one by {worst:.2e} "
                           f"on {problem.id} (allowed {FAST_REFERENCE_AGREEMENT:.0e}); nothing can be checked")


def compare_result(impl: str, problem: Problem, phase: str, result: object, reference: tuple, label: str,
                   scales: dict[str, float] | None = None) -> Agreement:
    """A timed call's result (Outputs for forward, Grads otherwise) against `reference` (whose tensors' norms
    are `scales`, when known); anything wrong with the result itself (its kind, a tensor that cannot be read)
    is a failed check."""
    check = new_agreement(impl, problem, label)
    try:
        if phase == "forward":
            check.compare(named_outputs(result), reference[0].named(), scales)
        else:
            check.compare(named_grads(result, problem.layers), reference[1].named(), scales)
    except Exception as exc:  # noqa: BLE001 - whatever it returned, it is not a checked result
        check.faults.append(str(exc) if isinstance(exc, ContractError)
                            else f"its result could not be checked: {type(exc).__name__}: {exc}")
    return check


class CallSets:
    """The input sets of one point and phase's calls, by cycle, with their float64 references; only the
    current cycle's are kept (one reference serves every implementation that runs in the cycle)."""

    def __init__(self, problem: Problem, weights: list[LayerWeights], seed: int, phase: str) -> None:
        self.problem, self.weights, self.seed, self.phase = problem, weights, seed, phase
        self.cycle = 0  # the probe's; run_rounds advances it before every cycle
        self._inputs: tuple[int, Inputs] | None = None
        self._reference: tuple[int, tuple, dict[str, float]] | None = None
        self.references = 0  # computed so far
        self.reference_seconds = 0.0
        self._plans: dict[int, CheckPlan] = {}

    def check_plan(self, planned: int) -> CheckPlan:
        """Which timed calls to check, drawn once per planned count: implementations with as many rounds take
        their calls in the same cycles, so checking the same call numbers needs one reference for them all
        (each one's draw is no less random for being shared)."""
        if planned not in self._plans:
            self._plans[planned] = CheckPlan(planned)
        return self._plans[planned]

    def next_cycle(self) -> None:
        self.cycle += 1

    def inputs(self, number: int | None = None) -> Inputs:
        number = self.cycle if number is None else number
        if self._inputs is None or self._inputs[0] != number:
            self._inputs = None  # the previous set goes before the next exists
            self._inputs = (number, fresh_inputs(self.problem, self.weights, self.seed, self.phase, number))
        return self._inputs[1]

    def reference(self, number: int) -> tuple:
        """(Outputs, Grads or None) in float64 for set `number`: outputs only for the forward phase."""
        return self._referenced(number)[1]

    def scales(self, number: int) -> dict[str, float]:
        """The norms of set `number`'s reference tensors, computed once for every result checked against it."""
        return self._referenced(number)[2]

    def _referenced(self, number: int) -> tuple[int, tuple, dict[str, float]]:
        if self._reference is None or self._reference[0] != number:
            self._reference = None
            started = time.perf_counter()
            reference = fast_reference(self.inputs(number), grads=self.phase != "forward")
            named = reference[0].named() if self.phase == "forward" else reference[1].named()
            scales = {name: torch.linalg.vector_norm(t).item() for name, t in named.items()}
            self.reference_seconds += time.perf_counter() - started
            self.references += 1
            self._reference = (number, reference, scales)
        return self._reference
