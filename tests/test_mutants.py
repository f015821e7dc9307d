import json
import math

import pytest
import torch
from mutants import ForgetBiasOffByOne, NaNOutput, RecurrentGradSkipsFirstStep, RowZeroRecurrence, WrongGateOrder

from harness.contract.agreement import TOLERANCES, Agreement, AgreementError, check_agreement, relative_error
from harness.contract.problem import Problem
from impls.fused import FusedLSTM


def test_relative_error_basics():
    r = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert relative_error(r.float(), r) == 0
    assert relative_error(torch.tensor([3.0, 4.5]), r) == pytest.approx(0.1)
    assert math.isnan(relative_error(torch.tensor([float("nan"), 4.0]), r))
    assert relative_error(torch.tensor([float("inf"), 4.0]), r) == math.inf
    assert relative_error(torch.ones(3), r) == math.inf  # wrong shape
    assert relative_error(torch.tensor([0.5]), torch.zeros(1, dtype=torch.float64)) == 0.5


def test_nan_fails_at_any_tolerance(small):
    agreement = Agreement("x", small, tolerance=1e30, errors={"y": math.nan, "dx": 0.0})
    assert not agreement.passed and agreement.failures == ["y"]
    assert math.isnan(agreement.max_error)
    assert not Agreement("x", small, tolerance=1.0).passed  # nothing compared is not a pass


@pytest.mark.parametrize("mutant,guilty", [
    (RowZeroRecurrence, {"y", "h_n", "c_n"}),
    (WrongGateOrder, {"y", "h_n", "c_n", "dx", "dw_hh[0]"}),
    (ForgetBiasOffByOne, {"y", "c_n", "db_hh[0]"}),
    (RecurrentGradSkipsFirstStep, {"dw_hh[0]", "dw_hh[1]"}),
    (NaNOutput, {"y"}),
])
def test_every_mutant_is_caught(small, mutant, guilty):
    agreement, _ = check_agreement(mutant, small)
    assert not agreement.passed
    assert guilty <= set(agreement.failures), agreement.table()
    for name in guilty:
        err = agreement.errors[name]
        assert math.isnan(err) or err > 100 * TOLERANCES["float32"], (name, err)
    with pytest.raises(AgreementError, match="FAILED"):
        raise AgreementError(agreement)


def test_dwhh_mutant_is_caught_with_nothing_else_wrong(small):
    """Only the recurrent-weight gradient is wrong: the check must point at exactly that."""
    agreement, _ = check_agreement(RecurrentGradSkipsFirstStep, small)
    assert set(agreement.failures) == {"dw_hh[0]", "dw_hh[1]"}


def test_row_zero_bug_is_invisible_at_batch_one_and_caught_above():
    """Why the grid must not be batch-1 only: the Caffe LSTM's bug is correct for one row."""
    one = Problem(batch=1, length=5, input_size=6, hidden=8, layers=1)
    assert check_agreement(RowZeroRecurrence, one)[0].passed
    assert not check_agreement(RowZeroRecurrence, one.replace(batch=2))[0].passed


def test_failure_table_names_tensor_and_error(small):
    agreement, _ = check_agreement(RecurrentGradSkipsFirstStep, small)
    table = agreement.table(only_failures=True)
    assert "dw_hh[0]" in table and "FAIL" in table and "dx" not in table
    assert "mutant_dwhh_first_step" in agreement.summary()


def test_correct_implementation_passes_with_margin(small):
    agreement, _ = check_agreement(FusedLSTM, small)
    assert agreement.passed and agreement.max_error < TOLERANCES["float32"] / 10
    json.dumps(agreement.errors)  # goes into extra_info as is


def test_mutants_get_no_time_in_results(run_python, tmp_path):
    """End to end: through --lstm-plugin, each mutant fails its points and is absent from the JSON."""
    out = tmp_path / "r.json"
    proc = run_python("-m", "pytest", "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "smoke",
                      "--lstm-batch", "3", "--lstm-length", "4", "--lstm-plugin", "mutant_plugin",
                      "--lstm-impls", "fused,mutant_row0,mutant_gate_order,mutant_forget_bias,"
                      "mutant_dwhh_first_step,mutant_nan", "--lstm-rounds", "2", "--benchmark-json", str(out),
                      f"--benchmark-storage=file://{tmp_path}", "-p", "no:cacheprovider", "-q")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "15 failed, 3 passed" in proc.stdout
    data = json.loads(out.read_text())
    assert {b["extra_info"]["impl"] for b in data["benchmarks"]} == {"fused"}
    not_timed = data["lstm_harness"]["not_timed"]
    assert {n["impl"] for n in not_timed} == {"mutant_row0", "mutant_gate_order", "mutant_forget_bias",
                                             "mutant_dwhh_first_step", "mutant_nan"}
    assert all(n["outcome"] == "failed" and "agreement" in n["reason"] for n in not_timed)


def test_crash_or_oom_fails_that_point_and_the_grid_goes_on(run_python, tmp_path):
    out = tmp_path / "r.json"
    proc = run_python("-m", "pytest", "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "smoke",
                      "--lstm-length", "4", "--lstm-plugin", "mutant_plugin",
                      "--lstm-impls", "broken_crash,broken_oom,fused", "--lstm-rounds", "2",
                      "--benchmark-json", str(out), f"--benchmark-storage=file://{tmp_path}",
                      "-p", "no:cacheprovider", "-q")
    assert proc.returncode == 1, proc.stdout[-3000:]
    # 2 problems (batch 5 and 1) x 3 phases: crash fails all 6, oom the 3 at batch 5 (its agreement).
    assert "9 failed, 9 passed" in proc.stdout
    data = json.loads(out.read_text())
    timed = {(b["extra_info"]["impl"], b["extra_info"]["batch"]) for b in data["benchmarks"]}
    assert timed == {("fused", 5), ("fused", 1), ("broken_oom", 1)}
    reasons = {(n["impl"], n["problem"]["batch"]): n["reason"] for n in data["lstm_harness"]["not_timed"]}
    assert reasons[("broken_crash", 1)] == "planted kernel failure"
    assert reasons[("broken_oom", 5)].startswith("broken_oom ran out of memory on B5-T4")
    report = run_python("-m", "harness.report", str(out), "--out-dir", str(tmp_path), "--baseline", "fused")
    assert report.returncode == 0
    assert "`broken_crash` (forward, backward, total): failed: planted kernel failure" in report.stdout
