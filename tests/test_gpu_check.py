"""The offline GPU check script: every step reported, none stops the others, and on a machine
without a GPU it runs what the CPU can and says what it skipped."""

import json

from harness.commands import gpu_check


def test_a_failed_step_is_reported_and_the_next_one_still_runs(tmp_path):
    def boom(check):
        raise RuntimeError("planted")

    def skip(check):
        raise gpu_check.Skip("not here")

    check = gpu_check.Check(tmp_path, "cpu", 0.1, False, deadline=float("inf"))
    results = gpu_check.run_steps(check, [("a", boom), ("b", skip), ("c", lambda check: "fine")])
    assert [(r["step"], r["status"]) for r in results] == [("a", "failed"), ("b", "skipped"), ("c", "ok")]
    assert results[0]["detail"] == "RuntimeError: planted" and results[1]["detail"] == "not here"
    assert "| a " in gpu_check.summary(check)


def test_runs_to_the_end_on_the_cpu_and_names_what_it_skipped(run_python, tmp_path):
    out = tmp_path / "check"
    # Not every implementation: the steps are what this checks, and each implementation costs each step.
    proc = run_python("-m", "harness.gpu_check", "--out", str(out), "--device", "cpu", "--max-time", "0.02",
                      "--no-plots", "--impl", "cudnn,fused,cupy,fused_graphs", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = {r["step"]: (r["status"], r["detail"]) for r in json.loads((out / "summary.json").read_text())}
    for step in ("versions", "list", "agreement", "set_weights", "smoke", "report"):
        assert status[step][0] == "ok", (step, status[step])
    for step in ("cupy_side_stream", "seed_points"):
        assert status[step][0] == "skipped" and "needs a CUDA device" in status[step][1]
    assert "| cupy_side_stream | skipped" in (out / "summary.md").read_text()
    timed = json.loads((out / "smoke.json").read_text())["benchmarks"]
    assert timed and all(b["extra_info"]["device"] == "cpu" for b in timed)
    assert {b["extra_info"]["impl"] for b in timed} == {"cudnn", "fused", "cupy"}  # --impl, and fused_graphs needs CUDA
    assert "fused_graphs: skipped" in (out / "set_weights.log").read_text()
    assert (out / "gpu-check.md").exists() and (out / "agreement.log").exists()


def test_cuda_without_a_gpu_is_a_usage_error(run_python, tmp_path):
    proc = run_python("-m", "harness.gpu_check", "--out", str(tmp_path), "--device", "cuda")
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr


def test_a_step_whose_process_dies_is_reported_and_the_summary_is_kept(tmp_path, monkeypatch):
    """Each step runs in a child process: one that dies (here: asked for CUDA on a machine
    without it) is a failed step with its exit status, the next step still runs, and
    summary.json is on disk after every step."""
    monkeypatch.setattr(gpu_check, "STEPS", gpu_check.STEPS[:2])
    check = gpu_check.Check(tmp_path, "cpu", 0.05, False, deadline=float("inf"))
    results = gpu_check.run_steps_isolated(check, ["--out", str(tmp_path), "--device", "cuda"])
    assert [r["status"] for r in results] == ["failed", "failed"]
    assert all("process died (exit status 2)" in r["detail"] for r in results), results
    assert json.loads((tmp_path / "summary.json").read_text()) == results
    assert "no CUDA device" in (tmp_path / "step-versions.out").read_text()
