"""Every timed call honest (tests/mutants.py, HONESTY_MUTANTS), through the real speed suite: a cache keyed by
the inputs' values never hits, backward's work cannot be done in forward on last call's upstream-gradient
tensors, a defect on a fifth of the calls is caught, so is one at zero initial state; an implementation that
computes in a wider type is marked; what a custom Function keeps on its ctx is counted."""

import json

from mutants import ComputesInFloat64

from harness.measuring.call_checks import calls_to_check
from harness.reporting.report import WIDE_MARK

ROUNDS = 20
IMPLS = ("fused", "ctx_steps", "mutant_content_cache", "mutant_backward_from_buffer", "mutant_every_fifth",
         "mutant_random_fifth", "mutant_zero_state", "mutant_wide")


def test_honesty_mutants_through_the_speed_suite(run_python, tmp_path, monkeypatch):
    hits, out = tmp_path / "hits.log", tmp_path / "r.json"
    monkeypatch.setenv("LSTM_MUTANT_HITS", str(hits))
    proc = run_python("-m", "pytest", "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "smoke",
                      "--lstm-batch", "3", "--lstm-length", "4", "--lstm-plugin", "mutant_plugin",
                      "--lstm-rounds", str(ROUNDS), "--lstm-impls", ",".join(IMPLS), "--benchmark-json", str(out),
                      f"--benchmark-storage=file://{tmp_path}", "-p", "no:cacheprovider", "-q")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {(b["extra_info"]["impl"], b["extra_info"]["phase"]): b["extra_info"] for b in data["benchmarks"]}
    timed = {impl for impl, _ in rows}
    assert timed == {"fused", "ctx_steps", "mutant_content_cache", "mutant_wide"}, timed
    assert all((impl, phase) in rows for impl in timed for phase in ("forward", "backward", "total"))

    # No timed call saw values an earlier call had: the value cache never hit, anywhere in the run.
    assert not hits.exists() or hits.read_text() == "", hits.read_text()[:500]
    # Calls were checked at random, at least as many as the guarantee needs, each on its own inputs.
    for (impl, phase), row in rows.items():
        assert row["timed_calls"] >= ROUNDS and row["checked_calls"] >= calls_to_check(ROUNDS), (impl, phase, row)
        assert row["verified"].startswith("after timing: ") and "on its own inputs" in row["verified"]
        assert row["zero_state_max_error"] < row["agreement_tolerance"]
    # The custom Function's ctx attributes are counted as kept for backward.
    assert rows[("ctx_steps", "forward")]["saved_bytes"] > 0
    # A float64 computation in a float32 problem is at the rounding floor; the correct float32 one is not.
    assert rows[("mutant_wide", "forward")]["precision_ratio"] < 2 < rows[("fused", "forward")]["precision_ratio"]

    reasons: dict[str, list[str]] = {}
    for entry in data["lstm_harness"]["not_timed"]:
        reasons.setdefault(entry["impl"], []).append(entry["reason"])
    assert any("timed backward call" in r for r in reasons["mutant_backward_from_buffer"]), reasons
    assert any("timed forward call" in r for r in reasons["mutant_every_fifth"]), reasons
    assert reasons["mutant_random_fifth"], reasons
    assert any("zero initial state" in r for r in reasons["mutant_zero_state"]), reasons

    report = run_python("-m", "harness.report", str(out), "--out-dir", str(tmp_path), "--baseline", "fused",
                        "--no-plots")
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert any(line.startswith(f"| {ComputesInFloat64.name} ") and WIDE_MARK in line for line in lines), \
        report.stdout[-3000:]
    assert not any(line.startswith("| fused ") and WIDE_MARK in line for line in lines)
