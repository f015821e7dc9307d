"""`fused_graphs`: `fused` with its whole forward and whole backward captured once as CUDA
graphs and replayed. Small batches on a fast GPU are bound by per-step kernel launches (a few
microseconds each, ~10 per step); a replayed graph launches them all at once.

Inputs are copied into the captured (static) tensors before each replay; outputs are the
captured tensors themselves, valid until the next call, as the contract allows. New weights
(set_weights, inherited from `fused`) are written into the very tensors the graphs read,
the backward's transposed copies included, so no graph is re-captured.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.contract.impl import Grads, Outputs, Support
from harness.contract.inputs import LayerWeights
from harness.contract.problem import Problem
from harness.contract.registry import register
from impls.fused import FusedLSTM


class CudaGraphCapture:
    """Records `fn` as a CUDA graph (after warm-up on a side stream, as torch requires)."""

    # One warm-up stream for every capture: cuBLAS allocates a workspace on each new stream's first
    # product and keeps it, which would be charged to whichever point happened to draw a new one.
    _warmup_stream = None

    def record(self, fn: Callable[[], object]) -> object:
        if CudaGraphCapture._warmup_stream is None:
            CudaGraphCapture._warmup_stream = torch.cuda.Stream()
        stream = CudaGraphCapture._warmup_stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            out = fn()
        return out

    def replay(self) -> None:
        self.graph.replay()


class EagerCapture:
    """Stand-in with a graph's semantics (same output tensors, refreshed on replay) that runs
    anywhere: lets everything around the capture be tested without a GPU."""

    def record(self, fn: Callable[[], object]) -> object:
        self.fn = fn
        self.out = fn()
        return self.out

    def replay(self) -> None:
        for mine, new in zip(_tensors(self.out), _tensors(self.fn()), strict=True):
            mine.copy_(new)


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, Outputs):
        return [value.y, value.h_n, value.c_n]
    if isinstance(value, Grads):
        return [value.dx, value.dh0, value.dc0, *(t for w in value.weights for t in w.tensors())]
    raise TypeError(f"cannot capture a {type(value).__name__}")


class _Captured:
    """fn(*static) recorded once; each call copies new inputs into `static` and replays."""

    def __init__(self, fn, example_inputs: tuple[torch.Tensor, ...], capture) -> None:
        self.static = tuple(t.detach().clone() for t in example_inputs)
        self.capture = capture
        self.output = capture.record(lambda: fn(*self.static))

    def __call__(self, *inputs: torch.Tensor):
        for static, new in zip(self.static, inputs, strict=True):
            static.copy_(new)
        self.capture.replay()
        return self.output


@register
class GraphedFusedLSTM(FusedLSTM):
    name = "fused_graphs"
    description = "fused, with the whole forward and the whole backward replayed as captured CUDA graphs"
    capture_cls = CudaGraphCapture  # tests run the same code with EagerCapture on the CPU
    use_native_loop = False  # a replayed graph has no per-step host cost for C++ to save

    @classmethod
    def supports(cls, problem: Problem) -> Support:
        if problem.device != "cuda" and cls.capture_cls is CudaGraphCapture:
            return Support.no("CUDA graphs need a CUDA device")
        return Support.yes()

    @classmethod
    def backend(cls, problem: Problem) -> str:
        return f"PyTorch {torch.__version__} ops replayed as CUDA graphs ({problem.device})"

    def __init__(self, problem: Problem, weights: list[LayerWeights]) -> None:
        super().__init__(problem, weights)
        self._graphs: dict[tuple, _Captured] = {}

    def _replay(self, key: tuple, fn, inputs: tuple[torch.Tensor, ...]):
        if key not in self._graphs:
            if key[0] == "forward" and any(k[0] == "forward" and k[1] != key[1] for k in self._graphs):
                self._graphs.clear()  # new shapes reallocate the buffers every graph reads
            self._graphs[key] = _Captured(fn, inputs, self.capture_cls())
        return self._graphs[key](*inputs)

    def forward(self, x, h0, c0) -> Outputs:
        inputs = (x, h0, c0)
        return self._replay(("forward", tuple(x.shape)), super().forward, inputs)

    def backward(self, dy, dh_n, dc_n, gate_clip=None) -> Grads:
        inputs = (dy, dh_n, dc_n)
        return self._replay(("backward", tuple(dy.shape), gate_clip),
                            lambda *a: FusedLSTM.backward(self, *a, gate_clip=gate_clip), inputs)
