"""Which timed calls are checked (harness.measuring.call_checks), the inputs each call runs on, their
references, and that a defect present on a share of the calls is caught as often as promised."""

import math
import random

import pytest
import torch

from harness.contract.agreement import AgreementError, relative_error
from harness.contract.fast_reference import fast_reference
from harness.contract.impl import Grads, Impl, Outputs
from harness.contract.inputs import ZERO_STATE_EVERY, Inputs, fresh_inputs, make_inputs
from harness.contract.problem import Problem
from harness.contract.reference import compute_reference
from harness.measuring.call_checks import DEFECT_SHARE, MISS_PROBABILITY, CallSets, CheckPlan, calls_to_check
from harness.measuring.timing import TimedCalls

TINY = Problem(batch=2, length=3, input_size=4, hidden=4, layers=1)  # for the many calls of the trials
FIELDS = ("x", "h0", "c0", "dy", "dh_n", "dc_n")


class Exact(Impl):
    """Correct results: torch's own LSTM forward (fast on one thread: see one_thread), and as gradients the float64
    reference of exactly what it was given, rounded to the dtype. `wrong(n)` makes the result of its n-th (from 0)
    call of `method` wrong (forward: y; backward: dc0); `wrong_calls` lists those."""

    name = "exact"
    description = "torch.lstm forward, the fast reference's gradients"

    def __init__(self, problem, weights, wrong=lambda n: False, method="forward"):
        super().__init__(problem, weights)
        self.weights, self.method = weights, method
        self.wrong = lambda name, n: name == method and wrong(n)
        self.flat = [t for w in weights for t in w.tensors()]
        self.forwards = self.backwards = 0
        self.wrong_calls: list[int] = []
        self.state = None

    def forward(self, x, h0, c0):
        self.state = (x.clone(), h0.clone(), c0.clone())
        y, h_n, c_n = torch.lstm(x, (h0, c0), self.flat, True, self.problem.layers, 0.0, False, False, False)
        if self.wrong("forward", self.forwards):
            self.wrong_calls.append(self.forwards)
            y = y * 1.01
        self.forwards += 1
        return Outputs(y, h_n, c_n)

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        _, grads = fast_reference(Inputs(*self.state, self.weights, dy, dh_n, dc_n))
        dtype = self.problem.torch_dtype
        dx, dh0, dc0 = (t.to(dtype) for t in (grads.dx, grads.dh0, grads.dc0))
        weights = [w.map(lambda t: t.to(dtype)) for w in grads.weights]
        if self.wrong("backward", self.backwards):
            self.wrong_calls.append(self.backwards)
            dc0 = dc0 * 1.01
        self.backwards += 1
        return Grads(dx, dh0, dc0, weights)


@pytest.fixture
def one_thread():
    """Thousands of tiny calls: on one thread they do not spin against a busy machine's other processes
    (measured on 2 loaded cores: torch.lstm and float64 products 10 to 100 times slower on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- how many calls are checked --------------------------------------------------------------------

def miss_probability(n: int, wrong: int, k: int) -> float:
    """Probability that k of n calls drawn without replacement include none of `wrong` wrong ones."""
    return math.comb(n - wrong, k) / math.comb(n, k)


def brute_force(n: int) -> int:
    wrong = max(1, math.ceil(DEFECT_SHARE * n))
    return next(k for k in range(1, n + 1) if miss_probability(n, wrong, k) <= MISS_PROBABILITY)


@pytest.mark.parametrize("n", [*range(1, 201), 1000])
def test_calls_to_check_is_the_fewest_that_meet_the_bound(n):
    k = calls_to_check(n)
    wrong = max(1, math.ceil(DEFECT_SHARE * n))
    assert 1 <= k <= n
    assert miss_probability(n, wrong, k) <= MISS_PROBABILITY
    assert k == 1 or miss_probability(n, wrong, k - 1) > MISS_PROBABILITY  # minimal
    assert k == brute_force(n)


def test_calls_to_check_small_counts():
    assert calls_to_check(0) == 0 and calls_to_check(-3) == 0
    assert [calls_to_check(n) for n in range(1, 11)] == list(range(1, 11))  # one wrong call: check them all
    assert calls_to_check(11) < 11
    assert calls_to_check(1000) == brute_force(1000) < 100


# -- which calls are checked -----------------------------------------------------------------------

@pytest.mark.parametrize("planned", [0, 1, 5, 10, 30, 300, 1000])
def test_the_plan_draws_the_right_number_of_distinct_planned_calls(planned):
    plan = CheckPlan(planned, random.Random(1))
    assert plan.count == calls_to_check(planned) == len(plan.selected)
    assert all(0 <= c < planned for c in plan.selected)
    assert [c for c in range(planned) if plan.wants(c)] == sorted(plan.selected)


def test_different_rngs_draw_different_calls():
    draws = {frozenset(CheckPlan(300, random.Random(seed)).selected) for seed in range(20)}
    assert len(draws) == 20
    assert CheckPlan(300, random.Random(5)).selected == CheckPlan(300, random.Random(5)).selected
    # The default: the operating system's randomness, not a seed an implementation could replay.
    assert CheckPlan(300).selected != CheckPlan(300).selected


@pytest.mark.parametrize("planned", [30, 300])
def test_calls_beyond_the_plan_are_checked_at_the_same_rate(planned):
    plan = CheckPlan(planned, random.Random(2))
    extra = 20_000
    share = sum(plan.wants(planned + i) for i in range(extra)) / extra
    assert abs(share - plan.count / planned) < 0.02
    assert not any(CheckPlan(0, random.Random(2)).wants(c) for c in range(50))


# -- the inputs of the timed calls -----------------------------------------------------------------

@pytest.fixture
def weights(small):
    return make_inputs(small).weights


def _equal(a: Inputs, b: Inputs) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def test_the_same_number_gives_the_same_values(small, weights):
    for phase in ("forward", "backward", "total"):
        one, two = CallSets(small, weights, 0, phase), CallSets(small, weights, 0, phase)
        for n in (0, 1, 3, 17):
            assert _equal(one.inputs(n), two.inputs(n))
            assert _equal(one.inputs(n), fresh_inputs(small, weights, 0, phase, n))
        assert one.inputs(2).weights is weights  # the weights as given
        assert one.inputs().x.dtype == small.torch_dtype and one.inputs().x.device.type == small.device
    assert not torch.equal(CallSets(small, weights, 0, "forward").inputs(1).x,
                           CallSets(small, weights, 1, "forward").inputs(1).x)  # another seed


def test_numbers_and_phases_give_different_values(small, weights):
    drawn = {(phase, n): fresh_inputs(small, weights, 0, phase, n)
             for phase in ("forward", "backward", "total") for n in range(8)}
    for name in ("x", "dy", "dh_n", "dc_n"):  # h0 and c0 are zero in every zero-state set
        values = [getattr(i, name) for i in drawn.values()]
        assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1:]), name
    for name in ("h0", "c0"):
        values = [getattr(i, name) for (_, n), i in drawn.items() if n % ZERO_STATE_EVERY != ZERO_STATE_EVERY - 1]
        assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1:]), name


def test_every_fourth_set_has_a_zero_state_and_nothing_else_is_zero(small, weights):
    sets = CallSets(small, weights, 0, "total")
    for n in range(12):
        inputs = sets.inputs(n)
        zero_state = n % 4 == 3
        for name in FIELDS:
            t = getattr(inputs, name)
            if zero_state and name in ("h0", "c0"):
                assert not t.any(), (n, name)
            else:
                assert bool((t != 0).all()), (n, name)


def test_the_sets_are_not_the_numbered_sets(small, weights):
    numbered = [make_inputs(small, 0, v) for v in range(10)]
    for phase in ("forward", "backward", "total"):
        sets = CallSets(small, weights, 0, phase)
        for n in range(10):
            mine = sets.inputs(n)
            for other in numbered:
                assert not torch.equal(mine.x, other.x) and not torch.equal(mine.dy, other.dy)


def test_fresh_inputs_refuses_what_it_cannot_number(small, weights):
    for number in (-1, 1.0, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            fresh_inputs(small, weights, 0, "forward", number)
    with pytest.raises(ValueError, match="unknown phase"):
        fresh_inputs(small, weights, 0, "sideways", 0)


# -- the references --------------------------------------------------------------------------------

@pytest.mark.parametrize("phase", ["forward", "backward", "total"])
def test_the_reference_is_the_plain_reference_of_the_set(small, weights, phase, one_thread):
    sets = CallSets(small, weights, 0, phase)
    for n in (1, 3):  # an ordinary set and a zero-state one
        outputs, grads = sets.reference(n)
        plain_outputs, plain_grads = compute_reference(sets.inputs(n))
        for name, ref in plain_outputs.named().items():
            assert outputs.named()[name].dtype == torch.float64
            assert relative_error(outputs.named()[name], ref) <= 1e-12, name
        if phase == "forward":
            assert grads is None
        else:
            for name, ref in plain_grads.named().items():
                assert relative_error(grads.named()[name], ref) <= 1e-12, name


def test_the_reference_is_computed_once_per_number(small, weights, one_thread):
    sets = CallSets(small, weights, 0, "backward")
    first = sets.reference(5)
    assert sets.reference(5) is first and sets.references == 1
    sets.reference(6)
    assert sets.references == 2
    sets.reference(5)  # one number at a time is kept: computed again
    assert sets.references == 3 and sets.reference_seconds > 0


def test_the_cycle_starts_at_the_probe_and_advances(small, weights):
    sets = CallSets(small, weights, 0, "forward")
    assert sets.cycle == 0 and _equal(sets.inputs(), sets.inputs(0))
    sets.next_cycle()
    sets.next_cycle()
    assert sets.cycle == 2 and _equal(sets.inputs(), fresh_inputs(small, weights, 0, "forward", 2))


# -- a defect on a share of the calls is caught ----------------------------------------------------

# Seeded trials per planned count: every trial runs until a check catches the defect (or the plan ends).
TRIALS = {30: 200, 300: 100}


def _trial(problem, weights, phase: str, planned: int, wrong, trial: int) -> tuple[bool, Exact]:
    """One measurement's timed calls with an implementation wrong where `wrong` says; whether a check caught it."""
    sets = CallSets(problem, weights, trial, phase)
    impl = Exact(problem, weights, wrong, "forward" if phase == "forward" else "backward")
    calls = TimedCalls(impl, sets, phase, "cpu")
    calls.plan(0, planned)
    calls.checks = CheckPlan(planned, random.Random(trial))
    for _ in range(planned):
        sets.next_cycle()
        args, kwargs = calls.setup()
        calls.target(*args, **kwargs)
        try:
            calls.after_call()
        except AgreementError:
            made = impl.wrong_calls[-1] if impl.wrong_calls else None
            assert made == calls.timed_calls - 1, "a correct call failed its check"
            return True, impl
    assert calls.timed_calls == planned and calls.checked_calls == calls_to_check(planned)
    return False, impl


@pytest.mark.parametrize("planned", [30, 300])
def test_a_defect_every_fifth_call_is_caught(planned, one_thread):
    weights = make_inputs(TINY).weights
    misses = sum(not _trial(TINY, weights, "forward", planned, lambda n: n % 5 == 4, trial)[0]
                 for trial in range(TRIALS[planned]))
    # A fifth of the calls wrong, more than the 10 % the draw is sized for: a trial escapes with probability
    # C(24, 26) / C(30, 26) = 0 at 30 planned calls, about 2e-6 at 300.
    assert miss_probability(planned, planned // 5, calls_to_check(planned)) < 1e-5
    assert misses == 0


@pytest.mark.parametrize("planned", [30, 300])
def test_a_defect_on_a_random_tenth_of_the_calls_is_caught(planned, one_thread):
    weights = make_inputs(TINY).weights
    misses, expected = 0, 0.0
    for trial in range(TRIALS[planned]):
        defect = random.Random(10_000 + trial)
        wrong = {n for n in range(planned) if defect.random() < DEFECT_SHARE}
        caught, impl = _trial(TINY, weights, "forward", planned, wrong.__contains__, trial)
        misses += not caught
        expected += miss_probability(planned, len(wrong), calls_to_check(planned))
    # A trial with fewer wrong calls than 10 % escapes more often: the bound is the one for the calls actually
    # wrong (no wrong call at all: nothing to catch, a miss with probability 1).
    assert misses <= expected + 3 * math.sqrt(expected) + 2, (misses, expected)


def test_a_defect_in_the_backward_phase_is_caught(one_thread):
    weights = make_inputs(TINY).weights
    caught = [_trial(TINY, weights, phase, 30, lambda n: n % 5 == 4, trial)[0]
              for phase in ("backward", "total") for trial in range(10)]
    assert all(caught)


def test_a_correct_implementation_passes_every_check(small, one_thread):
    weights = make_inputs(small).weights
    for phase in ("forward", "backward", "total"):
        caught, impl = _trial(small, weights, phase, 8, lambda n: False, 0)
        assert not caught and not impl.wrong_calls


def test_a_fast_reference_that_disagrees_with_the_plain_one_is_a_harness_defect(monkeypatch, small):
    from harness.measuring import call_checks

    call_checks.fast_reference_agrees(small, 0)  # agrees: nothing raised
    real = call_checks.fast_reference

    def off(inputs, grads=True):
        out, g = real(inputs, grads)
        return Outputs(out.y * (1 + 1e-8), out.h_n, out.c_n), g

    monkeypatch.setattr(call_checks, "fast_reference", off)
    with pytest.raises(RuntimeError, match="harness defect: the fast float64 reference differs"):
        call_checks.fast_reference_agrees(small, 0)


def test_a_write_into_the_zero_state_set_is_named_as_that_set(small):
    from harness.contract.inputs import ZERO_STATE_SET, zero_state
    from harness.measuring.isolation import private_copies, written_inputs

    pristine = {ZERO_STATE_SET: zero_state(make_inputs(small))}
    copies = private_copies(pristine)
    copies[ZERO_STATE_SET].x.mul_(0.5)
    assert written_inputs(pristine, copies) == ["modified its input x in place (input set 0 with zero initial state)"]
