"""How a phase is timed: device completion inside the timed region, rounds chosen from a probe."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import torch

from harness.impl import Impl
from harness.memory import peak_bytes
from harness.problem import Inputs


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


def phase_functions(impl: Impl, inputs: Inputs, phase: str, device: str
                    ) -> tuple[Callable[[], object], Callable[[], None] | None]:
    """(target, setup) for pytest-benchmark's pedantic mode. Every target ends in a device sync;
    a backward's setup runs a fresh, untimed forward (and syncs, so none of it leaks in)."""
    x, h0, c0, dy, dh_n, dc_n = inputs.x, inputs.h0, inputs.c0, inputs.dy, inputs.dh_n, inputs.dc_n

    def forward():
        out = impl.forward(x, h0, c0)
        synchronize(device)
        return out

    def backward():
        grads = impl.backward(dy, dh_n, dc_n)
        synchronize(device)
        return grads

    def total():
        impl.forward(x, h0, c0)
        return backward()

    if phase == "forward":
        return forward, None
    if phase == "backward":
        return backward, lambda: (forward(), None)[1]
    if phase == "total":
        return total, None
    raise ValueError(f"unknown phase {phase!r}")


def probe(target: Callable[[], object], setup: Callable[[], None] | None, device: str) -> tuple[float, int | None]:
    """One untimed-by-the-benchmark call (also a warm-up): its seconds size the rounds, and on
    CUDA its peak allocation is the phase's peak memory."""
    if setup is not None:
        setup()
    seconds = []

    def timed():
        start = time.perf_counter()
        target()
        seconds.append(time.perf_counter() - start)

    if device == "cuda":
        peak = peak_bytes(timed, device)
    else:
        timed()
        peak = None
    return seconds[0], peak


def choose_rounds(seconds_per_call: float, max_time: float, min_rounds: int, max_rounds: int = 1000) -> int:
    """As many rounds as fit in max_time, at least min_rounds (medians and IQR need several)."""
    fit = math.ceil(max_time / max(seconds_per_call, 1e-9))
    return max(min_rounds, min(fit, max_rounds))
