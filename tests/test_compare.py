import json
import os

import pytest

from harness.compare import environment_differences, judge
from harness.report import main

FIXTURE = "tests/data/smoke-results.json"


def test_judge_verdicts():
    base = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01, 0.99]
    assert judge(base, base)["verdict"] == "same"
    assert judge(base, [v * 1.5 for v in base])["verdict"] == "slower"
    assert judge(base, [v * 0.5 for v in base])["verdict"] == "faster"
    assert judge(base[:2], [v * 2 for v in base[:2]])["verdict"] == "uncertain"  # too few rounds to say
    wide = [0.5, 1.5, 0.7, 1.3, 0.9, 1.1, 0.6, 1.4]
    assert judge(wide, [v * 1.08 for v in wide])["verdict"] == "uncertain"
    assert judge(base, [v * 1.5 for v in base], fail_above=1.05)["regression"]
    assert not judge(base, [v * 1.03 for v in base], fail_above=1.05)["regression"]


def test_identical_results_compare_same_and_exit_zero(capsys):
    assert main(["--compare", FIXTURE, FIXTURE, "--fail-above", "1.05"]) == 0
    out = capsys.readouterr().out
    assert "same: 48" in out and "nothing slower than 1.05x" in out and "differ in environment" not in out


def test_environment_differences_are_named_first(tmp_path, capsys):
    data = json.loads(open(FIXTURE).read())
    data["machine_info"]["lstm_harness"]["torch"] = "9.9.9"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    assert main(["--compare", FIXTURE, str(other)]) == 0
    out = capsys.readouterr().out
    assert out.index("differ in environment") < out.index("| impl")
    assert "torch: '2.13.0+cpu' -> '9.9.9'" in out
    assert environment_differences({"gpu": "A"}, {"gpu": "B"}) == ["gpu: 'A' -> 'B'"]


def test_compare_needs_raw_timings(tmp_path, capsys):
    data = json.loads(open(FIXTURE).read())
    for bench in data["benchmarks"]:
        bench["stats"].pop("data", None)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(data))
    assert main(["--compare", FIXTURE, str(bare)]) == 2
    assert "raw timings" in capsys.readouterr().err


@pytest.mark.parametrize("delay_s", ["0.02"])  # ~20x a call of this size: far above any noise
def test_a_deliberately_slowed_implementation_is_named_and_fails(run_python, tmp_path, delay_s):
    """Two real runs; the second with `tunable` slowed: exactly it is slower, and the exit is 1."""
    runs = []
    for name, delay in (("old", "0"), ("new", delay_s)):
        out = tmp_path / f"{name}.json"
        os.environ["LSTM_TEST_DELAY_S"] = delay
        try:
            proc = run_python("-m", "pytest", "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "smoke",
                              "--lstm-batch", "3", "--lstm-length", "4", "--lstm-plugin", "slow_plugin",
                              "--lstm-impls", "fused,tunable", "--lstm-rounds", "12", "--benchmark-json", str(out),
                              f"--benchmark-storage=file://{tmp_path}", "-p", "no:cacheprovider", "-q")
        finally:
            del os.environ["LSTM_TEST_DELAY_S"]
        assert proc.returncode == 0, proc.stdout[-2000:]
        runs.append(str(out))
    report = run_python("-m", "harness.report", "--compare", *runs, "--fail-above", "1.5")
    assert report.returncode == 1, report.stdout
    failing = report.stdout.split("with confidence (p < 0.01): ")[1]
    assert "tunable" in failing and "fused " not in failing
    lines = [l for l in report.stdout.splitlines() if l.startswith("| tunable")]
    assert len(lines) == 3 and all("slower" in l for l in lines)
    same = run_python("-m", "harness.report", "--compare", runs[0], runs[0], "--fail-above", "1.5")
    assert same.returncode == 0
