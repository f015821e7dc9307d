"""`cupy` and `numpy`: the fused algorithm, hand-written once against an array module.

`cupy` runs it on CUDA with CuPy: the gate math and its derivative are one ElementwiseKernel
each per step, GEMMs go to cuBLAS, and tensors pass between torch and CuPy through DLPack
without copies. It runs nothing else: on the CPU, or where CuPy is not usable, it is not
supported, and the reason names `numpy`.

`numpy` runs the very same loop on the CPU with NumPy ufuncs and NumPy's BLAS, so everything
but the two kernels is tested on machines without a GPU, under a name that says what ran.

While `cupy` runs, CuPy allocates from torch's caching allocator and launches on torch's current
device and stream (on_torch_cuda): torch's memory counters see its arrays, the harness's
torch.cuda.synchronize() covers its kernels, and its memory goes back to torch when the instance
(or its workspace, close()) is dropped. Other implementations see CuPy as it was.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch

from harness.contract.impl import Grads, Impl, Outputs, Support
from harness.contract.inputs import LayerWeights
from harness.contract.layout import gate_rows
from harness.contract.problem import Problem
from harness.contract.registry import register

try:  # optional extra: pip install 'lstm-harness[cuda]'
    import cupy
except Exception:  # noqa: BLE001 - any import failure just means "no CuPy here"
    cupy = None

INSTALL = "pip install 'lstm-harness[cuda]', i.e. 'cupy-cuda13x[ctk]'"


def cuda_mismatch(cupy_runtime: int, torch_cuda: str | None) -> str:
    """Why CuPy built for CUDA runtime `cupy_runtime` (cupy.cuda.runtime.runtimeGetVersion(), e.g.
    13020) cannot work beside torch built for `torch_cuda` (torch.version.cuda, e.g. "13.0"; None
    for a CPU build); "" when it can. Two CUDA majors in one process means two runtimes and two
    sets of libraries, and the wrong set is often not installed at all."""
    cupy_major = cupy_runtime // 1000
    if torch_cuda is None:
        return (f"torch is a CPU build but CuPy is built for CUDA {cupy_major}: "
                "install torch's CUDA build (pip install torch==2.13.0 on a machine with a GPU)")
    torch_major = int(torch_cuda.split(".")[0])
    if cupy_major != torch_major:
        return (f"CuPy is built for CUDA {cupy_major} but torch for CUDA {torch_major}: "
                f"pip uninstall cupy-cuda{cupy_major}x && pip install 'cupy-cuda{torch_major}x[ctk]'")
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _probe(cp) -> str:
    """Compile and run one tiny ElementwiseKernel (NVRTC) and one matrix product (cuBLAS); what went
    wrong, or "". A visible device says nothing about CuPy's compiler and libraries being there."""
    try:
        square = cp.ElementwiseKernel("T x", "T y", "y = x * x + 1", "lstm_harness_probe")
        got = cp.asnumpy(square(cp.arange(4, dtype=cp.float32)))
    except Exception as exc:  # noqa: BLE001 - a missing NVRTC, header or driver: each one means "cannot"
        return f"cannot compile or run a kernel ({_first_line(exc)})"
    if got.tolist() != [1, 2, 5, 10]:
        return f"a probe kernel computed {got.tolist()} instead of [1.0, 2.0, 5.0, 10.0]"
    try:
        a = cp.asarray([[1, 2], [3, 4]], dtype=cp.float32)
        prod = cp.asnumpy(a @ a)
    except Exception as exc:  # noqa: BLE001
        return f"cannot run a matrix product with cuBLAS ({_first_line(exc)})"
    if prod.tolist() != [[7, 10], [15, 22]]:
        return f"a probe matrix product computed {prod.tolist()} instead of [[7, 10], [15, 22]]"
    return ""


def check_cupy(cp, torch_cuda: str | None) -> tuple[bool, str]:
    """(usable, why not) for CuPy module `cp` beside a torch built for CUDA `torch_cuda`."""
    if cp is None:
        return False, f"CuPy is not installed ({INSTALL})"
    try:
        if not cp.cuda.is_available():
            return False, "CuPy is installed but sees no CUDA device (no GPU visible, or no NVIDIA driver)"
        mismatch = cuda_mismatch(cp.cuda.runtime.runtimeGetVersion(), torch_cuda)
    except Exception as exc:  # noqa: BLE001
        return False, f"CuPy cannot query CUDA: {_first_line(exc)}"
    if mismatch:
        return False, mismatch
    try:
        problem = _probe(cp)
    finally:  # the probe's few bytes must not stay in CuPy's pool, invisible to torch
        cp.get_default_memory_pool().free_all_blocks()
    if problem:
        major = cp.cuda.runtime.runtimeGetVersion() // 1000
        return False, (f"CuPy {cp.__version__} {problem}: it needs CUDA {major}'s NVRTC and cuBLAS, "
                       f"pip install 'cupy-cuda{major}x[ctk]'")
    return True, ""


@functools.lru_cache(maxsize=1)
def cupy_usable() -> Support:
    """Whether CuPy is usable here, and why not; checked once per process: the check compiles a
    kernel, and the harness asks for every implementation, problem and report row."""
    return Support(*check_cupy(cupy, torch.version.cuda))


class _TorchAllocator:
    """A CuPy allocator (cupy.cuda.using_allocator) that takes memory from torch's caching
    allocator on torch's current device and stream: torch's memory counters then see CuPy's
    arrays, torch reuses the memory once they die, and nothing waits in a CuPy pool.

    Each block is a torch uint8 tensor held as the owner of CuPy's UnownedMemory: the array's
    death frees the tensor, and torch frees it stream-ordered, as it frees its own
    (caching_allocator_alloc/delete would need a hand-written free in a finalizer instead)."""

    def __init__(self, cp, device: int) -> None:
        self.cp, self.device = cp, device

    def __call__(self, size: int):
        block = torch.empty(size, dtype=torch.uint8, device=f"cuda:{self.device}")
        return self.cp.cuda.MemoryPointer(self.cp.cuda.UnownedMemory(block.data_ptr(), size, block, self.device), 0)


@contextlib.contextmanager
def on_torch_cuda(cp):
    """Inside: CuPy allocates through torch (_TorchAllocator) and runs on torch's current device
    and stream, so the harness's torch.cuda.synchronize() covers its kernels and torch's peak
    memory counts its arrays. After: CuPy's previous allocator, device and stream again, so nothing
    leaks into other implementations."""
    device = torch.cuda.current_device()
    stream = cp.cuda.Stream.from_external(torch.cuda.current_stream(device))
    with cp.cuda.using_allocator(_TorchAllocator(cp, device)), cp.cuda.Device(device), stream:
        yield


class UfuncGateMath:
    """Per-step element-wise work written with array-module ufuncs (NumPy or CuPy).

    Layout of a gate block row: i, f, o, g (H columns each).
    """

    def __init__(self, xp, batch: int, hidden: int, dtype) -> None:
        self.xp, self.H = xp, hidden
        self.tmp = xp.empty((batch, hidden), dtype=dtype)
        self.scratch = xp.empty((batch, 4 * hidden), dtype=dtype)

    def forward(self, gates, rec, c_prev, c, tanh_c, h) -> None:
        """gates holds the input projection; add `rec`, activate in place, then c, tanh(c), h."""
        xp, H = self.xp, self.H
        gates += rec
        s = gates[:, :3 * H]
        xp.negative(s, out=s)
        with np.errstate(over="ignore"):  # exp(-z) is inf below z = -88: 1 / (1 + inf) = 0 is right
            xp.exp(s, out=s)
        s += 1
        xp.reciprocal(s, out=s)
        xp.tanh(gates[:, 3 * H:], out=gates[:, 3 * H:])
        i, f, o, g = (gates[:, k * H:(k + 1) * H] for k in range(4))
        xp.multiply(f, c_prev, out=c)
        xp.multiply(i, g, out=self.tmp)
        c += self.tmp
        xp.tanh(c, out=tanh_c)
        xp.multiply(o, tanh_c, out=h)

    def backward(self, gates, c_prev, tanh_c, dh, dc, d_gates, clip=0.0) -> None:
        """From dh (already holding dy_t) and dc: pre-activation gradients into d_gates (clamped
        to +-clip when clip > 0), dc -> dc_{t-1}."""
        xp, H, tmp, d = self.xp, self.H, self.tmp, self.scratch
        i, f, o, g = (gates[:, k * H:(k + 1) * H] for k in range(4))
        # dc += dh * o * (1 - tanh(c)^2)
        xp.multiply(tanh_c, tanh_c, out=tmp)
        xp.subtract(1, tmp, out=tmp)
        tmp *= o
        tmp *= dh
        dc += tmp
        xp.multiply(dc, g, out=d[:, :H])  # d i
        xp.multiply(dc, c_prev, out=d[:, H:2 * H])  # d f
        xp.multiply(dh, tanh_c, out=d[:, 2 * H:3 * H])  # d o
        xp.multiply(dc, i, out=d[:, 3 * H:])  # d g
        # Through the nonlinearities: s(1 - s) for i, f, o and 1 - g^2 for g.
        xp.multiply(gates, gates, out=d_gates)
        xp.subtract(gates[:, :3 * H], d_gates[:, :3 * H], out=d_gates[:, :3 * H])
        xp.subtract(1, d_gates[:, 3 * H:], out=d_gates[:, 3 * H:])
        d_gates *= d
        if clip > 0:
            xp.clip(d_gates, -clip, clip, out=d_gates)
        dc *= f  # dc_{t-1}


_FORWARD_KERNEL = r"""
    const ptrdiff_t b = i / H, j = i % H, base = b * 4 * H + j;
    T ig = gates[base] + rec[base];
    T fg = gates[base + H] + rec[base + H];
    T og = gates[base + 2 * H] + rec[base + 2 * H];
    T gg = gates[base + 3 * H] + rec[base + 3 * H];
    ig = 1 / (1 + exp(-ig)); fg = 1 / (1 + exp(-fg)); og = 1 / (1 + exp(-og)); gg = tanh(gg);
    gates[base] = ig; gates[base + H] = fg; gates[base + 2 * H] = og; gates[base + 3 * H] = gg;
    c = fg * c_prev + ig * gg;
    tanh_c = tanh(c);
    h = og * tanh_c;
"""

_BACKWARD_KERNEL = r"""
    const ptrdiff_t b = i / H, j = i % H, base = b * 4 * H + j;
    const T ig = gates[base], fg = gates[base + H], og = gates[base + 2 * H], gg = gates[base + 3 * H];
    const T dct = dc + dh * og * (1 - tanh_c * tanh_c);
    T d[4] = {dct * gg * ig * (1 - ig), dct * c_prev * fg * (1 - fg),
              dh * tanh_c * og * (1 - og), dct * ig * (1 - gg * gg)};
    const T lo = -clip;  // a T: -clip is a float when T is CuPy's float16, and T : float is ambiguous
    for (int k = 0; k < 4; ++k) {
        if (clip > 0) d[k] = d[k] < lo ? lo : (d[k] > clip ? clip : d[k]);
        d_gates[base + k * H] = d[k];
    }
    dc = dct * fg;
"""


# Each ElementwiseKernel as (in_params, out_params, body, name). The body's T is the storage
# dtype; CuPy's own type for float16 is `float16`, whose arithmetic yields float: any expression
# that mixes the two (a ?: with -clip on one side, say) must be written with T-typed values.
# tests/test_cupy_nvrtc.py compiles exactly these, as CuPy generates them, for every dtype offered.
KERNELS = {
    "forward": ("raw T rec, T c_prev, int32 H", "raw T gates, T c, T tanh_c, T h", _FORWARD_KERNEL,
                "lstm_gates_forward"),
    "backward": ("raw T gates, T c_prev, T tanh_c, T dh, int32 H, T clip", "raw T d_gates, T dc", _BACKWARD_KERNEL,
                 "lstm_gates_backward"),
}


class CupyGateMath:
    """The same two steps as UfuncGateMath, each one CUDA kernel launch."""

    _kernels: dict = {}

    def __init__(self, xp, batch: int, hidden: int, dtype) -> None:
        self.H = np.int32(hidden)
        if not self._kernels:
            for step, (in_params, out_params, body, name) in KERNELS.items():
                self._kernels[step] = cupy.ElementwiseKernel(in_params, out_params, body, name)

    def forward(self, gates, rec, c_prev, c, tanh_c, h) -> None:
        self._kernels["forward"](rec, c_prev, self.H, gates, c, tanh_c, h)

    def backward(self, gates, c_prev, tanh_c, dh, dc, d_gates, clip=0.0) -> None:
        self._kernels["backward"](gates, c_prev, tanh_c, dh, self.H, gates.dtype.type(clip), d_gates, dc)


def _on_cupy(problem: Problem) -> bool:
    return problem.device == "cuda" and cupy_usable().ok


NO_BFLOAT16 = "NumPy and CuPy have no bfloat16"
ON_THE_CPU = "on the CPU the same algorithm runs as `numpy`"


@register
class CupyLSTM(Impl):
    name = "cupy"
    description = "fused design on an array module: CuPy ElementwiseKernels + cuBLAS, CUDA only (on the CPU: numpy)"
    gate_clipping = True

    @classmethod
    def supports(cls, problem: Problem) -> Support:
        if problem.dtype == "bfloat16":
            return Support.no(NO_BFLOAT16)
        if problem.dtype == "tf32":
            return Support.no("CuPy's TF32 GEMMs are a process-wide switch (CUPY_TF32), not a per-run mode")
        if problem.device != "cuda":
            return Support.no(f"CuPy runs on a CUDA GPU; {ON_THE_CPU}")
        usable = cupy_usable()
        if not usable.ok:
            return Support.no(f"{usable.reason}; {ON_THE_CPU}")
        return Support.yes()

    @classmethod
    def backend(cls, problem: Problem) -> str:
        if _on_cupy(problem):
            return f"CuPy {cupy.__version__} kernels + cuBLAS (CUDA)"
        return f"CuPy kernels + cuBLAS (CUDA), not available here: {cls.supports(problem).reason}"

    @classmethod
    def _array_module(cls, problem: Problem):
        """The array module that runs `problem`, or an error that says why not (naming the other implementation)."""
        module = cls._module_for(problem)
        if module is None:
            raise RuntimeError(f"{cls.name} cannot run {problem.id}: {cls.supports(problem).reason}")
        return module

    @staticmethod
    def _module_for(problem: Problem):
        return cupy if _on_cupy(problem) else None

    def __init__(self, problem: Problem, weights: list[LayerWeights]) -> None:
        super().__init__(problem, weights)
        self.xp = self._array_module(problem)
        self.math_cls = UfuncGateMath if self.xp is np else CupyGateMath
        perm = gate_rows(problem.hidden, "ifog").to(problem.device)
        self.layers = []
        with self._scope():
            # On the device: a host index array would be copied to the GPU on every use in backward.
            self.inverse_perm = self._array(torch.argsort(perm))
            for w in weights:
                w_x, w_h = w.w_ih[perm], w.w_hh[perm]
                self.layers.append({
                    "w_x_t": self._array(w_x.t()),  # [I, 4H]
                    "w_h_t": self._array(w_h.t()),  # [H, 4H]
                    "w_h": self._array(w_h),  # [4H, H]
                    "bias": self._array((w.b_ih + w.b_hh)[perm]),
                })
        self.shape = None

    # DLPack both ways: the arrays share memory with the torch tensors.
    def _array(self, t: torch.Tensor):
        return self.xp.from_dlpack(t.detach().contiguous())

    @staticmethod
    def _tensor(a) -> torch.Tensor:
        return torch.from_dlpack(a)

    def _buffers(self, T: int, B: int, dtype) -> None:
        if self.shape == (T, B):
            return
        xp, H = self.xp, self.problem.hidden
        for layer in self.layers:
            layer["gates"] = xp.empty((T, B, 4 * H), dtype=dtype)
            layer["h"] = xp.empty((T + 1, B, H), dtype=dtype)  # h[0] = h_0
            layer["c"] = xp.empty((T + 1, B, H), dtype=dtype)  # c[0] = c_0
            layer["tanh_c"] = xp.empty((T, B, H), dtype=dtype)
            layer["d_gates"] = xp.empty((T, B, 4 * H), dtype=dtype)
        self.rec = xp.empty((B, 4 * H), dtype=dtype)
        self.math = self.math_cls(xp, B, H, dtype)
        self.shape = (T, B)

    def _scope(self):
        """Where CuPy's work runs: on torch's allocator, device and stream (on_torch_cuda)."""
        return contextlib.nullcontext() if self.xp is np else on_torch_cuda(self.xp)

    def close(self) -> None:
        """Let the workspace go now rather than with the instance (its memory returns to torch's
        allocator, where torch.cuda.empty_cache() can free it); the next forward makes a new one."""
        for layer in self.layers:
            for key in ("gates", "h", "c", "tanh_c", "d_gates"):
                layer.pop(key, None)
        self.rec = self.math = self.x = None
        self.shape = None

    def saved_bytes(self) -> int:
        """Activations kept for backward: gates, hidden and cell states, tanh(c), per layer."""
        return sum(int(layer[k].nbytes) for layer in self.layers for k in ("gates", "h", "c", "tanh_c"))

    def forward(self, x, h0, c0) -> Outputs:
        with self._scope():
            return self._forward(x, h0, c0)

    def backward(self, dy, dh_n, dc_n, gate_clip=None) -> Grads:
        with self._scope():
            return self._backward(dy, dh_n, dc_n, gate_clip)

    def _forward(self, x, h0, c0) -> Outputs:
        xp = self.xp
        x, h0, c0 = self._array(x), self._array(h0), self._array(c0)
        T, B = x.shape[:2]
        self._buffers(T, B, x.dtype)
        self.x = x
        layer_input = x
        for l, layer in enumerate(self.layers):
            gates, h, c, tanh_c = layer["gates"], layer["h"], layer["c"], layer["tanh_c"]
            flat = gates.reshape(T * B, -1)
            xp.matmul(layer_input.reshape(T * B, -1), layer["w_x_t"], out=flat)  # all steps, one GEMM
            flat += layer["bias"]
            h[0], c[0] = h0[l], c0[l]
            for t in range(T):
                xp.matmul(h[t], layer["w_h_t"], out=self.rec)
                self.math.forward(gates[t], self.rec, c[t], c[t + 1], tanh_c[t], h[t + 1])
            layer_input = h[1:]
        h_n = xp.stack([layer["h"][T] for layer in self.layers])
        c_n = xp.stack([layer["c"][T] for layer in self.layers])
        return Outputs(self._tensor(layer_input), self._tensor(h_n), self._tensor(c_n))

    def _backward(self, dy, dh_n, dc_n, gate_clip=None) -> Grads:
        xp, H = self.xp, self.problem.hidden
        clip = 0.0 if gate_clip is None else float(gate_clip)
        T, B = self.shape
        d_out, dh_n, dc_n = self._array(dy), self._array(dh_n), self._array(dc_n)
        dh0, dc0 = xp.empty_like(dh_n), xp.empty_like(dc_n)
        grads: list[LayerWeights] = [None] * len(self.layers)
        inv = self.inverse_perm
        for l in reversed(range(len(self.layers))):
            layer = self.layers[l]
            gates, d_gates, c, tanh_c = layer["gates"], layer["d_gates"], layer["c"], layer["tanh_c"]
            dh, dc = dh_n[l].copy(), dc_n[l].copy()
            for t in reversed(range(T)):
                dh += d_out[t]
                self.math.backward(gates[t], c[t], tanh_c[t], dh, dc, d_gates[t], clip)
                xp.matmul(d_gates[t], layer["w_h"], out=dh)  # dh_{t-1}
            dh0[l], dc0[l] = dh, dc
            flat = d_gates.reshape(T * B, 4 * H)
            layer_input = (self.x if l == 0 else self.layers[l - 1]["h"][1:]).reshape(T * B, -1)
            d_w_h = flat.T @ layer["h"][:T].reshape(T * B, H)  # recurrent-weight gradient: ONE GEMM
            d_w_x = flat.T @ layer_input
            d_b = flat.sum(axis=0)[inv]
            grads[l] = LayerWeights(*(self._tensor(xp.ascontiguousarray(a))
                                      for a in (d_w_x[inv], d_w_h[inv], d_b, d_b.copy())))
            d_out = (flat @ layer["w_x_t"].T).reshape(T, B, -1)
        return Grads(self._tensor(d_out), self._tensor(dh0), self._tensor(dc0), grads)


@register
class NumpyLSTM(CupyLSTM):
    """`cupy`'s algorithm, unchanged, on NumPy ufuncs (UfuncGateMath) and NumPy's BLAS on the CPU."""

    name = "numpy"
    description = "fused design on NumPy ufuncs + BLAS: the cupy implementation's algorithm on the CPU"

    @classmethod
    def supports(cls, problem: Problem) -> Support:
        if problem.device != "cpu":
            return Support.no("NumPy runs on the CPU; on CUDA the same algorithm runs as `cupy`")
        if problem.dtype == "bfloat16":
            return Support.no(NO_BFLOAT16)
        if problem.dtype == "tf32":
            return Support.no("NumPy has no TF32 GEMMs (TF32 is a CUDA mode)")
        return Support.yes()

    @classmethod
    def backend(cls, problem: Problem) -> str:
        return f"NumPy {np.__version__} ufuncs + BLAS (the cupy implementation's algorithm on the CPU)"

    @staticmethod
    def _module_for(problem: Problem):
        return np if problem.device == "cpu" else None
