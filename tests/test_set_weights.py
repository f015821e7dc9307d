"""set_weights, what training calls after every step: every implementation must compute with the
new weights (forward and every gradient), captured graphs included, and must leave the weights
it was built with as they were."""

import os

import pytest
import torch

from harness.commands.gpu_check import SET_WEIGHTS_IMPLS
from harness.contract.agreement import new_agreement, run_and_compare
from harness.contract.inputs import make_inputs
from harness.contract.problem import Problem
from harness.contract.reference import compute_reference
from harness.contract.registry import discover
from harness.example.training_agreement import agrees, train, training_gaps
from harness.measuring.timing import precision
from impls.fused import FusedLSTM
from impls.fused_graphs import EagerCapture, GraphedFusedLSTM


class FusedUnpacked(FusedLSTM):
    name = "fused_unpacked"
    use_packed_gemm = False


class GraphsEager(GraphedFusedLSTM):
    name = "fused_graphs_eager"
    capture_cls = EagerCapture  # the graphs' semantics on the CPU


class GraphsEagerUnpacked(GraphsEager):
    name = "fused_graphs_eager_unpacked"
    use_packed_gemm = False  # as on CUDA


ONLY = SET_WEIGHTS_IMPLS  # the GPU check's --impls: only these implementations, by exact name
PROBLEMS = [Problem(batch=5, length=7, input_size=12, hidden=16, layers=2),
            Problem(batch=3, length=4, input_size=256, hidden=256, layers=2)]  # wide enough for prepacked GEMMs
if torch.cuda.is_available():  # the real CUDA graphs, where there is a GPU
    PROBLEMS += [p.replace(device="cuda") for p in PROBLEMS]


def candidates():
    classes = [reg.cls for reg in discover()] + [FusedUnpacked, GraphsEager, GraphsEagerUnpacked]
    only = os.environ.get(ONLY)
    if only:  # exact names (pytest's -k would match fused_python and fused_graphs to "fused")
        classes = [cls for cls in classes if cls.name in only.split(",")]
    return [pytest.param(cls, p, id=f"{cls.name}-{p.id}") for p in PROBLEMS for cls in classes]


def clones(weights):
    return [w.map(torch.clone) for w in weights]


def unchanged(weights, copies) -> bool:
    return all(torch.equal(a, b) for w, c in zip(weights, copies, strict=True)
               for a, b in zip(w.tensors(), c.tensors(), strict=True))


@pytest.mark.parametrize(("cls", "problem"), candidates())
def test_new_weights_agree_with_the_reference_and_old_weights_are_untouched(cls, problem):
    support = cls.supports(problem)
    if not support.ok:
        pytest.skip(support.reason)
    first, second = make_inputs(problem, seed=0), make_inputs(problem, seed=1)  # weights A, weights B
    copies_a, copies_b = clones(first.weights), clones(second.weights)
    with precision(problem.dtype):  # as the suites run it: cuDNN's RNN would default to TF32 on a GPU
        impl = cls(problem, first.weights)
        impl.forward(first.x, first.h0, first.c0)  # captures the graphs of a graphed implementation
        impl.backward(first.dy, first.dh_n, first.dc_n)
        graphs = dict(getattr(impl, "_graphs", {}))
        impl.set_weights(second.weights)
        agreement = run_and_compare(impl, second, compute_reference(second),
                                    new_agreement(cls.name, problem, "after set_weights"))
    assert agreement.passed, agreement.summary() + "\n" + agreement.table()
    assert unchanged(first.weights, copies_a), f"{cls.name} wrote into the weights it was built with"
    assert unchanged(second.weights, copies_b), f"{cls.name} wrote into the weights set_weights was given"
    # New weights reach the graphs already captured: none re-captured, none dropped.
    assert getattr(impl, "_graphs", {}) == graphs


def test_training_through_captured_graphs_agrees_with_fused():
    """What training does: set_weights after every step, which the captured graphs must follow."""
    gaps = training_gaps(train(GraphsEager, "adam", iterations=5), train(FusedLSTM, "adam", iterations=5))
    assert agrees(gaps), gaps
