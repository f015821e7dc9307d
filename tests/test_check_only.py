"""An implementation that can be checked but not timed here (Support.check_only): the agreement
suite runs every check on it, the speed suite gives it no time and says why."""

import json

COMMON = ("--lstm-grid", "smoke", "--lstm-batch", "3", "--lstm-length", "4", "--lstm-plugin", "check_only_plugin",
          "--lstm-impls", "check_only,fused", "-p", "no:cacheprovider", "-q", "-rA")


def test_agreement_runs_it(run_python):
    proc = run_python("-m", "pytest", "suites/test_agreement.py", *COMMON)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "PASSED suites/test_agreement.py::test_agreement[check_only-" in proc.stdout


def test_the_speed_suite_gives_it_no_time_and_says_why(run_python, tmp_path):
    out = tmp_path / "r.json"
    proc = run_python("-m", "pytest", "suites/test_speed.py", "--benchmark-only", "--lstm-rounds", "2", *COMMON,
                      "--benchmark-json", str(out), f"--benchmark-storage=file://{tmp_path}")
    assert proc.returncode == 0, proc.stdout[-3000:]
    data = json.loads(out.read_text())
    assert {b["extra_info"]["impl"] for b in data["benchmarks"]} == {"fused"}
    reasons = {(e["impl"], e["phase"], e["outcome"], e["reason"]) for e in data["lstm_harness"]["not_timed"]}
    assert {(impl, phase) for impl, phase, *_ in reasons} == {("check_only", p) for p in ("forward", "backward",
                                                                                          "total")}
    assert all(outcome == "skipped" and "not timed" in reason and "an interpreter is not a speed" in reason
               for _, _, outcome, reason in reasons)


def test_list_says_agreement_only(run_python):
    proc = run_python("-m", "harness", "list", "--device", "cpu", "--plugin", "check_only_plugin")
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("check_only "))
    assert "agreement only:" in line and "not timed: an interpreter is not a speed" in line
