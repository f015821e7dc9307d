"""Deliberately wrong LSTMs. Agreement must catch every one of them.

Each is the real fused algorithm with one bug planted through a seam of FusedLSTM.
`mutant_plugin` registers them for a run (`--lstm-plugin mutant_plugin`, tests/ on the path).
"""

import torch

from harness.impl import Outputs
from impls.fused import FusedLSTM


class RowZeroRecurrence(FusedLSTM):
    """The seed's CPU bug: the recurrent product of batch row 0 is added to every row."""

    name = "mutant_row0"
    description = "recurrent product of batch row 0 added to every row"

    @staticmethod
    def _recurrent_product(layer, h_prev, x_proj):
        return x_proj + h_prev[:1] @ layer.w_h.t()


class WrongGateOrder(FusedLSTM):
    """Reads the canonical i, f, g, o block as if it were already i, f, o, g."""

    name = "mutant_gate_order"
    description = "gate block taken in the wrong order"

    @staticmethod
    def _gate_permutation(hidden):
        return torch.arange(4 * hidden)


class ForgetBiasOffByOne(FusedLSTM):
    """A forget-gate bias one too large (the 'forget bias = 1' convention applied twice)."""

    name = "mutant_forget_bias"
    description = "forget-gate bias off by one"

    @staticmethod
    def _combined_bias(w):
        bias = w.b_ih + w.b_hh
        hidden = bias.shape[0] // 4
        bias[hidden:2 * hidden] += 1
        return bias


class RecurrentGradSkipsFirstStep(FusedLSTM):
    """dW_hh summed over steps 1..T-1 only: the first step's h_0 term is lost."""

    name = "mutant_dwhh_first_step"
    description = "recurrent-weight gradient leaves out the first step"

    def _weight_grads(self, d_gates, x, h_prev):
        d_w_x, _ = FusedLSTM._weight_grads(d_gates, x, h_prev)
        batch = self.layers[0].shape[1]  # rows 0..B-1 are step 0
        return d_w_x, d_gates[batch:].t() @ h_prev[batch:]


class NaNOutput(FusedLSTM):
    """A NaN in one output element: must fail whatever the tolerance."""

    name = "mutant_nan"
    description = "one NaN in y"

    def forward(self, x, h0, c0):
        out = super().forward(x, h0, c0)
        y = out.y.clone()
        y[0, 0, 0] = float("nan")
        return Outputs(y, out.h_n, out.c_n)


MUTANTS = [RowZeroRecurrence, WrongGateOrder, ForgetBiasOffByOne, RecurrentGradSkipsFirstStep, NaNOutput]


class Crashes(FusedLSTM):
    """Raises inside forward, as a broken kernel would."""

    name = "broken_crash"
    description = "raises in forward"

    def forward(self, x, h0, c0):
        raise RuntimeError("planted kernel failure")


class RunsOutOfMemory(FusedLSTM):
    """Runs out of memory in backward on the larger problems only."""

    name = "broken_oom"
    description = "out of memory at batch 5"

    def backward(self, dy, dh_n, dc_n):
        if dy.shape[1] >= 5:
            raise torch.OutOfMemoryError("planted: tried to allocate 1 TiB")
        return super().backward(dy, dh_n, dc_n)


BROKEN = [Crashes, RunsOutOfMemory]
