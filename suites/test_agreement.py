"""Every implementation against the float64 reference on every grid point.

Under --benchmark-only pytest skips this file; the speed suite then runs the very same checks
(shared through the session) before it times anything.
"""

from harness.measuring.measure import check_agreement_only


def test_agreement(lstm_agreement_point, lstm_session):
    reg, problem = lstm_agreement_point
    agreement = check_agreement_only(lstm_session, reg, problem)
    assert agreement.passed, agreement.table()
