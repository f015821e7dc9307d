"""The report's agreement error beside the dtype's rounding floor (schema 1.5: precision_ratio), its mark for
results computed in a wider type, and the header's count of the timed calls that were checked."""

import json
from pathlib import Path

import pytest
from mutants import ComputesInFloat64

from harness.contract.agreement import check_agreement, precision_ratio, rounding_floors
from harness.contract.problem import Problem
from harness.contract.reference import reference_for
from harness.report import main
from harness.reporting.report import ERROR_TITLE, WIDE_MARK, WIDE_RATIO
from harness.reporting.results import load_results
from impls.fused import FusedLSTM

FIXTURE = Path(__file__).parent / "data" / "smoke-results.json"  # a real smoke run, written before 1.5
NEW_FIELDS = ("precision_ratio", "checked_calls", "timed_calls", "zero_state_max_error")


def _with_precision(tmp_path: Path) -> Path:
    """The fixture as a 1.5 file: `fused` as if it computed in float64 (ratio 1.02), the others at 20x; every row
    checked 3 of its 12 timed calls (cudnn's 4), zero-state errors up to 4.5e-07."""
    data = json.loads(FIXTURE.read_text())
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        info["precision_ratio"] = 1.02 if info["impl"] == "fused" else 20.0
        info["checked_calls"], info["timed_calls"] = (4 if info["impl"] == "cudnn" else 3), 12
        info["zero_state_max_error"] = 4.5e-07 if info["impl"] == "modular" and info["batch"] == 5 else 2e-07
    path = tmp_path / "precision.json"
    path.write_text(json.dumps(data))
    return path


def _report(tmp_path: Path, path: Path, name: str) -> str:
    assert main([str(path), "--out-dir", str(tmp_path), "--name", name, "--no-plots"]) == 0
    return (tmp_path / f"{name}.md").read_text()


def _table_line(text: str, impl: str, heading: str = "## Batch size = 5, Length = 7") -> str:
    table = text.split(heading + "\n")[1].split("\n## ")[0]
    return next(line for line in table.splitlines() if line.startswith(f"| {impl} "))


def test_results_rows_carry_the_new_fields(tmp_path):
    t = load_results([_with_precision(tmp_path)]).timings
    assert set(NEW_FIELDS) <= set(t.columns)
    assert set(t[t.impl == "fused"].precision_ratio) == {1.02} and t.timed_calls.sum() == 12 * len(t)
    old = load_results([FIXTURE]).timings
    assert old[list(NEW_FIELDS)].isna().all().all()  # absent from older files: None, never a crash


def test_the_error_column_shows_the_ratio_and_marks_a_wider_type(tmp_path, capsys):
    text = _report(tmp_path, _with_precision(tmp_path), "p")
    assert text in capsys.readouterr().out
    t = load_results([FIXTURE]).timings
    headers = [line for line in text.splitlines() if line.startswith("| Code ") and "Forward (ms)" in line]
    assert len(headers) == 4 and all(ERROR_TITLE in h and "Kept for backward" in h for h in headers)
    for impl in ("fused", "cudnn"):
        error = t[(t.impl == impl) & (t.batch == 5) & (t.length == 7)].agreement_max_error.iloc[-1]
        line = _table_line(text, impl)
        assert f"{error:.1e} (" in line
        if impl == "fused":
            assert f"(1.0x) {WIDE_MARK}" in line
        else:
            assert "(20x)" in line and WIDE_MARK not in line
    # One mark per table (fused's row) and a line under each naming it; the legend in the header explains it.
    assert sum(WIDE_MARK in line for line in text.splitlines() if line.startswith("| ")) == 4
    assert text.count(f"{WIDE_MARK} wider type: `fused`") == 4
    agreement = next(line for line in text.splitlines() if line.startswith("- **Agreement**"))
    assert f"{WIDE_MARK} marks a ratio below {WIDE_RATIO:g}x" in agreement
    assert ("its errors are those of a float64 result rounded to float32: it computes in a wider type than the "
            "problem's") in agreement


def test_the_agreement_line_counts_the_checked_calls_and_the_zero_state_check(tmp_path):
    data = json.loads(_with_precision(tmp_path).read_text())
    for bench in data["benchmarks"]:  # checked after timing: the line then names the checked calls
        bench["extra_info"] |= {"verified": "input set 2", "verified_max_error": 6e-07, "check_seconds": 0.01,
                                "saturation_max_error": 3e-06, "saturation_seconds": 0.02}
    path = tmp_path / "checked.json"
    path.write_text(json.dumps(data))
    agreement = next(line for line in _report(tmp_path, path, "c").splitlines()
                     if line.startswith("- **Agreement**"))
    rows, cudnn_rows = 48, 12  # 4 implementations x 4 problems x 3 phases
    checked = 4 * cudnn_rows + 3 * (rows - cudnn_rows)
    assert f"on {checked} of the {12 * rows} timed calls" in agreement and "(worst 6.0e-07)" in agreement
    assert "zero initial state (h0 = c0 = 0; worst 4.5e-07)" in agreement
    assert "last timed call of each phase" not in agreement


def test_an_older_file_renders_as_before(tmp_path):
    text = _report(tmp_path, FIXTURE, "old")
    assert ERROR_TITLE not in text and WIDE_MARK not in text
    assert "zero initial state" not in text and "timed calls" not in text
    # A file where only some rows have the ratio: the others show their error alone, unmarked.
    data = json.loads(FIXTURE.read_text())
    for bench in data["benchmarks"]:
        if bench["extra_info"]["impl"] == "cudnn":
            bench["extra_info"]["precision_ratio"] = 1.0
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(data))
    text = _report(tmp_path, path, "partial")
    assert WIDE_MARK in _table_line(text, "cudnn") and WIDE_MARK not in _table_line(text, "modular")
    assert "(" not in _table_line(text, "modular").split("|")[-2]


# --- the ratio itself: ~1 for results computed in float64 and rounded, well above the threshold for fused ---

def _ratio(cls, problem: Problem) -> float:
    outputs, grads = reference_for(problem)
    floors = rounding_floors({**outputs.named(), **grads.named()}, problem.torch_dtype)
    agreement, _ = check_agreement(cls, problem)
    assert agreement.passed, agreement.summary()
    return precision_ratio(agreement.errors, floors)


@pytest.mark.parametrize("batch,length", [(1, 3), (5, 7)])
def test_the_ratio_tells_float64_arithmetic_from_float32(batch, length):
    problem = Problem(batch, length, 12, 16, 2)
    assert _ratio(ComputesInFloat64, problem) == pytest.approx(1.0, abs=0.05)
    assert _ratio(FusedLSTM, problem) > 2 * WIDE_RATIO  # measured 7.9 .. 15 at the smoke shapes
