"""Every implementation against the float64 reference on every grid point.

Under --benchmark-only pytest skips this file; the speed suite then runs the very same check
(shared through the session) before it times anything.
"""

import pytest

from harness.agreement import AgreementError
from harness.timing import precision


def test_agreement(lstm_point, lstm_session):
    reg, problem = lstm_point
    support = reg.cls.supports(problem)
    if not support.ok:
        pytest.skip(f"{reg.name} cannot run {problem.id} here: {support.reason}")
    try:
        with precision(problem.dtype):
            _, _, agreement = lstm_session.validated(reg, problem)
    except AgreementError as exc:
        pytest.fail(str(exc), pytrace=False)
    assert agreement.passed, agreement.table()
