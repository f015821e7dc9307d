"""Out of memory fails only the point it happened on, whichever library raised it (torch's error
is a RuntimeError, CuPy's a MemoryError), and releasing a point gives CuPy's pools back too."""

import importlib
import json
import sys
import types

import pytest
from test_memory_peak import FakeBenchmark

from harness.contract import registry
from harness.contract.registry import Registry
from harness.measuring import measure
from harness.measuring.measure import check_agreement_only, measure_phase
from harness.measuring.roofline import Ceiling
from harness.measuring.session import BenchSession, Settings
from impls.fused import FusedLSTM


@pytest.fixture
def plugin(monkeypatch):
    """oom_plugin's module, its registration kept out of the process-wide registry."""
    monkeypatch.setattr(registry, "REGISTRY", Registry())
    return importlib.import_module("oom_plugin")


@pytest.fixture
def session(plugin, monkeypatch):
    local = Registry()
    for cls in (plugin.CupyRunsOutOfMemory, FusedLSTM):
        local.add(cls, "test")
    options = {"lstm_device": "cpu", "lstm_grid": "smoke", "lstm_length": "3", "lstm_rounds": "2",
               "lstm_warmup": "0"}
    ceiling = Ceiling("cpu", "float32", 1.0, 1, 1)  # the real one takes seconds; no rate is checked here
    monkeypatch.setattr(BenchSession, "ceiling", lambda self, problem: ceiling)
    session = BenchSession(Settings.from_options(options.get, local))
    released = []
    real_release = session.release
    monkeypatch.setattr(session, "release", lambda **kw: (released.append(True), real_release(**kw)))
    session.released = released
    return session


def oom_cupy(session):
    return next(reg for reg in session.settings.impls if reg.name == "oom_cupy")


def test_the_cupy_error_is_a_memory_error_and_torchs_is_not(plugin):
    assert issubclass(plugin.OutOfMemoryError, MemoryError)
    assert all(issubclass(e, BaseException) for e in measure.OUT_OF_MEMORY)
    assert issubclass(plugin.OutOfMemoryError, measure.OUT_OF_MEMORY)
    assert issubclass(measure.torch.OutOfMemoryError, measure.OUT_OF_MEMORY)


def test_a_cupy_out_of_memory_fails_that_point_with_the_reason_and_releases_it(session):
    reg = oom_cupy(session)
    big, small = session.settings.problems[:2]
    assert (big.batch, small.batch) == (5, 1)
    with pytest.raises(pytest.fail.Exception) as failed:
        measure_phase(FakeBenchmark(), types.SimpleNamespace(), session, reg, big, "forward")
    message = str(failed.value)
    assert message.startswith(f"oom_cupy ran out of memory on {big.id}: Out of memory allocating 1,099,511,627,776")
    assert session.released and not session._prepared
    # The next point of the same implementation goes on, and is timed.
    benchmark = FakeBenchmark()
    measure_phase(benchmark, types.SimpleNamespace(), session, reg, small, "backward")
    assert benchmark.extra_info["verified"]


def test_the_agreement_suite_fails_it_the_same_way(session):
    reg, big = oom_cupy(session), session.settings.problems[0]
    with pytest.raises(pytest.fail.Exception, match=f"^oom_cupy ran out of memory on {big.id}: Out of memory"):
        check_agreement_only(session, reg, big)
    assert session.released


class FakePool:
    def __init__(self, fails: bool = False):
        self.freed, self.fails = 0, fails

    def free_all_blocks(self):
        self.freed += 1
        if self.fails:
            raise RuntimeError("cudaErrorNoDevice (fake)")


def fake_cupy(fails: bool = False):
    device, pinned = FakePool(fails), FakePool(fails)
    return types.SimpleNamespace(get_default_memory_pool=lambda: device,
                                 get_default_pinned_memory_pool=lambda: pinned), device, pinned


@pytest.mark.parametrize("fails", [False, True])
def test_release_frees_cupys_pools_where_cupy_was_imported(session, monkeypatch, fails):
    cupy, device, pinned = fake_cupy(fails)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    session.release()  # a CuPy without a device raises inside: release does not
    assert (device.freed, pinned.freed) == (1, 1)


def test_release_does_not_import_cupy(session, monkeypatch):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    session.release()
    assert "cupy" not in sys.modules


def test_the_grid_goes_on_after_a_cupy_out_of_memory(run_python, tmp_path):
    """End to end through the speed suite: only oom_cupy's points at batch 5 fail, with the reason."""
    out = tmp_path / "r.json"
    proc = run_python("-m", "pytest", "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "smoke",
                      "--lstm-length", "4", "--lstm-plugin", "oom_plugin", "--lstm-impls", "oom_cupy,fused",
                      "--lstm-rounds", "2", "--lstm-max-time", "0.01", "--benchmark-json", str(out),
                      f"--benchmark-storage=file://{tmp_path}", "-p", "no:cacheprovider", "-q")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 failed, 9 passed" in proc.stdout
    data = json.loads(out.read_text())
    timed = {(b["extra_info"]["impl"], b["extra_info"]["batch"]) for b in data["benchmarks"]}
    assert timed == {("fused", 5), ("fused", 1), ("oom_cupy", 1)}
    reasons = {(n["impl"], n["problem"]["batch"], n["phase"]): n["reason"] for n in data["lstm_harness"]["not_timed"]}
    assert set(reasons) == {("oom_cupy", 5, phase) for phase in ("forward", "backward", "total")}
    assert all(r.startswith("oom_cupy ran out of memory on B5-T4") and "Out of memory allocating" in r
               for r in reasons.values())
