"""`triton`: the fused design with its per-step pointwise work in hand-written Triton kernels.

The structure is `fused`'s (and its buffers, GEMMs and weight handling are inherited from it):
the input projection of all steps with both biases is ONE GEMM; each step adds h_{t-1} @ W_hh^T
into its row of the gate buffer (torch.addmm: cuBLAS on CUDA), then one Triton kernel activates
the gates in place and writes c_t, tanh(c_t) and h_t. Backward walks time in reverse: one kernel
for dA_t and dc_{t-1}, one GEMM for dh_{t-1}; then dW_ih and dW_hh as ONE GEMM over all steps,
the bias gradient as one sum and dx as one GEMM. Gates stay in canonical order i, f, g, o.

triton is imported lazily: without it this module still registers, and says why it cannot run.
On the CPU the kernels run only under Triton's interpreter (TRITON_INTERPRET=1 when the process
starts: @triton.jit picks interpreter or compiler as each kernel is defined; older Triton read it
at import), for agreement checks: it executes them with NumPy, so its times mean nothing.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from harness.contract.impl import Support
from harness.contract.inputs import LayerWeights
from harness.contract.layout import gate_rows
from harness.contract.problem import Problem
from harness.contract.registry import register
from impls.fused import FusedLSTM

KERNELS = "impls.kernels.triton_cell_kernels"
NOT_INSTALLED = "Triton is not installed (pip install 'lstm-harness[peers]')"
NEEDS_GPU = "Triton needs a GPU; the interpreter is not a speed"


@functools.lru_cache(maxsize=1)
def _triton():
    """The triton module, or None when it cannot be imported."""
    try:
        return importlib.import_module("triton")
    except Exception:  # noqa: BLE001 - any import failure just means "no Triton here"
        return None


def interpreter_active() -> bool:
    """TRITON_INTERPRET=1, as triton itself reads it, and the kernels defined under it: the
    decorator picks interpreter or compiler once, when the kernels module is first imported."""
    triton = _triton()
    if triton is None or os.environ.get("TRITON_INTERPRET") != "1":
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and not knobs.runtime.interpret:
        return False
    try:
        return importlib.import_module(KERNELS).interpreted()
    except Exception:  # noqa: BLE001 - a broken install: not the interpreter; building it shows the error
        return False


@register
class TritonLSTM(FusedLSTM):
    name = "triton"
    description = ("fused design with hand-written Triton kernels for each step's gate math (forward and "
                   "backward), GEMMs left to torch (cuBLAS)")
    gate_clipping = True
    use_packed_gemm = False  # torch.addmm everywhere: on CUDA there is no other path anyway
    use_native_loop = False  # its own per-step kernels replace the loop (_forward_steps, _backward_steps)

    @classmethod
    def supports(cls, problem: Problem) -> Support:
        if _triton() is None:
            return Support.no(NOT_INSTALLED)
        if interpreter_active():
            where = "the CPU" if problem.device == "cpu" else "the CPU, copying every CUDA tensor"
            return Support.check_only(f"{NEEDS_GPU} (TRITON_INTERPRET=1 runs its kernels on {where})")
        if problem.device == "cuda":
            return Support.yes()
        if os.environ.get("TRITON_INTERPRET") == "1":  # set, but after the kernels were defined
            return Support.no(f"{NEEDS_GPU} (TRITON_INTERPRET=1 was set after its kernels were defined: "
                              "set it when the process starts)")
        return Support.no(f"{NEEDS_GPU} (TRITON_INTERPRET=1 runs its kernels on the CPU for agreement only)")

    @classmethod
    def backend(cls, problem: Problem) -> str:
        triton = _triton()
        if triton is None:
            return NOT_INSTALLED
        if interpreter_active():
            return f"Triton {triton.__version__} interpreter on the CPU (NumPy; correctness only)"
        if problem.device == "cuda":
            return f"Triton {triton.__version__} kernels + cuBLAS GEMMs (cuda)"
        return f"Triton {triton.__version__}: needs a GPU here"

    def __init__(self, problem: Problem, weights: list[LayerWeights]) -> None:
        super().__init__(problem, weights)
        self.kernels = importlib.import_module(KERNELS)

    @staticmethod
    def _gate_permutation(hidden: int) -> torch.Tensor:
        return gate_rows(hidden, "ifgo")  # canonical: the kernels index the four gates H apart

    def _forward_steps(self, layer, T: int, H: int) -> None:
        gates, hs, cs, tcs = (t.unbind(0) for t in (layer.gates, layer.h, layer.c, layer.tanh_c))
        for t in range(T):
            layer.forward_gemm(hs[t], gates[t], out=gates[t])  # + h_{t-1} @ W_hh^T, in place
            self.kernels.forward_step(gates[t], cs[t], cs[t + 1], tcs[t], hs[t + 1])

    def _backward_steps(self, layer, dh, dc, d_out, gate_clip):
        # A tensor, not a kernel argument: Triton passes Python floats as float32.
        clip = None if gate_clip is None else torch.full(
            (1,), gate_clip, dtype=self.kernels.compute_dtype(dh.dtype), device=dh.device)
        gates, cs, tcs, d_gates = (t.unbind(0) for t in (layer.gates, layer.c, layer.tanh_c, layer.d_gates))
        for t in reversed(range(layer.shape[0])):
            self.kernels.backward_step(gates[t], cs[t], tcs[t], dh, dc, d_gates[t], clip)  # dc: now dc_{t-1}
            # dh_{t-1} = dA_t W_hh (+ dy_{t-1}): the one GEMM per step.
            dh = layer.backward_gemm(d_gates[t], d_out[t - 1] if t > 0 else None, out=dh)
        return dh, dc
