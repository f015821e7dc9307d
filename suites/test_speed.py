"""Forward, backward and total time of every implementation on every grid point.

Each measurement is taken only after the implementation passed every check on that point, and
kept only if the last timed call passes too (harness.measuring.measure). An implementation that fails,
crashes or runs out of memory fails that point alone.
"""

from harness.measuring.measure import measure_phase


def test_speed(benchmark, pytestconfig, lstm_timed_case, lstm_session):
    reg, problem, phase = lstm_timed_case
    measure_phase(benchmark, pytestconfig, lstm_session, reg, problem, phase)
