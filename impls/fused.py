"""`fused`: the seed's fast design in PyTorch with a hand-written backward.

Gates are reordered to i, f, o, g so the three sigmoid gates are one contiguous block. The
input projection of all T steps (both biases folded in) is ONE GEMM; each step does one
recurrent GEMM into place and the gate math in place. Backward walks time in reverse with one
GEMM per step for dh, then computes the recurrent-weight gradient as ONE GEMM over all steps
(h_0 included: hidden states live in a [T+1, B, H] buffer whose row 0 is h_0), the input-weight
gradient, the bias gradient and dx as one operation each. No autograd graph anywhere.
"""

from __future__ import annotations

import torch

from harness.impl import Grads, Impl, Outputs
from harness.layout import sigmoid_gates_first
from harness.problem import LayerWeights, Problem
from harness.registry import register


class _Layer:
    """One layer's weights in fused layout and its activation buffers."""

    def __init__(self, w_x, w_h, bias):
        self.w_x, self.w_h, self.bias = w_x, w_h, bias  # [4H, I], [4H, H], [4H]
        self.shape = None

    def buffers(self, T: int, B: int, H: int, like: torch.Tensor) -> None:
        if self.shape == (T, B):
            return
        new = lambda *s: torch.empty(*s, dtype=like.dtype, device=like.device)  # noqa: E731
        self.gates = new(T, B, 4 * H)  # activated gates i, f, o, g per step
        self.h = new(T + 1, B, H)  # h[0] = h_0, h[t+1] = h_t
        self.c = new(T + 1, B, H)  # c[0] = c_0, c[t+1] = c_t
        self.tanh_c = new(T, B, H)
        self.d_gates = new(T, B, 4 * H)
        self.shape = (T, B)


@register
class FusedLSTM(Impl):
    name = "fused"
    description = ("seed's fused design: one input GEMM for all steps, one GEMM for the recurrent-weight "
                   "gradient, hand-written backward")
    gate_clipping = True

    def __init__(self, problem: Problem, weights: list[LayerWeights]) -> None:
        super().__init__(problem, weights)
        self.perm = self._gate_permutation(problem.hidden).to(problem.device)
        self.inverse_perm = torch.argsort(self.perm)
        self.layers = [
            _Layer(w.w_ih[self.perm].contiguous(), w.w_hh[self.perm].contiguous(),
                   self._combined_bias(w)[self.perm].contiguous())
            for w in weights
        ]

    # Small seams: each is one step of the algorithm, named so tests can plant a bug in it.
    @staticmethod
    def _gate_permutation(hidden: int) -> torch.Tensor:
        return sigmoid_gates_first(hidden)

    @staticmethod
    def _combined_bias(w: LayerWeights) -> torch.Tensor:
        return w.b_ih + w.b_hh

    @staticmethod
    def _recurrent_product(a: torch.Tensor, h_prev: torch.Tensor, w_h: torch.Tensor) -> None:
        a.addmm_(h_prev, w_h.t())

    @staticmethod
    def _recurrent_weight_grad(d_gates: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """dW_h over all steps as ONE GEMM: d_gates [T*B, 4H]^T @ h_prev [T*B, H]."""
        return d_gates.t() @ h_prev

    def saved_bytes(self) -> int:
        """Activations kept for backward: gates, hidden and cell states, tanh(c), per layer."""
        return sum(t.nbytes for layer in self.layers for t in (layer.gates, layer.h, layer.c, layer.tanh_c))

    @torch.no_grad()
    def forward(self, x, h0, c0) -> Outputs:
        T, B, H = x.shape[0], x.shape[1], self.problem.hidden
        self.x = x
        layer_input = x
        for l, layer in enumerate(self.layers):
            layer.buffers(T, B, H, x)
            gates, h, c, tanh_c = layer.gates, layer.h, layer.c, layer.tanh_c
            # All T input projections and both biases in one GEMM, straight into the buffer.
            torch.addmm(layer.bias, layer_input.reshape(T * B, -1), layer.w_x.t(),
                        out=gates.view(T * B, 4 * H))
            h[0].copy_(h0[l])
            c[0].copy_(c0[l])
            for t in range(T):
                a = gates[t]
                self._recurrent_product(a, h[t], layer.w_h)
                a[:, :3 * H].sigmoid_()
                a[:, 3 * H:].tanh_()
                torch.mul(a[:, H:2 * H], c[t], out=c[t + 1])
                c[t + 1].addcmul_(a[:, :H], a[:, 3 * H:])
                torch.tanh(c[t + 1], out=tanh_c[t])
                torch.mul(a[:, 2 * H:3 * H], tanh_c[t], out=h[t + 1])
            layer_input = h[1:]
        # y aliases the top layer's buffer: valid until the next forward, like any workspace.
        return Outputs(layer_input,
                       torch.stack([layer.h[T] for layer in self.layers]),
                       torch.stack([layer.c[T] for layer in self.layers]))

    @torch.no_grad()
    def backward(self, dy, dh_n, dc_n, gate_clip=None) -> Grads:
        T, B = self.layers[0].shape
        H = self.problem.hidden
        grads: list[LayerWeights] = [None] * len(self.layers)
        dh0, dc0 = torch.empty_like(dh_n), torch.empty_like(dc_n)
        d_out = dy
        for l in reversed(range(len(self.layers))):
            layer = self.layers[l]
            gates, d_gates, c, tanh_c = layer.gates, layer.d_gates, layer.c, layer.tanh_c
            # Step-independent factors, vectorised over all T at once:
            # d_gates starts as the activation derivatives (s(1-s) for i, f, o; 1-g^2 for g) ...
            torch.mul(gates, gates, out=d_gates)
            torch.sub(gates[..., :3 * H], d_gates[..., :3 * H], out=d_gates[..., :3 * H])
            d_gates[..., 3 * H:].neg_().add_(1)
            # ... and dc_t/dh_t = o * (1 - tanh(c)^2).
            dc_dh = (1 - tanh_c * tanh_c).mul_(gates[..., 2 * H:3 * H])
            scratch = torch.empty(B, 4 * H, dtype=dy.dtype, device=dy.device)
            dh, dc = dh_n[l].clone(), dc_n[l].clone()
            for t in reversed(range(T)):
                a, da = gates[t], d_gates[t]
                dh.add_(d_out[t])
                torch.mul(dh, tanh_c[t], out=scratch[:, 2 * H:3 * H])  # d o
                dc.addcmul_(dh, dc_dh[t])
                torch.mul(dc, a[:, 3 * H:], out=scratch[:, :H])  # d i
                torch.mul(dc, c[t], out=scratch[:, H:2 * H])  # d f
                torch.mul(dc, a[:, :H], out=scratch[:, 3 * H:])  # d g
                da.mul_(scratch)  # through the nonlinearities: pre-activation gradients
                if gate_clip is not None:
                    da.clamp_(-gate_clip, gate_clip)
                dc.mul_(a[:, H:2 * H])  # dc_{t-1}
                torch.mm(da, layer.w_h, out=dh)  # dh_{t-1}: the one GEMM per step
            dh0[l], dc0[l] = dh, dc
            flat = d_gates.view(T * B, 4 * H)
            layer_input = (self.x if l == 0 else self.layers[l - 1].h[1:]).reshape(T * B, -1)
            d_w_h = self._recurrent_weight_grad(flat, layer.h[:T].reshape(T * B, H))
            d_w_x = flat.t() @ layer_input
            d_b = flat.sum(0)[self.inverse_perm]
            grads[l] = LayerWeights(d_w_x[self.inverse_perm], d_w_h[self.inverse_perm], d_b, d_b.clone())
            d_out = (flat @ layer.w_x).view(T, B, -1)  # dx of this layer = dy of the one below
        return Grads(d_out, dh0, dc0, grads)
