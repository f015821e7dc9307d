"""Each implementation works on its own copies of a point's inputs, and must leave them as given.

Shared tensors would let one implementation that writes into x, a weight or dy be timed as
correct while the correct ones after it are blamed. Copies are compared with the pristine sets
after the implementation's calls: any write fails that implementation alone.
"""

from __future__ import annotations

import torch

from harness.contract.inputs import SATURATING, ZERO_STATE_SET, Inputs, LayerWeights


def private_copies(sets: dict[int | str, Inputs]) -> dict[int | str, Inputs]:
    """Copies of every set; sets that share one weights list share one copy of it."""
    weights: dict[int, list[LayerWeights]] = {}
    copies = {}
    for which, inputs in sets.items():
        key = id(inputs.weights)
        if key not in weights:
            weights[key] = [w.map(torch.clone) for w in inputs.weights]
        copies[which] = Inputs(inputs.x.clone(), inputs.h0.clone(), inputs.c0.clone(), weights[key],
                               inputs.dy.clone(), inputs.dh_n.clone(), inputs.dc_n.clone())
    return copies


def _label(which: int | str) -> str:
    return {SATURATING: "the saturating input set", ZERO_STATE_SET: "input set 0 with zero initial state"}.get(
        which, f"input set {which}")


def _unchanged(tensor: torch.Tensor, original: torch.Tensor) -> bool:
    return tensor.shape == original.shape and tensor.dtype == original.dtype and bool(torch.equal(tensor, original))


def written_inputs(pristine: dict[int | str, Inputs], copies: dict[int | str, Inputs]) -> list[str]:
    """'modified its input x in place (input set 2)' for every copy that no longer equals its original."""
    found, seen = [], set()
    for which, inputs in copies.items():
        originals = pristine[which].named()
        for name, tensor in inputs.named().items():
            if id(tensor) in seen:  # a weight shared by several sets: report it once
                continue
            seen.add(id(tensor))
            if not _unchanged(tensor, originals[name]):
                found.append(f"modified its input {name} in place ({_label(which)})")
    return found


CALL_INPUTS = ("x", "h0", "c0", "dy", "dh_n", "dc_n")


def written_call_inputs(source: Inputs, given: Inputs, number: int) -> list[str]:
    """The same for the tensors a timed call was given (those that are not None) against the set they were
    filled from."""
    return [f"modified its input {name} in place (a timed call's, input set {number})" for name in CALL_INPUTS
            if getattr(given, name) is not None and not _unchanged(getattr(given, name), getattr(source, name))]
