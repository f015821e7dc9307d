"""`modular`: the Caffe LSTM's per-timestep design, unrolled, with autograd doing the backward.

Each step applies its own input projection and the shared recurrent projection, then an LSTM
unit. Nothing is hoisted out of the loop: autograd accumulates the shared weights' gradients
step by step (T small GEMMs each reading and writing the whole 4H x H gradient), which is
exactly the cost the fused design removes. This is the baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.contract.autograd_impl import AutogradImpl
from harness.contract.inputs import LayerWeights
from harness.contract.problem import Problem
from harness.contract.registry import register


def lstm_unit(pre: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    i, f, g, o = pre.chunk(4, dim=1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@register
class ModularLSTM(AutogradImpl):
    name = "modular"
    description = ("the Caffe LSTM's modular design: per-step input + recurrent projection and LSTM unit, autograd "
                   "backward")
    gate_clipping = True

    def __init__(self, problem: Problem, weights: list[LayerWeights]) -> None:
        super().__init__(problem, weights)
        self.weights = [w.map(lambda t: t.detach().clone().requires_grad_(True)) for w in weights]

    def parameters(self) -> list[LayerWeights]:
        return self.weights


    def _forward(self, x, h0, c0):
        layer_input, h_last, c_last = x, [], []
        for layer, w in enumerate(self.weights):
            h, c = h0[layer], c0[layer]
            steps = []
            for x_t in layer_input:
                pre = F.linear(x_t, w.w_ih, w.b_ih) + F.linear(h, w.w_hh, w.b_hh)
                self._gate_inputs.append(pre)  # only a reference: lets backward clip its gradient
                h, c = lstm_unit(pre, c)
                steps.append(h)
            layer_input = torch.stack(steps)
            h_last.append(h)
            c_last.append(c)
        return layer_input, torch.stack(h_last), torch.stack(c_last)
