"""How a phase is timed: device completion inside the timed region, rounds chosen from a probe."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import torch

from harness.impl import Impl
from harness.memory import peak_bytes
from harness.problem import PHASES, Inputs


def synchronize(device: str) -> None:
    """Wait for all queued device work; a GPU timing without this reads far too fast."""
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def precision(dtype: str) -> Iterator[dict]:
    """Pin TF32 for agreement and timing: on only in the tf32 mode, off everywhere else, so
    cuDNN and cuBLAS paths compute alike.

    torch defaults cudnn.allow_tf32 to True and matmul.allow_tf32 to False: left alone,
    nn.LSTM would run in TF32 against strict-fp32 hand-written kernels.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = dtype == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield {"matmul_allow_tf32": tf32, "cudnn_allow_tf32": tf32}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class TimedCalls:
    """setup and target of one phase for pytest-benchmark's pedantic mode.

    Each call takes the next of the point's timed input sets (chosen in setup, outside the
    timed region), so consecutive calls never see the same inputs: a result cached from an
    earlier call, or state left over from it, shows up as a wrong answer. The target keeps a
    reference to its result and the set it ran on (no copy, nothing else inside the timed region)
    for the check after timing. Every target ends in a device sync; a backward's setup runs a
    fresh forward on the same set (and syncs, so none of it leaks into the timing).
    """

    def __init__(self, impl: Impl, sets: dict[int, Inputs], phase: str, device: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        if len(sets) < 2:
            raise ValueError("rotation needs at least two input sets")
        self.impl, self.phase, self.device = impl, phase, device
        self.numbers = sorted(sets)
        self.sets = sets
        self.calls = 0
        self.planned = 1
        self.last_set: int | None = None
        self.result: object = None
        self.target = {"forward": self._forward, "backward": self._backward, "total": self._total}[phase]

    def plan(self, calls: int) -> None:
        """The next `calls` calls end on the first timed set, whose reference is computed anyway;
        more calls than planned go on rotating."""
        self.calls, self.planned = 0, max(calls, 1)

    def setup(self) -> tuple[tuple, dict]:
        index = (self.planned - 1 - self.calls) % len(self.numbers)
        self.calls += 1
        self.last_set = self.numbers[index]
        inputs = self.sets[self.last_set]
        if self.phase == "forward":
            return (inputs.x, inputs.h0, inputs.c0), {}
        if self.phase == "backward":
            self.impl.forward(inputs.x, inputs.h0, inputs.c0)
            synchronize(self.device)
            return (inputs.dy, inputs.dh_n, inputs.dc_n), {}
        return (inputs.x, inputs.h0, inputs.c0, inputs.dy, inputs.dh_n, inputs.dc_n), {}

    def _forward(self, x, h0, c0):
        self.result = self.impl.forward(x, h0, c0)
        synchronize(self.device)
        return self.result

    def _backward(self, dy, dh_n, dc_n):
        self.result = self.impl.backward(dy, dh_n, dc_n)
        synchronize(self.device)
        return self.result

    def _total(self, x, h0, c0, dy, dh_n, dc_n):
        self.impl.forward(x, h0, c0)
        return self._backward(dy, dh_n, dc_n)


def probe(calls: TimedCalls) -> tuple[float, int | None]:
    """One call that the benchmark does not time (also a warm-up): its seconds size the rounds,
    and on CUDA its peak allocation is the phase's peak memory."""
    args, kwargs = calls.setup()
    seconds = []

    def timed():
        start = time.perf_counter()
        calls.target(*args, **kwargs)
        seconds.append(time.perf_counter() - start)

    if calls.device == "cuda":
        peak = peak_bytes(timed, calls.device)
    else:
        timed()
        peak = None
    return seconds[0], peak


def choose_rounds(seconds_per_call: float, max_time: float, min_rounds: int, max_rounds: int = 1000) -> int:
    """As many rounds as fit in max_time, at least min_rounds (medians and IQR need several)."""
    fit = math.ceil(max_time / max(seconds_per_call, 1e-9))
    return max(min_rounds, min(fit, max_rounds))
