"""The CuPy plumbing that needs no GPU to test: whether CuPy is usable and why not (with fake
CuPy modules for each way it can fail), CuPy's allocations routed through torch's allocator and
scoped to the cupy implementation, and the backward's index kept on the device."""

from __future__ import annotations

import contextlib
import gc
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.contract.impl import Support
from harness.contract.inputs import make_inputs
from impls import cupy_lstm
from impls.cupy_lstm import CupyLSTM, NumpyLSTM, check_cupy, cuda_mismatch


@pytest.mark.parametrize("cupy_runtime, torch_cuda", [(13000, "13.0"), (13020, "13.2"), (12080, "12.8")])
def test_same_cuda_major_matches(cupy_runtime, torch_cuda):
    assert cuda_mismatch(cupy_runtime, torch_cuda) == ""


def test_cuda_major_mismatch_names_both_and_the_wheel_to_install():
    assert cuda_mismatch(12080, "13.0") == ("CuPy is built for CUDA 12 but torch for CUDA 13: "
                                            "pip uninstall cupy-cuda12x && pip install 'cupy-cuda13x[ctk]'")
    assert "CuPy is built for CUDA 13 but torch for CUDA 12: " in cuda_mismatch(13000, "12.8")


def test_cpu_build_of_torch_is_a_mismatch():
    why = cuda_mismatch(13000, None)
    assert why.startswith("torch is a CPU build but CuPy is built for CUDA 13") and "pip install torch==" in why


class FakeCupy(SimpleNamespace):
    """Just enough of CuPy's surface for check_cupy, computing with NumPy; each argument breaks
    one step."""

    def __init__(self, *, available=True, runtime=13000, kernel=lambda x: x * x + 1, matmul=np.matmul,
                 query_error=None):
        def is_available():
            if query_error is not None:
                raise query_error
            return available

        pool = SimpleNamespace(freed=0)
        pool.free_all_blocks = lambda: setattr(pool, "freed", pool.freed + 1)
        self.compiled = []

        def elementwise_kernel(in_params, out_params, body, name):
            self.compiled.append(name)
            return kernel

        class Matrix(np.ndarray):
            def __matmul__(self, other):
                return matmul(np.asarray(self), np.asarray(other))

        super().__init__(
            __version__="14.2.0", float32=np.float32, arange=np.arange, asnumpy=np.asarray,
            asarray=lambda a, dtype: np.asarray(a, dtype=dtype).view(Matrix), ElementwiseKernel=elementwise_kernel,
            get_default_memory_pool=lambda: pool, pool=pool,
            cuda=SimpleNamespace(is_available=is_available, runtime=SimpleNamespace(runtimeGetVersion=lambda: runtime)))


def raises(exc):
    def fail(*args):
        raise exc
    return fail


def test_usable_when_a_kernel_and_a_matrix_product_run_right():
    cp = FakeCupy()
    assert check_cupy(cp, "13.0") == (True, "")
    assert cp.compiled == ["lstm_harness_probe"] and cp.pool.freed == 1


def test_not_installed_says_what_to_install():
    ok, why = check_cupy(None, "13.0")
    assert not ok and why == "CuPy is not installed (pip install 'lstm-harness[cuda]', i.e. 'cupy-cuda13x[ctk]')"


def test_no_device():
    ok, why = check_cupy(FakeCupy(available=False), "13.0")
    assert not ok and why.startswith("CuPy is installed but sees no CUDA device")


def test_device_query_that_raises_is_a_reason_not_a_crash():
    error = RuntimeError("cudaErrorInsufficientDriver: driver too old\nmore")
    ok, why = check_cupy(FakeCupy(query_error=error), "13.0")
    assert not ok and why == "CuPy cannot query CUDA: RuntimeError: cudaErrorInsufficientDriver: driver too old"


def test_cuda_mismatch_stops_before_any_kernel():
    cp = FakeCupy(runtime=12080)
    ok, why = check_cupy(cp, "13.0")
    assert not ok and why.startswith("CuPy is built for CUDA 12 but torch for CUDA 13: ")
    assert cp.compiled == []


def test_kernel_that_does_not_compile():
    cp = FakeCupy(kernel=raises(RuntimeError("CompileException: cannot open libnvrtc.so.13\n(details)")))
    ok, why = check_cupy(cp, "13.0")
    assert not ok and why == ("CuPy 14.2.0 cannot compile or run a kernel (RuntimeError: CompileException: cannot "
                              "open libnvrtc.so.13): it needs CUDA 13's NVRTC and cuBLAS, "
                              "pip install 'cupy-cuda13x[ctk]'")
    assert cp.pool.freed == 1


def test_kernel_with_a_wrong_result():
    ok, why = check_cupy(FakeCupy(kernel=lambda x: x), "13.0")
    assert not ok and "a probe kernel computed [0.0, 1.0, 2.0, 3.0] instead of [1.0, 2.0, 5.0, 10.0]" in why


def test_matrix_product_that_fails():
    ok, why = check_cupy(FakeCupy(matmul=raises(ImportError("libcublas.so.13: cannot open shared object file"))),
                         "13.0")
    assert not ok and why.startswith("CuPy 14.2.0 cannot run a matrix product with cuBLAS (ImportError: libcublas")
    assert why.endswith("pip install 'cupy-cuda13x[ctk]'")


def test_matrix_product_with_a_wrong_result():
    ok, why = check_cupy(FakeCupy(matmul=lambda a, b: a + b), "13.0")
    assert not ok and "a probe matrix product computed [[2.0, 4.0], [6.0, 8.0]]" in why


@pytest.fixture
def fresh_cache():
    cupy_lstm.cupy_usable.cache_clear()
    yield
    cupy_lstm.cupy_usable.cache_clear()  # the real answer again for the tests after this one


def test_cupy_usable_checks_the_installed_module_once(monkeypatch, fresh_cache):
    cp = FakeCupy()
    monkeypatch.setattr(cupy_lstm, "cupy", cp)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert cupy_lstm.cupy_usable() == Support.yes() and cupy_lstm.cupy_usable() == Support.yes()
    assert cp.compiled == ["lstm_harness_probe"]


def test_cupy_usable_on_this_machine_gives_a_reason(fresh_cache):
    usable = cupy_lstm.cupy_usable()
    ok, why = usable.ok, usable.reason
    assert ok or why.startswith(("CuPy is not installed", "CuPy is installed but sees no CUDA device",
                                 "CuPy cannot query CUDA", "torch is a CPU build"))


# -- CuPy's memory from torch's allocator, on torch's device and stream, for the implementation only --

@pytest.fixture
def cupy():
    """The real module: its allocator switching and memory classes work without a GPU."""
    return pytest.importorskip("cupy", reason="CuPy is not importable here (pip install -e '.[kernels]')",
                               exc_type=ImportError)


@pytest.fixture
def cpu_blocks(monkeypatch):
    """torch.empty on the CPU in place of a CUDA device; records the devices asked for."""
    asked, real_empty = [], torch.empty

    def empty(size, dtype, device):
        asked.append(device)
        return real_empty(size, dtype=dtype)

    monkeypatch.setattr(torch, "empty", empty)
    return asked


def test_torch_allocator_hands_cupy_a_torch_block_that_lives_as_long_as_the_array(cupy, cpu_blocks):
    pointer = cupy_lstm._TorchAllocator(cupy, 0)(96)
    assert isinstance(pointer, cupy.cuda.MemoryPointer) and pointer.mem.size == 96 and pointer.device_id == 0
    assert cpu_blocks == ["cuda:0"]
    block = weakref.ref(pointer.mem._owner)
    assert block().dtype == torch.uint8 and block().numel() == 96 and block().data_ptr() == pointer.ptr
    del pointer
    gc.collect()
    assert block() is None  # back to torch's allocator: torch.cuda.empty_cache() can free it


def test_out_of_memory_reaches_the_harness_as_torchs_error(cupy, monkeypatch):
    """Through torch's allocator CuPy runs out of memory as torch does: the error the speed suite
    catches (CuPy's own OutOfMemoryError, from its pool, is a MemoryError)."""
    def empty(size, dtype, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 96 bytes")

    monkeypatch.setattr(torch, "empty", empty)
    with cupy.cuda.using_allocator(cupy_lstm._TorchAllocator(cupy, 0)), pytest.raises(torch.OutOfMemoryError):
        cupy.cuda.alloc(96)
    assert issubclass(cupy.cuda.memory.OutOfMemoryError, MemoryError)


class Recorder:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def __enter__(self):
        self.log.append(f"enter {self.name}")

    def __exit__(self, *exc):
        self.log.append(f"exit {self.name}")


@pytest.fixture
def torch_cuda_scope(monkeypatch, cupy):
    """CuPy's real allocator switching, a fake device and stream, torch's current device 1."""
    log = []
    torch_stream = object()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: torch_stream if device == 1 else None)
    cp = SimpleNamespace(cuda=SimpleNamespace(
        using_allocator=cupy.cuda.using_allocator, MemoryPointer=cupy.cuda.MemoryPointer,
        UnownedMemory=cupy.cuda.UnownedMemory, Device=lambda d: Recorder(log, f"device {d}"),
        Stream=SimpleNamespace(from_external=lambda s: Recorder(log, "torch's stream" if s is torch_stream else s))))
    return cp, log


def test_scope_routes_cupy_to_torch_and_restores_what_was_there(cupy, torch_cuda_scope):
    cp, log = torch_cuda_scope
    before = cupy.cuda.get_allocator()
    with cupy_lstm.on_torch_cuda(cp):
        inside = cupy.cuda.get_allocator()
        assert isinstance(inside, cupy_lstm._TorchAllocator) and inside.device == 1
        assert log == ["enter device 1", "enter torch's stream"]
    assert cupy.cuda.get_allocator() is before
    assert log[2:] == ["exit torch's stream", "exit device 1"]


def test_scope_restores_after_a_crash_too(cupy, torch_cuda_scope):
    cp, log = torch_cuda_scope
    before = cupy.cuda.get_allocator()
    with pytest.raises(RuntimeError, match="crashed"), cupy_lstm.on_torch_cuda(cp):
        raise RuntimeError("crashed inside")
    assert cupy.cuda.get_allocator() is before and log[-1] == "exit device 1"


# -- the implementation around it --

def test_numpy_backend_runs_forward_and_backward_in_its_scope(small):
    inputs = make_inputs(small)
    impl = NumpyLSTM(small, inputs.weights)
    log = []
    impl._scope = lambda: Recorder(log, "scope")
    impl.forward(inputs.x, inputs.h0, inputs.c0)
    impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n)
    assert log == ["enter scope", "exit scope"] * 2
    assert isinstance(NumpyLSTM(small, inputs.weights)._scope(), contextlib.nullcontext)


def test_backward_index_is_an_array_of_the_array_module(monkeypatch, small):
    weights = make_inputs(small).weights
    numpy_impl = NumpyLSTM(small, weights)
    assert type(numpy_impl.inverse_perm) is np.ndarray
    assert sorted(numpy_impl.inverse_perm.tolist()) == list(range(4 * small.hidden))

    class DeviceArray(np.ndarray):
        """Stands in for cupy.ndarray: whatever the module's from_dlpack makes."""

    fake = SimpleNamespace(ndarray=DeviceArray, from_dlpack=lambda t: np.from_dlpack(t).view(DeviceArray))
    log = []
    monkeypatch.setattr(cupy_lstm, "cupy", fake)
    monkeypatch.setattr(cupy_lstm, "_on_cupy", lambda problem: True)
    monkeypatch.setattr(cupy_lstm, "on_torch_cuda", lambda cp: Recorder(log, "torch's device" if cp is fake else cp))
    impl = CupyLSTM(small, weights)
    assert impl.xp is fake and type(impl.inverse_perm) is DeviceArray  # not a host array copied per use
    assert log == ["enter torch's device", "exit torch's device"]  # converted on torch's device and stream
    np.testing.assert_array_equal(impl.inverse_perm, numpy_impl.inverse_perm)


def test_close_drops_the_workspace_and_the_next_call_makes_a_new_one(small):
    inputs = make_inputs(small)
    impl = NumpyLSTM(small, inputs.weights)
    y = impl.forward(inputs.x, inputs.h0, inputs.c0).y.clone()
    dx = impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n).dx.clone()
    impl.close()
    assert impl.shape is None and all("gates" not in layer for layer in impl.layers)
    assert torch.equal(impl.forward(inputs.x, inputs.h0, inputs.c0).y, y)
    assert torch.equal(impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n).dx, dx)
