"""What the report and the command lines say about interference, intervals and baselines (issue: timings
that say what the machine was doing)."""

import json
import re

import pytest

from harness.report import main
from harness.reporting.confidence import ratio_interval
from harness.reporting.report import DISTURBED_MARK

FIXTURE = "tests/data/smoke-results.json"  # a real smoke run, written before interference was measured


def with_interference(data: dict, disturbed: dict[str, int] | None = None, flagged: set[str] = frozenset(),
                      cores: float = 0.02) -> dict:
    """The fixture as a run with interference measured: `disturbed` rounds per implementation (all redone
    unless the implementation is in `flagged`)."""
    disturbed = disturbed or {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        n = disturbed.get(info["impl"], 0)
        info.update(disturbed_rounds=n, redone_rounds=0 if info["impl"] in flagged else n,
                    interference_cores=cores, interference_flagged=info["impl"] in flagged,
                    redo_seconds=0.01 * n, interference_threshold=0.3, interleaved=False)
    data["lstm_harness"]["interference"] = "/proc/stat busy and steal time of all CPUs minus this process's CPU time"
    return data


def report(tmp_path, data: dict, *args) -> str:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    assert main([str(path), "--out-dir", str(tmp_path), "--no-plots", *args]) == 0
    return (tmp_path / "run.md").read_text()


def interference_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("Interference")]
    assert len(lines) == 1, text[:3000]
    return lines[0]


def test_a_quiet_run_says_it_was_quiet(tmp_path):
    line = interference_line(report(tmp_path, with_interference(json.loads(open(FIXTURE).read()))))
    assert line.startswith("Interference: quiet") and "0.02 cores" in line


def test_a_disturbed_run_says_how_much_and_names_the_flagged_rows(tmp_path):
    data = with_interference(json.loads(open(FIXTURE).read()), {"fused": 40, "cudnn": 10}, flagged={"cudnn"},
                             cores=0.8)
    text = report(tmp_path, data)
    line = interference_line(text)
    assert line.startswith("Interference: disturbed") and "0.80 cores" in line
    assert "in 24 of 48 rows" in line  # fused's 12 rows and cudnn's 12
    assert "could not get enough quiet rounds" in line and "cudnn forward" in line and "fused forward" not in line
    tables = text.split("## Batch size")[1:]  # the problems' tables, not the implementations'
    cudnn_rows = [row for t in tables for row in t.splitlines() if row.startswith("| cudnn")]
    fused_rows = [row for t in tables for row in t.splitlines() if row.startswith("| fused")]
    assert cudnn_rows and all(DISTURBED_MARK in row for row in cudnn_rows)
    assert fused_rows and not any(DISTURBED_MARK in row for row in fused_rows)


def test_results_written_before_interference_was_measured_have_no_such_line(tmp_path):
    text = report(tmp_path, json.loads(open(FIXTURE).read()))
    assert not any(line.startswith("Interference") for line in text.splitlines())


def test_every_speedup_has_its_interval_and_the_interval_holds_the_ratio(tmp_path):
    text = report(tmp_path, json.loads(open(FIXTURE).read()))
    cells = re.findall(r"(\d+\.\d\d)x \[(\d+\.\d\d), (\d+\.\d\d)\]", text)
    assert len(cells) == 4 * 3 * 3  # every implementation but the baseline, every phase, every problem
    assert all(float(lo) <= float(r) <= float(hi) for r, lo, hi in cells)


def test_interval_of_a_ratio():
    base = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02, 0.98]
    low, high = ratio_interval([2 * v for v in base], base)
    assert 1.6 < low < 2 < high < 2.4
    assert ratio_interval(base, base[:2]) is None  # too few rounds to say
    assert ratio_interval(base, base) == ratio_interval(base, base)  # seeded: the same files, the same report


def test_without_baseline_the_report_picks_one_that_is_present(tmp_path, capsys):
    data = json.loads(open(FIXTURE).read())
    data["benchmarks"] = [b for b in data["benchmarks"] if b["extra_info"]["impl"] in ("fused", "cudnn")]
    text = report(tmp_path, data)
    assert "Total vs cudnn" in text and "vs modular" not in text
    data["benchmarks"] = [b for b in data["benchmarks"] if b["extra_info"]["impl"] == "fused"]
    assert "Total vs fused" in report(tmp_path, data)
    # Named and absent: still an error.
    assert main([str(tmp_path / "run.json"), "--out-dir", str(tmp_path), "--baseline", "modular"]) == 2
    assert "--baseline 'modular' has no results" in capsys.readouterr().err


def test_the_earlier_compare_form_with_report_options_works(tmp_path, capsys):
    """`python -m harness.report --no-plots --compare OLD NEW`, as the README's earlier forms promise, and
    with the report's other options beside it: they are set aside with a note."""
    assert main(["--no-plots", "--compare", FIXTURE, FIXTURE]) == 0
    captured = capsys.readouterr()
    assert "same: 48" in captured.out and "not used when comparing: --no-plots" in captured.err
    assert main(["--compare", FIXTURE, FIXTURE, "--baseline", "cudnn", "--out-dir", str(tmp_path), "--no-plots",
                 "--fail-above", "1.05"]) == 0
    assert "nothing slower than 1.05x" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # a real error is still one
        main(["--compare", FIXTURE, FIXTURE, "--fail-above"])
    assert exit_.value.code == 2 and "--fail-above: expected one argument" in capsys.readouterr().err


def test_earlier_forms_as_written_in_the_readme(run_python, tmp_path):
    """Each earlier form the README lists, run as a user types it."""
    report = run_python("-m", "harness.report", FIXTURE, "--out-dir", str(tmp_path), "--no-plots")
    assert report.returncode == 0, report.stderr
    compare = run_python("-m", "harness.report", "--no-plots", "--compare", FIXTURE, FIXTURE)
    assert compare.returncode == 0 and "same: 48" in compare.stdout, compare.stderr
    for module in ("harness.sequence", "harness.sequence_plot", "harness.gpu_check"):
        helped = run_python("-m", module, "--help")
        assert helped.returncode == 0 and "usage:" in helped.stdout, helped.stderr


def test_interleaved_rounds_through_the_suite(run_python, tmp_path):
    """--lstm-interleave on, through the real speed suite: the point's implementations take their rounds in
    turn and are recorded so; one that changes process-wide state inside the timed rounds is named and gets no
    time, and one that skips mid-timing is skipped alone; the others are timed and checked."""
    out = tmp_path / "r.json"
    proc = run_python("-m", "pytest", "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "smoke",
                      "--lstm-batch", "3", "--lstm-length", "4", "--lstm-plugin", "mutant_plugin", "--lstm-rounds", "6",
                      "--lstm-impls", "fused,mutant_threads_while_timed,cudnn,mutant_skips", "--lstm-interleave",
                      "on", "--benchmark-json", str(out), "-p", "no:cacheprovider", "-q")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "changed process-wide state during timing: torch.get_num_threads()" in proc.stdout
    data = json.loads(out.read_text())
    timed = {(b["extra_info"]["impl"], b["extra_info"]["phase"]) for b in data["benchmarks"]}
    assert timed == {(impl, phase) for impl in ("fused", "cudnn") for phase in ("forward", "backward", "total")}
    assert all(b["extra_info"]["interleaved"] and b["stats"]["rounds"] == 6 for b in data["benchmarks"])
    not_timed = {(n["impl"], n["outcome"]) for n in data["lstm_harness"]["not_timed"]}
    assert ("mutant_threads_while_timed", "failed") in not_timed and ("mutant_skips", "skipped") in not_timed
    assert data["lstm_harness"]["interleave"] is True
