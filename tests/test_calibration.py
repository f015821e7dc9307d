"""The calibration table: every agreement error measured before timing beside its tolerance, worst per mode,
kind of check and implementation; a NaN is the worst, a failure is named."""

import math

from harness.contract.agreement import new_agreement
from harness.contract.problem import Problem
from harness.measuring.calibration import calibration_rows, calibration_table


def check(impl, dtype, kind, error, batch=2):
    a = new_agreement(impl, Problem(batch=batch, length=3, input_size=4, hidden=4, layers=1, dtype=dtype), kind)
    a.errors = {"y": error, "h_n": error / 2}
    return a


def test_worst_error_per_mode_check_and_implementation_beside_the_tolerance():
    checks = [check("fused", "float32", "input set 0", 1e-7), check("fused", "float32", "input set 0", 3e-7, batch=5),
              check("fused", "float32", "input set 0 with zero initial state (h0 = c0 = 0)", 2e-7),
              check("fused", "float32", "saturating input set, batch 2, length 3", 4e-6),
              check("cudnn", "float64", "input set 0", 1e-15)]
    rows = calibration_rows(checks)
    assert [r[:4] for r in rows] == [["float32", "input set 0", "fused", 2],
                                     ["float32", "zero initial state", "fused", 1],
                                     ["float32", "saturating set", "fused", 1], ["float64", "input set 0", "cudnn", 1]]
    first = rows[0]
    assert first[4] == "3.00e-07" and first[5] == "1e-05" and first[6] == "0.030" and first[7] == "ok"
    assert "error / tolerance" in calibration_table(checks)


def test_a_nan_is_the_worst_and_a_failure_is_named():
    rows = calibration_rows([check("bad", "float32", "input set 0", 1e-7), check("bad", "float32", "input set 0",
                                                                                 math.nan, batch=3)])
    assert rows[0][4] == "nan" and rows[0][7] == "FAILED"
    assert calibration_table([]) == ""
