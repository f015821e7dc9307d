"""Numerical agreement: every output and gradient against the float64 reference.

Norm-wise relative error ||a - r|| / ||r|| per tensor, against one tolerance per dtype kept
in TOLERANCES. NaN or Inf always fails, and so does a wrong shape.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from tabulate import tabulate

from harness.contract.device import synchronize
from harness.contract.impl import Grads, Impl, Outputs
from harness.contract.inputs import Inputs, LayerWeights, make_inputs
from harness.contract.problem import Problem
from harness.contract.reference import compute_reference, reference_for

# The one tolerance table. float32: measured errors of correct LSTMs (cudnn, modular, fused, the
# reference run in float32) over batch 1 to 64, length 1 to 100, hidden 16 and 128, ordinary and
# zero-state inputs, seeds 0 and 1: 2.4e-6 at worst (99th percentile 1.2e-6; they grow with length),
# so 1e-5 passes them by 4.2x, while every planted bug we test for lands 1000x above it.
# The reduced modes scale with their unit roundoff
# (tf32 and float16 2^-11, bfloat16 2^-8) times the same headroom; bfloat16 measured on the
# CPU: 4e-3 .. 2e-2.
TOLERANCES: dict[str, float] = {"float32": 1e-5, "float64": 1e-12, "tf32": 1e-2, "float16": 1e-2,
                                "bfloat16": 5e-2}
# On the saturating set (harness.contract.inputs.saturating_inputs), where the few unsaturated gates carry
# all the gradient. float32: correct implementations (cudnn, modular, fused, the reference run in float32)
# measured up to 2.6e-4 over 20 seeds at the smoke width (batch 1 to 8, hidden 16: at |z| of 5 to 8 float32's
# sigmoid derivative s(1 - s) of a rounded s has relative errors near 2^-24 e^|z|, and a gradient that sums
# few such gates over time cancels), 4e-6 at hidden 512; so 1e-3, 3.8x the worst. bfloat16: the same effect
# with 2^-8 in place of 2^-24 gives weight gradients 0.65 off at batch 1 (every correct implementation alike;
# 6e-3 .. 6.4e-2 at batch 5), so 1.0: no better than zero fails. float16 (2^-11: about 8x finer than bfloat16)
# 2e-1 and tf32 (its GEMMs only) 5e-2, GPU modes not yet measured. The bugs this set is for give NaN or Inf,
# caught at any tolerance; the ordinary sets keep each mode's own tolerance for everything else.
SATURATION_TOLERANCES: dict[str, float] = {**TOLERANCES, "float32": 1e-3, "tf32": 5e-2, "float16": 2e-1,
                                           "bfloat16": 1.0}


def relative_error(actual: torch.Tensor, reference: torch.Tensor, scale: float | None = None) -> float:
    """||a - r|| / ||r||, computed in float64; inf for a wrong shape or an infinite value, NaN for a NaN.
    `scale`: ||r|| when the caller has it (a reference checked against several results)."""
    if tuple(actual.shape) != tuple(reference.shape):
        return math.inf
    a = actual.detach().to(device=reference.device, dtype=torch.float64)
    diff = torch.linalg.vector_norm(a - reference).item()
    if not math.isfinite(diff):  # a NaN or Inf in the result (the reference is finite)
        return math.nan if bool(torch.isnan(a).any()) else math.inf
    scale = torch.linalg.vector_norm(reference).item() if scale is None else scale
    return diff / scale if scale > 0 else diff


def rounding_floors(reference: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, float]:
    """Per tensor, the relative error of the float64 reference merely rounded to `dtype`: the least any
    implementation storing its results in `dtype` can show. One computing in float64 and rounding at the
    end lands right on it; one whose arithmetic is in `dtype` lands well above it."""
    return {name: relative_error(ref.to(dtype), ref) for name, ref in reference.items()}


def precision_ratio(errors: dict[str, float], floors: dict[str, float]) -> float | None:
    """The largest error / rounding floor over the tensors that have both (None when none has a floor
    above zero): about 1 when every result is a wider type's answer rounded at the end."""
    ratios = [errors[n] / floors[n] for n in errors if floors.get(n, 0) > 0 and math.isfinite(errors[n])]
    return max(ratios) if ratios else None


def describe_type(value: object) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def tensor_fault(value: object, reference: torch.Tensor, problem: Problem) -> str | None:
    """What is wrong with a returned tensor besides its values: type, dtype, device or shape.

    Checked before any comparison, which computes in float64: a float64 result where float32
    was asked would otherwise be credited with float64's rounding error.
    """
    if value is None:
        return "missing"
    if not isinstance(value, torch.Tensor):
        return f"a {describe_type(value)}, not a torch.Tensor"
    if type(value) not in (torch.Tensor, torch.nn.Parameter):
        # A subclass could do its work when the check reads it, not in the timed call.
        return f"a {describe_type(value)}, not a plain torch.Tensor"
    if value.layout != torch.strided:
        return f"layout {value.layout}, expected torch.strided"
    wrong = []
    if value.dtype != problem.torch_dtype:
        wrong.append(f"dtype {value.dtype}, expected {problem.torch_dtype}")
    if value.device.type != problem.device:
        wrong.append(f"device {value.device}, expected {problem.device}")
    if tuple(value.shape) != tuple(reference.shape):
        wrong.append(f"shape {tuple(value.shape)}, expected {tuple(reference.shape)}")
    return "; ".join(wrong) or None


@dataclass
class Agreement:
    """One comparison of an implementation's results with the reference on one input set."""

    impl: str
    problem: Problem
    tolerance: float
    errors: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # tensor -> wrong type, dtype, device, shape
    faults: list[str] = field(default_factory=list)  # wrong with the call as a whole
    check: str = "input set 0"  # which inputs, and when: named in every message
    seconds: float | None = None  # what the check cost, where the harness measures its own overhead

    def failed(self, name: str) -> bool:
        err = self.errors[name]
        return name in self.notes or not (err <= self.tolerance)  # NaN compares False: fails

    @property
    def failures(self) -> list[str]:
        return [n for n in self.errors if self.failed(n)]

    @property
    def passed(self) -> bool:
        return bool(self.errors) and not self.failures and not self.faults

    @property
    def max_error(self) -> float:
        values = list(self.errors.values())
        return math.nan if any(math.isnan(v) for v in values) else max(values, default=math.nan)

    def compare(self, actual: dict[str, object], reference: dict[str, torch.Tensor],
                scales: dict[str, float] | None = None) -> None:
        """Add every tensor of `reference` with its error (and what else is wrong with it). `scales`: the
        reference tensors' norms, when the caller keeps them."""
        scales = scales or {}
        for name, ref in reference.items():
            got = actual.get(name)
            fault = tensor_fault(got, ref, self.problem)
            if fault is not None:
                self.notes[name] = fault
            try:
                comparable = isinstance(got, torch.Tensor) and got.device.type != "meta"
                self.errors[name] = relative_error(got, ref, scales.get(name)) if comparable else math.inf
            except Exception as exc:  # noqa: BLE001 - a tensor that cannot be read is a failure, named
                self.notes[name] = f"could not be compared: {type(exc).__name__}: {exc}"
                self.errors[name] = math.inf

    def table(self, only_failures: bool = False) -> str:
        rows = []
        for name, err in self.errors.items():
            if only_failures and not self.failed(name):
                continue
            verdict = "FAIL" if self.failed(name) else "ok"
            rows.append([name, f"{err:.3e}", verdict + (f" ({self.notes[name]})" if name in self.notes else "")])
        # disable_numparse: tabulate would print the string "1.000e+00" as the number 1.
        table = tabulate(rows, headers=["tensor", "rel. error", f"tol {self.tolerance:.0e}"], disable_numparse=True)
        return "\n".join([*(f"- {fault}" for fault in self.faults), table] if rows else
                         [f"- {fault}" for fault in self.faults])

    def failure_list(self, limit: int = 3) -> str:
        """The first failing tensors with what is wrong with each, on one line."""
        items = [f"{name}: {self.notes[name]}" if name in self.notes else f"{name}: rel. error {self.errors[name]:.2e}"
                 for name in self.failures[:limit]]
        more = len(self.failures) - limit
        return ", ".join(items) + (f" and {more} more" if more > 0 else "")

    def summary(self) -> str:
        """One line that names what was wrong (the results file keeps only this line)."""
        if self.passed:
            verdict = "passed"
        else:
            verdict = "FAILED: " + "; ".join([*self.faults, *([self.failure_list()] if self.failures else [])])
        return (f"agreement of {self.impl!r} on {self.problem.id} ({self.check}): {verdict} "
                f"(max rel. error {self.max_error:.3e}, tolerance {self.tolerance:.0e})")


class AgreementError(AssertionError):
    def __init__(self, agreement: Agreement) -> None:
        self.agreement = agreement
        super().__init__(f"{agreement.summary()}\n{agreement.table(only_failures=True)}".rstrip())


def _fields(record) -> dict[str, object]:
    # Read the fields themselves: a subclass's own named() or properties could compute late.
    return {f.name: object.__getattribute__(record, f.name) for f in dataclasses.fields(record)}


def named_outputs(out: object) -> dict[str, object]:
    """The tensors of a forward's result by name; a result of the wrong kind is an error."""
    if type(out) is not Outputs:
        raise ContractError(f"forward returned a {describe_type(out)}, not harness.Outputs")
    return _fields(out)


def named_grads(grads: object, layers: int) -> dict[str, object]:
    if type(grads) is not Grads:
        raise ContractError(f"backward returned a {describe_type(grads)}, not harness.Grads")
    fields = _fields(grads)
    per_layer = fields.pop("weights")
    if not isinstance(per_layer, list | tuple) or not all(type(w) is LayerWeights for w in per_layer):
        raise ContractError("backward's Grads.weights is not a list of harness.LayerWeights (one per layer)")
    if len(per_layer) != layers:
        raise ContractError(f"backward returned weight gradients of {len(per_layer)} layer(s), expected {layers}")
    for layer, w in enumerate(per_layer):
        fields.update({f"d{name}[{layer}]": t for name, t in _fields(w).items()})
    return fields


class ContractError(TypeError):
    """An implementation returned something other than the contract says."""


def new_agreement(impl: str, problem: Problem, check: str, tolerances: dict[str, float] = TOLERANCES) -> Agreement:
    return Agreement(impl, problem, tolerances[problem.dtype], check=check)


def forward_checked(impl: Impl, inputs: Inputs, reference: Outputs, agreement: Agreement) -> None:
    """Forward, its outputs compared at once: before backward could fill them in late."""
    out = impl.forward(inputs.x, inputs.h0, inputs.c0)
    synchronize(impl.problem.device)  # work queued on the device must finish before it is read
    agreement.compare(named_outputs(out), reference.named())


def backward_checked(impl: Impl, inputs: Inputs, reference: Grads, agreement: Agreement) -> None:
    grads = impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n)
    synchronize(impl.problem.device)
    agreement.compare(named_grads(grads, impl.problem.layers), reference.named())


def run_and_compare(impl: Impl, inputs: Inputs, reference: tuple[Outputs, Grads], agreement: Agreement) -> Agreement:
    """One forward and one backward of a prepared implementation, each checked as it returns."""
    try:
        forward_checked(impl, inputs, reference[0], agreement)
        backward_checked(impl, inputs, reference[1], agreement)
    except ContractError as exc:
        agreement.faults.append(str(exc))
    return agreement


def check_agreement(impl_cls: type[Impl], problem: Problem, seed: int = 0,
                    inputs: Inputs | None = None) -> tuple[Agreement, Impl]:
    """Build `impl_cls` on input set 0 and compare one forward + backward with the reference.

    Returns the agreement and the prepared implementation, so a caller that goes on to time
    it does not pay the weight conversion twice.
    """
    if inputs is None:  # the seeded set 0, whose reference is cached
        inputs, reference = make_inputs(problem, seed), reference_for(problem, seed)
    else:  # the inputs given, never regenerated from the random seed
        reference = compute_reference(inputs)
    impl = impl_cls(problem, inputs.weights)
    agreement = run_and_compare(impl, inputs, reference, new_agreement(impl_cls.name, problem, "input set 0"))
    return agreement, impl
