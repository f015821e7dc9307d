"""Peak memory per phase: above a baseline taken before the implementation was built, so what it
allocated at construction or capture counts (a graph replay allocates nothing) and the harness's
own inputs, references and timing buffers do not. Driven on the CPU through a fake torch.cuda
allocator count, which the fake implementations below move."""

import gc
import json
import types
import weakref
from pathlib import Path

import pytest

from harness.contract.problem import PHASES
from harness.contract.registry import Registry
from harness.measuring import call_checks, measure, memory
from harness.measuring.memory import PEAK_INCLUDES, peak_bytes, retained
from harness.measuring.roofline import Ceiling
from harness.measuring.session import BenchSession, Prepared, Settings
from harness.measuring.timing import TimedCalls, probe
from harness.reporting.report import OLD_PEAK_INCLUDES, render
from harness.reporting.results import load_results
from impls.fused import FusedLSTM

HARNESS = 10_000_000  # what is allocated before any implementation: the harness's input sets and the like
RESIDENT = 3_000_000  # what an implementation allocates when built (weights, workspaces, a captured graph)
TRANSIENT = 200_000  # what one of its calls needs while it runs


class FakeAllocator:
    """torch.cuda's allocator counts, for a device that is not there."""

    def __init__(self, allocated: int) -> None:
        self.allocated = self.peak = allocated

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n

    def memory_allocated(self, device=None) -> int:
        return self.allocated

    def max_memory_allocated(self, device=None) -> int:
        return self.peak

    def reset_peak_memory_stats(self, device=None) -> None:
        self.peak = self.allocated

    def synchronize(self, device=None) -> None:
        pass


class Allocating(FusedLSTM):
    """`fused`, as the fake allocator sees it: RESIDENT bytes from construction until it is gone,
    TRANSIENT more during each call."""

    name = "allocating"
    description = "fused with fake device allocations"
    allocator: FakeAllocator | None = None
    per_call = TRANSIENT

    def __init__(self, problem, weights):
        super().__init__(problem, weights)
        self._allocator = self.allocator
        self._allocator.alloc(RESIDENT)

    def __del__(self):
        if hasattr(self, "_allocator"):  # built
            self._allocator.free(RESIDENT)

    def _call(self):
        self._allocator.alloc(self.per_call)
        self._allocator.free(self.per_call)

    def forward(self, x, h0, c0):
        self._call()
        return super().forward(x, h0, c0)

    def backward(self, dy, dh_n, dc_n):
        self._call()
        return super().backward(dy, dh_n, dc_n)


class Replaying(Allocating):
    """Everything allocated at capture (construction), nothing on replay: like fused_graphs."""

    name = "replaying"
    description = "captured at construction, replays allocate nothing"
    per_call = 0


def hold_for(allocator: FakeAllocator, obj: object, nbytes: int) -> None:
    """`nbytes` allocated for `obj` until it is gone, as the device allocator would count them."""
    allocator.alloc(nbytes)
    weakref.finalize(obj, allocator.free, nbytes)


@pytest.fixture
def allocator(monkeypatch):
    fake = FakeAllocator(HARNESS)
    for name in ("memory_allocated", "max_memory_allocated", "reset_peak_memory_stats", "synchronize"):
        monkeypatch.setattr(memory.torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(memory, "tracks_allocations", lambda device: True)  # the CPU, counted as if it were CUDA
    monkeypatch.setattr(Allocating, "allocator", fake)
    # The backward phase's upstream gradients: new device tensors the harness makes in every setup (the probe
    # puts them in the baseline), counted as the device would count them.
    fresh = TimedCalls._fresh_upstream

    def counted(source):
        upstream = fresh(source)
        for t in upstream:
            hold_for(fake, t, t.untyped_storage().nbytes())
        return upstream

    monkeypatch.setattr(TimedCalls, "_fresh_upstream", staticmethod(counted))
    return fake


@pytest.fixture
def session(monkeypatch):
    registry = Registry()
    for cls in (Allocating, Replaying):
        registry.add(cls, "test")
    options = {"lstm_device": "cpu", "lstm_grid": "smoke", "lstm_batch": "2", "lstm_length": "3",
               "lstm_rounds": "2", "lstm_warmup": "0", "lstm_interleave": "off"}
    settings = Settings.from_options(options.get, registry)
    ceiling = Ceiling("cpu", "float32", 1.0, 1, 1)  # the real one takes seconds; no rate is checked here
    monkeypatch.setattr(BenchSession, "ceiling", lambda self, problem: ceiling)
    return BenchSession(settings)


class FakeBenchmark:
    """What harness.measuring.measure uses of pytest-benchmark's fixture (the rounds run in the harness)."""

    disabled = False

    def __init__(self):
        self.extra_info, self.group, self.has_error = {}, None, False

    def _make_stats(self, iterations):
        self.stats = types.SimpleNamespace(data=[], update=lambda s: self.stats.data.append(s))
        return self.stats


def measured_peaks(session, name) -> dict[str, object]:
    reg = next(r for r in session.settings.impls if r.name == name)
    problem = session.settings.problems[0]
    info = {}
    for phase in PHASES:
        benchmark = FakeBenchmark()
        measure.measure_phase(benchmark, types.SimpleNamespace(), session, reg, problem, phase)
        info[phase] = benchmark.extra_info
    return info


def test_the_baseline_is_taken_before_the_implementation_is_built(allocator, session):
    reg, problem = session.settings.impls[0], session.settings.problems[0]
    prepared = session.validated(reg, problem)
    assert prepared.memory_baseline == HARNESS  # before its constructor allocated anything
    assert allocator.allocated == HARNESS + RESIDENT  # its saturating twin is gone again
    calls = TimedCalls(prepared.impl, session.call_sets(problem, "total"), "total", "cpu")
    assert probe(calls, prepared.memory_baseline)[1] == RESIDENT + TRANSIENT
    assert probe(calls)[1] == TRANSIENT  # without a baseline: the call's own memory only


@pytest.mark.parametrize("name,peak", [("allocating", RESIDENT + TRANSIENT), ("replaying", RESIDENT)])
def test_every_phase_counts_what_the_implementation_allocated_when_built(allocator, session, name, peak):
    """A replay of captured work allocates nothing: its peak is still its buffers, not zero."""
    info = measured_peaks(session, name)
    assert {phase: i["peak_bytes"] for phase, i in info.items()} == dict.fromkeys(PHASES, peak)
    assert all(i["peak_includes"] == PEAK_INCLUDES for i in info.values())
    json.dumps(info["total"]["peak_includes"])


def test_the_peak_does_not_depend_on_what_ran_before(allocator, session):
    """The same implementation measured first, and after another one (whose memory is released
    when it is dropped) and after memory something else keeps: the same peaks."""
    first = measured_peaks(session, "allocating")
    measured_peaks(session, "replaying")
    allocator.alloc(5_000_000)  # e.g. cached by an earlier agreement run in the same process
    again = measured_peaks(session, "allocating")
    assert [i["peak_bytes"] for i in first.values()] == [i["peak_bytes"] for i in again.values()]


def interleaved_peaks(session) -> dict[tuple[str, str], int]:
    session.settings.interleave = True
    problem = session.settings.problems[0]
    peaks = {}
    for phase in PHASES:
        for reg in session.settings.impls:
            benchmark = FakeBenchmark()
            measure.measure_phase(benchmark, types.SimpleNamespace(), session, reg, problem, phase)
            peaks[(reg.name, phase)] = benchmark.extra_info["peak_bytes"]
            assert benchmark.extra_info["interleaved"] is True
    return peaks


INTERLEAVED_PEAKS = {**{("allocating", p): RESIDENT + TRANSIENT for p in PHASES},
                     **{("replaying", p): RESIDENT for p in PHASES}}


def test_interleaved_each_peak_is_its_own(allocator, session, monkeypatch):
    """Interleaved, the point's implementations are built together: each one's peak still counts its own
    memory alone, whichever was built first, in the order the suite runs them (phase by phase), and after
    one of them is dropped."""
    assert interleaved_peaks(session) == INTERLEAVED_PEAKS
    problem = session.settings.problems[0]
    session.release(drop=[("replaying", problem)])
    kept = session._prepared[("allocating", problem)]
    assert kept.memory_baseline == allocator.allocated - RESIDENT  # all but its own, now that replaying is gone


def test_interleaved_an_earlier_probes_upstream_gradients_are_in_no_later_peak(allocator, session):
    assert interleaved_peaks(session) == INTERLEAVED_PEAKS


def test_what_the_harness_allocates_after_the_baseline_is_not_counted(allocator, session, monkeypatch):
    """The timing buffers (per phase), the inputs of every cycle and the references of the checked calls are the
    harness's: none is in a peak, and none outlives its phase into the next one's."""

    class BufferedCalls(TimedCalls):
        def __init__(self, *args):
            super().__init__(*args)
            allocator.alloc(400_000)
            self._free = allocator.free

        def __del__(self):
            self._free(400_000)

    made = {"inputs": 0, "references": 0}

    def fresh_inputs(*args):
        inputs = real_fresh_inputs(*args)
        hold_for(allocator, inputs, 50_000)
        made["inputs"] += 1
        return inputs

    def reference(self, number):
        computed = self.references
        result = real_reference(self, number)
        if self.references > computed:
            hold_for(allocator, result[0], 700_000)
            made["references"] += 1
        return result

    real_fresh_inputs, real_reference = call_checks.fresh_inputs, call_checks.CallSets.reference
    monkeypatch.setattr(measure, "TimedCalls", BufferedCalls)
    monkeypatch.setattr(call_checks, "fresh_inputs", fresh_inputs)
    monkeypatch.setattr(call_checks.CallSets, "reference", reference)
    before = allocator.allocated
    info = measured_peaks(session, "allocating")
    assert [i["peak_bytes"] for i in info.values()] == [RESIDENT + TRANSIENT] * 3
    # Per phase: the probe's set and one per timed call (rounds redone for interference included), and the
    # reference of every checked one: two planned rounds, so every call is checked.
    assert all(i["checked_calls"] == i["timed_calls"] >= 2 for i in info.values())
    assert made == {"inputs": sum(1 + i["timed_calls"] for i in info.values()),
                    "references": sum(i["checked_calls"] for i in info.values())}
    gc.collect()
    assert allocator.allocated - before == RESIDENT  # the prepared implementation: nothing of the harness's


def test_retained_and_harness_holds(allocator):
    result, held = retained("cpu", lambda: allocator.alloc(123) or "made")
    assert (result, held) == ("made", 123)
    prepared = Prepared(None, {}, None, None, None, None, memory_baseline=1000)
    prepared.harness_holds(held)
    assert prepared.memory_baseline == 1123
    on_cpu = Prepared(None, {}, None, None, None, None)
    on_cpu.harness_holds(5)
    assert on_cpu.memory_baseline is None


def test_no_peak_where_allocations_are_not_tracked(allocator, session, monkeypatch):
    monkeypatch.setattr(memory, "tracks_allocations", lambda device: False)  # the CPU, as it is
    info = measured_peaks(session, "allocating")
    assert all(i["peak_bytes"] is None and i["peak_includes"] is None for i in info.values())
    assert peak_bytes(lambda: None, "cpu", baseline=5) is None


# -- the report says what the number includes ------------------------------------------------------

FIXTURE = Path(__file__).parent / "data" / "smoke-results.json"  # a real smoke run (CPU)


def _as_cuda_results(tmp_path, includes: str | None):
    data = json.loads(FIXTURE.read_text())
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        info["device"], info["peak_bytes"] = "cuda", 3 * 2**20
        info["problem_id"] = info["problem_id"].removesuffix("-cpu") + "-cuda"  # the id names the device too
        if includes is not None:
            info["peak_includes"] = includes
    path = tmp_path / "cuda.json"
    path.write_text(json.dumps(data))
    return load_results([path])


def _peak_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("- **Peak memory**")]


def test_the_report_says_what_the_peak_includes(tmp_path):
    text = render(_as_cuda_results(tmp_path, PEAK_INCLUDES), "modular", "t")
    assert _peak_lines(text) == [f"- **Peak memory** (Peak forward, Peak backward): {PEAK_INCLUDES}"]
    assert "| Peak forward" in text and "3.0 MiB" in text
    header, first_table = text.split("## Batch size", 1)[0], text.index("| Code ")
    assert _peak_lines(header) and text.index("- **Peak memory**") < first_table


def test_older_results_get_the_old_meaning_and_cpu_results_no_line(tmp_path):
    assert _peak_lines(render(_as_cuda_results(tmp_path, None), "modular", "t")) == [
        f"- **Peak memory** (Peak forward, Peak backward): {OLD_PEAK_INCLUDES}"]
    assert _peak_lines(render(load_results([FIXTURE]), "modular", "t")) == []
