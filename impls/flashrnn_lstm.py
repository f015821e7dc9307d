"""`flashrnn`, `flashrnn_cuda`, `flashrnn_triton`: the published FlashRNN package (NX-AI), one name per backend.

FlashRNN's functional entry `flashrnn(Wx, R, b, states=..., function="lstm", backend=..., dtype=...)`
runs one layer of one-head LSTM on a precomputed input projection. This wrapper converts the canonical
weights once into FlashRNN's layout (its gate order i, f, z, o is torch's i, f, g, o):

- W_ih stays [4H, I]: the input projection of all steps is one GEMM here, x[T, B, I] @ W_ih^T, viewed
  as FlashRNN's batch-major Wx [B, T, 4, 1, H] without a copy;
- R [4, 1, H, H] is W_hh viewed per gate (FlashRNN applies R[g] @ h: no transpose);
- b [4, 1, H] is b_ih + b_hh (both enter additively, so each one's gradient is b's).

Layers are stacked here, each one's output feeding the next. Backward is autograd: through FlashRNN's
own PyTorch code for `vanilla`, through its kernels' backward for the fused backends.

FlashRNN is imported lazily and once (load_flashrnn): without it, or without einops, packaging or
triton, the module still imports and registers, and supports() says what is missing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os

import torch

from harness.contract.autograd_impl import AutogradImpl
from harness.contract.impl import Support
from harness.contract.inputs import LayerWeights
from harness.contract.problem import DTYPE_STORAGE, Problem
from harness.contract.registry import one_line, register

INSTALL = "pip install 'lstm-harness[peers]'"

# The modules each backend imports only when first called (triton and einops): imported up front so
# a missing one shows in supports(), not in the first forward.
_LAZY_MODULES = {"triton_fused": ("flashrnn.flashrnn.triton_fused.fwbw",)}


class _DropNoCudaWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No CUDA runtime is found" not in record.getMessage()


@contextlib.contextmanager
def _quiet_cuda_home():
    """FlashRNN's import looks for CUDA_HOME, and torch logs a warning about it on a machine without a
    GPU: noise in every `harness list`. Dropped for the import only."""
    logger, drop = logging.getLogger("torch.utils.cpp_extension"), _DropNoCudaWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@functools.cache
def load_flashrnn(backend: str):
    """(FlashRNN's functional entry point, "") or (None, why it cannot be imported), once per backend.

    Checked (torch 2.13, CPU and the harness's ProcessState): importing FlashRNN changes no process-wide
    torch setting, so nothing is saved and restored around it. On a machine with CUDA it sets the
    environment variable CUDA_LIB (for its own extension builds), which no torch setting reads.
    """
    try:
        with _quiet_cuda_home():
            from flashrnn import flashrnn

            for module in _LAZY_MODULES.get(backend, ()):
                __import__(module)
    except Exception as exc:  # noqa: BLE001 - any failure to import means "cannot run here"
        return None, f"{type(exc).__name__}: {one_line(exc)}"[:200]
    return flashrnn, ""


def _version() -> str:
    try:
        return importlib.metadata.version("flashrnn")
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree
        return "(version unknown)"


class FlashRNNLSTM(AutogradImpl):
    """One FlashRNN backend; subclasses name it. Leaves are in FlashRNN's layout, per layer: W_ih, R, b."""

    flashrnn_backend = "vanilla"
    gate_clipping = False  # FlashRNN can clip the recurrent dh between steps, not gate pre-activation gradients

    @classmethod
    def supports(cls, problem: Problem) -> Support:
        _, missing = load_flashrnn(cls.flashrnn_backend)
        if missing:
            return Support.no(f"FlashRNN is not installed: {INSTALL} ({missing})")
        return cls._backend_supports(problem)

    @classmethod
    def _backend_supports(cls, problem: Problem) -> Support:
        return Support.yes()  # vanilla: plain torch ops, any device and dtype torch runs

    @classmethod
    def backend(cls, problem: Problem) -> str:
        _, missing = load_flashrnn(cls.flashrnn_backend)
        if missing:
            return f"FlashRNN is not installed ({missing})"
        return f"FlashRNN {_version()} {cls.flashrnn_backend} ({cls._engine()}, {problem.device})"

    @classmethod
    def _engine(cls) -> str:
        return "PyTorch ops"

    def __init__(self, problem: Problem, weights: list[LayerWeights]) -> None:
        super().__init__(problem, weights)
        self._flashrnn, missing = load_flashrnn(self.flashrnn_backend)
        if missing:
            raise RuntimeError(f"FlashRNN is not installed: {INSTALL} ({missing})")
        H, device, dtype = problem.hidden, problem.device, problem.torch_dtype
        self.leaves = [
            (torch.empty(4 * H, problem.layer_input_size(l), device=device, dtype=dtype, requires_grad=True),
             torch.empty(4, 1, H, H, device=device, dtype=dtype, requires_grad=True),
             torch.empty(4, 1, H, device=device, dtype=dtype, requires_grad=True))
            for l in range(problem.layers)]
        self.set_weights(weights)

    def parameter_tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.leaves for t in layer]

    def set_weights(self, weights: list[LayerWeights]) -> None:
        """Convert into the existing leaves in place: no new leaves (AutogradImpl's copies canonical layouts only)."""
        with torch.no_grad():
            for (w_ih, r, b), new in zip(self.leaves, weights, strict=True):
                w_ih.copy_(new.w_ih)
                r.view(new.w_hh.shape).copy_(new.w_hh)
                b.view(new.b_ih.shape).copy_(new.b_ih + new.b_hh)

    def _forward(self, x, h0, c0):
        T, B, H = x.shape[0], x.shape[1], self.problem.hidden
        layer_input, h_n, c_n = x, [], []
        for l, (w_ih, r, b) in enumerate(self.leaves):
            wx = (layer_input @ w_ih.t()).view(T, B, 4, 1, H).transpose(0, 1)  # [B, T, gates, heads, H]
            states = torch.stack((h0[l], c0[l])).view(2, B, 1, 1, H)  # [(h, c), B, T=1, heads, H]
            seq, last = self._flashrnn(wx, r, b, states=states, function="lstm", backend=self.flashrnn_backend,
                                       dtype=DTYPE_STORAGE[self.problem.dtype])
            layer_input = seq[0].transpose(0, 1).reshape(T, B, H)  # seq: [(h, c), B, T, heads, H]
            h_n.append(last[0].reshape(B, H))
            c_n.append(last[1].reshape(B, H))
        return layer_input.contiguous(), torch.stack(h_n), torch.stack(c_n)

    def _canonical_grads(self, flat: list[torch.Tensor]) -> list[LayerWeights]:
        """Per layer the gradients of W_ih, R and b, as canonical weights: db is both biases' gradient."""
        H = self.problem.hidden
        return [LayerWeights(dw_ih, dr.view(4 * H, H), db.view(4 * H), db.view(4 * H))
                for dw_ih, dr, db in zip(flat[0::3], flat[1::3], flat[2::3], strict=True)]


class _FusedFlashRNN(FlashRNNLSTM):
    """What both fused backends need: a GPU of compute capability 8.0+ (FlashRNN's README) and
    float32 storage without float32 math: their products run on tensor cores, float32 in TF32."""

    _tf32_where: str  # where the subclass's kernels choose TF32, for the float32 reason

    @classmethod
    def _backend_supports(cls, problem: Problem) -> Support:
        label = f"FlashRNN's {cls.flashrnn_backend} backend"
        if problem.device != "cuda" or not torch.cuda.is_available():
            return Support.no(f"{label} needs a GPU")
        if torch.cuda.get_device_capability() < (8, 0):
            return Support.no(f"{label} needs a GPU of compute capability 8.0 or newer")
        if problem.dtype == "float64":
            return Support.no(f"{label} has no float64 kernels (float32, float16 and bfloat16 only)")
        if problem.dtype == "float32":
            return Support.no(f"{label} multiplies float32 in TF32 on tensor cores ({cls._tf32_where}), "
                              "which cannot meet float32's tolerance: run it as --lstm-dtype tf32")
        return cls._shape_supports(problem, label)

    @classmethod
    def _shape_supports(cls, problem: Problem, label: str) -> Support:
        raise NotImplementedError


@register
class FlashRNNVanilla(FlashRNNLSTM):
    name = "flashrnn"
    description = "FlashRNN (NX-AI) backend vanilla: its PyTorch LSTM loop, autograd backward through it"
    flashrnn_backend = "vanilla"


@register
class FlashRNNCudaFused(_FusedFlashRNN):
    name = "flashrnn_cuda"
    description = "FlashRNN (NX-AI) backend cuda_fused: fused CUDA kernels for forward and backward, R kept on chip"
    flashrnn_backend = "cuda_fused"
    _tf32_where = "wmma::precision::tf32"

    @classmethod
    def _shape_supports(cls, problem: Problem, label: str) -> Support:
        if problem.hidden % 16:
            return Support.no(f"{label} tiles the head size in 16-wide wmma fragments: hidden {problem.hidden} "
                              "is not a multiple of 16")
        from torch.utils.cpp_extension import CUDA_HOME

        if not CUDA_HOME or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
            return Support.no(f"{label} compiles its kernels with nvcc at first use: no CUDA toolkit found "
                              "(set CUDA_HOME)")
        return Support.yes()

    @classmethod
    def _engine(cls) -> str:
        return "fused CUDA kernels, compiled at first use"


@register
class FlashRNNTritonFused(_FusedFlashRNN):
    name = "flashrnn_triton"
    description = "FlashRNN (NX-AI) backend triton_fused: fused Triton kernels, forward and backward"
    flashrnn_backend = "triton_fused"
    _tf32_where = "tl.dot's default input precision"

    @classmethod
    def _shape_supports(cls, problem: Problem, label: str) -> Support:
        H = problem.hidden
        if H & (H - 1):
            return Support.no(f"{label} needs a power-of-two head size (here the hidden size): hidden {H} is not")
        if H < 16:
            return Support.no(f"{label} needs a head size of at least 16 (tl.dot's smallest tile): hidden {H}")
        if H > 64:
            return Support.no(f"{label} holds R in registers, limited to head sizes <= 64 (FlashRNN's README): "
                              f"hidden {H}")
        return Support.yes()

    @classmethod
    def _engine(cls) -> str:
        import triton

        return f"Triton {triton.__version__} kernels"
