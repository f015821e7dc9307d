import gc
import random
import statistics
import time
import types
import weakref

import pytest
import torch
from test_call_checks import Exact, one_thread  # noqa: F401 - a fixture

from harness.contract.agreement import AgreementError
from harness.contract.impl import Grads, Impl, Outputs
from harness.contract.inputs import make_inputs
from harness.measuring.call_checks import CallSets, CheckPlan
from harness.measuring.rounds import Contestant, run_rounds
from harness.measuring.timing import TimedCalls, choose_rounds, precision, probe


class Recorder(Impl):
    """Records the order of calls the timing makes, and which inputs each call saw."""

    name = "recorder"
    description = "records calls"

    def __init__(self, problem, weights):
        super().__init__(problem, weights)
        self.calls, self.seen, self.upstream = [], [], []

    def forward(self, x, h0, c0):
        self.calls.append("forward")
        self.seen.append(x)
        return Outputs(x, h0, c0)

    def backward(self, dy, dh_n, dc_n):
        assert self.calls and self.calls[-1] == "forward", "backward without a fresh forward"
        self.calls.append("backward")
        self.upstream.append((dy, dh_n, dc_n))
        return Grads(dy, dh_n, dc_n, [])


def call_sets(problem, phase="forward", seed=0):
    return CallSets(problem, make_inputs(problem, seed).weights, seed, phase)


def run_call(calls, after=False):
    """One round as harness.measuring.rounds runs it: the next cycle, setup, the timed target, after_call."""
    calls.sets.next_cycle()
    args, kwargs = calls.setup()
    result = calls.target(*args, **kwargs)
    if after:
        calls.after_call()
    return result


@pytest.mark.parametrize("phase,setup_calls,target_calls", [
    ("forward", [], ["forward"]),
    ("backward", ["forward"], ["backward"]),
    ("total", [], ["forward", "backward"]),
])
def test_each_phase_times_what_it_says(small, phase, setup_calls, target_calls):
    sets = call_sets(small, phase)
    impl = Recorder(small, sets.weights)
    calls = TimedCalls(impl, sets, phase, "cpu")
    calls.plan(0, 2)
    for _ in range(2):  # pytest-benchmark calls setup before every round
        impl.calls.clear()
        sets.next_cycle()
        args, kwargs = calls.setup()
        assert impl.calls == setup_calls
        result = calls.target(*args, **kwargs)
        assert impl.calls == setup_calls + target_calls
        assert calls.result is result  # kept for the check


@pytest.mark.parametrize("phase", ["forward", "backward", "total"])
def test_every_call_runs_on_its_own_cycles_set_in_one_fixed_buffer(small, phase):
    """Each call sees the values of its own cycle's set, through the same buffers: a cache keyed by address or
    identity goes stale, one keyed by values never hits."""
    sets = call_sets(small, phase)
    impl = Recorder(small, sets.weights)
    calls = TimedCalls(impl, sets, phase, "cpu")
    calls.plan(0, 5)
    for cycle in range(1, 8):  # beyond the plan too (rounds redone for interference)
        run_call(calls)
        source = sets.inputs(cycle)
        assert calls.last_set == calls.result_set == cycle
        assert impl.seen[-1] is calls.buffers.x and torch.equal(impl.seen[-1], source.x)
        assert calls.passed.x is calls.buffers.x and calls.passed.h0 is calls.buffers.h0
        for name in ("x", "h0", "c0"):
            assert torch.equal(getattr(calls.passed, name), getattr(source, name)), name
        if phase == "forward":
            assert calls.passed.dy is None
        else:
            for name, given in zip(("dy", "dh_n", "dc_n"), impl.upstream[-1], strict=True):
                assert given is getattr(calls.passed, name) and torch.equal(given, getattr(source, name)), name
        if phase == "total":  # copied into the buffers, like x
            assert calls.passed.dy is calls.buffers.dy
        if cycle > 1:
            assert not torch.equal(impl.seen[-1], sets.inputs(cycle - 1).x)  # new values every call


@pytest.mark.usefixtures("one_thread")
def test_a_cache_keyed_by_address_goes_stale_and_is_caught(small):
    class AddressCache(Exact):
        def __init__(self, problem, weights):
            super().__init__(problem, weights)
            self.cache = {}

        def forward(self, x, h0, c0):
            key = (x.data_ptr(), h0.data_ptr(), c0.data_ptr())
            if key not in self.cache:
                self.cache[key] = super().forward(x, h0, c0)
            return self.cache[key]

    sets = call_sets(small)
    calls = TimedCalls(AddressCache(small, sets.weights), sets, "forward", "cpu")
    calls.plan(0, 3)  # three planned calls: all are checked
    run_call(calls, after=True)
    with pytest.raises(AgreementError, match="timed forward call 2"):
        run_call(calls, after=True)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("phase", ["forward", "backward", "total"])
def test_every_fourth_call_runs_and_is_checked_with_a_zero_state(small, phase):
    sets = call_sets(small, phase)
    calls = TimedCalls(Exact(small, sets.weights), sets, phase, "cpu")
    calls.plan(0, 4)  # four planned calls: all are checked
    for cycle in range(1, 5):
        run_call(calls, after=True)
        zero = cycle == 3
        assert bool(calls.passed.h0.any()) != zero and bool(calls.passed.c0.any()) != zero
    assert calls.checked_calls == 4 and calls.last_check.passed


class Upstream(Recorder):
    """Records every tensor alive when forward runs (weakly: ids are reused once an object is gone)."""

    def forward(self, x, h0, c0):
        self.alive = {id(o): weakref.ref(o) for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter)}
        self.forward_returned = False
        out = super().forward(x, h0, c0)
        self.forward_returned = True
        return out

    def backward(self, dy, dh_n, dc_n):
        assert self.forward_returned
        return super().backward(dy, dh_n, dc_n)


def test_backward_gets_new_upstream_gradients_made_after_the_forward(small):
    """As in training, dy, dh_n and dc_n do not exist before forward returns: an implementation cannot have
    started on them, nor keep them from one call to the next; they hold the values of the call's own set."""
    sets = call_sets(small, "backward")
    impl = Upstream(small, sets.weights)
    calls = TimedCalls(impl, sets, "backward", "cpu")
    calls.plan(0, 3)
    given = []
    for cycle in range(1, 4):
        run_call(calls)
        source = sets.inputs(cycle)
        upstream = impl.upstream[-1]
        for name, t in zip(("dy", "dh_n", "dc_n"), upstream, strict=True):
            assert torch.equal(t, getattr(source, name)) and t is not getattr(source, name), name
            earlier = impl.alive.get(id(t))
            assert earlier is None or earlier() is not t, f"{name} existed when forward ran"
            still = [o for o in (r() for r in impl.alive.values()) if o is not None and o.layout == torch.strided]
            assert t.untyped_storage().data_ptr() not in {o.untyped_storage().data_ptr() for o in still}, name
            assert t is not getattr(calls.buffers, name)
        given.append(upstream)
    assert len({id(t) for upstream in given for t in upstream}) == 9  # held here, all alive: new objects each call


@pytest.mark.usefixtures("one_thread")
def test_the_warm_up_calls_are_neither_counted_nor_checked(small):
    sets = call_sets(small)
    impl = Exact(small, sets.weights, wrong=lambda n: n < 2)  # wrong in the two warm-up calls only
    calls = TimedCalls(impl, sets, "forward", "cpu")
    calls.plan(2, 3)
    for _ in range(2):
        run_call(calls, after=True)  # wrong, but a warm-up: no AgreementError
    assert calls.timed_calls == calls.checked_calls == 0 and sets.references == 0
    for _ in range(3):
        run_call(calls, after=True)
    assert calls.timed_calls == 3 and calls.checked_calls == 3 == sets.references  # three planned: all checked
    assert 0 < calls.worst_error < 1e-5


@pytest.mark.usefixtures("one_thread")
def test_rounds_advance_the_cycle_and_skip_the_warm_up(small):
    """Through harness.measuring.rounds: the probe on set 0, every warm-up and timed call on a set of its own."""
    sets = call_sets(small)
    impl = Exact(small, sets.weights)
    calls = TimedCalls(impl, sets, "forward", "cpu")
    probe(calls)
    used = [calls.last_set]
    calls.plan(2, 4)
    contestant = Contestant("exact", calls.setup, calls.target, 4,
                            after_round=lambda: (used.append(calls.last_set), calls.after_call()))
    run_rounds([contestant], 2, None, next_cycle=sets.next_cycle)
    assert used == list(range(7)) and contestant.error is None
    assert calls.timed_calls == 4 and calls.checked_calls == 4 == sets.references


def _wrong_at(calls: set[int]):
    return lambda n: n in calls


@pytest.mark.usefixtures("one_thread")
def test_after_call_raises_for_a_wrong_drawn_call_only(small):
    sets = call_sets(small)
    planned = 40
    plan = CheckPlan(planned, random.Random(3))
    drawn, undrawn = min(plan.selected), min(set(range(planned)) - plan.selected)
    last = max(drawn, undrawn)
    impl = Exact(small, sets.weights, wrong=_wrong_at({drawn, undrawn}))
    calls = TimedCalls(impl, sets, "forward", "cpu")
    calls.plan(0, planned)
    calls.checks = plan
    for call in range(last + 1):
        if call == drawn:
            with pytest.raises(AgreementError) as raised:
                run_call(calls, after=True)
            assert f"timed forward call {drawn + 1}," in raised.value.agreement.check
            assert f"(set {drawn + 1})" in raised.value.agreement.check  # the probe ran set 0
        else:
            run_call(calls, after=True)  # the undrawn wrong call passes unseen
    assert impl.wrong_calls == sorted({drawn, undrawn}) and calls.timed_calls == last + 1
    assert calls.checked_calls == len([c for c in plan.selected if c <= last]) == sets.references


@pytest.mark.usefixtures("one_thread")
def test_check_latest_after_after_call_reuses_the_check(small):
    sets = call_sets(small, "backward")
    calls = TimedCalls(Exact(small, sets.weights), sets, "backward", "cpu")
    calls.plan(0, 2)
    calls.checks = types.SimpleNamespace(wants=lambda call: call == 0)
    run_call(calls, after=True)
    drawn, references = calls.last_check, sets.references
    assert references == 1 and calls.checked_calls == 1
    assert calls.check_latest("after timing") is drawn and sets.references == references == calls.checked_calls
    run_call(calls, after=True)  # not drawn: not checked ...
    assert calls.checked_calls == 1
    latest = calls.check_latest("after timing")  # ... until the check after timing, once
    assert latest.passed and latest.check == "after timing" and sets.references == 2 == calls.checked_calls
    assert calls.check_latest("again") is latest and sets.references == 2


def test_timed_calls_needs_a_known_phase(small):
    sets = call_sets(small)
    with pytest.raises(ValueError, match="unknown phase"):
        TimedCalls(Recorder(small, sets.weights), sets, "sideways", "cpu")


def test_probe_runs_setup_untimed(small):
    sets = call_sets(small, "backward")
    impl = Recorder(small, sets.weights)
    calls = TimedCalls(impl, sets, "backward", "cpu")
    seconds, peak = probe(calls)
    assert seconds >= 0 and peak is None  # peak memory is a CUDA measurement
    assert impl.calls == ["forward", "backward"]
    assert calls.last_set == 0 == sets.cycle  # the probe's set: no timed call runs it
    assert calls.timed_calls == 0


def test_choose_rounds():
    assert choose_rounds(0.5, max_time=1.0, min_rounds=5) == 5
    assert choose_rounds(0.001, max_time=1.0, min_rounds=5) == 1000
    assert choose_rounds(0.0001, max_time=1.0, min_rounds=5, max_rounds=200) == 200
    assert choose_rounds(0.0, max_time=1.0, min_rounds=3) == 1000


def test_precision_pins_and_restores_tf32():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    old_flags = ("matmul_allow_tf32", "cudnn_allow_tf32")  # the record has more (tests/test_precision.py)
    with precision("float32") as flags:
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert {k: flags[k] for k in old_flags} == {"matmul_allow_tf32": False, "cudnn_allow_tf32": False}
    assert torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    with precision("tf32") as flags:
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert {k: flags[k] for k in old_flags} == {"matmul_allow_tf32": True, "cudnn_allow_tf32": True}
    assert not torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_cuda_targets_end_with_device_completion(small, monkeypatch):
    """On CUDA every timed target and every setup ends in a synchronize (no queued work leaks)."""
    import harness.measuring.timing as timing

    events = []
    monkeypatch.setattr(timing, "synchronize", lambda device: events.append(("sync", device)))
    sets = call_sets(small)
    impl = Recorder(small, sets.weights)
    original_forward, original_backward = impl.forward, impl.backward
    impl.forward = lambda *a: (events.append("forward"), original_forward(*a))[1]
    impl.backward = lambda *a: (events.append("backward"), original_backward(*a))[1]
    for phase in ("forward", "backward", "total"):
        calls = timing.TimedCalls(impl, CallSets(small, sets.weights, 0, phase), phase, "cuda")
        events.clear()
        args, kwargs = calls.setup()
        if phase == "backward":
            assert events[-1] == ("sync", "cuda")
        events.clear()
        calls.target(*args, **kwargs)
        assert events[-1] == ("sync", "cuda") and events.count(("sync", "cuda")) == 1, (phase, events)


def test_allocator_setting_is_applied_once_and_described():
    from harness.measuring.allocator import keep_freed_memory

    first = keep_freed_memory()
    assert first and keep_freed_memory() is first


@pytest.mark.parametrize("phase", ["forward", "backward", "total"])
def test_the_harness_own_cost_is_each_round_minus_the_implementations_calls(small, phase):
    """`inner` times exactly the implementation's calls of the target (not the setup's forward of a
    backward round); harness_costs lines each kept round up with its own call."""
    sets = call_sets(small, phase)
    calls = TimedCalls(Recorder(small, sets.weights), sets, phase, "cpu")
    calls.reset_costs()
    rounds = []
    for _ in range(5):
        sets.next_cycle()
        args, kwargs = calls.setup()
        started = time.perf_counter()
        calls.target(*args, **kwargs)
        rounds.append(time.perf_counter() - started)
    assert len(calls.inner) == len(calls.rotation) == 5
    assert all(0 < i <= r for i, r in zip(calls.inner, rounds, strict=True))
    harness, rotation = calls.harness_costs(rounds[1:], [1, 2, 3, 4])
    assert harness == statistics.median(r - i for r, i in zip(rounds[1:], calls.inner[1:], strict=True))
    assert rotation == statistics.median(calls.rotation[1:])
    # Kept rounds need not be consecutive (disturbed ones were redone): each lines up with its own call.
    harness, rotation = calls.harness_costs([rounds[0], rounds[3]], [0, 3])
    assert harness == statistics.median([rounds[0] - calls.inner[0], rounds[3] - calls.inner[3]])
    assert calls.harness_costs(rounds, [1, 2, 3, 4, 5]) is None  # a call that never ran: not lined up
    assert calls.harness_costs(rounds, [0, 1]) is None


class Fresh(Recorder):
    """Returns new tensors every call, as real implementations do."""

    def forward(self, x, h0, c0):
        super().forward(x, h0, c0)
        return Outputs(x.clone(), h0.clone(), c0.clone())


def test_the_previous_result_is_freed_in_setup_not_inside_the_next_timed_call(small):
    """Keeping only the latest result for the check, the harness must drop the previous one before the next
    timed call: dropped by the assignment inside it, its memory would go back to the allocator on the
    implementation's time."""
    sets = call_sets(small)
    calls = TimedCalls(Fresh(small, sets.weights), sets, "forward", "cpu")
    sets.next_cycle()
    args, kwargs = calls.setup()
    first = weakref.ref(calls.target(*args, **kwargs).y)
    assert first() is not None  # kept for the check
    sets.next_cycle()
    args, kwargs = calls.setup()
    assert first() is None  # gone before the next call is timed
    calls.target(*args, **kwargs)
    assert calls.result is not None and calls.result_set == calls.last_set
