"""What an implementation keeps from forward for backward, measured rather than estimated.

Autograd implementations: every tensor autograd saves during forward, seen through
saved-tensor hooks, counted once per storage. Hand-written ones report their own buffers
(`Impl.saved_bytes`). Inputs and weights are never counted: they exist either way.
On CUDA also the peak allocated (torch's allocator) during a phase.
"""

from __future__ import annotations

import torch

from harness.impl import Impl
from harness.problem import Inputs


def _storages(tensors) -> dict[int, int]:
    found = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type != "meta":
            storage = t.untyped_storage()
            found[storage.data_ptr()] = storage.nbytes()
    return found


def saved_bytes(impl: Impl, inputs: Inputs) -> int | None:
    """Bytes the forward keeps for backward, or None when the implementation cannot say."""
    seen: dict[int, int] = {}

    def pack(t):
        seen.update(_storages([t]))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        impl.forward(inputs.x, inputs.h0, inputs.c0)
    own = impl.saved_bytes()
    if not seen:
        return own
    exclude = _storages([inputs.x, inputs.h0, inputs.c0, *(t for w in inputs.weights for t in w.tensors()),
                         *getattr(impl, "parameter_tensors", lambda: [])()])
    return sum(n for ptr, n in seen.items() if ptr not in exclude)


def peak_bytes(run, device: str) -> int | None:
    """Peak bytes torch's CUDA allocator held above what was held before, while `run()` ran."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before
