"""How a phase is timed: device completion inside the timed region, rounds chosen from a probe."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Iterator

import torch

from harness.contract.device import synchronize
from harness.contract.impl import Impl
from harness.contract.inputs import Inputs
from harness.contract.problem import PHASES
from harness.measuring import memory
from harness.measuring.process_state import with_fp32_precision

# torch's per-operation fp32 precision settings (torch 2.9+), by the key each gets in a results row.
# An operation's own setting wins over its backend's and the global one unless it is "none", so
# pinning the operations makes a mode independent of what anyone set further up.
FP32_OPERATIONS = {
    "matmul_fp32_precision": lambda: torch.backends.cuda.matmul,  # cuBLAS
    "cudnn_rnn_fp32_precision": lambda: torch.backends.cudnn.rnn,
    "cudnn_conv_fp32_precision": lambda: torch.backends.cudnn.conv,
    "mkldnn_matmul_fp32_precision": lambda: torch.backends.mkldnn.matmul,  # oneDNN, the CPU's
    "mkldnn_rnn_fp32_precision": lambda: torch.backends.mkldnn.rnn,
    "mkldnn_conv_fp32_precision": lambda: torch.backends.mkldnn.conv,
}
# cuBLAS flags that let float16 and bfloat16 GEMMs accumulate or reduce in reduced precision; off in
# every mode, so "float16" and "bfloat16" mean float32 accumulation in every implementation alike.
REDUCED_PRECISION = ("allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction",
                     "allow_fp16_accumulation")


def fp32_operations() -> dict[str, object]:
    """The per-operation settings this torch has: record key -> the object with `fp32_precision`."""
    return {key: node() for key, node in with_fp32_precision(FP32_OPERATIONS).items()}


def _read_old(read, nodes: list, tries: tuple[str, ...]):
    """An old-API flag, or None when it cannot be read. Its getter raises when the per-operation
    settings (set through the new API, here or by anyone) disagree with it; then it is read with
    those set to each of `tries` in turn, and they are put back."""
    try:
        return read()
    except RuntimeError:
        if not nodes:
            return None
    saved = [node.fp32_precision for node in nodes]
    try:
        for value in tries:
            for node in nodes:
                node.fp32_precision = value
            try:
                return read()
            except RuntimeError:
                continue
        return None
    finally:
        for node, value in zip(nodes, saved, strict=True):
            node.fp32_precision = value


def _reduction_settings() -> dict[str, object]:
    """The reduced-precision flags this torch has, each as the value that restores it exactly (with
    its split-K companion where there is one: assigning a plain bool resets that to True)."""
    matmul, found = torch.backends.cuda.matmul, {}
    for name in REDUCED_PRECISION:
        if not hasattr(matmul, name):
            continue
        split_k = f"{name}_split_k"
        found[name] = (getattr(matmul, name), getattr(matmul, split_k)) if hasattr(matmul, split_k) \
            else getattr(matmul, name)
    return found


def _set_all(obj: object, values: dict[str, object]) -> None:
    for name, value in values.items():
        setattr(obj, name, value)


def _set_fp32(nodes: dict[str, object], values: dict[str, str]) -> None:
    for key, value in values.items():
        nodes[key].fp32_precision = value


@contextlib.contextmanager
def precision(dtype: str) -> Iterator[dict]:
    """Pin the arithmetic of every library for agreement and timing, and yield what held.

    TF32 is on only in the tf32 mode, off everywhere else, so cuDNN and cuBLAS paths compute
    alike (torch defaults cuDNN's TF32 to on and cuBLAS's to off: left alone, nn.LSTM would run in
    TF32 against strict-fp32 hand-written kernels). Pinned through the per-operation settings where
    torch has them (the kernels read those), and through the old flags too, so that code reading the
    old getters inside (torch.backends.cudnn.flags(), torch.compile) sees a consistent state instead
    of an error. oneDNN's fp32 operations are pinned to "ieee" in every mode, and cuBLAS's
    reduced-precision reductions and fp16 accumulation off. CuPy's TF32 switch is an environment
    variable read at its import: recorded, not set. Everything is restored on exit, after an
    exception too.
    """
    tf32 = dtype == "tf32"
    nodes, matmul, cudnn = fp32_operations(), torch.backends.cuda.matmul, torch.backends.cudnn
    pinned = {key: ("tf32" if tf32 and not key.startswith("mkldnn") else "ieee") for key in nodes}
    # "ieee" for both matmul settings agrees with every old matmul precision; cuDNN's old flag is a
    # bool that one of "ieee" and "tf32" for its two operations agrees with.
    old_matmul = _read_old(torch.get_float32_matmul_precision,
                           [n for k, n in nodes.items() if k.endswith("matmul_fp32_precision")], ("ieee",))
    old_cudnn = _read_old(lambda: cudnn.allow_tf32, [n for k, n in nodes.items() if k.startswith("cudnn_")],
                          ("ieee", "tf32"))
    saved_nodes = {key: node.fp32_precision for key, node in nodes.items()}
    saved_reductions = _reduction_settings()
    with contextlib.ExitStack() as restore:
        # Run last in first out: the old setters also write the per-operation settings, so they go back
        # first and the per-operation ones after them.
        restore.callback(_set_all, matmul, saved_reductions)
        restore.callback(_set_fp32, nodes, saved_nodes)
        if old_cudnn is not None:
            restore.callback(setattr, cudnn, "allow_tf32", old_cudnn)
            cudnn.allow_tf32 = tf32
        if old_matmul is not None:
            restore.callback(torch.set_float32_matmul_precision, old_matmul)
            matmul.allow_tf32 = tf32
        for key, value in pinned.items():
            nodes[key].fp32_precision = value
        for name in saved_reductions:
            setattr(matmul, name, False)
        yield _record(nodes)


def _record(nodes: dict[str, object]) -> dict[str, object]:
    """What holds, read back: the old flags, the per-operation settings, the reduced-precision flags,
    and CuPy's TF32 switch (CuPy reads CUPY_TF32 once, at import)."""
    matmul = torch.backends.cuda.matmul
    record = {"matmul_allow_tf32": _read(lambda: matmul.allow_tf32),
              "cudnn_allow_tf32": _read(lambda: torch.backends.cudnn.allow_tf32)}
    record.update({key: node.fp32_precision for key, node in nodes.items()})
    record.update({f"matmul_{name}": getattr(matmul, name) for name in REDUCED_PRECISION if hasattr(matmul, name)})
    record["cupy_tf32"] = os.environ.get("CUPY_TF32", "0")
    return record


def _read(getter) -> object:
    try:
        return getter()
    except RuntimeError as exc:
        return f"unreadable ({exc})"


class TimedCalls:
    """setup and target of the rounds of one phase (harness.measuring.rounds).

    Every call runs on one fixed set of input buffers, and each call's setup (outside the timed
    region) copies the next of the point's timed input sets into them: consecutive calls never
    see the same values, and a result cached from an earlier call, keyed by tensor address or
    identity, or state left over from it, shows up as a wrong answer. The target keeps a
    reference to its result (no copy, nothing else inside the timed region) for the check after
    timing. Every setup and every target ends in a device sync; a backward's setup runs a fresh
    forward on the same values.

    The harness's own cost is measured as it goes: `inner` holds, per call, the seconds of the
    implementation's calls and the device sync (read by perf_counter inside the target), so a
    round's time minus its `inner` is what the harness added inside the timed region; `rotation`
    holds each setup's input copies (outside it).
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
        self.inner: list[float] = []
        self.rotation: list[float] = []
        self.plan(1, last=self.PROBE_SET_INDEX)

    @property
    def target(self):
        # Looked up, not stored: a stored bound method is a reference cycle, which would keep the
        # buffers and the last result alive into the next phase (and its peak) until a collection.
        return {"forward": self._forward, "backward": self._backward, "total": self._total}[self.phase]

    def plan(self, calls: int, last: int = 0) -> None:
        """The next `calls` calls: consecutive ones on different sets, the first not on the set of
        the call before (the probe's), the last (with two or more calls) on set index `last`.
        Calls beyond the plan (rounds redone for interference) go on rotating; the latest call's
        result is the one checked, against the reference of its own set."""
        count = len(self.numbers)
        self.calls, self.planned = 0, max(calls, 1)
        self.schedule = [(last + self.planned - 1 - j) % count for j in range(self.planned)]
        previous = self.numbers.index(self.last_set) if self.last_set is not None else None
        if self.schedule[0] == previous:
            taken = {previous, *self.schedule[1:2]}
            self.schedule[0] = next(i for i in range(count) if i not in taken)

    def setup(self) -> tuple[tuple, dict]:
        # The previous call's result is freed here, outside the timed region: dropped when the next call's
        # result replaced it, its memory would be given back inside that call's timed region.
        self.result = None
        j = self.calls
        index = (self.schedule[j] if j < self.planned
                 else (self.schedule[-1] + 1 + j - self.planned) % len(self.numbers))
        self.calls += 1
        self.last_set = self.numbers[index]
        source, b = self.sets[self.last_set], self.buffers
        started = time.perf_counter()
        for name in ("x", "h0", "c0", "dy", "dh_n", "dc_n"):
            getattr(b, name).copy_(getattr(source, name))
        synchronize(self.device)
        self.rotation.append(time.perf_counter() - started)
        if self.phase == "backward":
            self.impl.forward(b.x, b.h0, b.c0)
        synchronize(self.device)
        if self.phase == "forward":
            return (b.x, b.h0, b.c0), {}
        if self.phase == "backward":
            return (b.dy, b.dh_n, b.dc_n), {}
        return (b.x, b.h0, b.c0, b.dy, b.dh_n, b.dc_n), {}

    def _keep(self, result: object) -> None:
        # The latest call's, whichever it is: rounds redone for interference run past the plan.
        self.result, self.result_set = result, self.last_set

    def _forward(self, x, h0, c0):
        started = time.perf_counter()
        out = self.impl.forward(x, h0, c0)
        synchronize(self.device)
        self.inner.append(time.perf_counter() - started)
        self._keep(out)
        return out

    def _backward(self, dy, dh_n, dc_n):
        started = time.perf_counter()
        grads = self.impl.backward(dy, dh_n, dc_n)
        synchronize(self.device)
        self.inner.append(time.perf_counter() - started)
        self._keep(grads)
        return grads

    def _total(self, x, h0, c0, dy, dh_n, dc_n):
        started = time.perf_counter()
        self.impl.forward(x, h0, c0)
        grads = self.impl.backward(dy, dh_n, dc_n)
        synchronize(self.device)
        self.inner.append(time.perf_counter() - started)
        self._keep(grads)
        return grads

    def reset_costs(self) -> None:
        self.inner.clear()
        self.rotation.clear()

    def harness_costs(self, round_seconds: list[float], call_numbers: list[int]) -> tuple[float, float] | None:
        """(median seconds the harness added inside the timed region per round, median seconds of
        input rotation per round) over the kept timed rounds, whose times pytest-benchmark's timer
        measured as `round_seconds` on the calls numbered `call_numbers` (0: the first call since
        reset_costs); None when the counts do not line up."""
        if not round_seconds or len(round_seconds) != len(call_numbers) \
                or max(call_numbers) >= min(len(self.inner), len(self.rotation)):
            return None
        inner = [self.inner[n] for n in call_numbers]
        rotation = [self.rotation[n] for n in call_numbers]
        # Medians as pytest-benchmark takes them (statistics.median: the mean of the middle two).
        outside = [r - i for r, i in zip(round_seconds, inner, strict=True)]
        return statistics.median(outside), statistics.median(rotation)


def probe(calls: TimedCalls, baseline: int | None = None) -> tuple[float, int | None]:
    """One call that the benchmark does not time (also a warm-up): its seconds size the rounds,
    and on CUDA its peak allocation above `baseline` (harness.measuring.memory.peak_bytes) is the phase's
    peak memory."""
    args, kwargs = calls.setup()
    seconds = []

    def timed():
        start = time.perf_counter()
        calls.target(*args, **kwargs)
        seconds.append(time.perf_counter() - start)

    if memory.tracks_allocations(calls.device):
        peak = memory.peak_bytes(timed, calls.device, baseline)
    else:
        timed()
        peak = None
    return seconds[0], peak


def choose_rounds(seconds_per_call: float, max_time: float, min_rounds: int, max_rounds: int = 1000) -> int:
    """As many rounds as fit in max_time, at least min_rounds (medians and IQR need several)."""
    fit = math.ceil(max_time / max(seconds_per_call, 1e-9))
    return max(min_rounds, min(fit, max_rounds))
