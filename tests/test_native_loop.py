"""The C++ time loop of `fused` (impls/native): built here, right in every mode, and the Python
loop (with a label that says so) wherever it cannot be built."""

import threading
import time
from pathlib import Path

import pytest
import torch

from harness.contract.agreement import check_agreement
from harness.contract.inputs import make_inputs
from harness.contract.problem import Problem
from impls import native
from impls.fused import (
    GEMM_ATEN,
    GEMM_LOOP,
    GEMM_LOOP_BATCH,
    GEMM_MKL,
    GEMM_PACKED,
    FusedLSTM,
    FusedPythonLSTM,
    packed_gemm_available,
)
from impls.fused_tuning import Plan, Tuned


class FusedOneDNN(FusedLSTM):
    """The C++ loop on oneDNN-prepacked products (where torch has no MKL, and to compare)."""

    use_mkl_gemm = False
    fixed_plan = Plan(GEMM_PACKED, 0, True)


def pinned(mode: int, problem: Problem) -> type[FusedLSTM]:
    """FusedLSTM on one path of the loop, whatever tuning would choose, big GEMMs as the fixed rule has them."""
    return type(f"Pinned{mode}", (FusedLSTM,), {"fixed_plan": Plan(mode, 0, packed_gemm_available(problem))})


def mkl() -> bool:
    return native.native_steps().ops.has_mkl_packed_gemm()


# One problem per path through the loop: its own small products, MKL-packed products (threaded
# pointwise pass too: batch x hidden >= 8192), ATen's addmm, and the ATen pointwise operations
# (bfloat16: no hand-written pass).
MODES = [
    (Problem(batch=1, length=9, input_size=1, hidden=15, layers=1), GEMM_LOOP),
    (Problem(batch=3, length=6, input_size=5, hidden=23, layers=3, dtype="float64"), GEMM_LOOP),
    (Problem(batch=32, length=3, input_size=40, hidden=256, layers=2), GEMM_MKL),
    (Problem(batch=20, length=4, input_size=30, hidden=130, layers=2, dtype="float64"), GEMM_ATEN),
    (Problem(batch=2, length=5, input_size=8, hidden=8, layers=2, dtype="bfloat16"), GEMM_ATEN),
]


def test_the_extension_builds_here_and_says_how():
    steps = native.native_steps()
    assert steps.available, steps.reason
    assert steps.describe().startswith(("compiled in", "loaded from cache in"))
    assert "-O3" in steps.flags
    assert "C++ time loop" in FusedLSTM.backend(MODES[0][0])
    assert "Python time loop" in FusedPythonLSTM.backend(MODES[0][0])


@pytest.mark.parametrize(("problem", "mode"), MODES, ids=lambda v: v.id if isinstance(v, Problem) else str(v))
def test_every_path_of_the_loop_agrees_with_the_reference(problem, mode):
    if mode == GEMM_MKL and not mkl():
        pytest.skip("no MKL packed GEMM in this torch build")
    if problem.dtype == "bfloat16" and not torch.backends.mkldnn.is_available():
        pytest.skip("bfloat16 on the CPU needs oneDNN")
    assert FusedLSTM.gemm_mode(problem, native=True) == mode  # the fixed rule's choice
    agreement, impl = check_agreement(pinned(mode, problem), problem)
    assert impl.native is not None and impl.plan.step == mode
    assert agreement.passed, agreement.summary() + "\n" + agreement.table()


@pytest.mark.parametrize(("problem", "mode"), MODES[:4], ids=lambda v: v.id if isinstance(v, Problem) else str(v))
def test_gate_clipping_in_cpp_is_the_python_loops(problem, mode):
    """Clamped gate gradients, dc carried on unclamped: one planted difference would show."""
    inputs = make_inputs(problem, seed=3)
    results = []
    for cls in (pinned(mode, problem), FusedPythonLSTM):
        impl = cls(problem, inputs.weights)
        impl.forward(inputs.x, inputs.h0, inputs.c0)
        grads = impl.backward(inputs.dy * 50, inputs.dh_n, inputs.dc_n, gate_clip=0.01)
        results.append({k: v.clone() for k, v in grads.named().items()})
    cpp, python = results
    tol = 1e-12 if problem.dtype == "float64" else 1e-5
    for name, value in python.items():
        err = float((cpp[name].double() - value.double()).norm() / value.double().norm().clamp_min(1e-30))
        assert err < tol, f"{name}: {err:.2e}"
    unclipped = FusedLSTM(problem, inputs.weights)
    unclipped.forward(inputs.x, inputs.h0, inputs.c0)
    assert not torch.equal(unclipped.backward(inputs.dy * 50, inputs.dh_n, inputs.dc_n).dx, cpp["dx"])


def test_the_loop_on_onednn_prepacked_products_agrees_and_follows_new_weights():
    problem = MODES[2][0]
    if not packed_gemm_available(problem):
        pytest.skip("no oneDNN prepacked GEMMs in this torch build")
    assert FusedOneDNN.gemm_mode(problem, native=True) == GEMM_PACKED
    assert "C++ time loop, oneDNN-prepacked" in FusedOneDNN.backend(problem)
    agreement, impl = check_agreement(FusedOneDNN, problem)
    assert agreement.passed, agreement.table()
    other = make_inputs(problem, seed=9)
    impl.set_weights(other.weights)  # the packed weights are refreshed in place
    fresh = FusedLSTM(problem, other.weights)
    a, b = (i.forward(other.x, other.h0, other.c0).y.clone() for i in (impl, fresh))
    assert torch.allclose(a, b, rtol=0, atol=1e-5)


def test_mkl_packed_weights_follow_set_weights():
    problem = MODES[2][0]
    if not mkl():
        pytest.skip("no MKL packed GEMM in this torch build")
    first, other = make_inputs(problem), make_inputs(problem, seed=9)
    impl = pinned(GEMM_MKL, problem)(problem, first.weights)
    impl.forward(first.x, first.h0, first.c0)
    impl.set_weights(other.weights)
    fresh = FusedPythonLSTM(problem, other.weights)
    outs = [i.forward(other.x, other.h0, other.c0) for i in (impl, fresh)]
    assert torch.allclose(outs[0].y, outs[1].y, rtol=0, atol=1e-5)
    grads = [i.backward(other.dy, other.dh_n, other.dc_n).dx for i in (impl, fresh)]
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-5)


def test_nan_and_saturation_come_out_as_they_should():
    """The loop's own exp/tanh clamp their argument: a NaN must still come out NaN, and gates
    driven far into saturation must give what torch's functions give."""
    problem = MODES[0][0]
    inputs = make_inputs(problem)
    impl = FusedLSTM(problem, inputs.weights)
    x = inputs.x.clone()
    x[4, 0, 0] = float("nan")
    y = impl.forward(x, inputs.h0, inputs.c0).y
    assert torch.isnan(y[4:]).all() and not torch.isnan(y[:4]).any()
    loud = inputs.x * 1e4
    python = FusedPythonLSTM(problem, inputs.weights).forward(loud, inputs.h0, inputs.c0)
    cpp = FusedLSTM(problem, inputs.weights).forward(loud, inputs.h0, inputs.c0)
    assert torch.allclose(cpp.y, python.y, rtol=0, atol=1e-6) and torch.allclose(cpp.c_n, python.c_n, atol=1e-5)


def test_backward_leaves_its_inputs_alone():
    problem = MODES[0][0]
    inputs = make_inputs(problem)
    impl = FusedLSTM(problem, inputs.weights)
    impl.forward(inputs.x, inputs.h0, inputs.c0)
    before = [t.clone() for t in (inputs.dy, inputs.dh_n, inputs.dc_n)]
    impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n, gate_clip=0.1)
    assert all(torch.equal(a, b) for a, b in zip(before, (inputs.dy, inputs.dh_n, inputs.dc_n), strict=True))


def test_a_subclass_that_overrides_a_python_loop_seam_gets_the_python_loop():
    class Planted(FusedLSTM):
        _tanh = staticmethod(lambda t, out: torch.tanh(t, out=out))

    assert Planted.native_loop() is None and "Python time loop" in Planted.backend(MODES[0][0])


def test_the_build_name_follows_the_source_and_the_flags(monkeypatch, tmp_path):
    name = native.build_name(["-O3"])
    assert name != native.build_name(["-O2"])
    changed = tmp_path / "lstm_steps.cpp"
    changed.write_text(native.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(native, "SOURCE", changed)
    assert native.build_name(["-O3"]) != name


@pytest.mark.parametrize(("env", "reason"), [({"LSTM_HARNESS_NO_NATIVE": "1"}, "LSTM_HARNESS_NO_NATIVE is set"),
                                             ({"CXX": "/nonexistent/c++"}, "no C++ compiler found")])
def test_without_the_extension_the_python_loop_runs_and_says_why(monkeypatch, run_python, env, reason):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = ("from harness.contract.agreement import check_agreement\n"
            "from harness.contract.problem import Problem\n"
            "from impls.fused import FusedLSTM\n"
            "p = Problem(batch=2, length=4, input_size=3, hidden=5, layers=2)\n"
            "agreement, impl = check_agreement(FusedLSTM, p)\n"
            "assert impl.native is None and agreement.passed\n"
            "print(FusedLSTM.backend(p))\n")
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr
    assert "Python time loop (C++ loop not built: " in done.stdout and reason in done.stdout


def test_a_build_lock_left_by_a_killed_build_is_waited_on_for_a_bounded_time(monkeypatch, tmp_path):
    """A build killed midway leaves torch's lock file, on which torch would wait without end: this process waits
    LOCK_WAIT_SECONDS, then runs without the extension and says why (fused's label then names the Python loop)."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(native, "LOCK_WAIT_SECONDS", 0.5)
    name = native.build_name(native.compile_flags())
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    (build_dir / "lock").write_text("")  # young: a build that was killed a moment ago
    started = time.monotonic()
    steps = native.native_steps.__wrapped__()
    assert time.monotonic() - started < 30
    assert not steps.available and "holds the build lock" in steps.reason and "waited" in steps.reason
    assert native.wait_for_lock(build_dir / "missing", 5) is None  # no lock: no wait


def test_a_lock_that_goes_away_within_the_wait_lets_the_load_go_on(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("")
    threading.Timer(0.3, lock.unlink).start()
    assert native.wait_for_lock(lock, 20) is None


def test_dnn_matmul_reads_a_transposed_view_and_writes_into_the_given_buffer():
    """oneDNN's matmul, which PyTorch exports but does not document, on the views `fused` gives it, and the errors
    of its guards."""
    from impls.fused import dnn_matmul_works

    ops = native.native_steps().ops
    if not (torch.backends.mkldnn.is_available() and ops.has_dnn_matmul()):
        pytest.skip("this PyTorch exports no oneDNN matmul")
    if not dnn_matmul_works():
        pytest.skip("this PyTorch's oneDNN matmul does not run float32 (fused's dW stays on ATen)")
    d_gates, z = torch.randn(300, 64), torch.randn(300, 48)
    out = torch.empty(64, 48)
    target = torch.full((64, 32), float("nan"))
    ops.dnn_matmul(d_gates.t(), z[:, 16:], target, 0.0)  # a column slice of z: strided rows
    assert torch.allclose(target, d_gates.t() @ z[:, 16:], rtol=1e-5, atol=1e-4)
    with pytest.raises(RuntimeError, match="output must be contiguous"):
        ops.dnn_matmul(d_gates.t(), z, torch.empty(48, 64).t(), 0.0)
    with pytest.raises(RuntimeError, match="shapes do not fit"):
        ops.dnn_matmul(d_gates, z, out, 0.0)
    with pytest.raises(RuntimeError, match="float32 operands"):
        ops.dnn_matmul(d_gates.t().double(), z.double(), out.double(), 0.0)
    with pytest.raises(RuntimeError, match="single memory location"):
        square = torch.randn(32, 32)
        ops.dnn_matmul(square, torch.randn(32, 32), square, 0.0)  # the output is an operand


@pytest.mark.parametrize("dnn", [True, False], ids=["dW on oneDNN", "dW on ATen"])
def test_both_ways_of_the_weight_gradient_agree_with_the_reference(monkeypatch, dnn):
    """With the big GEMMs on oneDNN, dW runs on its matmul where that works, else on ATen's mm (one product over
    [x | h_prev]): both agree with the float64 reference, the instance says which, and the label says when the
    plan's oneDNN does not cover dW."""
    import impls.fused as fused

    problem = Problem(batch=6, length=7, input_size=24, hidden=32, layers=2)
    if not fused.onednn_prepacking(problem):
        pytest.skip("no oneDNN in this torch build")
    if not dnn:
        monkeypatch.setattr(fused, "dnn_matmul_works", lambda: False)
    elif not fused.dnn_matmul_works():
        pytest.skip("this PyTorch's oneDNN matmul does not run float32")
    pinned_plan = type("PinnedBig", (FusedLSTM,), {"fixed_plan": Plan(GEMM_LOOP, 0, True)})
    agreement, impl = check_agreement(pinned_plan, problem)
    assert impl.dnn_weight_grads == dnn
    # The label of a plan tuned to the big GEMMs on oneDNN says where dW ran.
    tuned_plan = Plan(GEMM_LOOP, 0, True)
    monkeypatch.setattr(fused.FusedLSTM, "plan_for",
                        classmethod(lambda cls, p: (tuned_plan, Tuned(tuned_plan, {}, cached=True))))
    label = fused.FusedLSTM.backend(problem)
    assert "big GEMMs: oneDNN" in label and ("dW on ATen" in label) == (not dnn)
    assert agreement.passed, agreement.summary() + "\n" + agreement.table()


# Batch splits over two threads: ragged (3 + 2), 10 rows a thread, one row (no split), float64 (2 + 1).
BATCH_SPLITS = [Problem(batch=5, length=4, input_size=8, hidden=96, layers=2),
                Problem(batch=20, length=3, input_size=16, hidden=64, layers=1),
                Problem(batch=1, length=5, input_size=3, hidden=40, layers=1),
                Problem(batch=3, length=6, input_size=5, hidden=23, layers=3, dtype="float64")]


@pytest.mark.parametrize("problem", BATCH_SPLITS, ids=lambda p: p.id)
def test_the_batch_split_computes_what_the_column_split_does_to_the_bit(problem):
    """Split by batch rows for the whole loop, each value is the same sum in the same order as split by columns
    per step: every output and gradient equal bit for bit (gate clipping on), and both agree with the reference."""
    inputs = make_inputs(problem, seed=4)
    results = []
    for mode in (GEMM_LOOP, GEMM_LOOP_BATCH):
        impl = FusedLSTM(problem, inputs.weights, plan=Plan(mode, 2, False))
        out = impl.forward(inputs.x, inputs.h0, inputs.c0)
        kept = [t.clone() for t in (out.y, out.h_n, out.c_n)]
        grads = impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n, gate_clip=0.05)
        results.append(kept + [grads.dx, grads.dh0, grads.dc0] +
                       [t for w in grads.weights for t in (w.w_ih, w.w_hh, w.b_ih, w.b_hh)])
    for i, (split_by_columns, split_by_batch) in enumerate(zip(*results, strict=True)):
        assert torch.equal(split_by_columns, split_by_batch), f"result {i} differs"
    agreement, impl = check_agreement(type("Batch", (FusedLSTM,), {"fixed_plan": Plan(GEMM_LOOP_BATCH, 2, False)}),
                                      problem)
    assert impl.plan.step == GEMM_LOOP_BATCH
    assert agreement.passed, agreement.summary() + "\n" + agreement.table()


def test_the_batch_split_needs_the_own_kernels_packed_weight():
    ops = native.native_steps().ops
    B, H, T = 4, 32, 3
    gates, tanh_c = torch.rand(T, B, 4 * H), torch.empty(T, B, H)
    h, c = torch.rand(T + 1, B, H), torch.rand(T + 1, B, H)
    w_h = torch.rand(4 * H, H)
    with pytest.raises(RuntimeError, match="own product needs W_h\\^T"):
        ops.forward_steps(gates, h, c, tanh_c, w_h, None, torch.empty(B, 4 * H), GEMM_LOOP_BATCH)
    with pytest.raises(RuntimeError, match="own product needs W_hh"):
        ops.backward_steps(gates, c, tanh_c, torch.empty_like(gates), torch.rand(B, H), torch.rand(B, H),
                           torch.rand(T, B, H), w_h, None, None, GEMM_LOOP_BATCH)


def test_an_unknown_gemm_mode_is_refused_by_name():
    ops = native.native_steps().ops
    B, H, T = 2, 8, 2
    gates, tanh_c = torch.rand(T, B, 4 * H), torch.empty(T, B, H)
    h, c = torch.rand(T + 1, B, H), torch.rand(T + 1, B, H)
    with pytest.raises(RuntimeError, match="unknown GEMM mode 5"):
        ops.forward_steps(gates, h, c, tanh_c, torch.rand(4 * H, H), None, torch.empty(B, 4 * H), 5)
    with pytest.raises(RuntimeError, match="unknown GEMM mode -1"):
        ops.backward_steps(gates, c, tanh_c, torch.empty_like(gates), torch.rand(B, H), torch.rand(B, H),
                           torch.rand(T, B, H), torch.rand(4 * H, H), None, None, -1)
