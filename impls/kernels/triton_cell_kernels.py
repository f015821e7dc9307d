"""Triton kernels of the `triton` implementation: the per-step pointwise work of the fused LSTM.

One program handles BLOCK of the step's B*H cells (flattened, masked: any hidden size). Gates are
in canonical order i, f, g, o, a [B, 4H] row per step. Math runs in COMPUTE (float32 for float16,
bfloat16 and float32; float64 for float64) and is stored in each buffer's own dtype.

Imports triton at module level: only impls.triton_lstm imports this, and only once triton is there.
With TRITON_INTERPRET=1 set before this module is first imported (in practice: when the process
starts), the very same kernels run on CPU tensors, by Triton's interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 1024


@triton.jit
def _sigmoid(z):
    # exp of a non-positive number only: no overflow for any z.
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1 / (1 + e), e / (1 + e))


@triton.jit
def _tanh(z):
    e = tl.exp(-2 * tl.abs(z))
    t = (1 - e) / (1 + e)
    return tl.where(z >= 0, t, -t)


@triton.jit
def _as(x, ty: tl.constexpr, BF16: tl.constexpr):
    """x (float32 or float64) in the dtype `ty` of the buffer it is stored to."""
    if BF16:
        # Round to nearest even by hand, on the GPU too (one path, the one the interpreter checks):
        # the interpreter's cast truncates, and truncation biases a cell state that grows each step.
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        y = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        y = x.to(ty)
    return y


@triton.jit
def _forward_step(gates_ptr, c_prev_ptr, c_ptr, tanh_c_ptr, h_ptr, n, H,
                  BLOCK: tl.constexpr, COMPUTE: tl.constexpr, BF16: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    row = offs // H
    g_offs = row * 4 * H + (offs - row * H)  # gate i of cell offs; f, g, o follow H apart
    i = _sigmoid(tl.load(gates_ptr + g_offs, mask=mask).to(COMPUTE))
    f = _sigmoid(tl.load(gates_ptr + g_offs + H, mask=mask).to(COMPUTE))
    g = _tanh(tl.load(gates_ptr + g_offs + 2 * H, mask=mask).to(COMPUTE))
    o = _sigmoid(tl.load(gates_ptr + g_offs + 3 * H, mask=mask).to(COMPUTE))
    c = f * tl.load(c_prev_ptr + offs, mask=mask).to(COMPUTE) + i * g
    tanh_c = _tanh(c)
    gate_ty = gates_ptr.dtype.element_ty
    tl.store(gates_ptr + g_offs, _as(i, gate_ty, BF16), mask=mask)
    tl.store(gates_ptr + g_offs + H, _as(f, gate_ty, BF16), mask=mask)
    tl.store(gates_ptr + g_offs + 2 * H, _as(g, gate_ty, BF16), mask=mask)
    tl.store(gates_ptr + g_offs + 3 * H, _as(o, gate_ty, BF16), mask=mask)
    tl.store(c_ptr + offs, _as(c, c_ptr.dtype.element_ty, BF16), mask=mask)
    tl.store(tanh_c_ptr + offs, _as(tanh_c, tanh_c_ptr.dtype.element_ty, BF16), mask=mask)
    tl.store(h_ptr + offs, _as(o * tanh_c, h_ptr.dtype.element_ty, BF16), mask=mask)


@triton.jit
def _backward_step(gates_ptr, c_prev_ptr, tanh_c_ptr, dh_ptr, dc_ptr, d_gates_ptr, clip_ptr, n, H,
                   CLIP: tl.constexpr, BLOCK: tl.constexpr, COMPUTE: tl.constexpr, BF16: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    row = offs // H
    g_offs = row * 4 * H + (offs - row * H)
    i = tl.load(gates_ptr + g_offs, mask=mask).to(COMPUTE)
    f = tl.load(gates_ptr + g_offs + H, mask=mask).to(COMPUTE)
    g = tl.load(gates_ptr + g_offs + 2 * H, mask=mask).to(COMPUTE)
    o = tl.load(gates_ptr + g_offs + 3 * H, mask=mask).to(COMPUTE)
    tanh_c = tl.load(tanh_c_ptr + offs, mask=mask).to(COMPUTE)
    dh = tl.load(dh_ptr + offs, mask=mask).to(COMPUTE)
    # dc_t in total: what came from step t+1 plus this step's share through h_t.
    dc = tl.load(dc_ptr + offs, mask=mask).to(COMPUTE) + dh * ((1 - tanh_c * tanh_c) * o)
    da_i = dc * (g * (i - i * i))
    da_f = dc * (tl.load(c_prev_ptr + offs, mask=mask).to(COMPUTE) * (f - f * f))
    da_g = dc * (i * (1 - g * g))
    da_o = dh * (tanh_c * (o - o * o))
    if CLIP:  # as `fused`: dA is clamped, dc_{t-1} below is not
        clip = tl.load(clip_ptr).to(COMPUTE)
        da_i = tl.minimum(tl.maximum(da_i, -clip), clip)
        da_f = tl.minimum(tl.maximum(da_f, -clip), clip)
        da_g = tl.minimum(tl.maximum(da_g, -clip), clip)
        da_o = tl.minimum(tl.maximum(da_o, -clip), clip)
    da_ty = d_gates_ptr.dtype.element_ty
    tl.store(d_gates_ptr + g_offs, _as(da_i, da_ty, BF16), mask=mask)
    tl.store(d_gates_ptr + g_offs + H, _as(da_f, da_ty, BF16), mask=mask)
    tl.store(d_gates_ptr + g_offs + 2 * H, _as(da_g, da_ty, BF16), mask=mask)
    tl.store(d_gates_ptr + g_offs + 3 * H, _as(da_o, da_ty, BF16), mask=mask)
    tl.store(dc_ptr + offs, _as(dc * f, dc_ptr.dtype.element_ty, BF16), mask=mask)


def interpreted() -> bool:
    """Whether these kernels were defined under TRITON_INTERPRET=1 (they then run on NumPy)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_forward_step, InterpretedFunction)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _launch(cells: int, dtype: torch.dtype) -> tuple[tuple[int], dict]:
    """Grid and the constexprs and options of a launch: BLOCK no wider than the step needs."""
    block = min(MAX_BLOCK, triton.next_power_of_2(cells))
    compute = tl.float64 if dtype == torch.float64 else tl.float32
    # FMA contraction asked for, not defaulted: Triton 3.9 warns that its default changes in 3.10.
    meta = {"BLOCK": block, "COMPUTE": compute, "BF16": dtype == torch.bfloat16, "enable_fp_fusion": True}
    return (triton.cdiv(cells, block),), meta


def _check(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if not t.is_contiguous():
            raise ValueError(f"triton LSTM kernels need contiguous tensors, got strides {t.stride()}")


def forward_step(gates: torch.Tensor, c_prev: torch.Tensor, c: torch.Tensor, tanh_c: torch.Tensor,
                 h: torch.Tensor) -> None:
    """gates [B, 4H]: pre-activations in, activated gates out (in place); writes c, tanh(c), h [B, H]."""
    _check(gates, c_prev, c, tanh_c, h)
    B, H = c.shape
    grid, meta = _launch(B * H, gates.dtype)
    _forward_step[grid](gates, c_prev, c, tanh_c, h, B * H, H, **meta)


def backward_step(gates: torch.Tensor, c_prev: torch.Tensor, tanh_c: torch.Tensor, dh: torch.Tensor,
                  dc: torch.Tensor, d_gates: torch.Tensor, clip: torch.Tensor | None = None) -> None:
    """From step t's activated gates [B, 4H], c_{t-1}, tanh(c_t) and the total dh_t [B, H]: dA_t into
    d_gates [B, 4H] (clamped to +-clip[0] when `clip`, a 1-element tensor so float64 keeps its
    precision), and dc [B, H] from dc_t to dc_{t-1} in place."""
    _check(gates, c_prev, tanh_c, dh, dc, d_gates)
    B, H = dc.shape
    grid, meta = _launch(B * H, gates.dtype)
    _backward_step[grid](gates, c_prev, tanh_c, dh, dc, d_gates, dc if clip is None else clip, B * H, H,
                         CLIP=clip is not None, **meta)
