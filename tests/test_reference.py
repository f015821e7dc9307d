import torch

from harness.contract.agreement import relative_error
from harness.contract.inputs import make_inputs
from harness.contract.problem import Problem
from harness.contract.reference import compute_reference, reference_for


def test_reference_matches_torch_lstm_in_float64(small):
    """The reference is written independently; torch.nn.LSTM in float64 must agree to rounding."""
    problem = small.replace(dtype="float64")
    inputs = make_inputs(problem)
    out, grads = compute_reference(inputs)

    lstm = torch.nn.LSTM(problem.input_size, problem.hidden, problem.layers).double()
    with torch.no_grad():
        for l, w in enumerate(inputs.weights):
            getattr(lstm, f"weight_ih_l{l}").copy_(w.w_ih)
            getattr(lstm, f"weight_hh_l{l}").copy_(w.w_hh)
            getattr(lstm, f"bias_ih_l{l}").copy_(w.b_ih)
            getattr(lstm, f"bias_hh_l{l}").copy_(w.b_hh)
    x, h0, c0 = (t.clone().requires_grad_() for t in (inputs.x, inputs.h0, inputs.c0))
    y, (h_n, c_n) = lstm(x, (h0, c0))
    torch.autograd.backward([y, h_n, c_n], [inputs.dy, inputs.dh_n, inputs.dc_n])

    assert relative_error(out.y, y.detach()) < 1e-13
    assert relative_error(out.h_n, h_n.detach()) < 1e-13
    assert relative_error(out.c_n, c_n.detach()) < 1e-13
    assert relative_error(grads.dx, x.grad) < 1e-13
    assert relative_error(grads.dh0, h0.grad) < 1e-13
    assert relative_error(grads.dc0, c0.grad) < 1e-13
    for l, g in enumerate(grads.weights):
        assert relative_error(g.w_ih, getattr(lstm, f"weight_ih_l{l}").grad) < 1e-13
        assert relative_error(g.w_hh, getattr(lstm, f"weight_hh_l{l}").grad) < 1e-13
        assert relative_error(g.b_ih, getattr(lstm, f"bias_ih_l{l}").grad) < 1e-13
        assert relative_error(g.b_hh, getattr(lstm, f"bias_hh_l{l}").grad) < 1e-13


def test_reference_is_float64_and_cached(small):
    out, grads = reference_for(small)
    assert out.y.dtype == torch.float64 and grads.dx.dtype == torch.float64
    assert reference_for(small)[0] is out
    assert reference_for(Problem(2, 2, 3, 4, 1))[0] is not out
