import pytest
import torch

from harness.impl import Grads, Impl, Outputs
from harness.problem import make_inputs
from harness.timing import choose_rounds, phase_functions, precision, probe


class Recorder(Impl):
    """Records the order of calls the timing makes."""

    name = "recorder"
    description = "records calls"

    def __init__(self, problem, weights):
        super().__init__(problem, weights)
        self.calls = []

    def forward(self, x, h0, c0):
        self.calls.append("forward")
        return Outputs(x, h0, c0)

    def backward(self, dy, dh_n, dc_n):
        assert self.calls and self.calls[-1] == "forward", "backward without a fresh forward"
        self.calls.append("backward")
        return Grads(dy, dh_n, dc_n, [])


@pytest.mark.parametrize("phase,setup_calls,target_calls", [
    ("forward", [], ["forward"]),
    ("backward", ["forward"], ["backward"]),
    ("total", [], ["forward", "backward"]),
])
def test_each_phase_times_what_it_says(small, phase, setup_calls, target_calls):
    inputs = make_inputs(small)
    impl = Recorder(small, inputs.weights)
    target, setup = phase_functions(impl, inputs, phase, "cpu")
    for _ in range(2):  # pytest-benchmark calls setup before every round
        impl.calls.clear()
        if setup is not None:
            assert setup() is None  # None: pedantic keeps the target's own (no) arguments
        assert impl.calls == setup_calls
        target()
        assert impl.calls == setup_calls + target_calls


def test_probe_runs_setup_untimed(small):
    inputs = make_inputs(small)
    impl = Recorder(small, inputs.weights)
    target, setup = phase_functions(impl, inputs, "backward", "cpu")
    seconds, peak = probe(target, setup, "cpu")
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
    with precision("float32") as flags:
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert flags == {"matmul_allow_tf32": False, "cudnn_allow_tf32": False}
    assert torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    with precision("tf32") as flags:
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert flags == {"matmul_allow_tf32": True, "cudnn_allow_tf32": True}
    assert not torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_cuda_targets_end_with_device_completion(small, monkeypatch):
    """On CUDA every timed target and every setup ends in a synchronize (no queued work leaks)."""
    import harness.timing as timing

    events = []
    monkeypatch.setattr(timing, "synchronize", lambda device: events.append(("sync", device)))
    inputs = make_inputs(small)
    impl = Recorder(small, inputs.weights)
    original_forward, original_backward = impl.forward, impl.backward
    impl.forward = lambda *a: (events.append("forward"), original_forward(*a))[1]
    impl.backward = lambda *a: (events.append("backward"), original_backward(*a))[1]
    for phase in ("forward", "backward", "total"):
        target, setup = timing.phase_functions(impl, inputs, phase, "cuda")
        if setup:
            events.clear()
            setup()
            assert events[-1] == ("sync", "cuda")
        events.clear()
        target()
        assert events[-1] == ("sync", "cuda") and events.count(("sync", "cuda")) == 1, (phase, events)


def test_allocator_setting_is_applied_once_and_described():
    from harness.allocator import keep_freed_memory

    first = keep_freed_memory()
    assert first and keep_freed_memory() is first
