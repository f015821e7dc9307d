"""Process-wide settings an implementation could change and so slow or alter every one after it.

The harness captures them before each implementation runs and compares after: a change fails
that implementation by name and is undone. What held while a row was timed is recorded with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy
import torch


def _flushes_denormals() -> bool:
    # torch.set_flush_denormal has no getter: a float32 subnormal that survives a multiply says no.
    return float(torch.tensor([1e-40], dtype=torch.float32).mul(1.0)) == 0.0


def _setter(module, attr: str) -> Callable[[object], None]:
    return lambda value: setattr(module, attr, value)


def _settings() -> dict[str, tuple[Callable[[], object], Callable[[object], None] | None]]:
    """name -> (read, restore); restore None where torch offers no way back."""
    cuda_matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    settings = {
        "torch.get_num_threads()": (torch.get_num_threads, torch.set_num_threads),
        "torch.get_num_interop_threads()": (torch.get_num_interop_threads, None),
        "torch.get_default_dtype()": (torch.get_default_dtype, torch.set_default_dtype),
        "torch.is_grad_enabled()": (torch.is_grad_enabled, torch.set_grad_enabled),
        "torch.is_inference_mode_enabled()": (torch.is_inference_mode_enabled, None),
        "torch.is_anomaly_enabled()": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
        "torch.are_deterministic_algorithms_enabled()": (
            torch.are_deterministic_algorithms_enabled,
            lambda on: torch.use_deterministic_algorithms(
                on, warn_only=torch.is_deterministic_algorithms_warn_only_enabled())),
        "torch.is_deterministic_algorithms_warn_only_enabled()": (
            torch.is_deterministic_algorithms_warn_only_enabled,
            lambda warn: torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled(),
                                                            warn_only=warn)),
        "torch.get_float32_matmul_precision()": (torch.get_float32_matmul_precision,
                                                 torch.set_float32_matmul_precision),
        "torch.backends.cuda.matmul.allow_tf32": (lambda: cuda_matmul.allow_tf32, _setter(cuda_matmul, "allow_tf32")),
        "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction": (
            lambda: cuda_matmul.allow_fp16_reduced_precision_reduction,
            _setter(cuda_matmul, "allow_fp16_reduced_precision_reduction")),
        "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction": (
            lambda: cuda_matmul.allow_bf16_reduced_precision_reduction,
            _setter(cuda_matmul, "allow_bf16_reduced_precision_reduction")),
        "torch.backends.cudnn.enabled": (lambda: cudnn.enabled, _setter(cudnn, "enabled")),
        "torch.backends.cudnn.allow_tf32": (lambda: cudnn.allow_tf32, _setter(cudnn, "allow_tf32")),
        "torch.backends.cudnn.benchmark": (lambda: cudnn.benchmark, _setter(cudnn, "benchmark")),
        "torch.backends.cudnn.deterministic": (lambda: cudnn.deterministic, _setter(cudnn, "deterministic")),
        "torch.backends.mkldnn.enabled": (lambda: torch.backends.mkldnn.enabled,
                                          _setter(torch.backends.mkldnn, "enabled")),
        "flush denormals (torch.set_flush_denormal)": (_flushes_denormals, torch.set_flush_denormal),
        "numpy.geterr()": (lambda: tuple(sorted(numpy.geterr().items())), lambda v: numpy.seterr(**dict(v))),
    }
    if hasattr(torch, "get_default_device"):
        settings["torch.get_default_device()"] = (lambda: str(torch.get_default_device()), torch.set_default_device)
    settings.update(_newer_matmul_flags(cuda_matmul))
    # Last: restoring an old flag above also writes these, so they are put back after it.
    settings.update(_fp32_precisions())
    return settings


def _newer_matmul_flags(cuda_matmul) -> dict[str, tuple[Callable[[], object], Callable[[object], None]]]:
    """fp16 accumulation, and the split-K half of the reduced-precision flags (restoring the flag itself
    with a bool resets it to True), where this torch has them."""
    found = {}
    if hasattr(cuda_matmul, "allow_fp16_accumulation"):
        found["torch.backends.cuda.matmul.allow_fp16_accumulation"] = (
            lambda: cuda_matmul.allow_fp16_accumulation, _setter(cuda_matmul, "allow_fp16_accumulation"))
    for flag in ("allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction"):
        if hasattr(cuda_matmul, f"{flag}_split_k"):
            found[f"torch.backends.cuda.matmul.{flag}_split_k"] = (
                lambda flag=flag: getattr(cuda_matmul, f"{flag}_split_k"),
                lambda split_k, flag=flag: setattr(cuda_matmul, flag, (getattr(cuda_matmul, flag), split_k)))
    return found


def _fp32_precisions() -> dict[str, tuple[Callable[[], object], Callable[[object], None]]]:
    """torch's per-backend and per-operation fp32 precision settings (torch 2.9+), where they exist:
    global, then per backend, then per operation."""
    backends = torch.backends
    nodes = {"torch.backends": lambda: backends, "torch.backends.cuda.matmul": lambda: backends.cuda.matmul,
             "torch.backends.cudnn": lambda: backends.cudnn, "torch.backends.cudnn.rnn": lambda: backends.cudnn.rnn,
             "torch.backends.cudnn.conv": lambda: backends.cudnn.conv, "torch.backends.mkldnn": lambda: backends.mkldnn,
             **{f"torch.backends.mkldnn.{op}": (lambda op=op: getattr(backends.mkldnn, op))
                for op in ("matmul", "rnn", "conv")}}
    return {f"{name}.fp32_precision": (lambda node=node: node().fp32_precision, _setter_of(node, "fp32_precision"))
            for name, node in with_fp32_precision(nodes).items()}


def with_fp32_precision(nodes: dict[str, Callable[[], object]]) -> dict[str, Callable[[], object]]:
    """The entries of `nodes` (name -> getter of a torch.backends object) whose object has the
    fp32_precision setting: torch before 2.9 has none, and some builds lack some backends."""
    found = {}
    for name, node in nodes.items():
        try:
            node().fp32_precision  # noqa: B018 - AttributeError where torch predates the API
        except (AttributeError, RuntimeError):
            continue
        found[name] = node
    return found


def _setter_of(get_object: Callable[[], object], attr: str) -> Callable[[object], None]:
    return lambda value: setattr(get_object(), attr, value)


UNREADABLE = "unreadable ("


def _read(read: Callable[[], object]) -> object:
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - a getter that raises is itself a state worth recording
        # e.g. torch's old TF32 getters once the per-operation settings disagree with them
        return f"{UNREADABLE}{type(exc).__name__}: {exc})"


@dataclass(frozen=True)
class ProcessState:
    values: tuple[tuple[str, object], ...]

    @classmethod
    def capture(cls) -> ProcessState:
        return cls(tuple((name, _read(read)) for name, (read, _) in _settings().items()))

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: what held, for the results file."""
        return {name: value if isinstance(value, bool | int | float | str) else str(value)
                for name, value in self.values}

    def changes_since(self, before: ProcessState) -> list[str]:
        """'name: old -> new' for every setting that differs from `before`."""
        old = dict(before.values)
        return [f"{name} {old.get(name)!r} -> {value!r}" for name, value in self.values if old.get(name) != value]

    def restore(self) -> list[str]:
        """Put every changed setting back, in order; returns those that still differ after."""
        settings = _settings()
        for name, value in self.values:
            read, restore = settings[name]
            if restore is None or (isinstance(value, str) and value.startswith(UNREADABLE)) or _read(read) == value:
                continue  # no way back, no value to go back to, or nothing to do
            try:
                restore(value)
            except Exception:  # noqa: BLE001 - judged below, with the rest
                pass
        # Judged at the end: some settings are linked (an old TF32 setter also writes the per-operation
        # ones), so one restored early can be changed again by a later one, and an unreadable one can
        # come back with the others.
        now = dict(ProcessState.capture().values)
        return [name for name, value in self.values if now.get(name) != value]
