"""One grid point (`Problem`): its sizes, precision mode and device, and its GEMM FLOPs.

Imports no torch (the reporting side reads problems from results files without it); the
tensors live in harness.contract.inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Precision modes and the torch dtype each stores, by name. Kept here so the problem, the
# agreement table and the option parser all agree on which modes exist. tf32 stores float32 and
# lets cuBLAS and cuDNN round GEMM inputs to TF32 on tensor cores.
DTYPE_STORAGE = {"float32": "float32", "float64": "float64", "tf32": "float32", "bfloat16": "bfloat16",
                 "float16": "float16"}
DTYPES = tuple(DTYPE_STORAGE)


@dataclass(frozen=True)
class Support:
    """Whether an implementation can run a problem here. `ok` with `timed` False: it can be checked
    for agreement but its times would mean nothing (Triton's CPU interpreter, say); `reason` says why."""

    ok: bool
    reason: str = ""
    timed: bool = True

    @classmethod
    def yes(cls) -> Support:
        return cls(True)

    @classmethod
    def no(cls, reason: str) -> Support:
        return cls(False, reason, timed=False)

    @classmethod
    def check_only(cls, reason: str) -> Support:
        """Agreement yes, timing no: the speed suite lists it as not timed, with `reason`."""
        return cls(True, reason, timed=False)


def torch_dtype(dtype: str):
    """The torch dtype that stores precision mode `dtype`."""
    import torch

    return getattr(torch, DTYPE_STORAGE[dtype])


def dtype_support(device: str, dtype: str) -> Support:
    """Whether `device` runs precision mode `dtype` as a real mode (not an emulation), and why not."""
    import torch

    if dtype in ("float32", "float64"):
        return Support.yes()
    if dtype == "bfloat16":
        if device == "cpu" or torch.cuda.is_bf16_supported():
            return Support.yes()
        return Support.no("bfloat16 needs a GPU of compute capability 8.0 or newer")
    if device == "cpu":
        return Support.no(f"{dtype} is a GPU mode (the CPU would emulate it, not run it)")
    if dtype == "tf32" and torch.cuda.get_device_capability()[0] < 8:
        return Support.no("tf32 needs tensor cores of compute capability 8.0 or newer")
    return Support.yes()
DEVICES = ("cpu", "cuda")
PHASES = ("forward", "backward", "total")


class ProblemError(ValueError):
    """A problem field is out of range; the message names the field."""


@dataclass(frozen=True)
class Problem:
    batch: int
    length: int
    input_size: int
    hidden: int
    layers: int
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("batch", "length", "input_size", "hidden", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProblemError(f"{name} must be a positive integer, got {value!r}")
        if self.dtype not in DTYPES:
            raise ProblemError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise ProblemError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    @property
    def torch_dtype(self):
        return torch_dtype(self.dtype)

    @property
    def id(self) -> str:
        return (f"B{self.batch}-T{self.length}-I{self.input_size}-H{self.hidden}"
                f"-L{self.layers}-{self.dtype}-{self.device}")

    @property
    def shape(self) -> str:
        """Human-readable shape for report headings."""
        return (f"batch {self.batch}, length {self.length}, {self.layers} layer(s), "
                f"input {self.input_size}, hidden {self.hidden}, {self.dtype}")

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.hidden

    def flops(self, phase: str) -> int:
        """GEMM FLOPs of one phase. Forward per layer: 2*T*B*4H*(I_l + H).

        Backward does the four GEMM families of the same sizes (dx, dh, dW_ih, dW_hh):
        twice the forward. Element-wise gate math is not counted.
        """
        forward = sum(
            2 * self.length * self.batch * 4 * self.hidden * (self.layer_input_size(l) + self.hidden)
            for l in range(self.layers)
        )
        factor = {"forward": 1, "backward": 2, "total": 3}
        if phase not in factor:
            raise ValueError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")
        return forward * factor[phase]

    def replace(self, **changes) -> Problem:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
