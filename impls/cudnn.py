"""`cudnn`: torch.nn.LSTM as shipped, cuDNN on CUDA and PyTorch's own kernel on the CPU.

Which kernel actually ran is read back from the autograd graph, not assumed: on the CPU PyTorch
picks oneDNN's RNN primitive for float32 and its native cell loop otherwise.
"""

from __future__ import annotations

import functools

import torch

from harness.contract.autograd_impl import AutogradImpl
from harness.contract.inputs import LayerWeights
from harness.contract.problem import Problem
from harness.contract.registry import register

# Autograd node names that identify the kernel family nn.LSTM dispatched to in training mode.
_BACKEND_NODES = {
    "CudnnRnnBackward0": "cuDNN {cudnn}",
    "MkldnnRnnLayerBackward0": "oneDNN RNN (PyTorch {torch} CPU)",
    "ThnnFusedLstmCellBackward0": "PyTorch fused LSTM cell kernel (CUDA)",
}


@register
class CudnnLSTM(AutogradImpl):
    name = "cudnn"
    description = "torch.nn.LSTM: cuDNN on CUDA, PyTorch's own LSTM kernel on the CPU"

    def __init__(self, problem: Problem, weights: list[LayerWeights]) -> None:
        super().__init__(problem, weights)
        self.lstm = torch.nn.LSTM(problem.input_size, problem.hidden, problem.layers).to(
            device=problem.device, dtype=problem.torch_dtype)
        self.set_weights(weights)
        self.lstm.flatten_parameters()  # cuDNN wants one contiguous weight buffer
        self.lstm.train()

    def parameters(self) -> list[LayerWeights]:
        return [LayerWeights(getattr(self.lstm, f"weight_ih_l{l}"), getattr(self.lstm, f"weight_hh_l{l}"),
                             getattr(self.lstm, f"bias_ih_l{l}"), getattr(self.lstm, f"bias_hh_l{l}"))
                for l in range(self.problem.layers)]

    def _forward(self, x, h0, c0):
        y, (h_n, c_n) = self.lstm(x, (h0, c0))
        return y, h_n, c_n

    @classmethod
    def backend(cls, problem: Problem) -> str:
        return _detected_backend(problem.device, problem.dtype)


@functools.cache
def _detected_backend(device: str, dtype: str) -> str:
    """Run a tiny training-mode forward and name the kernel from the autograd graph it built."""
    torch_dtype = Problem(1, 1, 1, 1, 1, dtype=dtype, device=device).torch_dtype
    lstm = torch.nn.LSTM(4, 4).to(device=device, dtype=torch_dtype).train()
    x = torch.randn(2, 2, 4, device=device, dtype=torch_dtype, requires_grad=True)
    with torch.enable_grad():
        y, _ = lstm(x)
    seen, stack = set(), [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions)
    ran = {type(node).__name__ for node in seen}
    versions = {"cudnn": torch.backends.cudnn.version(), "torch": torch.__version__}
    for node, label in _BACKEND_NODES.items():
        if node in ran:
            return label.format(**versions)
    where = "CUDA" if device == "cuda" else "CPU"
    return f"PyTorch {torch.__version__} native LSTM cells ({where})"
