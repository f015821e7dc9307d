import numpy as np
import pytest
import torch

from harness.contract.agreement import check_agreement
from harness.contract.impl import Support
from harness.contract.inputs import make_inputs
from harness.contract.problem import Problem
from harness.contract.registry import discover
from impls import cupy_lstm
from impls.cudnn import _detected_backend

BUILTINS = ["cudnn", "fused", "fused_python", "modular", "numpy", "compiled"]  # `cupy`: CUDA only
SHAPES = [
    Problem(batch=5, length=7, input_size=12, hidden=16, layers=2),
    Problem(batch=1, length=1, input_size=3, hidden=4, layers=1),
    Problem(batch=3, length=11, input_size=20, hidden=8, layers=3),
    Problem(batch=4, length=6, input_size=10, hidden=9, layers=2, dtype="float64"),
    Problem(batch=3, length=4, input_size=20, hidden=256, layers=2),  # wide enough for prepacked GEMMs
]


@pytest.mark.parametrize("problem", SHAPES, ids=lambda p: p.id)
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_agrees_with_reference(name, problem):
    agreement, _ = check_agreement(discover().get(name), problem)
    assert agreement.passed, agreement.summary() + "\n" + agreement.table()
    assert len(agreement.errors) == 6 + 4 * problem.layers


@pytest.mark.parametrize("name", BUILTINS)
def test_repeated_calls_and_a_new_length_give_the_same_answers(name, small):
    """Buffers are reused between calls: a second call (and a call at another length) must not
    see stale state."""
    cls = discover().get(name)
    inputs = make_inputs(small)
    impl = cls(small, inputs.weights)
    first_y = impl.forward(inputs.x, inputs.h0, inputs.c0).y.clone()
    first_dx = impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n).dx.clone()
    short = make_inputs(small.replace(length=3), seed=5)
    impl.forward(short.x, inputs.h0, inputs.c0)
    assert impl.backward(short.dy, inputs.dh_n, inputs.dc_n).dx.shape == short.x.shape
    out = impl.forward(inputs.x, inputs.h0, inputs.c0)
    grads = impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n)
    assert torch.allclose(out.y, first_y, rtol=0, atol=1e-6)
    assert torch.allclose(grads.dx, first_dx, rtol=0, atol=1e-6)
    assert out.y.dtype == small.torch_dtype and grads.weights[0].w_ih.shape == (64, 12)


def test_cudnn_names_the_kernel_that_ran():
    assert _detected_backend("cpu", "float32").startswith("oneDNN RNN")
    assert "native LSTM cells" in _detected_backend("cpu", "float64")


def test_cupy_declines_the_cpu_naming_numpy_which_runs_it_and_agrees(small):
    """One name, one backend: on the CPU `cupy` is not supported and says the same algorithm runs as
    `numpy`; `numpy` runs it there (NumPy ufuncs) and agrees with the reference, and declines CUDA."""
    cupy_cls, numpy_cls = discover().get("cupy"), discover().get("numpy")
    support = cupy_cls.supports(small)
    assert not support.ok and support.reason == "CuPy runs on a CUDA GPU; on the CPU the same algorithm runs as `numpy`"
    with pytest.raises(RuntimeError, match="cupy cannot run .*runs as `numpy`"):
        cupy_cls(small, make_inputs(small).weights)
    assert numpy_cls.supports(small).ok and numpy_cls.gate_clipping
    assert numpy_cls.backend(small).startswith("NumPy ") and "ufuncs + BLAS" in numpy_cls.backend(small)
    agreement, impl = check_agreement(numpy_cls, small)
    assert agreement.passed, agreement.summary() + "\n" + agreement.table()
    assert impl.xp is np and impl.math_cls is cupy_lstm.UfuncGateMath
    on_cuda = numpy_cls.supports(small.replace(device="cuda"))
    assert not on_cuda.ok and "`cupy`" in on_cuda.reason


def test_cupy_without_usable_cupy_declines_cuda_naming_numpy(monkeypatch, small):
    cls = discover().get("cupy")
    on_cuda = small.replace(device="cuda")
    monkeypatch.setattr(cupy_lstm, "cupy_usable", lambda: Support.no("CuPy is not installed (test)"))
    support = cls.supports(on_cuda)
    assert not support.ok and "CuPy is not installed" in support.reason and "`numpy`" in support.reason
    assert "CuPy is not installed" in cls.backend(on_cuda)


@pytest.mark.parametrize("problem", SHAPES[:3] + SHAPES[4:], ids=lambda p: p.id)
def test_fused_without_prepacked_gemms_agrees_too(problem):
    """The oneDNN-prepacked path is a CPU float32 feature; the torch.addmm path serves the rest (here
    in the Python loop; tests/test_native_loop.py covers the C++ loop's GEMM paths)."""
    from impls.fused import GEMM_ATEN, FusedLSTM, FusedPythonLSTM, packed_gemm_available

    class Unpacked(FusedLSTM):
        use_packed_gemm = False
        use_native_loop = False

    assert "addmm" in Unpacked.backend(problem)
    assert ("oneDNN" in FusedPythonLSTM.backend(problem)) == packed_gemm_available(problem)
    agreement, impl = check_agreement(Unpacked, problem)
    assert agreement.passed and not impl.plan.big_packed and impl.plan.step == GEMM_ATEN, agreement.table()


@pytest.mark.parametrize("name", ["cudnn", "fused", "modular", "compiled"])
def test_bfloat16_agrees_within_its_own_tolerance(name):
    problem = Problem(batch=5, length=7, input_size=12, hidden=16, layers=2, dtype="bfloat16")
    agreement, _ = check_agreement(discover().get(name), problem)
    assert agreement.passed and agreement.tolerance == 5e-2, agreement.table()
    assert agreement.max_error > 1e-4  # really computed in bfloat16, not silently in float32


def test_cupy_declines_modes_it_cannot_run():
    cls = discover().get("cupy")
    assert "no bfloat16" in cls.supports(Problem(2, 2, 2, 2, 1, dtype="bfloat16", device="cuda")).reason
    assert "no bfloat16" in discover().get("numpy").supports(Problem(2, 2, 2, 2, 1, dtype="bfloat16")).reason
    assert "CUPY_TF32" in cls.supports(Problem(2, 2, 2, 2, 1, dtype="tf32", device="cuda")).reason


def test_fused_graphs_declines_the_cpu_and_its_capture_plumbing_agrees(small):
    """The CUDA graph variant runs only on CUDA; everything around the capture (static inputs,
    replayed outputs, re-capture on a new shape) is checked with a stand-in; weight updates in
    test_set_weights.py."""
    from impls.fused_graphs import EagerCapture, GraphedFusedLSTM

    support = GraphedFusedLSTM.supports(small)
    assert not support.ok and "CUDA graphs need a CUDA device" in support.reason

    class Eager(GraphedFusedLSTM):
        capture_cls = EagerCapture

    agreement, impl = check_agreement(Eager, small)
    assert agreement.passed, agreement.table()
    inputs = make_inputs(small, seed=3)  # new values through the same static tensors
    out = impl.forward(inputs.x, inputs.h0, inputs.c0)
    grads = impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n)
    direct = discover().get("fused")(small, make_inputs(small).weights)
    ref_out = direct.forward(inputs.x, inputs.h0, inputs.c0)
    ref_grads = direct.backward(inputs.dy, inputs.dh_n, inputs.dc_n)
    assert torch.allclose(out.y, ref_out.y) and torch.allclose(grads.dx, ref_grads.dx)
    assert len(impl._graphs) == 2
    short = make_inputs(small.replace(length=3))
    assert impl.forward(short.x, short.h0, short.c0).y.shape[0] == 3 and len(impl._graphs) == 1
