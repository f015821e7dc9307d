"""The results record (harness.record.schema): one owner of what a results file holds."""

import dataclasses
import json
import subprocess
import sys

import pytest

from harness.contract.problem import Problem
from harness.record.schema import (
    PROBLEM_FIELDS,
    RESULTS_KEY,
    SCHEMA_VERSION,
    Measurement,
    NotTimed,
    RecordError,
    RunSection,
    SchemaError,
    check_schema,
)
from harness.reporting import compare, figures, report, results

COMMITTED = ["reports/cpu-default-grid.json", "reports/trust-mutants.json", "tests/data/smoke-results.json"]
FIXTURE = "tests/data/smoke-results.json"
PROBLEM = Problem(batch=2, length=3, input_size=12, hidden=16, layers=2, dtype="float32", device="cpu")


def measurement(**changes) -> Measurement:
    fields = dict(
        impl="fused", backend="torch (CPU)", origin="built-in (impls.fused)", phase="backward", problem=PROBLEM,
        flops=PROBLEM.flops("backward"), agreement_max_error=1e-7, agreement_tolerance=1e-5,
        agreement_errors={"y": 1e-7}, saturation_max_error=2e-7, saturation_check="saturating input set",
        saturation_seconds=0.5, verified="after timing", verified_max_error=3e-7, check_seconds=0.1, seed=0,
        warmup_rounds=1, ceiling_gflops=100.0, saved_bytes=1024, peak_bytes=None, peak_includes=None, threads=2,
        process_state={"torch.get_num_threads()": 2}, precision={"matmul_allow_tf32": False, "cupy_tf32": "0"},
    )
    return Measurement(**{**fields, **changes})


def test_measurement_round_trips_through_json():
    m = measurement()
    written = json.loads(json.dumps(m.to_json()))
    # The keys measure.py always wrote, flat: older readers and the committed files agree.
    assert written["problem_id"] == PROBLEM.id and written["hidden"] == 16 and written["matmul_allow_tf32"] is False
    assert "problem" not in written and "precision" not in written
    assert Measurement.from_json(written) == m
    unchecked = measurement(verified=None, verified_max_error=None, check_seconds=None).to_json()
    assert "verified" not in unchecked  # the plugin drops a row without it


def test_run_section_round_trips_through_json():
    section = RunSection(grid="smoke", grid_about="tiny", device="cpu", seed=0, warmup=1, rounds=None, min_rounds=5,
                         max_time=1.0, allocator="glibc malloc",
                         not_timed=[NotTimed("cudnn", "forward", PROBLEM, "skipped", "no GPU")],
                         ceilings=[{"gflops": 100.0, "how": "a matrix product"}])
    written = json.loads(json.dumps(section.to_json()))
    assert written["schema"] == SCHEMA_VERSION == "1.5"
    assert written["not_timed"][0]["problem"] == PROBLEM.as_dict()
    assert RunSection.from_json(written) == section


def test_a_bad_field_is_named():
    info = measurement().to_json()
    with pytest.raises(RecordError, match="'extra_info.flops'"):
        Measurement.from_json({**info, "flops": "many"})
    with pytest.raises(RecordError, match="'extra_info.hidden'"):
        Measurement.from_json({**info, "hidden": 0})
    with pytest.raises(RecordError, match="'extra_info.problem_id'"):
        Measurement.from_json({**info, "problem_id": "B1-T1"})
    with pytest.raises(RecordError, match="lacks field 'extra_info.impl'"):
        Measurement.from_json({k: v for k, v in info.items() if k != "impl"})
    with pytest.raises(RecordError, match="'lstm_harness.seed'"):
        RunSection.from_json({"seed": "zero"})


def test_schema_absent_is_1_0_and_a_newer_major_is_refused():
    assert check_schema({}) == "1.0" and check_schema(None) == "1.0"
    assert check_schema({"schema": "1.7"}) == "1.7"  # a newer minor version only adds fields
    with pytest.raises(SchemaError, match=r"newer lstm-harness \(schema 2\.0; this one reads 1\.x\): upgrade"):
        check_schema({"schema": "2.0"})


def test_a_newer_major_schema_exits_2_from_the_report(tmp_path):
    data = json.loads(open(FIXTURE).read())
    data[RESULTS_KEY]["schema"] = "2.0"
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(data))
    with pytest.raises(results.ResultsError, match=r"newer\.json: written by a newer lstm-harness"):
        results.load_results([newer])
    proc = subprocess.run([sys.executable, "-m", "harness.report", str(newer), "--out-dir", str(tmp_path / "out"),
                           "--no-plots"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "written by a newer lstm-harness (schema 2.0; this one reads 1.x): upgrade" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", COMMITTED)
def test_the_committed_files_load(path):
    data = json.loads(open(path).read())
    # absent: written before the field
    assert data[RESULTS_KEY].get("schema") in (None, "1.0", "1.1", "1.2", "1.3", "1.4", "1.5")
    section = RunSection.from_json(data[RESULTS_KEY])
    assert section.schema == data[RESULTS_KEY].get("schema", "1.0")
    rows = [b["extra_info"] for b in data["benchmarks"] if "impl" in b.get("extra_info", {})]
    for info in rows:
        written = Measurement.from_json(info).to_json()
        assert {k: v for k, v in written.items() if v is not None} == {k: v for k, v in info.items() if v is not None}
    loaded = results.load_results([path])
    assert len(loaded.timings) == len(rows) and len(loaded.not_timed) == len(section.not_timed)


def test_problem_columns_are_the_problem_dataclass_fields():
    names = [f.name for f in dataclasses.fields(Problem)]
    assert list(PROBLEM_FIELDS) == names
    assert results.PROBLEM_FIELDS == PROBLEM_FIELDS
    assert report.PROBLEM_KEY == ["device_name", *names]
    assert set(figures.SHAPE) == {"device_name", *names} - set(figures.AXES)
    assert set(compare.KEY) == {*names, "impl", "phase", "device_name"}
    loaded = results.load_results([FIXTURE])
    assert set(names) <= set(loaded.timings.columns) and set(names) <= set(loaded.not_timed.columns)


def test_compare_across_devices_matches_rows_by_structured_fields(tmp_path):
    """The same grid timed on another device: every row pairs with its problem, implementation and phase."""
    data = json.loads(open(FIXTURE).read())
    data["machine_info"][RESULTS_KEY]["device_name"] = "NVIDIA H200"
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        info["device"] = "cuda"
        info["problem_id"] = Problem(**{f: info[f] for f in PROBLEM_FIELDS}).id
    for entry in data[RESULTS_KEY]["not_timed"]:
        entry["problem"]["device"] = "cuda"
    other = tmp_path / "cuda.json"
    other.write_text(json.dumps(data))
    table, notes = compare.compare_runs(FIXTURE, other)
    assert any(n.startswith("device_name:") for n in notes)
    assert len(table) == 48 and set(table.verdict) == {"same"}
    assert "B5-T3-I12-H16-L2-float32" in set(table.problem)  # named without the device
    assert table.why.isna().all()


def test_a_file_written_before_the_schema_field_reads_as_1_0():
    data = json.loads(open("tests/data/smoke-results.json").read())
    assert "schema" not in data[RESULTS_KEY]
    assert RunSection.from_json(data[RESULTS_KEY]).schema == "1.0"
