"""A fast float64 reference: the same mathematics as reference.compute_reference, without autograd.

compute_reference is the trusted definition (textbook equations, autograd for the gradients) but
most of its time goes to autograd's backward: per step it forms a weight-gradient outer product,
scatters the step's slice of the input projection back into a full-size zero tensor, and keeps
per-step bookkeeping. Here the backward is written out by hand (backpropagation through time):

  forward, per layer: the input's share of every gate at all steps in one product, then per step
  the recurrent product and the gate equations; every step's gate activations, c and tanh(c)
  are kept for the backward.
  backward, per layer, in reverse time: per step only what the recurrence needs (dh, dc and the
  gate pre-activation gradients, and dh's recurrent product with W_hh); after the loop every
  weight gradient and the layer's dx each as one product over all steps at once.

Every quantity is float64 and the sums are the same ones compute_reference forms (in another
order), so the two agree to float64 rounding; tests/test_fast_reference.py checks that on every
tensor, and against torch.nn.LSTM.
"""

from __future__ import annotations

import functools

import torch

from harness.contract.impl import Grads, Outputs
from harness.contract.inputs import Inputs, LayerWeights, input_set
from harness.contract.problem import Problem


def _layer_forward(layer_input, h0, c0, w: LayerWeights):
    """One layer's forward. Returns gate activations [T, B, 4H] (i, f, g, o after their
    sigmoid/tanh), h [T+1, B, H] and c [T+1, B, H] with the initial state at index 0, and
    tanh(c) [T, B, H] of steps 1..T."""
    T, B = layer_input.shape[:2]
    H = h0.shape[-1]
    # The input's share of every gate at every step in one product (it does not depend on the
    # recurrence); the biases added in compute_reference's order. Activations overwrite it below.
    gates = layer_input @ w.w_ih.T + w.b_ih + w.b_hh
    h = layer_input.new_empty(T + 1, B, H)
    c = layer_input.new_empty(T + 1, B, H)
    tanh_c = layer_input.new_empty(T, B, H)
    h[0], c[0] = h0, c0
    w_hh_t = w.w_hh.T
    for t in range(T):
        z = gates[t]
        z.addmm_(h[t], w_hh_t)  # pre-activations: input share + h_{t-1} @ W_hh^T
        i, f, g, o = z.chunk(4, dim=-1)  # views into gates[t]: activated in place, kept for backward
        z[:, :2 * H].sigmoid_()  # i and f, side by side: one call
        g.tanh_()
        o.sigmoid_()
        torch.mul(f, c[t], out=c[t + 1])  # c_t = f * c_{t-1} + i * g
        c[t + 1].addcmul_(i, g)
        torch.tanh(c[t + 1], out=tanh_c[t])
        torch.mul(o, tanh_c[t], out=h[t + 1])  # h_t = o * tanh(c_t)
    return gates, h, c, tanh_c


def _layer_backward(layer_input, w: LayerWeights, gates, h, c, tanh_c, dy, dh_n, dc_n):
    """One layer's gradients from its upstream dy [T, B, H] (all steps' h), dh_n and dc_n.

    Returns (dx [T, B, I], dh0, dc0, LayerWeights of the weight gradients).
    """
    T, B, H = dy.shape
    i, f, g, o = gates.chunk(4, dim=-1)  # [T, B, H] views, activations of every step
    c_prev = c[:-1]
    # What the chain rule multiplies by at each step and that depends on the forward only,
    # formed for all steps at once so the loop below does as little as possible:
    #   dc_t       = dc from step t+1 + dh_t * o * (1 - tanh(c_t)^2)
    #   d(pre_i)   = dc_t * g * i * (1 - i)          (sigmoid' = s * (1 - s))
    #   d(pre_f)   = dc_t * c_{t-1} * f * (1 - f)
    #   d(pre_g)   = dc_t * i * (1 - g^2)            (tanh' = 1 - tanh^2)
    #   d(pre_o)   = dh_t * tanh(c_t) * o * (1 - o)
    #   dc_{t-1}   = dc_t * f
    # Formed with the derivative kernels autograd itself uses, each one pass over memory:
    # sigmoid_backward(a, s) = a * (1 - s) * s and tanh_backward(a, t) = a * (1 - t * t).
    dc_from_dh = torch.ops.aten.tanh_backward(o, tanh_c)
    coef = torch.empty_like(gates)
    coef_i, coef_f, coef_g, coef_o = coef.chunk(4, dim=-1)
    torch.ops.aten.sigmoid_backward.grad_input(g, i, grad_input=coef_i)
    torch.ops.aten.sigmoid_backward.grad_input(c_prev, f, grad_input=coef_f)
    torch.ops.aten.tanh_backward.grad_input(i, g, grad_input=coef_g)
    torch.ops.aten.sigmoid_backward.grad_input(tanh_c, o, grad_input=coef_o)
    coef_ifg = coef.view(T, B, 4, H)[:, :, :3]  # the three gates whose gradient goes through dc

    d_gates = torch.empty_like(gates)  # gradients of the gate pre-activations, [T, B, 4H]
    d_ifg = d_gates.view(T, B, 4, H)[:, :, :3]
    d_o = d_gates[..., 3 * H:]
    dh = dy[T - 1] + dh_n  # gradient of h_t: from y at step t and from step t+1 (h_n for the last)
    dc = dc_n  # gradient of c_t from step t+1 (c_n for the last)
    # W_hh's values laid out column-major: the per-step product below runs about 10% faster on the
    # CPU (measured at batch 20, hidden 512) when BLAS reads this operand transposed, as in h @ W_hh^T.
    w_hh = w.w_hh.T.contiguous().T
    for t in reversed(range(T)):
        dc = torch.addcmul(dc, dh, dc_from_dh[t])  # add h_t's path into c_t
        torch.mul(dc.unsqueeze(1), coef_ifg[t], out=d_ifg[t])
        torch.mul(dh, coef_o[t], out=d_o[t])
        dc = dc * f[t]  # -> gradient of c_{t-1}
        # -> gradient of h_{t-1}: through this step's gates (the only per-step product), plus
        # y's gradient at step t-1; at t = 0 it is dh0.
        dh = torch.addmm(dy[t - 1], d_gates[t], w_hh) if t > 0 else d_gates[t] @ w_hh

    # Every weight gradient sums over all steps and rows: one product each over [T*B, 4H].
    flat = d_gates.view(T * B, 4 * H)
    d_w_ih = flat.T @ layer_input.reshape(T * B, -1)
    d_w_hh = flat.T @ h[:-1].reshape(T * B, H)  # h_{t-1} of every step
    d_b = flat.sum(dim=0)  # both biases enter every gate the same way: equal gradients
    dx = (flat @ w.w_ih).view(T, B, -1)
    return dx, dh, dc, LayerWeights(d_w_ih, d_w_hh, d_b, d_b.clone())


@torch.no_grad()
def fast_reference(inputs: Inputs, grads: bool = True) -> tuple[Outputs, Grads | None]:
    """Outputs and (with grads) every gradient, in float64, on the inputs' device: the mathematics
    of compute_reference. Returns new tensors; `inputs` are left as they are. grads=False: the
    forward only, and None for the gradients."""
    # float64 copies where the inputs are another dtype; float64 inputs are used as they are and
    # only read (every result is written into new tensors).
    ref = inputs.to(dtype=torch.float64)
    layer_input = ref.x
    saved, h_n, c_n = [], [], []
    for layer, w in enumerate(ref.weights):
        gates, h, c, tanh_c = _layer_forward(layer_input, ref.h0[layer], ref.c0[layer], w)
        saved.append((layer_input, gates, h, c, tanh_c))
        h_n.append(h[-1])
        c_n.append(c[-1])
        layer_input = h[1:]  # y of this layer: the next layer's input
    outputs = Outputs(layer_input.clone(), torch.stack(h_n), torch.stack(c_n))
    if not grads:
        return outputs, None

    layers = len(ref.weights)
    dh0, dc0, weight_grads = [None] * layers, [None] * layers, [None] * layers
    dy = ref.dy
    for layer in reversed(range(layers)):
        layer_input, gates, h, c, tanh_c = saved[layer]
        # Layer l's y reaches the loss only through layer l+1's input: its dy is that layer's dx.
        dy, dh0[layer], dc0[layer], weight_grads[layer] = _layer_backward(
            layer_input, ref.weights[layer], gates, h, c, tanh_c, dy, ref.dh_n[layer], ref.dc_n[layer])
    # After the loop, dy is layer 0's dx: the gradient of x. A new tensor when x is float64 too.
    return outputs, Grads(dy, torch.stack(dh0), torch.stack(dc0), weight_grads)


@functools.lru_cache(maxsize=4)  # a point's set 0 and zero state, and the next point's
def fast_reference_for(problem: Problem, seed: int = 0, which: int | str = 0) -> tuple[Outputs, Grads]:
    """The fast reference of a numbered or named input set of a problem, computed once per session."""
    return fast_reference(input_set(problem, seed, which))
