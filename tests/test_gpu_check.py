"""The offline GPU check: every step a command in a process group of its own, reported, capped, its log
kept however it ended; none stops the others; on a machine without a GPU it runs what the CPU can and
says what it skipped."""

import json
import os
import time
from pathlib import Path

from harness.commands import gpu_check
from harness.commands.gpu_check import Check, Skip, Step


def python(code: str):
    return lambda check: ["-c", code]


def test_a_failed_step_is_reported_and_the_next_one_still_runs(tmp_path):
    def skipped(check):
        raise Skip("not here")

    check = Check(tmp_path, "cpu", 0.1, False, deadline=time.monotonic() + 120)
    ran_nothing = "print('SKIPPED [1] tests/x.py:9: CuPy is not usable here'); print('1 skipped in 0.52s')"
    steps = [Step("a", 60, python("print('working'); raise SystemExit('planted')")), Step("b", 60, skipped),
             Step("c", 60, python("print('fine')")), Step("d", 60, python(""), cuda="the thing"),
             Step("e", 60, python(ran_nothing))]
    results = gpu_check.run_steps(check, steps)
    assert [(r["step"], r["status"]) for r in results] == [("a", "failed"), ("b", "skipped"), ("c", "ok"),
                                                           ("d", "skipped"), ("e", "skipped")]
    assert results[4]["detail"] == "CuPy is not usable here"  # a pytest run that ran nothing is no "ok"
    assert results[0]["detail"] == "exit status 1: planted", results[0]
    assert results[1]["detail"] == "not here" and results[2]["detail"] == "fine"
    assert results[3]["detail"] == "the thing needs a CUDA device; none is visible here"
    assert (tmp_path / "a.log").read_text().startswith("working")
    assert "not here" in (tmp_path / "b.log").read_text()  # a skipped step leaves a log that says why
    assert json.loads((tmp_path / "summary.json").read_text()) == results
    assert "| a " in gpu_check.summary(check)


def test_a_step_at_its_cap_is_stopped_with_its_children_and_keeps_its_partial_log(tmp_path, monkeypatch):
    """The step's process and the child it started (as pytest starts its own) are gone when the next step
    starts; what it printed before the cap is in its log."""
    monkeypatch.setattr(gpu_check, "SMALLEST_CAP", 0.5)
    monkeypatch.setattr(gpu_check, "STOP_GRACE_SECONDS", 1)
    monkeypatch.setattr(gpu_check, "CPU_CAP_FACTOR", 1)  # the cap as written, not the CPU's longer one
    pid_file = tmp_path / "child.pid"
    code = (f"import subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "print('partial output', flush=True)\n"
            "time.sleep(120)\n")
    check = Check(tmp_path, "cpu", 0.1, False, deadline=time.monotonic() + 120)
    started = time.monotonic()
    results = gpu_check.run_steps(check, [Step("hangs", 3, python(code)), Step("next", 30, python("print('ran')"))])
    assert time.monotonic() - started < 30
    assert results[0]["status"] == "failed" and "stopped at its cap of 3 s" in results[0]["detail"], results
    assert results[0]["detail"].endswith(": partial output"), results[0]  # its own last line, not the marker
    assert results[1]["status"] == "ok"
    log = (tmp_path / "hangs.log").read_text()
    assert "partial output" in log and "stopped at its cap" in log
    child = int(pid_file.read_text())
    for _ in range(50):
        if not running(child):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the step's child {child} is still running")


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_the_budget_holds_including_the_slowest_step(tmp_path, monkeypatch):
    """A step that ignores every budget is stopped where the check's budget ends, not at its own cap."""
    monkeypatch.setattr(gpu_check, "SMALLEST_CAP", 0.5)
    monkeypatch.setattr(gpu_check, "STOP_GRACE_SECONDS", 1)
    monkeypatch.setattr(gpu_check, "CPU_CAP_FACTOR", 1)  # the cap as written, not the CPU's longer one
    budget = 6.0
    check = Check(tmp_path, "cpu", 0.1, False, deadline=time.monotonic() + budget)
    started = time.monotonic()
    results = gpu_check.run_steps(check, [Step("slow", 600, python("import time; time.sleep(120)")),
                                          Step("after", 60, python("print('late')"))])
    took = time.monotonic() - started
    assert took <= budget * 1.05 + 0.5, took
    assert [r["status"] for r in results] == ["failed", "skipped"]
    assert results[1]["detail"] == "the time budget is spent"
    assert (tmp_path / "after.log").exists()


def test_runs_to_the_end_on_the_cpu_and_names_what_it_skipped(run_python, tmp_path):
    out = tmp_path / "check"
    # Not every implementation: the steps are what this checks, and each implementation costs each step.
    proc = run_python("-m", "harness.gpu_check", "--out", str(out), "--device", "cpu", "--max-time", "0.02",
                      "--no-plots", "--impl", "cudnn,fused,numpy,fused_graphs", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = {r["step"]: (r["status"], r["detail"]) for r in json.loads((out / "summary.json").read_text())}
    for step in ("versions", "list", "agreement", "set_weights", "smoke", "report"):
        assert status[step][0] == "ok", (step, status[step])
    assert "implementation(s) listed" in status["list"][1] and "can run here" in status["list"][1]
    for step in ("cupy_side_stream", "caffe_points", "agreement_h2048"):
        assert status[step][0] == "skipped" and "needs a CUDA device" in status[step][1]
    summary_md = (out / "summary.md").read_text()
    assert "| cupy_side_stream | skipped" in summary_md
    assert "## Agreement errors beside their tolerances" in summary_md and "error / tolerance" in summary_md
    import tarfile

    with tarfile.open(out / "gpu-check.tar.gz") as tar:  # the whole check as one file
        names = set(tar.getnames())
    assert {"gpu-check/agreement.log", "gpu-check/smoke.json", "gpu-check/summary.json",
            "gpu-check/gpu-check.md"} <= names, sorted(names)
    assert not any("cupy-cache" in n for n in names)
    for step in status:
        assert (out / f"{step}.log").exists(), step
    timed = json.loads((out / "smoke.json").read_text())["benchmarks"]
    assert timed and all(b["extra_info"]["device"] == "cpu" for b in timed)
    assert {b["extra_info"]["impl"] for b in timed} == {"cudnn", "fused", "numpy"}  # --impl; fused_graphs needs CUDA
    assert "passed" in (out / "set_weights.log").read_text()
    assert "device: CPU" in (out / "versions.log").read_text()
    assert (out / "gpu-check.md").exists()
    calibration = (out / "agreement.log").read_text()
    assert "agreement errors beside their tolerances" in calibration
    for mode in ("float32", "float64", "bfloat16"):  # every mode the CPU runs, each with its measured error
        assert any(line.startswith(mode) and "input set 0" in line for line in calibration.splitlines()), mode


def test_cuda_without_a_gpu_is_a_usage_error(run_python, tmp_path):
    proc = run_python("-m", "harness.gpu_check", "--out", str(tmp_path), "--device", "cuda")
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr


def test_the_check_imports_no_implementation_and_not_main():
    """It runs commands and tests; what they import is theirs."""
    import ast

    tree = ast.parse(Path(gpu_check.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.startswith("impls") or m.endswith("__main__")}, imported


def test_the_suites_run_from_a_plain_checkout_with_nothing_installed(tmp_path):
    """As on a lent GPU machine: a copy of the checkout, no entry points loaded (pytest-benchmark named, as
    an installed one is there): `python -m pytest suites --lstm-...` still loads the harness's plugin."""
    import shutil
    import subprocess
    import sys

    root = Path(gpu_check.ROOT)
    for part in ("harness", "impls", "suites"):
        shutil.copytree(root / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "pyproject.toml", tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "pytest_benchmark.plugin", "--co", "-q", "suites",
                           "--lstm-grid", "smoke", "--lstm-impls", "fused", "-p", "no:cacheprovider"], cwd=tmp_path,
                          env=env | {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "test_agreement.py::test_agreement[fused-" in proc.stdout
    assert str(tmp_path / "harness") in subprocess.run(
        [sys.executable, "-c", "import harness; print(harness.__file__)"], cwd=tmp_path, env=env,
        capture_output=True, text=True).stdout  # the copy ran, not the installed tree


def test_flashrnn_cuda_is_kept_out_of_the_shared_steps_and_checked_in_its_own(tmp_path):
    """It compiles with nvcc at first use (minutes, with retries): it must not eat the other steps' time."""
    check = Check(tmp_path, "cuda", 0.1, False, deadline=time.monotonic() + 60)
    for command in (gpu_check.agreement, gpu_check.smoke, gpu_check.caffe_points):
        args = command(check)
        assert args[args.index("--lstm-skip-impls") + 1] == "flashrnn_cuda", args
    assert "not flashrnn_cuda" in " ".join(gpu_check.set_weights(check))
    own = gpu_check.flashrnn_cuda(check)
    assert own[own.index("--lstm-impls") + 1] == "flashrnn_cuda" and "--lstm-skip-impls" not in own
    names = [step.name for step in gpu_check.STEPS]
    assert names.index("flashrnn_cuda") == len(names) - 2  # last before the report: the others ran first
    asked = Check(tmp_path, "cuda", 0.1, False, deadline=time.monotonic() + 60, impls="cudnn,fused")
    assert "--lstm-skip-impls" not in gpu_check.agreement(asked)  # --impls as given
    try:
        gpu_check.flashrnn_cuda(asked)
    except Skip as exc:
        assert "not among --impls" in str(exc)
    else:
        raise AssertionError("flashrnn_cuda's step ran though --impls left it out")
