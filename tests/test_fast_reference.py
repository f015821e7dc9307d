"""The fast float64 reference must agree with compute_reference (the trusted definition) to rounding."""

import pytest
import torch

from harness.contract.agreement import relative_error
from harness.contract.fast_reference import fast_reference
from harness.contract.inputs import make_inputs, saturating_inputs
from harness.contract.problem import Problem
from harness.contract.reference import compute_reference

TOLERANCE = 1e-12

SHAPES = [
    Problem(batch=5, length=7, input_size=12, hidden=16, layers=2),  # the usual small point
    Problem(batch=1, length=6, input_size=9, hidden=8, layers=3),  # batch 1, three layers
    Problem(batch=3, length=1, input_size=4, hidden=10, layers=2),  # length 1
    Problem(batch=1, length=1, input_size=3, hidden=5, layers=1),  # everything minimal
    Problem(batch=4, length=9, input_size=16, hidden=6, layers=1),  # input > hidden
    Problem(batch=2, length=5, input_size=8, hidden=8, layers=3, dtype="float64"),  # float64 inputs, used as they are
    Problem(batch=3, length=4, input_size=7, hidden=12, layers=2, dtype="bfloat16"),
]


def assert_agrees(inputs, tolerance=TOLERANCE):
    out, grads = fast_reference(inputs)
    ref_out, ref_grads = compute_reference(inputs)
    expected = {**ref_out.named(), **ref_grads.named()}
    actual = {**out.named(), **grads.named()}
    assert actual.keys() == expected.keys()
    for name, ref in expected.items():
        assert actual[name].dtype == torch.float64, name
        assert actual[name].device == ref.device, name
        error = relative_error(actual[name], ref)
        assert error < tolerance, f"{name}: relative error {error:.3g}"


def clones(inputs):
    return inputs.map(torch.clone)


def assert_unchanged(inputs, before):
    for name, t in inputs.named().items():
        assert torch.equal(t, before.named()[name]), name


@pytest.mark.parametrize("problem", SHAPES, ids=lambda p: p.id)
def test_agrees_with_compute_reference(problem):
    assert_agrees(make_inputs(problem, 0, 1))


@pytest.mark.parametrize("problem", SHAPES[:3], ids=lambda p: p.id)
def test_agrees_from_a_zero_initial_state(problem):
    inputs = make_inputs(problem)
    inputs.h0 = torch.zeros_like(inputs.h0)
    inputs.c0 = torch.zeros_like(inputs.c0)
    assert_agrees(inputs)


@pytest.mark.parametrize("problem", [Problem(4, 64, 12, 16, 2), Problem(1, 3, 5, 4, 3)], ids=lambda p: p.id)
def test_agrees_on_saturating_inputs(problem):
    inputs = saturating_inputs(problem)
    assert_agrees(inputs)


def test_forward_only_gives_the_same_outputs():
    inputs = make_inputs(SHAPES[1])
    full, _ = fast_reference(inputs)
    out, grads = fast_reference(inputs, grads=False)
    assert grads is None
    for name, t in out.named().items():
        assert torch.equal(t, full.named()[name]), name


def test_matches_torch_lstm_in_float64():
    problem = Problem(batch=3, length=5, input_size=7, hidden=6, layers=2, dtype="float64")
    inputs = make_inputs(problem)
    out, grads = fast_reference(inputs)

    lstm = torch.nn.LSTM(problem.input_size, problem.hidden, problem.layers).double()
    with torch.no_grad():
        for l, w in enumerate(inputs.weights):
            for name, t in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), w.tensors(), strict=True):
                getattr(lstm, f"{name}_l{l}").copy_(t)
    x, h0, c0 = (t.clone().requires_grad_() for t in (inputs.x, inputs.h0, inputs.c0))
    with torch.enable_grad():
        y, (h_n, c_n) = lstm(x, (h0, c0))
        torch.autograd.backward([y, h_n, c_n], [inputs.dy, inputs.dh_n, inputs.dc_n])

    pairs = {"y": (out.y, y), "h_n": (out.h_n, h_n), "c_n": (out.c_n, c_n),
             "dx": (grads.dx, x.grad), "dh0": (grads.dh0, h0.grad), "dc0": (grads.dc0, c0.grad)}
    for l, g in enumerate(grads.weights):
        for name, t in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), g.tensors(), strict=True):
            pairs[f"{name}_l{l}"] = (t, getattr(lstm, f"{name}_l{l}").grad)
    for name, (actual, expected) in pairs.items():
        assert relative_error(actual, expected.detach()) < TOLERANCE, name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inputs_are_not_modified_and_results_are_new(dtype):
    inputs = make_inputs(SHAPES[0].replace(dtype=dtype))
    before = clones(inputs)
    out, grads = fast_reference(inputs)
    fast_reference(inputs, grads=False)
    assert_unchanged(inputs, before)
    # No result may be (a view of) an input: the caller may keep or change either.
    input_storages = {t.untyped_storage().data_ptr() for t in inputs.named().values()}
    for name, t in {**out.named(), **grads.named()}.items():
        assert t.untyped_storage().data_ptr() not in input_storages, name
