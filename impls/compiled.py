"""`compiled`: an LSTM as a PyTorch user would write it and hand to torch.compile.

The input projection of all steps is one eager GEMM (both biases folded in); each step, the
recurrent GEMM and the gate math, is one function compiled by torch.compile (Inductor: C++/OpenMP
kernels on the CPU, Triton kernels on CUDA), forward and backward (AOTAutograd compiles the
step's backward graph, autograd chains the steps). Compiling the step rather than the whole
sequence keeps the compiled graph independent of the length and of the layer count.

Compilation never falls in a timed round: __init__ runs one forward and backward at the
problem's batch and width (the compiled shapes are static) on data of its own (untimed; the
harness reports construction time as the implementation's setup cost). `fullgraph=True`: a
graph break or the recompile limit is an error, never a silent fallback to eager code under the
name `compiled`.
"""

from __future__ import annotations

import functools
import importlib
import shutil
import types

import torch

from harness.contract.autograd_impl import AutogradImpl
from harness.contract.impl import Support
from harness.contract.inputs import LayerWeights, make_inputs
from harness.contract.problem import Problem
from harness.contract.registry import register
from impls.modular import lstm_unit


def lstm_step(x_proj: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor):
    """One step: pre-activations x_proj + h @ W_hh^T, then the LSTM unit; returns (h, c)."""
    return lstm_unit(torch.addmm(x_proj, h, w_hh.t()), c)


@functools.cache
def compiled_step(device: str, dtype: str, batch: int, hidden: int):
    """The step compiled for one device, dtype, batch and width (static shapes: the kernels a user
    who compiles for the shape they train at gets), shared by every instance of that shape.

    Each shape gets a code object of its own: Dynamo caches compiled graphs per code object and
    gives up after 8 recompiles of one (fullgraph=True then raises), which a run over many shapes
    and modes would reach; the length never matters, since the step does not see it."""
    code = lstm_step.__code__.replace(co_name=f"lstm_step_{device}_{dtype}_b{batch}_h{hidden}")
    step = types.FunctionType(code, lstm_step.__globals__, code.co_name)
    return torch.compile(step, fullgraph=True, dynamic=False)


def compile_support(device: str) -> Support:
    """Whether torch.compile can build kernels for `device` here (cheap checks, no compilation)."""
    if not hasattr(torch, "compile"):
        return Support.no(f"torch {torch.__version__} has no torch.compile (needs torch 2.0 or newer)")
    try:
        supported = importlib.import_module("torch._dynamo").is_dynamo_supported()
    except Exception as exc:  # noqa: BLE001 - any failure means this torch cannot compile here
        return Support.no(f"torch.compile is unusable in this torch: {type(exc).__name__}: {exc}")
    if not supported:
        return Support.no(f"torch.compile (Dynamo) does not support this Python with torch {torch.__version__}")
    if device == "cpu":
        from torch._inductor import config
        names = [n for n in config.cpp.cxx if n] or ["g++"]
        if not any(shutil.which(n) for n in names):
            return Support.no(f"Inductor needs a C++ compiler for CPU kernels and found none ({', '.join(names)} "
                              "not on PATH); install one, e.g. apt-get install g++")
    else:
        from torch.utils._triton import has_triton
        if not has_triton():
            return Support.no("Inductor needs Triton for CUDA kernels: pip install triton")
    return Support.yes()


@register
class CompiledLSTM(AutogradImpl):
    name = "compiled"
    description = ("torch.compile of the LSTM step (recurrent GEMM + gate math), forward and backward; "
                   "one eager input GEMM for all steps")

    def __init__(self, problem: Problem, weights: list[LayerWeights]) -> None:
        super().__init__(problem, weights)
        self.weights = [w.map(lambda t: t.detach().clone().requires_grad_(True)) for w in weights]
        self._step = compiled_step(problem.device, problem.dtype, problem.batch, problem.hidden)
        self._warm_up()

    @classmethod
    def supports(cls, problem: Problem) -> Support:
        return compile_support(problem.device)

    @classmethod
    def backend(cls, problem: Problem) -> str:
        kernels = "C++/OpenMP" if problem.device == "cpu" else "Triton"
        return f"torch.compile, Inductor {kernels} kernels (PyTorch {torch.__version__}, {problem.device})"

    def parameters(self) -> list[LayerWeights]:
        return self.weights

    def _forward(self, x, h0, c0):
        T, B = x.shape[:2]
        layer_input, h_last, c_last = x, [], []
        for w, h, c in zip(self.weights, h0, c0, strict=True):
            x_proj = torch.addmm(w.b_ih + w.b_hh, layer_input.reshape(T * B, -1), w.w_ih.t()).view(T, B, -1)
            steps = []
            for x_t in x_proj:
                h, c = self._step(x_t, h, c, w.w_hh)
                steps.append(h)
            layer_input = torch.stack(steps)
            h_last.append(h)
            c_last.append(c)
        return layer_input, torch.stack(h_last), torch.stack(c_last)

    def _warm_up(self) -> None:
        """Compile (or find compiled) the step for this batch, width and dtype: one forward and backward
        of two steps on seeded data of its own, through the same calls the timed ones make."""
        data = make_inputs(self.problem.replace(length=2), seed=1)  # the harness's seeded generator, 2 steps
        self.forward(data.x, data.h0, data.c0)
        self.backward(data.dy, data.dh_n, data.dc_n)
