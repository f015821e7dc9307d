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
    return settings


def _read(read: Callable[[], object]) -> object:
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - a getter that raises is itself a state worth recording
        return f"unreadable ({type(exc).__name__}: {exc})"


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
        """Put every changed setting back; returns those that cannot be restored."""
        stuck = []
        settings = _settings()
        for name, value in self.values:
            read, restore = settings[name]
            if _read(read) == value:
                continue
            if restore is None:
                stuck.append(name)
                continue
            try:
                restore(value)
            except Exception:  # noqa: BLE001
                stuck.append(name)
        return stuck


class StateChanged(AssertionError):
    """An implementation changed process-wide state; the message names what changed."""
