"""The FlashRNN wrappers: the vanilla backend against the float64 reference (saturating inputs too), the
leaves set_weights keeps, what the fused backends decline and why, and a missing dependency.
set_weights' agreement for new weights is in test_set_weights.py, which covers every registered name."""

import importlib.metadata
import sys

import pytest
import torch

pytest.importorskip("flashrnn")

from harness.contract.agreement import SATURATION_TOLERANCES, check_agreement, new_agreement, run_and_compare
from harness.contract.impl import Support
from harness.contract.inputs import make_inputs, saturating_inputs, saturating_problem
from harness.contract.problem import Problem
from harness.contract.reference import compute_reference
from harness.contract.registry import discover
from impls import flashrnn_lstm
from impls.flashrnn_lstm import INSTALL, FlashRNNCudaFused, FlashRNNTritonFused, FlashRNNVanilla

SHAPES = [Problem(batch=5, length=7, input_size=12, hidden=24, layers=2),  # layers, input != hidden, odd hidden
          Problem(batch=3, length=9, input_size=16, hidden=16, layers=1)]


@pytest.mark.parametrize("problem", [p.replace(dtype=d) for p in SHAPES for d in ("float32", "float64")],
                         ids=lambda p: p.id)
def test_vanilla_agrees_with_the_reference(problem):
    agreement, _ = check_agreement(FlashRNNVanilla, problem)
    assert agreement.passed, agreement.summary() + "\n" + agreement.table()
    assert len(agreement.errors) == 6 + 4 * problem.layers


def test_vanilla_survives_saturating_gates():
    """|pre-activation| near 100: FlashRNN's own sigmoid and tanh must not overflow."""
    problem = saturating_problem(SHAPES[0].replace(length=64))
    inputs = saturating_inputs(problem)
    impl = FlashRNNVanilla(problem, inputs.weights)
    agreement = run_and_compare(impl, inputs, compute_reference(inputs),
                                new_agreement("flashrnn", problem, "saturating", SATURATION_TOLERANCES))
    assert agreement.passed, agreement.table()


def test_leaves_are_in_flashrnn_layout_and_set_weights_keeps_them(small):
    impl = FlashRNNVanilla(small, make_inputs(small).weights)
    leaves = impl.parameter_tensors()
    assert [tuple(t.shape) for t in leaves[:3]] == [(64, 12), (4, 1, 16, 16), (4, 1, 16)]
    assert all(t.is_leaf and t.requires_grad for t in leaves)
    new = make_inputs(small, seed=1).weights
    impl.set_weights(new)
    assert all(a is b for a, b in zip(impl.parameter_tensors(), leaves, strict=True))
    assert torch.equal(leaves[1].view(64, 16), new[0].w_hh)
    assert torch.equal(leaves[2].view(64), new[0].b_ih + new[0].b_hh)


def test_backend_names_the_version_and_backend(small):
    version = importlib.metadata.version("flashrnn")
    assert FlashRNNVanilla.backend(small) == f"FlashRNN {version} vanilla (PyTorch ops, cpu)"
    assert [discover().get(n) for n in ("flashrnn", "flashrnn_cuda", "flashrnn_triton")] == [
        FlashRNNVanilla, FlashRNNCudaFused, FlashRNNTritonFused]


def test_fused_backends_decline_the_cpu(small):
    for cls, backend in ((FlashRNNCudaFused, "cuda_fused"), (FlashRNNTritonFused, "triton_fused")):
        assert cls.supports(small) == Support.no(f"FlashRNN's {backend} backend needs a GPU")


def test_fused_backends_decline_what_their_kernels_cannot_do(monkeypatch):
    """As on a GPU of compute capability 9.0: dtypes and head sizes the kernels do not have."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    gpu = Problem(batch=4, length=5, input_size=8, hidden=32, layers=1, dtype="bfloat16", device="cuda")
    for cls in (FlashRNNCudaFused, FlashRNNTritonFused):
        assert "no float64 kernels" in cls.supports(gpu.replace(dtype="float64")).reason
        assert "--lstm-dtype tf32" in cls.supports(gpu.replace(dtype="float32")).reason
    assert FlashRNNTritonFused.supports(gpu).ok and FlashRNNTritonFused.supports(gpu.replace(dtype="tf32")).ok
    assert "power-of-two head size" in FlashRNNTritonFused.supports(gpu.replace(hidden=24)).reason
    assert "<= 64" in FlashRNNTritonFused.supports(gpu.replace(hidden=128)).reason
    assert "multiple of 16" in FlashRNNCudaFused.supports(gpu.replace(hidden=24)).reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert "compute capability 8.0" in FlashRNNTritonFused.supports(gpu).reason


def test_a_failed_import_is_caught_and_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "flashrnn.flashrnn.triton_fused.fwbw", None)  # as without triton or einops
    fn, why = flashrnn_lstm.load_flashrnn.__wrapped__("triton_fused")
    assert fn is None and "triton_fused" in why
    monkeypatch.setitem(sys.modules, "flashrnn", None)
    fn, why = flashrnn_lstm.load_flashrnn.__wrapped__("vanilla")
    assert fn is None and why.startswith("ModuleNotFoundError: import of flashrnn halted")


def test_missing_dependency_gives_the_install_command(monkeypatch, small):
    monkeypatch.setattr(flashrnn_lstm, "load_flashrnn", lambda backend: (None, "ModuleNotFoundError: einops"))
    for cls in (FlashRNNVanilla, FlashRNNCudaFused, FlashRNNTritonFused):
        support = cls.supports(small)
        assert not support.ok
        assert support.reason == f"FlashRNN is not installed: {INSTALL} (ModuleNotFoundError: einops)"
        assert "not installed" in cls.backend(small)
    with pytest.raises(RuntimeError, match="not installed"):
        FlashRNNVanilla(small, make_inputs(small).weights)


def test_without_flashrnn_the_module_registers_and_declines(run_python):
    script = ("import sys; sys.modules['flashrnn'] = None\n"
              "from harness.contract.problem import Problem\n"
              "from harness.contract.registry import discover\n"
              "print(discover().get('flashrnn').supports(Problem(2, 2, 2, 2, 1)).reason)")
    done = run_python("-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"FlashRNN is not installed: {INSTALL} (ModuleNotFoundError")


def test_importing_flashrnn_changes_no_process_state_and_logs_nothing(run_python):
    script = ("from harness.measuring.process_state import ProcessState\n"
              "before = ProcessState.capture()\n"
              "from impls.flashrnn_lstm import load_flashrnn\n"
              "assert load_flashrnn('triton_fused')[0] is not None\n"
              "print(ProcessState.capture().changes_since(before))")
    done = run_python("-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "No CUDA runtime" not in done.stderr
