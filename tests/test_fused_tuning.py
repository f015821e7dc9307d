"""`fused` chooses how it runs by measuring (impls/fused_tuning.py): every candidate is right, the
fastest is kept (more threads only by a clear margin), the choice is cached per machine and shape,
and a call leaves the process's thread count as it found it."""

import json

import pytest
import torch

from harness.contract.agreement import check_agreement
from harness.contract.problem import Problem
from impls import fused_tuning
from impls.fused import GEMM_ATEN, GEMM_LOOP, GEMM_LOOP_BATCH, GEMM_MKL, GEMM_PACKED, FusedLSTM
from impls.fused_tuning import MARGIN, Plan

# Shapes that leave partial blocks in the loop's own kernel: rows not a multiple of 4 (3, 6), columns
# not a multiple of its block (4H = 92, 280), and one column block only (4H = 60).
PROBLEMS = [
    Problem(batch=1, length=5, input_size=1, hidden=15, layers=1),
    Problem(batch=3, length=6, input_size=5, hidden=23, layers=3, dtype="float64"),
    Problem(batch=6, length=4, input_size=40, hidden=70, layers=2),
]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(fused_tuning.CACHE_VARIABLE, str(tmp_path / "tuning.json"))
    monkeypatch.setattr(fused_tuning, "_memory", {})


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.id)
def test_every_candidate_plan_agrees_with_the_reference(problem):
    candidates = FusedLSTM.candidates(problem, native=True)
    steps = {p.step for p in candidates}
    assert {GEMM_LOOP, GEMM_ATEN} <= steps
    if problem.dtype == "float32" and torch.backends.mkldnn.is_available():
        assert GEMM_PACKED in steps
    if torch.get_num_threads() > 1:
        assert {p.threads for p in candidates} == {1, torch.get_num_threads()}
    # The batch split is a way to share the loop's rows between threads: never offered on one, nor for one row.
    assert all(p.threads > 1 for p in candidates if p.step == GEMM_LOOP_BATCH)
    assert (GEMM_LOOP_BATCH in steps) == (torch.get_num_threads() > 1 and problem.batch > 1)
    for plan in candidates:
        pinned = type("Pinned", (FusedLSTM,), {"fixed_plan": plan})
        agreement, impl = check_agreement(pinned, problem)
        assert impl.plan == plan
        assert agreement.passed, f"{plan}: {agreement.summary()}\n{agreement.table()}"


def test_the_blocked_kernel_on_two_threads_agrees_where_it_splits_columns():
    problem = Problem(batch=5, length=3, input_size=8, hidden=96, layers=1)  # 4H = 384: 12 column blocks
    agreement, _ = check_agreement(type("Two", (FusedLSTM,), {"fixed_plan": Plan(GEMM_LOOP, 2, False)}), problem)
    assert agreement.passed, agreement.table()


class FakeClock:
    """Each call of a candidate advances the clock by its cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _runs(clock, costs):
    calls = {plan: 0 for plan in costs}

    def run_for(plan):
        def run():
            calls[plan] += 1
            clock.now += costs[plan]
        return run
    return run_for, calls


ONE, TWO, OTHER = Plan(GEMM_LOOP, 1, False), Plan(GEMM_LOOP, 2, False), Plan(GEMM_ATEN, 1, False)
PROBLEM = Problem(batch=2, length=30, input_size=3, hidden=8, layers=1)


@pytest.mark.parametrize(("two_threads", "chosen"), [
    (0.010 / (MARGIN * 1.05), TWO),  # more than the margin faster: chosen
    (0.010 / (MARGIN * 0.95), ONE),  # faster, but by less than the margin: one thread keeps it
])
def test_the_fastest_is_chosen_and_more_threads_only_by_a_margin(two_threads, chosen):
    clock = FakeClock()
    run_for, calls = _runs(clock, {ONE: 0.010, TWO: two_threads, OTHER: 0.030})
    tuned = fused_tuning.tune(PROBLEM, [ONE, TWO, OTHER], run_for, timer=clock)
    assert tuned.plan == chosen and not tuned.cached
    assert tuned.seconds[OTHER.label()] == pytest.approx(0.030)
    assert all(n == 1 + fused_tuning.ROUNDS for n in calls.values())  # warm-up, then every round, in turns


BY_BATCH = Plan(GEMM_LOOP_BATCH, 2, False)


@pytest.mark.parametrize(("whole", "loops", "chosen"), [
    ({TWO: 0.0060, BY_BATCH: 0.0061}, {TWO: 0.0030, BY_BATCH: 0.0020}, BY_BATCH),  # the loops decide ...
    ({TWO: 0.0061, BY_BATCH: 0.0060}, {TWO: 0.0020, BY_BATCH: 0.0030}, TWO),  # ... either way
    ({TWO: 0.0060, BY_BATCH: 0.0090}, {TWO: 0.0030, BY_BATCH: 0.0020}, BY_BATCH),
    # The other split does not beat one thread (0.020) by the margin on the whole call: not taken, whatever its loop.
    ({TWO: 0.0060, BY_BATCH: 0.020 / MARGIN * 1.01}, {TWO: 0.0030, BY_BATCH: 0.0020}, TWO),
])
def test_the_own_kernels_two_splits_are_decided_by_the_loop_alone(whole, loops, chosen):
    """Where the fastest whole call is one of the own kernel's splits, the two are timed again, the time loop
    alone, and the faster loop is chosen (on the whole call they differ by about the noise)."""
    clock = FakeClock()
    run_for, calls = _runs(clock, {ONE: 0.020, OTHER: 0.030, **whole})
    loop_for, loop_calls = _runs(clock, loops)
    tuned = fused_tuning.tune(PROBLEM, [ONE, OTHER, TWO, BY_BATCH], run_for, timer=clock, loop_for=loop_for)
    assert tuned.plan == chosen
    if whole[BY_BATCH] * MARGIN <= 0.020:
        assert tuned.seconds[f"{chosen.label()} (loop alone)"] == pytest.approx(loops[chosen])
        assert all(n == 1 + fused_tuning.SPLIT_ROUNDS for n in loop_calls.values())
    else:
        assert sum(loop_calls.values()) == 0
    # Neither split the fastest: no loop measured.
    run_for, _ = _runs(clock, {ONE: 0.020, OTHER: 0.001, **whole})
    loop_for, loop_calls = _runs(clock, loops)
    fused_tuning._memory.clear()
    tuned = fused_tuning.tune(PROBLEM.replace(batch=3), [ONE, OTHER, TWO, BY_BATCH], run_for, timer=clock,
                              loop_for=loop_for)
    assert tuned.plan == OTHER and sum(loop_calls.values()) == 0


def test_a_tiny_call_is_repeated_until_a_measurement_lasts():
    clock = FakeClock()
    run_for, calls = _runs(clock, {ONE: 1e-5, OTHER: 3e-5})
    tuned = fused_tuning.tune(PROBLEM, [ONE, OTHER], run_for, timer=clock)
    assert tuned.plan == ONE and calls[ONE] == 1 + fused_tuning.ROUNDS * 200
    assert tuned.seconds[ONE.label()] == pytest.approx(1e-5)


def test_the_choice_is_cached_per_machine_and_shape_and_read_back(monkeypatch):
    clock = FakeClock()
    run_for, calls = _runs(clock, {ONE: 0.01, OTHER: 0.02})
    fused_tuning.tune(PROBLEM, [ONE, OTHER], run_for, timer=clock)
    data = json.loads(fused_tuning.cache_path().read_text())
    (key, entry), = data.items()
    assert key.startswith(f"v{fused_tuning.VERSION}|") and "B2-T10-I3-H8-L1-float32-cpu" in key
    assert f"{torch.get_num_threads()} threads" in key and torch.__version__ in key
    assert entry["plan"] == {"step": GEMM_LOOP, "threads": 1, "big_packed": False}
    monkeypatch.setattr(fused_tuning, "_memory", {})  # a later process
    run_for, calls = _runs(clock, {ONE: 0.01, OTHER: 0.02})
    again = fused_tuning.tune(PROBLEM, [ONE, OTHER], run_for, timer=clock)
    assert again.plan == ONE and again.cached and sum(calls.values()) == 0  # nothing measured
    # Another shape, or another set of candidates, is measured on its own.
    run_for, calls = _runs(clock, {ONE: 0.01, OTHER: 0.02})
    fused_tuning.tune(PROBLEM.replace(batch=3), [ONE, OTHER], run_for, timer=clock)
    fused_tuning.tune(PROBLEM, [ONE], run_for, timer=clock)
    assert calls[ONE] > 0 and len(json.loads(fused_tuning.cache_path().read_text())) == 3


def test_a_corrupt_cache_is_measured_again_and_rewritten():
    fused_tuning.cache_path().write_text("{not json")
    clock = FakeClock()
    run_for, calls = _runs(clock, {ONE: 0.02, OTHER: 0.01})
    assert fused_tuning.tune(PROBLEM, [ONE, OTHER], run_for, timer=clock).plan == OTHER
    assert len(json.loads(fused_tuning.cache_path().read_text())) == 1


def test_construction_tunes_labels_and_leaves_the_thread_count_alone(small):
    from harness.contract.inputs import make_inputs

    before = torch.get_num_threads()
    inputs = make_inputs(small)
    impl = FusedLSTM(small, inputs.weights)
    assert impl.plan in FusedLSTM.candidates(small, native=True)
    label = FusedLSTM.backend(small)
    assert impl.plan.label() in label and "chosen by measuring here" in label
    pinned = type("OneThread", (FusedLSTM,), {"fixed_plan": Plan(GEMM_LOOP, 1, False)})(small, inputs.weights)
    pinned.forward(inputs.x, inputs.h0, inputs.c0)
    pinned.backward(inputs.dy, inputs.dh_n, inputs.dc_n)
    assert torch.get_num_threads() == before


def test_without_tuning_the_fixed_rule_runs(monkeypatch, small):
    monkeypatch.setenv(fused_tuning.DISABLE_VARIABLE, "1")
    assert FusedLSTM.candidates(small, native=True) == []
    from harness.contract.inputs import make_inputs

    impl = FusedLSTM(small, make_inputs(small).weights)
    assert impl.plan == FusedLSTM.default_plan(small, native=True)
    assert not fused_tuning.cache_path().exists()
    assert "chosen by measuring" not in FusedLSTM.backend(small)


def test_mkl_is_a_candidate_only_where_torch_has_it(small):
    from impls.native import native_steps

    steps = {p.step for p in FusedLSTM.candidates(small, native=True)}
    assert (GEMM_MKL in steps) == (native_steps().ops.has_mkl_packed_gemm() and torch.backends.mkldnn.is_available())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("rows", "k", "n"), [(1, 15, 60), (3, 23, 92), (7, 70, 280), (17, 33, 40), (25, 64, 100),
                                             (13, 40, 96), (20, 64, 128), (24, 9, 64)])
def test_the_loops_own_kernel_is_a_matrix_product(dtype, rows, k, n):
    """Every tiling (the batch in near-equal tiles of at most 12 or 6 rows; whole column blocks, which load
    and store straight from registers, and a partial one) on both thread counts."""
    from impls.native import native_steps

    ops = native_steps().ops
    gen = torch.Generator().manual_seed(rows * 1000 + n)
    x, w, addend = (torch.randn(*s, generator=gen, dtype=dtype) for s in ((rows, k), (k, n), (rows, n)))
    packed = ops.own_pack(w, None)
    expected = (addend.double() + x.double() @ w.double())
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for threads in (1, 2):
        got = ops.own_product(x, packed, n, addend, threads)
        assert float((got.double() - expected).norm() / expected.norm()) < tol, threads
    plain = ops.own_product(x, packed, n, None, 1)
    assert torch.allclose(plain.double(), x.double() @ w.double(), rtol=tol, atol=tol)
    with pytest.raises(RuntimeError, match="own_pack"):
        ops.own_pack(w.t(), None)  # not contiguous
    with pytest.raises(RuntimeError, match="own_product"):
        ops.own_product(x, packed, n + 64, None, 1)  # the packing of another width


def test_construction_times_the_two_splits_on_the_loop_alone(monkeypatch):
    """The real loop_for: where the whole-call choice is the column split on two threads (forced: at this size one
    thread wins), construction times both splits on one layer's loop and records both; it keeps a candidate."""
    from harness.contract.inputs import make_inputs

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        problem = Problem(batch=6, length=30, input_size=8, hidden=32, layers=2)
        candidates = FusedLSTM.candidates(problem, native=True)
        columns = Plan(GEMM_LOOP, 2, candidates[0].big_packed)
        monkeypatch.setattr(fused_tuning, "choose", lambda seconds: columns)
        monkeypatch.setattr(fused_tuning, "_beats_one_thread", lambda plan, seconds: True)  # tiny: threads lose
        impl = FusedLSTM(problem, make_inputs(problem).weights)
        tuned = fused_tuning.lookup(problem, candidates)
    finally:
        torch.set_num_threads(before)
    loops = {label for label in tuned.seconds if label.endswith("(loop alone)")}
    assert loops == {f"{p.label()} (loop alone)" for p in (columns, Plan(GEMM_LOOP_BATCH, 2, columns.big_packed))}
    assert impl.plan in candidates and impl.plan.step in (GEMM_LOOP, GEMM_LOOP_BATCH)
