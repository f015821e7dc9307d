"""The Caffe LSTM's example as an agreement check: every pair of implementations, trained from the
same initial weights for a few hundred iterations in float64 on the run's device, must give the
same loss curve and the same final weights, and the loss must fall."""

import itertools

import pytest

from harness.example.training_agreement import (
    CURVE_TOLERANCE,
    SETUPS,
    WEIGHT_TOLERANCE,
    agrees,
    train,
    training_gaps,
    training_problem,
)

CONFIG = "lstm_short"
# Enough for the loss to fall by half in each set-up (measured with numpy, then named cupy, both biases
# trained: to 0.52 of its start in 120 caffe iterations, to 0.11 in 100 Adam iterations); each
# implementation trains once per set-up.
ITERATIONS = {"caffe": 200, "adam": 100}
_runs = {}


def trained(reg, setup, device):
    key = (reg.name, setup, device)
    if key not in _runs:
        _runs[key] = train(reg.cls, setup, CONFIG, ITERATIONS[setup], device=device)
    return _runs[key]


@pytest.mark.parametrize("setup", list(SETUPS))
def test_training_agrees_for_every_pair(lstm_session, setup):
    device = lstm_session.settings.device  # train where the run times: fused_graphs only trains on CUDA
    problem = training_problem(device, CONFIG)
    if problem is None:
        pytest.skip(f"{device} has no float64, which training agreement needs")
    regs = [r for r in lstm_session.settings.impls if r.cls.supports(problem).ok
            and (SETUPS[setup]["clipping"] != "gate" or r.cls.gate_clipping)]
    if len(regs) < 2:
        pytest.skip(f"fewer than two implementations can train the {setup!r} set-up on {device}")
    for reg in regs:
        losses = trained(reg, setup, device).losses
        assert losses[-20:].mean() < 0.5 * losses[:20].mean(), f"{reg.name}: loss did not fall"
    failures = []
    for a, b in itertools.combinations(regs, 2):
        gaps = training_gaps(trained(a, setup, device), trained(b, setup, device))
        if not agrees(gaps):
            failures.append(f"{a.name} vs {b.name} on {device}: loss curves {gaps['curve']:.2e} "
                            f"(tol {CURVE_TOLERANCE:.0e}), final weights {gaps['weights']:.2e} "
                            f"(tol {WEIGHT_TOLERANCE:.0e})")
    assert not failures, "training disagrees:\n" + "\n".join(failures)
