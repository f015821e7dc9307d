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

    Every call runs on one fixed set of input buffers, and each call's setup (outside the timed
    region) copies the next of the point's timed input sets into them: consecutive calls never
    see the same values, and a result cached from an earlier call, keyed by tensor address or
    identity, or state left over from it, shows up as a wrong answer. The target keeps a
    reference to its result (no copy, nothing else inside the timed region) for the check after
    timing. Every setup and every target ends in a device sync; a backward's setup runs a fresh
    forward on the same values.
    """

    PROBE_SET_INDEX = 1  # the probe runs on the second timed set: the checked first set is new then

    def __init__(self, impl: Impl, sets: dict[int, Inputs], phase: str, device: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        if len(sets) < 3:
            # Three: the first timed call can then always differ from both the probe's set and the next one's.
            raise ValueError("rotation needs at least three input sets")
        self.impl, self.phase, self.device = impl, phase, device
        self.numbers = sorted(sets)
        self.sets = sets
        first = sets[self.numbers[0]]
        self.buffers = Inputs(first.x.clone(), first.h0.clone(), first.c0.clone(), first.weights,
                              first.dy.clone(), first.dh_n.clone(), first.dc_n.clone())
        self.last_set: int | None = None  # the set whose values are in the buffers
        self.result: object = None  # the last planned call's result ...
        self.result_set: int | None = None  # ... and the set it ran on
        self.target = {"forward": self._forward, "backward": self._backward, "total": self._total}[phase]
        self.plan(1, last=self.PROBE_SET_INDEX)

    def plan(self, calls: int, last: int = 0) -> None:
        """The next `calls` calls: consecutive ones on different sets, the first not on the set of
        the call before (the probe's), the last (with two or more calls) on set index `last`.
        Calls beyond the plan (e.g. pytest-benchmark's cProfile pass) go on rotating, but their
        results are not the ones checked."""
        count = len(self.numbers)
        self.calls, self.planned = 0, max(calls, 1)
        self.schedule = [(last + self.planned - 1 - j) % count for j in range(self.planned)]
        previous = self.numbers.index(self.last_set) if self.last_set is not None else None
        if self.schedule[0] == previous:
            taken = {previous, *self.schedule[1:2]}
            self.schedule[0] = next(i for i in range(count) if i not in taken)

    def setup(self) -> tuple[tuple, dict]:
        j = self.calls
        index = (self.schedule[j] if j < self.planned
                 else (self.schedule[-1] + 1 + j - self.planned) % len(self.numbers))
        self.calls += 1
        self.last_set = self.numbers[index]
        source, b = self.sets[self.last_set], self.buffers
        for name in ("x", "h0", "c0", "dy", "dh_n", "dc_n"):
            getattr(b, name).copy_(getattr(source, name))
        if self.phase == "backward":
            self.impl.forward(b.x, b.h0, b.c0)
        synchronize(self.device)
        if self.phase == "forward":
            return (b.x, b.h0, b.c0), {}
        if self.phase == "backward":
            return (b.dy, b.dh_n, b.dc_n), {}
        return (b.x, b.h0, b.c0, b.dy, b.dh_n, b.dc_n), {}

    def _keep(self, result: object) -> None:
        if self.calls <= self.planned:
            self.result, self.result_set = result, self.last_set

    def _forward(self, x, h0, c0):
        out = self.impl.forward(x, h0, c0)
        synchronize(self.device)
        self._keep(out)
        return out

    def _backward(self, dy, dh_n, dc_n):
        grads = self.impl.backward(dy, dh_n, dc_n)
        synchronize(self.device)
        self._keep(grads)
        return grads

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
