"""The implementation contract: what an LSTM must provide to be validated and timed.

Life cycle, as the harness drives it:
    impl = ImplClass(problem, weights)      # convert canonical weights once, never timed
    out = impl.forward(x, h0, c0)           # training-mode forward, keeps what backward needs
    grads = impl.backward(dy, dh_n, dc_n)   # gradients of the last forward, canonical layout
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.contract.inputs import LayerWeights
from harness.contract.problem import Problem, Support  # noqa: F401 - Support: part of this module's API


@dataclass
class Outputs:
    y: torch.Tensor  # [T, B, H]
    h_n: torch.Tensor  # [L, B, H]
    c_n: torch.Tensor  # [L, B, H]

    def named(self) -> dict[str, torch.Tensor]:
        return {"y": self.y, "h_n": self.h_n, "c_n": self.c_n}


@dataclass
class Grads:
    dx: torch.Tensor
    dh0: torch.Tensor
    dc0: torch.Tensor
    weights: list[LayerWeights]  # d/dW_ih, d/dW_hh, d/db_ih, d/db_hh per layer

    def named(self) -> dict[str, torch.Tensor]:
        named = {"dx": self.dx, "dh0": self.dh0, "dc0": self.dc0}
        for layer, grads in enumerate(self.weights):
            for field in LayerWeights.FIELDS:
                named[f"d{field}[{layer}]"] = getattr(grads, field)
        return named


class Impl(abc.ABC):
    """Base class of every LSTM implementation.

    Subclasses set `name` and `description`, and may override `supports`, `backend` and
    `set_weights`. One that can clip gate gradients inside backward sets `gate_clipping`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    # True: backward(..., gate_clip=theta) clamps every gate pre-activation gradient to
    # [-theta, theta] before it propagates (the Caffe LSTM's clipping_threshold).
    gate_clipping: ClassVar[bool] = False

    def __init__(self, problem: Problem, weights: list[LayerWeights]) -> None:
        self.problem = problem

    @classmethod
    def supports(cls, problem: Problem) -> Support:
        """Whether this implementation can run `problem` here, and why not."""
        return Support.yes()

    @classmethod
    def backend(cls, problem: Problem) -> str:
        """Label of what actually computes on `problem`'s device (kernel library, version)."""
        return f"PyTorch {torch.__version__} ops ({problem.device})"

    def saved_bytes(self) -> int | None:
        """Bytes the last forward keeps for backward, for implementations outside autograd
        (autograd ones are measured through saved-tensor hooks). None: cannot say."""
        return None

    def parameter_tensors(self) -> list[torch.Tensor]:
        """The weights this implementation holds, which the memory probe must not count as kept
        for backward. Default: none kept apart from activations."""
        return []

    def set_weights(self, weights: list[LayerWeights]) -> None:
        """Take new canonical weights (a training step). Default: convert them afresh: a new
        instance of this class is built from `weights` and this object takes over its state
        (its __dict__), so __init__ never runs again on a live object."""
        fresh = type(self)(self.problem, weights)
        self.__dict__.clear()
        self.__dict__.update(fresh.__dict__)

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> Outputs:
        """Training-mode forward. Returned tensors may alias workspace reused by the next call."""

    @abc.abstractmethod
    def backward(self, dy: torch.Tensor, dh_n: torch.Tensor, dc_n: torch.Tensor,
                 gate_clip: float | None = None) -> Grads:
        """Gradients of the last forward, in canonical layout. They may alias one another or
        workspace: copy before changing them in place."""
