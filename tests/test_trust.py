"""No wrong implementation gets a time: the checks around timing, each shown to bite.

The mutants (tests/mutants.py, TRUST_MUTANTS) are `fused` with one planted bug each of a kind
that one forward + backward on one input set cannot see; they go through the real speed suite.
"""

import json
import math

import numpy
import pytest
import torch
from mutants import TRUST_MUTANTS, LazyForward, NaiveTanh

from harness.contract.agreement import check_agreement, tensor_fault
from harness.contract.inputs import SATURATING, make_inputs, max_preactivation, saturating_inputs
from harness.contract.problem import Problem
from harness.contract.reference import reference_for
from harness.contract.registry import discover
from harness.measuring.isolation import private_copies, written_inputs
from harness.measuring.process_state import ProcessState

SPEED = ("-m", "pytest", "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "smoke", "--lstm-batch", "3",
         "--lstm-length", "4", "--lstm-plugin", "mutant_plugin", "--lstm-rounds", "3", "-p", "no:cacheprovider", "-q")


def test_every_trust_mutant_is_caught_by_the_speed_suite_and_gets_no_time(run_python, tmp_path):
    """Through the real suite: each mutant fails with a message naming what it did wrong; only
    `fused` (run right after an implementation that writes into its input) is timed."""
    out = tmp_path / "r.json"
    names = [cls.name for cls in TRUST_MUTANTS]
    impls = ["mutant_writes_x", "fused", *[n for n in names if n != "mutant_writes_x"]]
    proc = run_python(*SPEED, "--lstm-impls", ",".join(impls), "--benchmark-json", str(out),
                      f"--benchmark-storage=file://{tmp_path}")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    timed = {(b["extra_info"]["impl"], b["extra_info"]["phase"]) for b in data["benchmarks"]}
    assert timed == {("fused", p) for p in ("forward", "backward", "total")}
    assert all(b["extra_info"]["verified"].startswith("after timing") for b in data["benchmarks"])
    reasons: dict[str, list[str]] = {}
    for entry in data["lstm_harness"]["not_timed"]:
        reasons.setdefault(entry["impl"], []).append(entry["reason"])
    for cls, expected in TRUST_MUTANTS.items():
        assert cls.name in reasons, f"{cls.name} was not reported as not timed"
        expected = expected if isinstance(expected, tuple) else (expected,)
        assert any(e in r for e in expected for r in reasons[cls.name]), (cls.name, reasons[cls.name])
    # Its forward looked right; the backward phase then showed the remembered dy, and the
    # forward's time went with it.
    assert any(r.startswith("time discarded: the backward phase") for r in reasons["mutant_backward_in_forward"])
    assert "During handling" not in proc.stdout  # each failure printed once

    report = run_python("-m", "harness.report", str(out), "--out-dir", str(tmp_path), "--baseline", "fused",
                        "--no-plots")
    assert report.returncode == 0, report.stderr
    for cls in TRUST_MUTANTS:
        assert f"- `{cls.name}` (" in report.stdout


def test_a_run_in_which_everything_failed_still_writes_results_and_the_report_shows_it(run_python, tmp_path):
    storage = f"--benchmark-storage=file://{tmp_path}"
    good = run_python(*SPEED, "--lstm-impls", "fused", storage)
    assert good.returncode == 0, good.stdout[-2000:]
    bad = run_python(*SPEED, "--lstm-impls", "mutant_memo,mutant_lazy_forward", storage)
    assert bad.returncode == 1
    saved = sorted(tmp_path.glob("*/*.json"))
    assert len(saved) == 2, saved
    data = json.loads(saved[-1].read_text())
    assert data["benchmarks"] == [] and {n["impl"] for n in data["lstm_harness"]["not_timed"]} == {
        "mutant_memo", "mutant_lazy_forward"}
    report = run_python("-m", "harness.report", "--storage", str(tmp_path), "--out-dir", str(tmp_path / "out"))
    assert report.returncode == 0, report.stderr
    assert "mutant_lazy_forward" in report.stdout and "| fused" not in report.stdout


def test_installed_plugin_is_inert_in_other_projects(run_python, tmp_path):
    """Another project's benchmark run: no discovery, no implementation imported, nothing of ours
    in its JSON, no header lines."""
    (tmp_path / "test_other.py").write_text(
        "import sys\n"
        "def test_other(benchmark):\n"
        "    benchmark(sum, range(10))\n"
        "    import harness.contract.registry as r\n"
        "    assert not r._discovered and len(r.REGISTRY) == 0\n"
        "    assert not any(m.startswith('impls') for m in sys.modules)\n")
    out = tmp_path / "other.json"
    proc = run_python("-m", "pytest", str(tmp_path / "test_other.py"), "--benchmark-json", str(out),
                      "-p", "no:cacheprovider", "--rootdir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "lstm-harness:" not in proc.stdout
    data = json.loads(out.read_text())
    assert "lstm_harness" not in data and "lstm_harness" not in data["machine_info"]


# -- the pieces, one by one ---------------------------------------------------------------------


def test_outputs_are_checked_before_backward_runs(small):
    agreement, _ = check_agreement(LazyForward, small)
    assert not agreement.passed and {"y", "h_n", "c_n"} <= set(agreement.failures)


def test_returned_tensors_are_checked_for_type_dtype_device_and_shape(small):
    ref = torch.zeros(2, 3, dtype=torch.float64)
    assert tensor_fault(torch.zeros(2, 3), ref, small) is None
    assert tensor_fault(numpy.zeros((2, 3)), ref, small) == "a numpy.ndarray, not a torch.Tensor"
    assert tensor_fault([1.0], ref, small) == "a list, not a torch.Tensor"
    assert tensor_fault(None, ref, small) == "missing"
    assert tensor_fault(torch.zeros(2, 3, dtype=torch.float64), ref, small) == (
        "dtype torch.float64, expected torch.float32")
    assert tensor_fault(torch.zeros(3, 2), ref, small) == "shape (3, 2), expected (2, 3)"
    assert tensor_fault(torch.zeros(2, 3, device="meta"), ref, small) == "device meta, expected cpu"


def test_saturating_set_reaches_the_tens_and_ordinary_sets_do_not(small):
    assert max_preactivation(make_inputs(small)) < 1
    assert max_preactivation(saturating_inputs(small)) > 40


def test_timed_sets_differ_from_set_zero_and_share_its_weights(small):
    a, b = make_inputs(small), make_inputs(small, 0, 2)
    assert not torch.equal(a.x, b.x) and not torch.equal(a.dy, b.dy)
    assert all(torch.equal(p, q) for w, v in zip(a.weights, b.weights, strict=True)
               for p, q in zip(w.tensors(), v.tensors(), strict=True))
    assert torch.equal(make_inputs(small, 0, 2).x, b.x)  # seeded: the same on every call
    with pytest.raises(ValueError, match="variant"):
        make_inputs(small, 0, -1)


@pytest.mark.parametrize("name", ["cudnn", "fused", "modular", "numpy"])
@pytest.mark.parametrize("shape", [(5, 7, 12, 16, 2), (3, 60, 8, 24, 1)])
def test_correct_implementations_pass_in_the_saturating_range(name, shape):
    """Long enough (60 steps) for the cell state to pass tanh's overflow point of a naive exp."""
    problem = Problem(*shape)
    inputs = saturating_inputs(problem)
    impl = discover().get(name)(problem, inputs.weights)
    from harness.contract.agreement import new_agreement, run_and_compare

    agreement = run_and_compare(impl, inputs, reference_for(problem, 0, SATURATING),
                                new_agreement(name, problem, "saturating"))
    assert agreement.passed, agreement.table()


def test_naive_tanh_passes_ordinary_inputs_and_fails_saturating_ones(small):
    """Why the saturating set exists: on the ordinary sets a naive exp is exact."""
    assert check_agreement(NaiveTanh, small)[0].passed
    inputs = saturating_inputs(small)
    out = NaiveTanh(small, inputs.weights).forward(inputs.x, inputs.h0, inputs.c0)
    assert torch.isnan(out.y).any()


def test_writes_into_inputs_are_named_and_copies_are_private(small):
    pristine = {0: make_inputs(small), 1: make_inputs(small, 0, 1)}
    pristine[1].weights = pristine[0].weights
    own = private_copies(pristine)
    assert own[0].weights is own[1].weights  # one copy of the shared weights
    assert own[0].x.data_ptr() != pristine[0].x.data_ptr()
    assert written_inputs(pristine, own) == []
    own[1].x.mul_(2)
    own[0].weights[1].w_hh[0, 0] += 1
    own[1].dc_n.zero_()
    assert written_inputs(pristine, own) == [
        "modified its input w_hh[1] in place (input set 0)",
        "modified its input x in place (input set 1)",
        "modified its input dc_n in place (input set 1)",
    ]


@pytest.mark.parametrize("change", [
    lambda: torch.set_num_threads(1 if torch.get_num_threads() > 1 else 2),
    lambda: torch.set_grad_enabled(False),
    lambda: torch.set_default_dtype(torch.float64),
    lambda: torch.use_deterministic_algorithms(True),
    lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", not torch.backends.cuda.matmul.allow_tf32),
    lambda: torch.set_flush_denormal(True),
    lambda: torch.set_anomaly_enabled(True),
])
def test_process_state_changes_are_seen_and_undone(change):
    before = ProcessState.capture()
    change()
    try:
        assert ProcessState.capture().changes_since(before), "change not seen"
    finally:
        assert before.restore() == []
    assert ProcessState.capture().changes_since(before) == []


def test_process_state_is_json_ready():
    state = ProcessState.capture().as_dict()
    json.dumps(state)
    assert state["torch.get_num_threads()"] == torch.get_num_threads()
    assert isinstance(state["torch.get_default_dtype()"], str)


def test_nan_error_is_printed_as_nan_and_one_as_one(small):
    agreement, _ = check_agreement(LazyForward, small)
    table = agreement.table()
    assert "1.000e+00" in table  # tabulate would print the string "1.000e+00" as 1
    assert not math.isnan(agreement.errors["dx"])



def test_a_plugin_that_changes_process_state_at_import_is_a_usage_error(run_python):
    proc = run_python("-m", "pytest", "suites/test_agreement.py", "--lstm-grid", "smoke", "--lstm-plugin",
                      "threads_plugin", "-p", "no:cacheprovider", "-q")
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "changed process-wide state (torch.get_num_threads()" in proc.stderr
    assert "plugins: threads_plugin" in proc.stderr


@pytest.mark.parametrize("how", [["--collect-only"], ["-k", "no_such_test"]])
def test_a_run_that_times_nothing_leaves_no_results_file(run_python, tmp_path, how):
    """Else it would become the newest run and hide the last real one from the report."""
    proc = run_python(*SPEED, "--lstm-impls", "fused", f"--benchmark-storage=file://{tmp_path}", *how)
    assert proc.returncode in (0, 5), proc.stdout[-2000:]
    assert not list(tmp_path.glob("*/*.json"))


def test_plugin_option_choices_match_the_harness():
    from harness.contract import run_options
    from harness.contract.grid import DEVICE_CHOICES, GRID_CHOICES
    from harness.contract.problem import DTYPES

    assert run_options.GRID_NAMES == GRID_CHOICES
    assert run_options.DEVICE_NAMES == DEVICE_CHOICES
    assert run_options.DTYPE_NAMES == tuple(DTYPES)
