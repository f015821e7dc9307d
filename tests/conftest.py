import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.contract.problem import Problem

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

# Under pytest-xdist (`-n 2`) each worker has PYTEST_XDIST_WORKER set; a pytest the tests start in a child
# process (the speed suite, a sweep's shard, the GPU check's steps) would inherit it, and pytest-benchmark would
# then take itself for an xdist worker and disable timing. The children are whole runs of their own.
for _name in [k for k in os.environ if k.startswith("PYTEST_XDIST_")]:
    del os.environ[_name]


@pytest.fixture
def small():
    """Small but not degenerate: batch > 1 (row-mixing bugs), input != hidden (transposes), 2 layers."""
    return Problem(batch=5, length=7, input_size=12, hidden=16, layers=2)


@pytest.fixture
def run_python(tmp_path):
    """Run `python ARGS...` from the repository root with tests/ importable; returns the CompletedProcess."""

    def run(*args, extra_path=(), timeout=300):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *map(str, extra_path), env.get("PYTHONPATH", "")])
        return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)

    return run
