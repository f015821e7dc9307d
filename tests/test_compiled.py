"""`compiled`: compilation happens while it is built, never in a call the harness times, and a
machine that cannot compile gets a reason, not a crash."""

import pytest
import torch
from torch._dynamo.utils import counters

from harness.contract.agreement import check_agreement
from harness.contract.inputs import make_inputs
from harness.contract.problem import Problem
from harness.contract.registry import discover
from harness.measuring.session import BenchSession, Settings
from impls import compiled


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_calls_after_construction_compile_nothing(small):
    cls = discover().get("compiled")
    problem = small.replace(batch=3, hidden=10)
    compiled.compiled_step.cache_clear()  # a step function nothing has compiled yet
    before = compiled_graphs()
    impl = cls(problem, make_inputs(problem).weights)
    assert compiled_graphs() > before, "construction compiled nothing: the first timed call would"
    built = compiled_graphs()
    for seed in (1, 2):  # other values and another length: the same compiled step
        inputs = make_inputs(problem.replace(length=problem.length + seed), seed=seed)
        impl.forward(inputs.x, inputs.h0, inputs.c0)
        impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n)
    assert compiled_graphs() == built


def test_agrees_in_float64():
    problem = Problem(batch=4, length=5, input_size=6, hidden=7, layers=2, dtype="float64")
    agreement, _ = check_agreement(discover().get("compiled"), problem)
    assert agreement.passed and agreement.max_error < 1e-12, agreement.table()


def test_without_a_cpp_compiler_it_is_skipped_with_the_reason():
    from torch._inductor import config
    with config.patch({"cpp.cxx": (None, "no-such-c++-compiler")}):  # monkeypatch would delete it on undo
        support = compiled.compile_support("cpu")
    assert not support.ok and "C++ compiler" in support.reason and "no-such-c++-compiler" in support.reason


def test_a_torch_without_compile_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.delattr(torch, "compile")
    support = compiled.compile_support("cpu")
    assert not support.ok and "torch.compile" in support.reason


def test_unsupported_python_is_skipped_with_the_reason(monkeypatch):
    import torch._dynamo
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    support = compiled.compile_support("cpu")
    assert not support.ok and "does not support this Python" in support.reason


def test_setup_time_is_recorded_for_every_point(small):
    """The harness measures construction (where `compiled` compiles) for each prepared point."""
    registry = discover()
    settings = Settings.from_options({"lstm_device": "cpu", "lstm_grid": "smoke", "lstm_impls": "compiled,fused"}.get,
                                     registry)
    session = BenchSession(settings)
    for reg in settings.impls:
        prepared = session.validated(reg, settings.problems[0])
        assert prepared.setup_seconds is not None and prepared.setup_seconds > 0


@pytest.mark.parametrize("device", ["cpu"])
def test_backend_names_inductor(device):
    label = discover().get("compiled").backend(Problem(2, 2, 2, 2, 1, device=device))
    assert "torch.compile" in label and "Inductor" in label and "C++" in label
