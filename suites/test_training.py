"""The seed's example as an agreement check: every pair of implementations, trained from the
same initial weights for a few hundred iterations in float64, must give the same loss curve and
the same final weights, and the loss must fall."""

import itertools

import pytest

from harness.problem import Problem
from harness.training_agreement import CURVE_TOLERANCE, SETUPS, WEIGHT_TOLERANCE, agrees, compare, train

ITERATIONS = 200
_runs = {}


def trained(reg, setup):
    if (reg.name, setup) not in _runs:
        _runs[(reg.name, setup)] = train(reg.cls, setup, "lstm_short", ITERATIONS)
    return _runs[(reg.name, setup)]


@pytest.mark.parametrize("setup", list(SETUPS))
def test_training_agrees_for_every_pair(lstm_session, setup):
    probe = Problem(batch=1, length=1, input_size=1, hidden=15, layers=1, dtype="float64", device="cpu")
    regs = [r for r in lstm_session.settings.impls if r.cls.supports(probe).ok
            and (SETUPS[setup]["clipping"] != "gate" or r.cls.gate_clipping)]
    if len(regs) < 2:
        pytest.skip(f"fewer than two implementations can train the {setup!r} set-up here")
    for reg in regs:
        losses = trained(reg, setup).losses
        assert losses[-20:].mean() < 0.5 * losses[:20].mean(), f"{reg.name}: loss did not fall"
    failures = []
    for a, b in itertools.combinations(regs, 2):
        gaps = compare(trained(a, setup), trained(b, setup))
        if not agrees(gaps):
            failures.append(f"{a.name} vs {b.name}: loss curves {gaps['curve']:.2e} (tol {CURVE_TOLERANCE:.0e}), "
                            f"final weights {gaps['weights']:.2e} (tol {WEIGHT_TOLERANCE:.0e})")
    assert not failures, "training disagrees:\n" + "\n".join(failures)
