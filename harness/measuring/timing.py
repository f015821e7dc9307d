"""How a phase is timed: device completion inside the timed region, rounds chosen from a probe."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Iterator

import torch

from harness.contract.agreement import Agreement, AgreementError
from harness.contract.device import synchronize
from harness.contract.impl import Impl
from harness.contract.inputs import Inputs
from harness.contract.problem import PHASES
from harness.measuring import memory
from harness.measuring.call_checks import CallSets, compare_result
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
    """setup, target and after_call of the rounds of one phase (harness.measuring.rounds).

    Every call gets values of its own: its setup (outside the timed region) copies the current cycle's
    set (harness.measuring.call_checks.CallSets) into this implementation's fixed input buffers, so a
    cache keyed by values never hits and one keyed by tensor address or identity, or state left over
    from an earlier call, shows up as a wrong answer. In the backward phase the setup runs the forward
    first and only then writes the upstream gradients, into new tensors the forward never saw: as in
    training, they do not exist before forward returns. The target keeps a reference to its result (no
    copy, nothing else inside the timed region); after_call, right after it returns and outside the
    timed region, checks it against the reference for its own set when the harness drew that call
    (CallSets.check_plan), and raises AgreementError when it is wrong. Every setup and target ends in a device
    sync.

    The harness's own cost is measured as it goes: `inner` holds, per call, the seconds of the
    implementation's calls and the device sync (read by perf_counter inside the target), so a
    round's time minus its `inner` is what the harness added inside the timed region; `rotation`
    holds each setup's input copies (outside it); `check_seconds` the checks (references included).
    """

    def __init__(self, impl: Impl, sets: CallSets, phase: str, device: str, name: str = "") -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        self.impl, self.sets, self.phase, self.device = impl, sets, phase, device
        self.name = name or getattr(type(impl), "name", type(impl).__name__)
        first = sets.inputs()
        self.buffers = Inputs(first.x.clone(), first.h0.clone(), first.c0.clone(), first.weights,
                              first.dy.clone(), first.dh_n.clone(), first.dc_n.clone())
        self.passed: Inputs | None = None  # exactly what the latest call was given
        self.count_upstream = False  # the probe's: how much the harness allocates for the upstream gradients
        self.upstream_bytes: int | None = None
        self.last_set: int | None = None  # the set whose values the latest call ran on
        self.result: object = None  # the latest call's result ...
        self.result_set: int | None = None  # ... and the set it ran on
        self.inner: list[float] = []
        self.rotation: list[float] = []
        self.plan(0, 1)

    @property
    def target(self):
        # Looked up, not stored: a stored bound method is a reference cycle, which would keep the
        # buffers and the last result alive into the next phase (and its peak) until a collection.
        return {"forward": self._forward, "backward": self._backward, "total": self._total}[self.phase]

    def plan(self, warmup: int, rounds: int) -> None:
        """The next calls: `warmup` unchecked ones, then the timed rounds, `rounds` of them planned, of
        which the harness draws those checked (shared by the implementations with as many)."""
        self.calls, self.warmup = 0, warmup
        self.checks = self.sets.check_plan(rounds)
        self.timed_calls = self.checked_calls = 0
        self.worst_error = 0.0
        self.last_check: Agreement | None = None  # the check of the latest checked call ...
        self._checked_call = -1  # ... and its number
        self.check_seconds = 0.0

    def setup(self) -> tuple[tuple, dict]:
        # The previous call's result is freed here, outside the timed region: dropped when the next call's
        # result replaced it, its memory would be given back inside that call's timed region.
        self.result = None
        number = self.sets.cycle
        started = time.perf_counter()
        source, b = self.sets.inputs(number), self.buffers  # drawn by the cycle's first implementation
        names = ("x", "h0", "c0") if self.phase != "total" else ("x", "h0", "c0", "dy", "dh_n", "dc_n")
        for name in names:
            getattr(b, name).copy_(getattr(source, name))
        synchronize(self.device)
        rotation = time.perf_counter() - started
        self.calls += 1
        self.last_set = number
        if self.phase != "backward":
            self.rotation.append(rotation)
        if self.phase == "forward":
            self.passed = Inputs(b.x, b.h0, b.c0, b.weights, None, None, None)
            return (b.x, b.h0, b.c0), {}
        if self.phase == "total":
            self.passed = b
            return (b.x, b.h0, b.c0, b.dy, b.dh_n, b.dc_n), {}
        self.impl.forward(b.x, b.h0, b.c0)
        synchronize(self.device)
        started = time.perf_counter()
        held = memory.allocated_bytes(self.device) if self.count_upstream else None
        upstream = self._fresh_upstream(source)
        synchronize(self.device)
        # What the harness allocated for them (as the allocator counts it), for the probe's peak: not the
        # implementation's.
        self.upstream_bytes = None if held is None else memory.allocated_bytes(self.device) - held
        self.rotation.append(rotation + time.perf_counter() - started)
        self.passed = Inputs(b.x, b.h0, b.c0, b.weights, *upstream)
        return upstream, {}

    @staticmethod
    def _fresh_upstream(source: Inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """New tensors with the set's upstream gradients: none of them existed while the forward ran."""
        return source.dy.clone(), source.dh_n.clone(), source.dc_n.clone()

    def _keep(self, result: object) -> None:
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

    def after_call(self) -> None:
        """Right after a call, outside the timed region: the drawn calls checked (AgreementError when wrong)."""
        call = self.calls - 1 - self.warmup
        if call < 0:  # a warm-up call
            return
        self.timed_calls += 1
        if self.checks.wants(call):
            check = self.check_latest(f"timed {self.phase} call {call + 1}, on its own inputs (set {self.result_set})")
            if not check.passed:
                raise AgreementError(check)

    def check_latest(self, label: str) -> Agreement:
        """The latest call's result against the reference for the set it ran on."""
        if self.last_check is not None and self._checked_call == self.calls:
            return self.last_check  # checked already, right after the call
        started = time.perf_counter()
        check = compare_result(self.name, self.sets.problem, self.phase, self.result,
                               self.sets.reference(self.result_set), label, self.sets.scales(self.result_set))
        self.check_seconds += time.perf_counter() - started
        self.checked_calls += 1
        if check.passed:
            self.worst_error = max(self.worst_error, check.max_error)
        self.last_check, self._checked_call = check, self.calls
        return check

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
    calls.count_upstream = True
    try:
        args, kwargs = calls.setup()
    finally:
        calls.count_upstream = False
    if baseline is not None and calls.phase == "backward":
        baseline += calls.upstream_bytes or 0  # the harness's upstream gradients, made in the setup
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
    # Never checked, and held on they would sit in the next implementation's probe (interleaved, all probe first).
    calls.passed = calls.result = None
    return seconds[0], peak


def choose_rounds(seconds_per_call: float, max_time: float, min_rounds: int, max_rounds: int = 1000) -> int:
    """As many rounds as fit in max_time, at least min_rounds (medians and IQR need several)."""
    fit = math.ceil(max_time / max(seconds_per_call, 1e-9))
    return max(min_rounds, min(fit, max_rounds))
