import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.report import main
from harness.reporting.report import format_ms
from harness.reporting.results import ResultsError, latest_results, load_results

FIXTURE = Path(__file__).parent / "data" / "smoke-results.json"  # a real smoke run, with one mutant
FOUR = ("cudnn", "fused", "modular", "cupy")


def test_loads_one_row_per_impl_problem_phase():
    results = load_results([FIXTURE])
    t = results.timings
    assert len(t) == 4 * 4 * 3
    assert set(t.impl) == set(FOUR) and set(t.phase) == {"forward", "backward", "total"}
    assert (t.median_ms > 0).all() and (t.q1_ms <= t.median_ms).all() and (t.median_ms <= t.q3_ms).all()
    assert (t.agreement_max_error < t.agreement_tolerance).all()
    assert set(results.not_timed.impl) == {"mutant_forget_bias"}
    assert results.runs[0].environment["device"] == "cpu"


def test_report_has_the_seed_table_per_problem(tmp_path, capsys):
    assert main([str(FIXTURE), "--out-dir", str(tmp_path), "--name", "smoke", "--csv", str(tmp_path / "t.csv")]) == 0
    text = (tmp_path / "smoke.md").read_text()
    assert text in capsys.readouterr().out
    headings = [l for l in text.splitlines() if l.startswith("## Batch size")]
    assert headings == ["## Batch size = 5, Length = 7", "## Batch size = 2, Length = 7",
                        "## Batch size = 5, Length = 3", "## Batch size = 2, Length = 3"]
    header_rows = [l for l in text.splitlines() if l.startswith("| Code ") and "Forward (ms)" in l]
    assert len(header_rows) == 4
    assert all("| Backward (ms)" in l and "| Total (ms)" in l and "Total vs modular" in l for l in header_rows)
    for impl in FOUR:
        assert sum(l.startswith(f"| {impl} ") for l in text.splitlines()) == 4 + 1  # 4 tables + backends
    assert text.count("**") >= 4 * 3 * 2  # the fastest of each column in bold
    assert "| modular " in text and "1.00x" in text
    assert "- **Device**: CPU: " in text and "torch 2.13.0" in text and "TF32 off" in text
    assert "- **Ceiling**: " in text and "best of: torch.mm" in text and "- **Memory allocator**" in text
    assert all("Total GFLOP/s" in l and "% of ceiling" in l and "Kept for backward" in l for l in header_rows)
    assert "`mutant_forget_bias` (forward, backward, total): failed: not timed: agreement" in text
    csv = pd.read_csv(tmp_path / "t.csv")
    assert len(csv) == 48 and "median_ms" in csv.columns


def test_bold_marks_the_fastest(tmp_path):
    main([str(FIXTURE), "--out-dir", str(tmp_path), "--name", "r"])
    t = load_results([FIXTURE]).timings
    rows = t[(t.batch == 5) & (t.length == 7) & (t.phase == "total")]
    fastest = rows.loc[rows.median_ms.idxmin()]
    table = (tmp_path / "r.md").read_text().split("## Batch size = 5, Length = 7")[1].split("##")[0]
    line = next(l for l in table.splitlines() if l.startswith(f"| {fastest.impl} "))
    assert f"**{format_ms(fastest.median_ms)}**" in line


def test_speedup_is_baseline_over_impl(tmp_path):
    main([str(FIXTURE), "--out-dir", str(tmp_path), "--name", "r", "--baseline", "cudnn"])
    t = load_results([FIXTURE]).timings
    sel = t[(t.batch == 2) & (t.length == 3) & (t.phase == "backward")].set_index("impl").median_ms
    table = (tmp_path / "r.md").read_text().split("## Batch size = 2, Length = 3")[1]
    line = next(l for l in table.splitlines() if l.startswith("| modular "))
    assert f"{sel['cudnn'] / sel['modular']:.2f}x" in line


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"benchmarks": 3}', "not a pytest-benchmark results file"),
    ('[1, 2]', "not a pytest-benchmark results file"),
    ('{"machine_info": {}, "benchmarks": [{"name": "test_x", "stats": {}}]}', "not an LSTM harness results file"),
])
def test_unreadable_or_foreign_files_exit_2(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main([str(bad), "--out-dir", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_corrupt_benchmark_entry_is_named(tmp_path, capsys):
    data = json.loads(FIXTURE.read_text())
    del data["benchmarks"][3]["stats"]["median"]
    bad = tmp_path / "cut.json"
    bad.write_text(json.dumps(data))
    assert main([str(bad), "--out-dir", str(tmp_path)]) == 2
    assert "benchmark #3" in capsys.readouterr().err


def test_missing_file_and_empty_storage_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["--storage", str(tmp_path / "empty")]) == 2
    assert "pytest suites/ --benchmark-only" in capsys.readouterr().err


def test_unknown_baseline_exit_2(tmp_path, capsys):
    assert main([str(FIXTURE), "--baseline", "nope", "--out-dir", str(tmp_path)]) == 2
    assert "choose from cudnn, cupy, fused, modular" in capsys.readouterr().err


def test_default_is_the_newest_saved_run(tmp_path):
    storage = tmp_path / ".benchmarks" / "Linux-CPython"
    storage.mkdir(parents=True)
    shutil.copy(FIXTURE, storage / "0001_old.json")
    shutil.copy(FIXTURE, storage / "0002_new.json")
    assert latest_results(tmp_path / ".benchmarks").name == "0002_new.json"
    assert main(["--storage", str(tmp_path / ".benchmarks"), "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "0002_new.md").exists()
    with pytest.raises(ResultsError):
        latest_results(tmp_path / "nothing")


def test_format_ms():
    assert [format_ms(v) for v in (1234.4, 45.67, 3.456, 0.12345)] == ["1234", "45.7", "3.46", "0.123"]


def test_figures_render_and_are_linked(tmp_path):
    assert main([str(FIXTURE), "--out-dir", str(tmp_path), "--name", "r"]) == 0
    folder = tmp_path / "r-figures"
    names = sorted(p.name for p in folder.glob("*.png"))
    assert names == ["bars.png", "speedup.png", "vs-batch.png", "vs-length.png"]
    assert all((folder / n).stat().st_size > 20_000 for n in names)
    text = (tmp_path / "r.md").read_text()
    assert "## Figures" in text and "![bars](r-figures/bars.png)" in text


def test_no_plots_skips_figures(tmp_path):
    assert main([str(FIXTURE), "--out-dir", str(tmp_path), "--name", "r", "--no-plots"]) == 0
    assert not (tmp_path / "r-figures").exists() and "## Figures" not in (tmp_path / "r.md").read_text()


def test_palette_is_one_colour_per_implementation_everywhere():
    from harness.reporting.figures import palette

    assert palette(["fused", "cudnn", "fused"]) == palette(["cudnn", "fused"])
    assert len(set(palette(FOUR).values())) == 4


def test_noisy_rows_are_flagged(tmp_path):
    data = json.loads(FIXTURE.read_text())
    bench = next(b for b in data["benchmarks"] if b["extra_info"]["impl"] == "modular"
                 and b["extra_info"]["phase"] == "total" and b["extra_info"]["batch"] == 5
                 and b["extra_info"]["length"] == 7)
    bench["stats"]["iqr"] = bench["stats"]["median"] * 0.5
    noisy = tmp_path / "noisy.json"
    noisy.write_text(json.dumps(data))
    assert main([str(noisy), "--out-dir", str(tmp_path), "--name", "n", "--no-plots"]) == 0
    section = (tmp_path / "n.md").read_text().split("## Batch size = 5, Length = 7")[1].split("## ")[0]
    assert "† noisy: interquartile range above 10% of the median (" in section and "modular total 50%" in section
    line = next(l for l in section.splitlines() if l.startswith("| modular "))
    assert "†" in line


def test_every_result_carries_the_environment():
    env = json.loads(FIXTURE.read_text())["machine_info"]["lstm_harness"]
    for key in ("device", "device_name", "cpu_model", "torch_threads", "torch", "torch_cuda", "cudnn", "cupy",
                "numpy", "python", "harness", "harness_commit", "gpu"):
        assert key in env, key
    assert env["harness_commit"] and env["torch_threads"] >= 1


# --- Failures, suspect numbers and corrupt files (inputs: the fixture, edited in tmp_path) ---

B5T7 = {"batch": 5, "length": 7}


def _fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def _write(tmp_path: Path, data: dict, name: str = "edited.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _at(bench: dict, **fields) -> bool:
    return all(bench["extra_info"][k] == v for k, v in fields.items())


def _failure(bench: dict, reason: str) -> dict:
    """The not_timed entry the plugin would record had this benchmark's test failed."""
    info = bench["extra_info"]
    problem = {k: info[k] for k in ("batch", "length", "input_size", "hidden", "layers", "dtype", "device")}
    return {"impl": info["impl"], "phase": info["phase"], "problem": problem, "outcome": "failed", "reason": reason}


def _section(text: str, heading: str) -> str:
    return text.split(heading + "\n")[1].split("\n## ")[0]


def test_a_problem_where_nothing_was_timed_still_has_its_section(tmp_path, capsys):
    data = _fixture()
    crashed = [b for b in data["benchmarks"] if _at(b, **B5T7)]
    data["benchmarks"] = [b for b in data["benchmarks"] if not _at(b, **B5T7)]
    data["lstm_harness"]["not_timed"] += [_failure(b, "RuntimeError: out of memory") for b in crashed]
    assert main([str(_write(tmp_path, data)), "--out-dir", str(tmp_path), "--name", "r", "--no-plots"]) == 0
    text = (tmp_path / "r.md").read_text()
    section = _section(text, "## Batch size = 5, Length = 7")
    assert section.startswith("\n2 layer(s), input 12, hidden 16, float32; CPU: ")
    assert "No implementation was timed on this problem" in section and "| Code " not in section
    assert "Not timed:" in section
    for impl in FOUR:
        assert f"- `{impl}` (forward, backward, total): failed: RuntimeError: out of memory" in section
    assert "`mutant_forget_bias` (forward, backward, total): failed: not timed: agreement" in section
    assert [l for l in text.splitlines() if l.startswith("## Batch size")] == [  # the grid's order, kept
        "## Batch size = 5, Length = 7", "## Batch size = 2, Length = 7",
        "## Batch size = 5, Length = 3", "## Batch size = 2, Length = 3"]
    assert "Traceback" not in capsys.readouterr().err


def test_a_run_in_which_every_test_failed_renders_its_failures(tmp_path, capsys):
    data = _fixture()
    data["lstm_harness"]["not_timed"] += [_failure(b, "RuntimeError: boom") for b in data["benchmarks"]]
    data["benchmarks"] = []
    csv = tmp_path / "t.csv"
    assert main([str(_write(tmp_path, data)), "--out-dir", str(tmp_path), "--name", "r", "--csv", str(csv)]) == 0
    captured = capsys.readouterr()
    text = (tmp_path / "r.md").read_text()
    assert text in captured.out and "Traceback" not in captured.err
    assert [l for l in text.splitlines() if l.startswith("## Batch size")] == [
        "## Batch size = 5, Length = 7", "## Batch size = 2, Length = 7",
        "## Batch size = 5, Length = 3", "## Batch size = 2, Length = 3"]
    assert text.count("No implementation was timed on this problem") == 4
    assert text.count("(forward, backward, total): failed: RuntimeError: boom") == 4 * 4
    assert "nothing was timed" in text and "- **Device**: CPU: " in text
    assert not (tmp_path / "r-figures").exists() and "## Figures" not in text  # nothing to draw


def _set_median(data: dict, seconds: float, **fields) -> None:
    bench = next(b for b in data["benchmarks"] if _at(b, **fields))
    bench["stats"].update(median=seconds, q1=seconds, q3=seconds, iqr=0.0)


def test_a_rate_above_the_ceiling_is_marked_suspect(tmp_path):
    data = _fixture()
    ceiling = data["benchmarks"][0]["extra_info"]["ceiling_gflops"] * 1e9
    flops = data["benchmarks"][0]["extra_info"]["flops"]  # cudnn forward at B5 T7; total counts 3x that
    _set_median(data, 3 * flops / ceiling / 4.12, impl="fused", phase="total", **B5T7)  # 412 %
    _set_median(data, flops / ceiling / 2, impl="cupy", phase="forward", **B5T7)  # 200 %, not the column shown
    assert main([str(_write(tmp_path, data)), "--out-dir", str(tmp_path), "--name", "r", "--no-plots"]) == 0
    text = (tmp_path / "r.md").read_text()
    section = _section(text, "## Batch size = 5, Length = 7")
    fused = next(l for l in section.splitlines() if l.startswith("| fused "))
    assert "| 412% ‼" in fused
    cupy = next(l for l in section.splitlines() if l.startswith("| cupy "))
    assert "‼" in cupy.split("|")[2]  # its forward time, the suspect phase
    notes = [l for l in section.splitlines() if l.startswith("‼")]
    assert len(notes) == 2
    assert any("`fused` total" in n and "412%" in n for n in notes)
    assert any("`cupy` forward" in n and "200%" in n for n in notes)
    assert all("exceeds the device's measured GEMM ceiling" in n and "should not be trusted" in n for n in notes)
    assert "‼" in fused.split("|")[4]  # its total time
    assert section.count("‼") == len(notes) + 3 and text.count("‼") == section.count("‼") + 1  # + the legend
    assert "‼ marks a rate above 100% of the measured ceiling" in text


def test_missing_phases_show_dashes_never_nan(tmp_path):
    data = _fixture()
    drop = [dict(impl="fused", phase="backward", **B5T7), dict(impl="fused", phase="total", **B5T7),
            dict(impl="modular", phase="forward", batch=2, length=7), dict(impl="cupy", phase="total", batch=2,
                                                                           length=3)]
    data["benchmarks"] = [b for b in data["benchmarks"] if not any(_at(b, **d) for d in drop)]
    assert main([str(_write(tmp_path, data)), "--out-dir", str(tmp_path), "--name", "r"]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "nan" not in text.lower()
    fused = next(l for l in _section(text, "## Batch size = 5, Length = 7").splitlines() if l.startswith("| fused "))
    cells = [c.strip() for c in fused.strip("|").split("|")]
    # Code, 3 times, 3 speedups, rate, % of ceiling, kept: backward, total, their speedups and rates are missing
    assert cells[2:4] == ["-", "-"] and cells[5:9] == ["-"] * 4
    assert cells[9] == "31.9 KiB"  # what it keeps for backward was measured with its forward
    b2t7 = _section(text, "## Batch size = 2, Length = 7")
    assert all(l.split("|")[5].strip() == "-" for l in b2t7.splitlines() if l.startswith("| ") and "Code" not in l)
    assert (tmp_path / "r-figures" / "bars.png").exists()


def _set(path: tuple, value):
    """A corruption: set the item at a path of keys and indices."""
    def corrupt(data):
        *parents, last = path
        for key in parents:
            data = data[key]
        data[last] = value
    return corrupt


def _delete(path: tuple):
    def corrupt(data):
        *parents, last = path
        for key in parents:
            data = data[key]
        del data[last]
    return corrupt


NT0 = ("lstm_harness", "not_timed", 0)
B3 = ("benchmarks", 3)
CORRUPTIONS = {  # id: (corruption, what the message must name)
    "section-list": (_set(("lstm_harness",), []), "'lstm_harness'"),
    "section-string": (_set(("lstm_harness",), "smoke"), "'lstm_harness'"),
    "not_timed-object": (_set(("lstm_harness", "not_timed"), {"impl": "x"}), "'lstm_harness.not_timed'"),
    "not_timed-string": (_set(("lstm_harness", "not_timed"), "none"), "'lstm_harness.not_timed'"),
    "not_timed-entry-string": (_set(NT0, "failed"), "not_timed entry #0"),
    "not_timed-no-reason": (_delete((*NT0, "reason")), "'reason'"),
    "not_timed-no-impl": (_delete((*NT0, "impl")), "'impl'"),
    "not_timed-no-phase": (_delete((*NT0, "phase")), "'phase'"),
    "not_timed-no-outcome": (_delete((*NT0, "outcome")), "'outcome'"),
    "not_timed-no-problem": (_delete((*NT0, "problem")), "'problem'"),
    "not_timed-problem-string": (_set((*NT0, "problem"), "B5-T7"), "'problem'"),
    "not_timed-problem-no-batch": (_delete((*NT0, "problem", "batch")), "'problem.batch'"),
    "not_timed-problem-bad-hidden": (_set((*NT0, "problem", "hidden"), "16"), "'problem.hidden'"),
    "machine_info-string": (_set(("machine_info",), "x86"), "'machine_info'"),
    "machine_info-list": (_set(("machine_info",), []), "'machine_info'"),
    "machine_info-section-list": (_set(("machine_info", "lstm_harness"), []), "'machine_info.lstm_harness'"),
    "stats-list": (_set((*B3, "stats"), [1.0]), "'stats'"),
    "stats-string": (_set((*B3, "stats"), "fast"), "'stats'"),
    "median-string": (_set((*B3, "stats", "median"), "0.001"), "'stats.median'"),
    "median-null": (_set((*B3, "stats", "median"), None), "'stats.median'"),
    "median-bool": (_set((*B3, "stats", "median"), True), "'stats.median'"),
    "benchmark-string": (_set(B3, "test_speed"), "benchmark #3"),
    "benchmark-list": (_set(B3, [1, 2]), "benchmark #3"),
    "extra_info-list": (_set((*B3, "extra_info"), ["cudnn"]), "'extra_info'"),
    "flops-string": (_set((*B3, "extra_info", "flops"), "many"), "'extra_info.flops'"),
    "phase-unknown": (_set((*B3, "extra_info", "phase"), "sideways"), "'extra_info.phase'"),
    "raw-timings-strings": (_set((*B3, "stats", "data"), ["1e-3"]), "'stats.data'"),
    "device_name-list": (_set(("machine_info", "lstm_harness", "device_name"), ["cpu"]),
                         "'machine_info.lstm_harness.device_name'"),
    "ceilings-string": (_set(("lstm_harness", "ceilings"), "fast"), "'lstm_harness.ceilings'"),
    "ceiling-no-gflops": (_delete(("lstm_harness", "ceilings", 0, "gflops")), "'lstm_harness.ceilings[0].gflops'"),
}


@pytest.mark.parametrize("corrupt,field", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_valid_json_wrong_inside_is_a_message_naming_file_and_field(tmp_path, capsys, corrupt, field):
    data = _fixture()
    corrupt(data)
    bad = _write(tmp_path, data, "bad.json")
    assert main([str(bad), "--out-dir", str(tmp_path / "out"), "--no-plots"]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith(f"harness.report: error: {bad}: ") and field in err, err
    assert "Traceback" not in captured.out + err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ResultsError, match=str(bad)):
        load_results([bad])


def test_setup_time_is_a_column_per_implementation(tmp_path):
    """First problem's construction (a compiler's cold start) and the range over the others; files
    written before the field have no column."""
    data = json.loads(FIXTURE.read_text())
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        first = info["batch"] == 5 and info["length"] == 7
        info["setup_seconds"] = (20.5 if first else 0.25 * info["batch"]) if info["impl"] == "cudnn" else 0.0004
    path = tmp_path / "with-setup.json"
    path.write_text(json.dumps(data))
    main([str(path), "--out-dir", str(tmp_path), "--name", "s", "--no-plots"])
    backends = (tmp_path / "s.md").read_text().split("## Implementations")[1].split("## Batch")[0]
    assert "Setup (s)" in backends and "outside every timed region" in backends
    assert next(l for l in backends.splitlines() if l.startswith("| cudnn ")).count("20.5 first, then 0.5-1.25") == 1
    assert "<0.001 first, then <0.001-<0.001" in next(l for l in backends.splitlines() if l.startswith("| fused "))
    main([str(FIXTURE), "--out-dir", str(tmp_path), "--name", "old", "--no-plots"])
    assert "Setup (s)" not in (tmp_path / "old.md").read_text()


def test_the_harness_own_time_per_round_is_a_line_where_recorded(tmp_path):
    data = json.loads(FIXTURE.read_text())
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        info["harness_seconds"], info["rotation_seconds"] = 2e-6, 5e-6
        if info["impl"] == "cudnn" and info["phase"] == "forward" and info["batch"] == 5:
            info["harness_seconds"] = bench["stats"]["median"] * 0.02  # 2 % of its own round
    path = tmp_path / "with-costs.json"
    path.write_text(json.dumps(data))
    main([str(path), "--out-dir", str(tmp_path), "--name", "c", "--no-plots"])
    line = next(l for l in (tmp_path / "c.md").read_text().splitlines() if "Harness's own time" in l)
    assert "2.0 us per round" in line and "at most 2.000 % of a round: cudnn forward" in line
    assert "fresh inputs (drawn and copied into the buffers) 5.0 us per round" in line
    main([str(FIXTURE), "--out-dir", str(tmp_path), "--name", "old", "--no-plots"])
    assert "Harness's own time" not in (tmp_path / "old.md").read_text()
