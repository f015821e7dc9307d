import statistics
import time

import pytest
import torch

from harness.contract.impl import Grads, Impl, Outputs
from harness.contract.inputs import TIMED_SETS, make_inputs
from harness.measuring.timing import TimedCalls, choose_rounds, precision, probe


class Recorder(Impl):
    """Records the order of calls the timing makes, and which inputs each call saw."""

    name = "recorder"
    description = "records calls"

    def __init__(self, problem, weights):
        super().__init__(problem, weights)
        self.calls, self.seen = [], []

    def forward(self, x, h0, c0):
        self.calls.append("forward")
        self.seen.append(x)
        return Outputs(x, h0, c0)

    def backward(self, dy, dh_n, dc_n):
        assert self.calls and self.calls[-1] == "forward", "backward without a fresh forward"
        self.calls.append("backward")
        return Grads(dy, dh_n, dc_n, [])


def timed_sets(problem):
    return {k: make_inputs(problem, 0, k) for k in TIMED_SETS}


@pytest.mark.parametrize("phase,setup_calls,target_calls", [
    ("forward", [], ["forward"]),
    ("backward", ["forward"], ["backward"]),
    ("total", [], ["forward", "backward"]),
])
def test_each_phase_times_what_it_says(small, phase, setup_calls, target_calls):
    sets = timed_sets(small)
    impl = Recorder(small, sets[1].weights)
    calls = TimedCalls(impl, sets, phase, "cpu")
    calls.plan(2)
    for _ in range(2):  # pytest-benchmark calls setup before every round
        impl.calls.clear()
        args, kwargs = calls.setup()
        assert impl.calls == setup_calls
        result = calls.target(*args, **kwargs)
        assert impl.calls == setup_calls + target_calls
        assert calls.result is result  # kept for the check after timing


@pytest.mark.parametrize("phase", ["forward", "backward", "total"])
def test_rounds_rotate_input_sets_and_end_on_the_first_timed_set(small, phase):
    """Consecutive calls never see the same inputs, and the planned last call runs on set 1,
    whose reference the check after timing needs anyway."""
    sets = timed_sets(small)
    impl = Recorder(small, sets[1].weights)
    calls = TimedCalls(impl, sets, phase, "cpu")
    calls.plan(7)
    used = []
    for _ in range(7):
        args, kwargs = calls.setup()
        calls.target(*args, **kwargs)
        used.append(calls.last_set)
        # One fixed buffer, new values each call: a cache keyed by address or identity goes stale.
        assert impl.seen[-1] is calls.buffers.x and torch.equal(impl.seen[-1], sets[calls.last_set].x)
    assert used[-1] == TIMED_SETS[0] and set(used) == set(TIMED_SETS)
    assert all(a != b for a, b in zip(used, used[1:], strict=False))
    assert calls.result_set == TIMED_SETS[0]
    args, kwargs = calls.setup()  # more calls than planned (rounds redone for interference) go on rotating ...
    assert calls.last_set != used[-1]
    result = calls.target(*args, **kwargs)
    assert calls.result is result and calls.result_set == calls.last_set  # ... and the latest is the one checked


@pytest.mark.parametrize("planned", range(1, 8))
def test_the_first_timed_call_never_repeats_the_probes_set(small, planned):
    sets = timed_sets(small)
    impl = Recorder(small, sets[1].weights)
    calls = TimedCalls(impl, sets, "forward", "cpu")
    probe(calls)
    used = [calls.last_set]
    calls.plan(planned)
    for _ in range(planned):
        calls.setup()
        used.append(calls.last_set)
    assert all(a != b for a, b in zip(used, used[1:], strict=False)), used
    if planned > 1:
        assert used[-1] == TIMED_SETS[0]


def test_rotation_needs_three_sets_and_a_known_phase(small):
    sets = timed_sets(small)
    impl = Recorder(small, sets[1].weights)
    with pytest.raises(ValueError, match="three input sets"):
        TimedCalls(impl, {1: sets[1], 2: sets[2]}, "forward", "cpu")
    with pytest.raises(ValueError, match="unknown phase"):
        TimedCalls(impl, sets, "sideways", "cpu")


def test_probe_runs_setup_untimed(small):
    sets = timed_sets(small)
    impl = Recorder(small, sets[1].weights)
    seconds, peak = probe(TimedCalls(impl, sets, "backward", "cpu"))
    assert seconds >= 0 and peak is None  # peak memory is a CUDA measurement
    assert impl.calls == ["forward", "backward"]


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
    sets = timed_sets(small)
    impl = Recorder(small, sets[1].weights)
    original_forward, original_backward = impl.forward, impl.backward
    impl.forward = lambda *a: (events.append("forward"), original_forward(*a))[1]
    impl.backward = lambda *a: (events.append("backward"), original_backward(*a))[1]
    for phase in ("forward", "backward", "total"):
        calls = timing.TimedCalls(impl, sets, phase, "cuda")
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
    sets = timed_sets(small)
    calls = TimedCalls(Recorder(small, sets[1].weights), sets, phase, "cpu")
    calls.reset_costs()
    rounds = []
    for _ in range(5):
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
    import weakref

    sets = timed_sets(small)
    calls = TimedCalls(Fresh(small, sets[1].weights), sets, "forward", "cpu")
    args, kwargs = calls.setup()
    first = weakref.ref(calls.target(*args, **kwargs).y)
    assert first() is not None  # kept for the check
    args, kwargs = calls.setup()
    assert first() is None  # gone before the next call is timed
    calls.target(*args, **kwargs)
    assert calls.result is not None and calls.result_set == calls.last_set
