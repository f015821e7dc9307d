"""Shared plumbing for implementations whose backward is torch.autograd."""

from __future__ import annotations

import torch

from harness.contract.impl import Grads, Impl, Outputs
from harness.contract.inputs import LayerWeights


class AutogradImpl(Impl):
    """Forward builds an autograd graph over `self.parameters()`; backward asks autograd.

    Subclasses implement `_forward(x, h0, c0) -> (y, h_n, c_n)` on inputs that require grad,
    and `parameters()` returning per-layer LayerWeights of leaf tensors in canonical layout.
    One that appends each step's gate pre-activations to `self._gate_inputs` during `_forward`
    supports gate clipping: backward hooks them when asked.
    """

    def parameters(self) -> list[LayerWeights]:
        raise NotImplementedError

    def _forward(self, x, h0, c0):
        raise NotImplementedError

    def parameter_tensors(self) -> list[torch.Tensor]:
        """Every parameter tensor: the memory probe does not count them as kept for backward."""
        return [t for layer in self.parameters() for t in layer.tensors()]

    def set_weights(self, weights: list[LayerWeights]) -> None:
        """Copy into the existing parameters: no new module, no new graph leaves."""
        with torch.no_grad():
            for mine, new in zip(self.parameters(), weights, strict=True):
                for a, b in zip(mine.tensors(), new.tensors(), strict=True):
                    a.copy_(b)

    def forward(self, x, h0, c0) -> Outputs:
        self._gate_inputs = []
        self._leaves = [t.detach().requires_grad_(True) for t in (x, h0, c0)]
        with torch.enable_grad():
            self._outputs = self._forward(*self._leaves)
        return Outputs(*(t.detach() for t in self._outputs))

    def backward(self, dy, dh_n, dc_n, gate_clip=None) -> Grads:
        if gate_clip is not None:
            if not self.gate_clipping:
                raise NotImplementedError(f"{self.name} cannot clip gate gradients inside backward")
            for pre in self._gate_inputs:
                pre.register_hook(lambda grad: grad.clamp(-gate_clip, gate_clip))
        params = self.parameter_tensors()
        # Autograd returns None for a tensor that did not take part; a zero gradient is right.
        grads = torch.autograd.grad(self._outputs, self._leaves + params, (dy, dh_n, dc_n),
                                    allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, self._leaves + params, strict=True)]
        self._outputs = self._leaves = self._gate_inputs = None  # the graph is spent; free it now
        dx, dh0, dc0, *flat = grads
        return Grads(dx, dh0, dc0, self._canonical_grads(flat))

    def _canonical_grads(self, flat: list[torch.Tensor]) -> list[LayerWeights]:
        """The gradients of parameter_tensors(), in their order, as canonical per-layer weights. An
        implementation whose leaves are in a layout of its own converts them back here."""
        return LayerWeights.from_flat(flat)
