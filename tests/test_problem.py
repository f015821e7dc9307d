import pytest
import torch

from harness.contract.inputs import make_inputs
from harness.contract.problem import Problem, ProblemError


@pytest.mark.parametrize("field,value", [("batch", 0), ("length", -1), ("hidden", 2.5), ("layers", True),
                                         ("input_size", "8")])
def test_invalid_fields_are_named(field, value):
    fields = dict(batch=2, length=3, input_size=4, hidden=5, layers=1)
    fields[field] = value
    with pytest.raises(ProblemError, match=field):
        Problem(**fields)


def test_unknown_dtype_and_device():
    with pytest.raises(ProblemError, match="dtype"):
        Problem(1, 1, 1, 1, 1, dtype="float8")
    with pytest.raises(ProblemError, match="device"):
        Problem(1, 1, 1, 1, 1, device="tpu")


def test_inputs_are_seeded_canonical_and_never_zero(small):
    a, b, c = make_inputs(small, 0), make_inputs(small, 0), make_inputs(small, 1)
    assert a.x.shape == (7, 5, 12) and a.h0.shape == (2, 5, 16) and a.dy.shape == (7, 5, 16)
    assert a.weights[0].w_ih.shape == (64, 12) and a.weights[1].w_ih.shape == (64, 16)
    assert a.weights[0].w_hh.shape == (64, 16) and a.weights[0].b_hh.shape == (64,)
    bound = 1 / small.hidden ** 0.5
    for name in ("x", "h0", "c0", "dy", "dh_n", "dc_n"):
        t = getattr(a, name)
        assert t.dtype == torch.float32
        assert torch.equal(t, getattr(b, name)), name
        assert not torch.equal(t, getattr(c, name)), name
        assert bool((t != 0).all()) and float(t.abs().max()) <= bound
    for w in a.weights:
        assert all(bool((t != 0).all()) for t in w.tensors())


def test_float64_problem_starts_from_same_draws(small):
    f32 = make_inputs(small)
    f64 = make_inputs(small.replace(dtype="float64"))
    assert f64.x.dtype == torch.float64
    assert torch.allclose(f32.x.double(), f64.x, atol=1e-7)


def test_flops_formula():
    p = Problem(batch=20, length=100, input_size=512, hidden=512, layers=3)
    forward = 3 * 2 * 100 * 20 * 4 * 512 * (512 + 512)
    assert p.flops("forward") == forward
    assert p.flops("backward") == 2 * forward and p.flops("total") == 3 * forward
    layered = Problem(batch=1, length=1, input_size=3, hidden=2, layers=2)
    assert layered.flops("forward") == 2 * 8 * (3 + 2) + 2 * 8 * (2 + 2)
    with pytest.raises(ValueError, match="phase"):
        p.flops("sideways")
