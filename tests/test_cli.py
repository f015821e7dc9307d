"""`python -m harness <command>`: every command explains itself with an example, the older forms
(`python -m harness.report`, `.sequence`, `.sequence_plot`, `.gpu_check`) give what their new forms
give, and the shared options are the same everywhere."""

import importlib
import re

import pytest

from harness.commands import COMMANDS
from harness.commands.options import number, positive

FIXTURE = "tests/data/smoke-results.json"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_with_its_example(name, run_python):
    module = importlib.import_module(COMMANDS[name])
    proc = run_python("-m", "harness", name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"usage: python -m harness {name}" in proc.stdout
    assert f"example: {module.EXAMPLE}" in proc.stdout
    assert "python" in module.EXAMPLE and f"harness {name}" in module.EXAMPLE
    assert callable(module.add_arguments) and callable(module.run)


def test_top_level_help_lists_every_command(run_python):
    proc = run_python("-m", "harness", "--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert re.search(rf"^\s+{re.escape(name)}\b", proc.stdout, re.M), name


def test_an_unknown_command_is_a_usage_error_listing_the_commands(run_python):
    proc = run_python("-m", "harness", "frobnicate")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "python -m harness: error:" in proc.stderr and "'frobnicate'" in proc.stderr
    for name in COMMANDS:
        assert f"'{name}'" in proc.stderr


def test_no_command_is_a_usage_error(run_python):
    proc = run_python("-m", "harness")
    assert proc.returncode == 2 and "COMMAND" in proc.stderr


def _same(old, new):
    assert (old.returncode, old.stdout) == (new.returncode, new.stdout), old.stderr + new.stderr


def test_report_old_and_new_forms_agree(run_python, tmp_path):
    args = [FIXTURE, "--name", "r", "--no-plots", "--baseline", "fused"]
    old = run_python("-m", "harness.report", *args, "--out-dir", str(tmp_path / "old"))
    new = run_python("-m", "harness", "report", *args, "--out-dir", str(tmp_path / "new"))
    assert old.returncode == 0, old.stderr
    _same(old, new)
    assert (tmp_path / "old" / "r.md").read_text() == (tmp_path / "new" / "r.md").read_text()


def test_report_errors_keep_their_prefix_in_each_form(run_python, tmp_path):
    missing = str(tmp_path / "nope.json")
    old = run_python("-m", "harness.report", missing)
    new = run_python("-m", "harness", "report", missing)
    assert old.returncode == new.returncode == 2
    assert old.stderr.startswith("harness.report: error:") and missing in old.stderr
    assert new.stderr.startswith("harness report: error:") and missing in new.stderr


def test_compare_old_and_new_forms_agree(run_python):
    old = run_python("-m", "harness.report", "--compare", FIXTURE, FIXTURE, "--fail-above", "1.05")
    new = run_python("-m", "harness", "compare", FIXTURE, FIXTURE, "--fail-above", "1.05")
    assert old.returncode == 0, old.stderr
    assert "nothing slower than 1.05x" in old.stdout
    _same(old, new)


def test_compare_errors_keep_their_prefix_in_each_form(run_python, tmp_path):
    missing = str(tmp_path / "nope.json")
    old = run_python("-m", "harness.report", "--compare", FIXTURE, missing)
    new = run_python("-m", "harness", "compare", FIXTURE, missing)
    assert old.returncode == new.returncode == 2
    assert old.stderr.startswith("harness.report --compare: error:") and missing in old.stderr
    assert new.stderr.startswith("harness compare: error:") and missing in new.stderr


@pytest.mark.parametrize("args,message", [
    (["--fail-above", "1.05"], "--fail-above: only with --compare OLD NEW"),
    (["--compare", FIXTURE, FIXTURE, "--allow-missing"], "--allow-missing: only relaxes the gate"),
    (["--compare", FIXTURE, FIXTURE, "--fail-above", "nan"], "argument --fail-above: 'nan' is not a finite number"),
    (["--compare", FIXTURE, FIXTURE, "--fail-above", "0"], "argument --fail-above: '0' must be positive"),
])
def test_compare_options_are_checked_through_the_old_form(args, message, run_python):
    proc = run_python("-m", "harness.report", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("python -m harness.report")


def _untimed(text: str, folder) -> str:
    """A sequence run's output without what differs between two identical runs: times and the folder."""
    text = text.replace(str(folder), "OUT") if folder else text
    text = re.sub(r"[\d.]+ (s|ms)\b", r"N \1", text)
    return re.sub(r"[\d.]+ iterations/s", "N iterations/s", text)


def test_sequence_old_and_new_forms_agree(run_python, tmp_path):
    args = ["--config", "lstm_short", "--impl", "cudnn", "--iters", "1", "--no-plot", "--device", "cpu"]
    old = run_python("-m", "harness.sequence", *args, "--out", str(tmp_path / "old"))
    new = run_python("-m", "harness", "sequence", *args, "--out", str(tmp_path / "new"))
    assert old.returncode == new.returncode == 0, old.stderr + new.stderr
    assert "lstm_short | cudnn | seed 0 | 1 iterations" in new.stdout
    assert _untimed(old.stdout, tmp_path / "old") == _untimed(new.stdout, tmp_path / "new")
    log = "lstm_short-cudnn.log"
    assert _untimed((tmp_path / "old" / log).read_text(), None) == _untimed((tmp_path / "new" / log).read_text(), None)


def test_sequence_usage_errors_keep_the_old_name_through_the_old_form(run_python):
    old = run_python("-m", "harness.sequence", "--iters", "0")
    new = run_python("-m", "harness", "sequence", "--iters", "0")
    assert old.returncode == new.returncode == 2
    assert "python -m harness.sequence: error: argument --iters: '0' must be positive" in old.stderr
    assert "python -m harness sequence: error: argument --iters: '0' must be positive" in new.stderr


def test_replot_old_and_new_forms_agree(run_python, tmp_path):
    train = run_python("-m", "harness", "sequence", "--impl", "cudnn", "--iters", "1", "--no-plot",
                       "--device", "cpu", "--out", str(tmp_path))
    assert train.returncode == 0, train.stderr
    log = tmp_path / "lstm_short-cudnn.log"
    old = run_python("-m", "harness.sequence_plot", str(log))
    first = log.with_suffix(".png").read_bytes()
    new = run_python("-m", "harness", "replot", str(log))
    _same(old, new)
    assert old.stdout.strip() == str(log.with_suffix(".png")) and len(first) > 10_000


def test_list_device_cpu_and_the_plugin_option(run_python):
    old = run_python("-m", "harness", "list", "--lstm-device", "cpu")
    new = run_python("-m", "harness", "list", "--device", "cpu")
    assert old.returncode == 0, old.stderr
    _same(old, new)
    assert "available on cpu" in new.stdout and "fused" in new.stdout
    for spelling in ("--plugin", "--lstm-plugin"):
        proc = run_python("-m", "harness", "list", "--device", "cpu", spelling, "mutant_plugin")
        assert proc.returncode == 0, proc.stderr
        rows = {line.split()[0]: line for line in proc.stdout.splitlines()[2:]}
        assert "--lstm-plugin (mutants)" in rows["mutant_nan"]


def test_a_plugin_that_cannot_be_imported_is_a_one_line_error(run_python):
    proc = run_python("-m", "harness", "list", "--device", "cpu", "--plugin", "no_such_module_here")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("python -m harness: error:") and "no_such_module_here" in proc.stderr


def test_gpu_check_old_and_new_forms_share_one_parser(run_python, tmp_path):
    file = tmp_path / "a-file"
    file.write_text("")
    for form in (["-m", "harness.gpu_check"], ["-m", "harness", "gpu-check"]):
        proc = run_python(*form, "--out", str(file), "--device", "cpu")
        assert proc.returncode == 2 and f"--out {file} is an existing file" in proc.stderr
        bad = run_python(*form, "--out", str(tmp_path / "x"), "--budget", "inf")
        assert bad.returncode == 2 and "argument --budget: 'inf' is not a finite number" in bad.stderr


@pytest.mark.parametrize("parse,text,message", [
    (positive(int), "0", "'0' must be positive"),
    (positive(int), "-3", "'-3' must be positive"),
    (positive(int), "ten", "'ten' is not an integer"),
    (positive(float), "nan", "'nan' is not a finite number"),
    (positive(float), "-inf", "'-inf' is not a finite number"),
    (positive(float), "0", "'0' must be positive"),
    (positive(float), "x", "'x' is not a number"),
    (number(int, 0, 9), "10", "'10' is outside 0 to 9"),
])
def test_numbers_are_refused_the_same_way_everywhere(parse, text, message):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        parse(text)


def test_numbers_that_pass():
    assert positive(float)("1e-300") == 1e-300 and positive(int)(" 7 ") == 7
    assert number(int, 0, 9)("0") == 0
