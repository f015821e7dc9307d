import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.report import format_ms, main
from harness.results import ResultsError, latest_results, load_results

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
    from harness.figures import palette

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
