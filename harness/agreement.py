"""Numerical agreement: every output and gradient against the float64 reference.

Norm-wise relative error ||a - r|| / ||r|| per tensor, against one tolerance per dtype kept
in TOLERANCES. NaN or Inf always fails, and so does a wrong shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tabulate import tabulate

from harness.impl import Impl
from harness.problem import Inputs, Problem, make_inputs
from harness.reference import reference_for

# The one tolerance table. float32: measured errors of a correct LSTM are 1e-7 .. 1e-6 at the
# default CPU grid; 1e-5 leaves room for longer sequences while every planted bug we test
# for lands orders of magnitude above it. The reduced modes scale with their unit roundoff
# (tf32 and float16 2^-11, bfloat16 2^-8) times the same headroom; bfloat16 measured on the
# CPU: 4e-3 .. 2e-2.
TOLERANCES: dict[str, float] = {"float32": 1e-5, "float64": 1e-12, "tf32": 1e-2, "float16": 1e-2,
                                "bfloat16": 5e-2}


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """||a - r|| / ||r||, computed in float64; inf for a wrong shape or a non-finite value."""
    if tuple(actual.shape) != tuple(reference.shape):
        return math.inf
    a = actual.detach().to(device=reference.device, dtype=torch.float64)
    if not bool(torch.isfinite(a).all()):
        return math.nan if bool(torch.isnan(a).any()) else math.inf
    scale = torch.linalg.vector_norm(reference).item()
    diff = torch.linalg.vector_norm(a - reference).item()
    return diff / scale if scale > 0 else diff


@dataclass
class Agreement:
    impl: str
    problem: Problem
    tolerance: float
    errors: dict[str, float] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)  # only where a shape was wrong

    def failed(self, name: str) -> bool:
        err = self.errors[name]
        return not (err <= self.tolerance)  # NaN compares False: fails

    @property
    def failures(self) -> list[str]:
        return [n for n in self.errors if self.failed(n)]

    @property
    def passed(self) -> bool:
        return bool(self.errors) and not self.failures

    @property
    def max_error(self) -> float:
        values = list(self.errors.values())
        return math.nan if any(math.isnan(v) for v in values) else max(values, default=math.nan)

    def table(self, only_failures: bool = False) -> str:
        rows = []
        for name, err in self.errors.items():
            if only_failures and not self.failed(name):
                continue
            note = "FAIL" if self.failed(name) else "ok"
            if name in self.shapes:
                note += f" (shape {self.shapes[name][0]}, expected {self.shapes[name][1]})"
            rows.append([name, f"{err:.3e}", note])
        return tabulate(rows, headers=["tensor", "rel. error", f"tol {self.tolerance:.0e}"])

    def summary(self) -> str:
        verdict = "passed" if self.passed else f"FAILED on {len(self.failures)} tensor(s)"
        return (f"agreement of {self.impl!r} on {self.problem.id}: {verdict} "
                f"(max rel. error {self.max_error:.3e}, tolerance {self.tolerance:.0e})")


class AgreementError(AssertionError):
    def __init__(self, agreement: Agreement) -> None:
        self.agreement = agreement
        super().__init__(f"{agreement.summary()}\n{agreement.table(only_failures=True)}")


def check_agreement(impl_cls: type[Impl], problem: Problem, seed: int = 0,
                    inputs: Inputs | None = None) -> tuple[Agreement, Impl]:
    """Run one forward + backward of `impl_cls` and compare with the reference.

    Returns the agreement and the prepared implementation, so a caller that goes on to time
    it does not pay the weight conversion twice.
    """
    inputs = inputs if inputs is not None else make_inputs(problem, seed)
    ref_out, ref_grads = reference_for(problem, seed)
    impl = impl_cls(problem, inputs.weights)
    out = impl.forward(inputs.x, inputs.h0, inputs.c0)
    grads = impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n)
    agreement = Agreement(impl_cls.name, problem, TOLERANCES[problem.dtype])
    actual = {**out.named(), **grads.named()}
    for name, ref in {**ref_out.named(), **ref_grads.named()}.items():
        got = actual.get(name)
        if got is None:
            agreement.errors[name] = math.inf
            agreement.shapes[name] = ("missing", tuple(ref.shape))
            continue
        agreement.errors[name] = relative_error(got, ref)
        if tuple(got.shape) != tuple(ref.shape):
            agreement.shapes[name] = (tuple(got.shape), tuple(ref.shape))
    return agreement, impl
