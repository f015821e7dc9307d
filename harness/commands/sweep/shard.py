"""One shard of a sweep, where it runs (a Ray task of `python -m harness sweep`): the speed suite, as
`pytest suites/test_speed.py --benchmark-only` in a process of its own, narrowed to the shard's problem (and
implementations), and its results JSON back. The very code of `pytest suites/`: nothing here measures.

`run_shard(spec)` returns a dict: {"status": "done", "output": <the pytest-benchmark JSON>, ...} or
{"status": "failed", "reason": ..., ...}; both with where and how long it ran. A pytest exit status of 1 (some
point failed its checks) is a finished shard: those points are in the JSON's not-timed list. A run killed by a
signal (the kernel's out-of-memory killer, a kill) calls `on_killed` first: the Ray task makes that its own
death, so Ray retries the shard as it does any worker that dies.

Nothing heavy at import: the task imports this before it knows what it runs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the checkout the harness runs from: harness/commands/sweep/ is three below
SUITE = Path("suites") / "test_speed.py"
ENTRY_POINT_GROUP = "lstm_harness.impls"  # harness.contract.registry's; spelled out here so nothing heavy loads
# Environment variables a shard's run takes from the driver, not from the node: Ray sets OMP_NUM_THREADS to
# the task's CPU count (1) when it is unset, which would time a CPU with one thread where `pytest suites/` uses
# them all. The driver's value (or none) is what the user asked for.
FROM_DRIVER = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
PYTEST_ERRORS = {2: "pytest was interrupted", 3: "pytest hit an internal error", 4: "pytest refused the options",
                 5: "pytest collected no test"}
TAIL = 1500  # characters of a failed run's output kept in its reason


# The pytest process dies when the task's worker dies (killed, or cancelled by the driver): never left timing on
# its own beside the shard Ray runs again. Linux's PR_SET_PDEATHSIG (kept across exec), set by a launcher that
# then execs pytest, not by a preexec_fn: the worker has threads, and code between fork and exec may deadlock.
# If the worker died before the signal was armed, the launcher's parent is no longer it: it stops there.
LAUNCHER = """import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def pytest_command(spec: dict, json_path: Path, storage: Path) -> list[str]:
    """`python -m pytest suites/test_speed.py --benchmark-only ...` with the shard's --lstm-* options, through
    LAUNCHER; the plugins named (not found through entry points), as harness gpu-check does, so an installed
    harness and a checkout run the same two."""
    return [sys.executable, "-c", LAUNCHER, str(os.getpid()), "-m", "pytest", str(SUITE), "--benchmark-only",
            "-p", "harness.measuring.pytest_plugin", "-p", "pytest_benchmark.plugin", "-p", "no:cacheprovider",
            "-q", "-rN", "--color=no", f"--benchmark-json={json_path}", f"--benchmark-storage=file://{storage}",
            *spec["args"]]


def _environment(spec: dict) -> dict:
    env = dict(os.environ)
    for name in FROM_DRIVER:
        value = (spec.get("driver_env") or {}).get(name)
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    # The harness this task imported, first: the pytest run measures with the same code.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.update(spec.get("env") or {})
    return env


def _where() -> dict:
    out = {"host": socket.gethostname(), "pid": os.getpid(), "checkout": str(ROOT)}
    with contextlib.suppress(Exception):
        import ray

        context = ray.get_runtime_context()
        out["node_id"] = context.get_node_id()
        out["gpu_ids"] = [str(g) for g in context.get_accelerator_ids().get("GPU", [])]
        out["node_ip"] = ray.util.get_node_ip_address()
    return out


def missing_here(spec: dict) -> str | None:
    """What the shard needs that this node lacks (the suite, a plugin module, an entry point's package), with
    how to ship it; None when everything is here."""
    host = socket.gethostname()
    if not (ROOT / SUITE).is_file():
        return (f"the speed suite {SUITE} is not beside the harness on {host} ({ROOT}): the workers need a checkout "
                "of the harness (pip install -e '.[ray]' from a checkout on every node), or ship the driver's with "
                "--runtime-env '{\"working_dir\": \".\"}' from the checkout")
    for module in spec.get("plugins") or []:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return (f"--lstm-plugin {module} cannot be imported on {host}: let the sweep ship it from the driver "
                    "(it does, through Ray's runtime environment, for a module the driver imports from a local "
                    "file or folder, unless --no-ship is given), install it on every node (pip install ...), or "
                    "name its file or folder in --runtime-env '{\"py_modules\": [\"PATH\"]}'")
    wanted = spec.get("entry_points") or {}
    if wanted:
        here = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        for name, dist in wanted.items():
            if name not in here:
                return (f"implementation {name!r} comes from an entry point of the package {dist!r} on the driver, "
                        f"which {host} does not have: install it on every node (pip install {dist}), or let Ray "
                        f"install it: --runtime-env '{{\"pip\": [\"{dist}\"]}}'")
    return None


def run_shard(spec: dict, on_killed: Callable[[int], None] | None = None) -> dict:
    """Run one shard (spec: key, args, plugins, entry_points, driver_env, env, timeout) and return its result."""
    started = time.time()
    where = _where()

    def result(status: str, **fields) -> dict:
        return {"status": status, "key": spec["key"], **where, "started": started,
                "task_seconds": time.time() - started, **fields}

    missing = missing_here(spec)
    if missing:
        return result("failed", reason=missing)
    tmp = Path(tempfile.mkdtemp(prefix="lstm-shard-"))
    json_path = tmp / "shard.json"
    command = pytest_command(spec, json_path, tmp / "storage")
    run_started = time.time()
    try:
        proc = subprocess.run(command, cwd=ROOT, env=_environment(spec), capture_output=True, text=True,
                              timeout=spec.get("timeout"))
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return result("failed", reason=f"timed out after {exc.timeout:g} s (--shard-timeout)",
                      pytest_seconds=time.time() - run_started)
    pytest_seconds = time.time() - run_started
    try:
        output = json.loads(json_path.read_text()) if json_path.is_file() else None
    except (OSError, ValueError) as exc:
        output, unreadable = None, f"its results file is unreadable: {exc}"
    else:
        unreadable = None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tail = (proc.stdout + proc.stderr).strip()[-TAIL:]
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else "?"
        if on_killed is not None:
            on_killed(-proc.returncode)  # the task's worker dies too: Ray retries it
        return result("failed", reason=f"the pytest process was killed by {name} (out of memory, or killed)",
                      pytest_seconds=pytest_seconds, output_tail=tail)
    if proc.returncode in (0, 1) and output is not None:
        summary = next((line.strip() for line in reversed(proc.stdout.splitlines()) if line.strip()), "")
        return result("done", output=output, exit_status=proc.returncode, pytest_seconds=pytest_seconds,
                      pytest_summary=summary[:300])
    why = PYTEST_ERRORS.get(proc.returncode, f"pytest exited with status {proc.returncode}")
    last = next((line for line in reversed(tail.splitlines()) if line.strip()), "(no output)")
    return result("failed", reason=unreadable or f"{why}: {last.strip()[:300]}", exit_status=proc.returncode,
                  pytest_seconds=pytest_seconds, output_tail=tail)
