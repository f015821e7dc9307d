"""`python -m harness sweep`: the grid sharded over Ray, one device per shard, merged into one results file.

Without Ray the merge, the file and the report of several devices are tested here; with Ray (the `ray` extra)
sweeps run on a local instance (one test) and on a cluster started the way the README says (`ray start --head
--resources='{"lstm_timing_slot": 1}'`), with tests/ on the driver's path only, so that the plugins reach the
workers through Ray's runtime environment. Shards are the smoke grid's problems, timed with 2 rounds.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.__main__ import main
from harness.commands.sweep.results import SweepResults, write_atomically
from harness.contract.problem import Problem
from harness.record.schema import RESULTS_KEY, SCHEMA_VERSION, SHARD_KEY
from harness.reporting.results import load_results

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
FIXTURE = TESTS / "data" / "smoke-results.json"
SMOKE = ["--lstm-grid", "smoke", "--lstm-rounds", "2"]
SETTINGS = {"grid": "smoke", "grid_about": "tiny", "device": "cpu", "seed": 0, "rounds": 2}


# ---- without Ray: the merged file and its report -------------------------------------------------------

def _shard_outputs(device_names):
    """The committed smoke run cut into one pytest-benchmark output per problem, each as if it ran on the
    next of `device_names` (in turn)."""
    data = json.loads(FIXTURE.read_text())
    problems = list(dict.fromkeys(b["extra_info"]["problem_id"] for b in data["benchmarks"]))
    outputs = []
    for i, problem_id in enumerate(problems):
        out = json.loads(json.dumps(data))
        out["machine_info"][RESULTS_KEY]["device_name"] = device_names[i % len(device_names)]
        out["benchmarks"] = [b for b in data["benchmarks"] if b["extra_info"]["problem_id"] == problem_id]
        out[RESULTS_KEY]["not_timed"] = [n for n in data[RESULTS_KEY]["not_timed"]
                                         if Problem(**n["problem"]).id == problem_id]
        outputs.append((problem_id, out))
    return outputs


def _problem(problem_id):
    b, t, i, h, l, dtype, device = problem_id.split("-")
    return Problem(int(b[1:]), int(t[1:]), int(i[1:]), int(h[1:]), int(l[1:]), dtype, device)


def _merged(tmp_path, device_names, fail=()):
    results = SweepResults(SETTINGS, {"options": {}, "split": "problem"})
    for key, out in _shard_outputs(device_names):
        impls = sorted({b["extra_info"]["impl"] for b in out["benchmarks"]})
        if key in fail:
            results.add_failed(key, _problem(key), impls, "its worker died", {"host": "n1"})
        else:
            results.add_done(key, _problem(key), impls, out, {"host": "n1"})
    path = tmp_path / "sweep.json"
    results.write(path)
    return path, results


def test_merged_shards_read_as_the_run_they_came_from(tmp_path):
    path, _ = _merged(tmp_path, ["CPU: AMD EPYC, 2 threads"])
    merged, one = load_results([path]), load_results([FIXTURE])
    key = ["impl", "problem_id", "phase", "device_name", "median_ms"]
    assert merged.timings[key].sort_values(key).values.tolist() == one.timings[key].sort_values(key).values.tolist()
    assert len(merged.not_timed) == len(one.not_timed) and merged.not_timed.shard.notna().all()
    data = json.loads(path.read_text())
    assert all(b[SHARD_KEY] == b["extra_info"]["problem_id"] for b in data["benchmarks"])
    assert data[RESULTS_KEY]["schema"] == SCHEMA_VERSION and len(data[RESULTS_KEY]["shards"]) == 4
    again = SweepResults.read(path)
    assert again.done() == {s["key"] for s in data[RESULTS_KEY]["shards"]}
    assert again.to_json() == data  # read back, written again: the same file


def test_a_report_over_two_devices_has_a_section_each_and_a_comparison(tmp_path, capsys):
    path, _ = _merged(tmp_path, ["GPU: NVIDIA A100 (CUDA 13.0)", "GPU: NVIDIA H200 (CUDA 13.0)"],
                      fail={"B2-T3-I12-H16-L2-float32-cpu"})
    assert main(["report", str(path), "--out-dir", str(tmp_path), "--name", "r", "--no-plots"]) == 0
    text = (tmp_path / "r.md").read_text()
    lines = text.splitlines()
    assert "## Across devices" in lines
    assert [l for l in lines if l.startswith("## Device: ")] == [
        "## Device: GPU: NVIDIA A100 (CUDA 13.0)", "## Device: GPU: NVIDIA H200 (CUDA 13.0)",
        "## Device: device unknown (its shard did not finish)"]  # the failed shard's problem
    assert sum(l.startswith("### Batch size") for l in lines) == 4
    assert "- **Device**: GPU: NVIDIA A100 (CUDA 13.0): " in text and "- **Software** (GPU: NVIDIA H200" in text
    header = next(l for l in lines if l.startswith("| Problem "))
    assert "GPU: NVIDIA A100 (CUDA 13.0) (ms)" in header
    assert "GPU: NVIDIA H200 (CUDA 13.0) vs GPU: NVIDIA A100" in header
    assert "1 failed" in text
    assert "`cudnn` (forward, backward, total): failed: shard B2-T3-I12-H16-L2-float32-cpu failed: its worker died" \
        in text


def test_the_cross_device_ratio_is_the_first_devices_median_over_the_others():
    import pandas as pd

    from harness.reporting.report import cross_device_table

    row = {"batch": 2, "length": 3, "input_size": 12, "hidden": 16, "layers": 2, "dtype": "float32", "impl": "fused",
           "phase": "total"}
    t = pd.DataFrame([{**row, "device": "cuda", "device_name": "A", "median_ms": 2.0},
                      {**row, "device": "cuda", "device_name": "B", "median_ms": 0.5}])
    table = cross_device_table(t, ["A", "B"])
    assert table.to_dict("records") == [{"Problem": "B2-T3-I12-H16-L2-float32", "Code": "fused", "Phase": "total",
                                         "A (ms)": "2.00", "B (ms)": "0.500", "B vs A": "4.00x"}]


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_atomically(path, "old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]


def test_the_plan_is_a_shard_per_problem_or_per_problem_and_implementation():
    from harness.commands.sweep.plan import plan_shards
    from harness.contract.registry import discover

    opts = {k: None for k in ("lstm_batch", "lstm_length", "lstm_hidden", "lstm_input", "lstm_layers", "lstm_dtype",
                              "lstm_device", "lstm_seed", "lstm_min_rounds", "lstm_warmup", "lstm_max_time")}
    opts |= {"lstm_grid": "smoke", "lstm_impls": "cudnn,fused", "lstm_rounds": "2", "plugins": [], "split": "problem"}
    shards, grid = plan_shards(opts, "cpu", discover())
    assert grid.name == "smoke" and [s.key for s in shards] == [
        "B5-T7-I12-H16-L2-float32-cpu", "B1-T7-I12-H16-L2-float32-cpu", "B5-T3-I12-H16-L2-float32-cpu",
        "B1-T3-I12-H16-L2-float32-cpu"]
    args = list(shards[1].args)
    assert args[args.index("--lstm-batch") + 1] == "1" and args[args.index("--lstm-input") + 1] == "12"
    assert args[args.index("--lstm-impls") + 1] == "cudnn,fused" and args[args.index("--lstm-rounds") + 1] == "2"
    shards, _ = plan_shards(opts | {"split": "impl"}, "cpu", discover())
    assert len(shards) == 8 and shards[1].key == "B5-T7-I12-H16-L2-float32-cpu/fused" and shards[1].impls == ("fused",)


def test_on_each_places_every_shard_once_per_gpu_model_or_per_node():
    from harness.commands.sweep.plan import SweepError, placements

    resources = {"GPU": 3, "CPU": 48, "accelerator_type:H100": 2, "accelerator_type:A100": 1}
    assert placements("gpu-model", "cuda", resources, []) == [
        {"suffix": "A100", "resources": {"accelerator_type:A100": 0.001}},
        {"suffix": "H100", "resources": {"accelerator_type:H100": 0.001}}]
    with pytest.raises(SweepError, match="--on-each gpu-model: the cluster names no GPU model"):
        placements("gpu-model", "cpu", {"lstm_timing_slot": 2}, [])
    nodes = [{"NodeID": "a", "Alive": True, "NodeManagerAddress": "10.0.0.1", "NodeManagerHostname": "n1",
              "Resources": {"lstm_timing_slot": 1.0}},
             {"NodeID": "b", "Alive": False, "NodeManagerAddress": "10.0.0.2", "Resources": {"lstm_timing_slot": 1}},
             {"NodeID": "c", "Alive": True, "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 8}}]
    assert placements("node", "cpu", {}, nodes) == [{"suffix": "10.0.0.1", "node_id": "a", "label_host": "n1"}]
    assert placements(None, "cpu", {}, nodes) == [None]


def test_what_a_node_lacks_is_named_with_how_to_ship_it():
    from harness.commands.sweep.shard import missing_here

    assert missing_here({"plugins": ["dying_plugin"], "entry_points": {}}) is None  # tests/ is on this path
    lacking = missing_here({"plugins": ["no_such_plugin"]})
    assert "--lstm-plugin no_such_plugin cannot be imported on" in lacking and "py_modules" in lacking
    lacking = missing_here({"entry_points": {"my_lstm": "my-lstm"}})
    assert "implementation 'my_lstm' comes from an entry point of the package 'my-lstm'" in lacking
    assert "pip install my-lstm" in lacking and '--runtime-env \'{"pip": ["my-lstm"]}\'' in lacking


@pytest.mark.parametrize("args,message", [
    (["--lstm-batch", "0"], "--lstm-batch: 0 is not a positive integer"),
    (["--lstm-impls", "nope"], "--lstm-impls: unknown value 'nope'"),
    (["--lstm-rounds", "x"], "--lstm-rounds: 'x' is not an integer"),
    (["--resume", "tests/data/smoke-results.json"], "not the results of a sweep"),
    (["--out", "tests/data/smoke-results.json"], "the file exists (an earlier sweep's results?)"),
])
def test_bad_options_are_usage_errors_before_any_cluster(args, message, capsys):
    assert main(["sweep", "--lstm-grid", "smoke", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness sweep: error: ") and message in err, err


# ---- with Ray ------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    # Loopback clusters of the tests' own: no token (a token in ~/.ray would otherwise switch it on).
    return env | {"RAY_AUTH_MODE": "disabled"} | extra


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node cluster started as the README says for CPU nodes, without tests/ on its path. Stopped at the
    end by signalling the `ray start --block` process it started (which stops what it started)."""
    pytest.importorskip("ray")
    port, log = _free_port(), tmp_path_factory.mktemp("ray") / "ray-start.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                                 f"--port={port}", "--num-cpus=2", '--resources={"lstm_timing_slot": 1}',
                                 "--include-dashboard=false", "--disable-usage-stats"],
                                cwd=log.parent, env=_ray_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sweep(*args, timeout=600, **env):  # a local Ray instance on 2 busy cores is slow to start
    """`python -m harness sweep ARGS` from the checkout, with tests/ importable on the driver only."""
    return subprocess.run([sys.executable, "-m", "harness", "sweep", "--no-progress", *args], cwd=ROOT,
                          env=_ray_env(PYTHONPATH=str(TESTS), **env), capture_output=True, text=True, timeout=timeout)


def _die(how: str) -> list[str]:
    return ["--runtime-env", json.dumps({"env_vars": {"LSTM_TEST_DIE": how}})]


def _shards(path: Path) -> dict:
    return {s["key"]: s for s in json.loads(path.read_text())[RESULTS_KEY]["shards"]}


def _points(frame):
    return set(zip(frame.impl, frame.problem_id, frame.phase, strict=True))


def test_the_smoke_grid_as_four_shards_matches_one_pytest_run(tmp_path):
    """On a local Ray instance (no --ray): the same (implementation, problem, phase) results as `pytest suites/`,
    every time checked after timing; the mutant's failed agreement is a finished shard's not-timed entry."""
    pytest.importorskip("ray")
    impls = ["--lstm-impls", "cudnn,mutant_forget_bias", "--lstm-plugin", "mutant_plugin"]
    direct, out = tmp_path / "direct.json", tmp_path / "sweep.json"
    one = subprocess.run([sys.executable, "-m", "pytest", "suites/test_speed.py", "--benchmark-only", *SMOKE, *impls,
                          "--benchmark-json", str(direct), f"--benchmark-storage=file://{tmp_path / 'storage'}",
                          "-p", "no:cacheprovider", "-q"], cwd=ROOT, env=_ray_env(PYTHONPATH=str(TESTS)),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 1, one.stdout + one.stderr  # the mutant fails its points
    proc = sweep(*SMOKE, *impls, "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sweep: 4 shard(s): 4 done, 0 failed" in proc.stdout and str(out) in proc.stdout
    swept, reference = load_results([out]), load_results([direct])
    assert len(_shards(out)) == 4 and len(set(swept.timings.shard)) == 4
    assert _points(swept.timings) == _points(reference.timings) and len(swept.timings) == 4 * 3
    assert _points(swept.not_timed) == _points(reference.not_timed) and set(swept.not_timed.impl) == {
        "mutant_forget_bias"}
    rows = json.loads(out.read_text())["benchmarks"]
    assert all(b["extra_info"]["verified"].startswith("after timing") for b in rows)
    shards = _shards(out).values()
    assert all(s["environment"]["device"] == "cpu" and s["host"] == socket.gethostname() for s in shards)
    assert {s["exit_status"] for s in shards} == {1}  # each shard's pytest failed the mutant: not a shard failure
    run = json.loads(out.read_text())[RESULTS_KEY]["sweep"]["runs"][-1]
    seconds = [s["pytest_seconds"] for s in shards]
    overhead = (run["wall_seconds"] - sum(seconds)) / len(shards)
    print(f"scheduling overhead per shard: {overhead:.3f} s (wall {run['wall_seconds']:.1f} s, "
          f"pytest runs {', '.join(f'{x:.1f}' for x in seconds)} s)")
    assert overhead < 2.0
    assert main(["report", str(out), "--out-dir", str(tmp_path), "--name", "r", "--no-plots", "--baseline",
                 "cudnn"]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "- **Sweep**: sweep.json" in text and "4 done" in text and "`mutant_forget_bias` (forward" in text


def test_a_killed_worker_is_retried_and_a_shard_that_always_dies_is_not_timed(cluster, tmp_path):
    """`dying` kills its own process on its first call on batch 5 (once in the whole sweep) and on every call on
    batch 2: Ray retries the first shard, which completes; the second fails after its retries and its points
    are listed as not timed with the reason, beside the first's times."""
    out, marker = tmp_path / "sweep.json", tmp_path / "died-once"
    proc = sweep("--ray", cluster, *SMOKE, "--lstm-batch", "5,2", "--lstm-length", "3", "--lstm-impls", "dying",
                 "--lstm-plugin", "dying_plugin", "--retries", "1", *_die(f"once:5:{marker},batch:2"),
                 "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert marker.exists()  # the first call died
    shards = _shards(out)
    assert shards["B5-T3-I12-H16-L2-float32-cpu"]["status"] == "done"
    assert shards["B2-T3-I12-H16-L2-float32-cpu"]["status"] == "failed"
    assert "worker died on each of its 2 attempt(s)" in shards["B2-T3-I12-H16-L2-float32-cpu"]["reason"]
    results = load_results([out])
    assert _points(results.timings) == {("dying", "B5-T3-I12-H16-L2-float32-cpu", p)
                                        for p in ("forward", "backward", "total")}
    assert set(results.not_timed.problem_id) == {"B2-T3-I12-H16-L2-float32-cpu"} and len(results.not_timed) == 3
    assert main(["report", str(out), "--out-dir", str(tmp_path), "--name", "r", "--no-plots", "--baseline",
                 "dying"]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "- `dying` (forward, backward, total): failed: shard B2-T3-I12-H16-L2-float32-cpu failed: its worker " \
           "died on each of its 2 attempt(s)" in text
    assert "1 failed" in text and "| dying " in text
    assert "sweep: 2 shard(s): 1 done, 1 failed" in proc.stdout


def _hears_ctrl_c() -> None:
    """In the driver before exec: SIGINT back to its default. A suite started in the background by a
    non-interactive shell (`cmd &`) runs with SIGINT ignored, which every child inherits and Python then
    keeps: the driver must get the Ctrl-C this test sends as a terminal would deliver it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_interrupted_sweep_resumes_with_only_the_missing_shards(cluster, tmp_path, capsys):
    out, pidfile = tmp_path / "sweep.json", tmp_path / "hanging.pid"
    args = ["--ray", cluster, *SMOKE, "--lstm-batch", "2", "--lstm-length", "3,5", "--lstm-impls", "dying",
            "--lstm-plugin", "dying_plugin", "--out", str(out)]
    driver = subprocess.Popen([sys.executable, "-m", "harness", "sweep", "--no-progress", *args,
                               *_die(f"hang:5:{pidfile}")], cwd=ROOT, env=_ray_env(PYTHONPATH=str(TESTS)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=_hears_ctrl_c)
    output = []
    reader = threading.Thread(target=lambda: output.append(driver.communicate()), daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    while not pidfile.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pidfile.exists(), "the length-5 shard never started"
    driver.send_signal(signal.SIGINT)
    reader.join(timeout=120)
    stdout, stderr = output[0]
    assert driver.returncode == 130, stdout + stderr
    assert f"--resume {out}" in stderr
    hanging = int(pidfile.read_text())
    deadline = time.monotonic() + 30
    while _pid_alive(hanging) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _pid_alive(hanging), "the interrupted shard's pytest process is still running"
    before = _shards(out)
    assert before["B2-T3-I12-H16-L2-float32-cpu"]["status"] == "done" and "B2-T5-I12-H16-L2-float32-cpu" not in before
    proc = sweep("--ray", cluster, "--resume", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"resuming {out}: 1 of 2 shard(s) done there; 1 to run" in proc.stderr
    after = _shards(out)
    assert after["B2-T3-I12-H16-L2-float32-cpu"] == before["B2-T3-I12-H16-L2-float32-cpu"]  # not run again
    assert after["B2-T5-I12-H16-L2-float32-cpu"]["status"] == "done"
    runs = json.loads(out.read_text())[RESULTS_KEY]["sweep"]["runs"]
    assert [r["shards"] for r in runs] == [1, 1] and "interrupted" in runs[0]
    assert len(load_results([out]).timings) == 2 * 3
    assert main(["sweep", "--ray", cluster, "--resume", str(out), "--lstm-rounds", "3"]) == 2
    assert "--lstm-rounds '3' differs from the sweep's ('2')" in capsys.readouterr().err


def test_a_plugin_the_workers_cannot_import_fails_its_shards_saying_how_to_ship_it(cluster, tmp_path):
    """(On each node: the one node here, named in the shard's key and pinned there.)"""
    out = tmp_path / "sweep.json"
    proc = sweep("--ray", cluster, *SMOKE, "--lstm-batch", "2", "--lstm-length", "3", "--lstm-impls", "dying",
                 "--lstm-plugin", "dying_plugin", "--no-ship", "--on-each", "node", "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [(key, shard)] = _shards(out).items()
    assert key == f"B2-T3-I12-H16-L2-float32-cpu@{shard['node_ip']}"
    reason = shard["reason"]
    assert "--lstm-plugin dying_plugin cannot be imported on" in reason
    assert "--no-ship" in reason and "py_modules" in reason and "pip install" in reason


def test_a_wrong_ray_address_is_a_clear_error_naming_it():
    pytest.importorskip("ray")
    port = _free_port()
    proc = sweep("--ray", f"127.0.0.1:{port}", *SMOKE, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--ray 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port}" in proc.stderr
    assert "ray start --head --resources='{\"lstm_timing_slot\": 1}'" in proc.stderr
    proc = sweep(*SMOKE, timeout=120, RAY_ADDRESS=f"127.0.0.1:{port}")
    assert proc.returncode == 2 and f"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers" in proc.stderr
