"""What an implementation keeps from forward for backward, measured rather than estimated.

Autograd implementations: everything their autograd graph holds, counted once per storage: every
tensor autograd saves during forward (seen through saved-tensor hooks), and every tensor a custom
`torch.autograd.Function` keeps as an attribute of its `ctx` instead of `save_for_backward`
(directly or inside lists, tuples and dicts), found by walking the graph back from the roots the
forward left: tensors with a grad_fn in its outputs or among the implementation's own attributes.
Hand-written ones report their own buffers (`Impl.saved_bytes`). Inputs and weights are never
counted: they exist either way.
On CUDA also the peak allocated (torch's allocator) during a phase, above a baseline taken before the
implementation was built (PEAK_INCLUDES).
"""

from __future__ import annotations

import dataclasses

import torch

from harness.contract.impl import Impl
from harness.contract.inputs import Inputs


def _storages(tensors) -> dict[int, int]:
    found = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type != "meta":
            storage = t.untyped_storage()
            found[storage.data_ptr()] = storage.nbytes()
    return found


# How deep `_tensors_in` looks into containers: an implementation's attributes, a ctx's.
_NESTING = 4


def _tensors_in(obj, depth: int = _NESTING, _seen: set[int] | None = None):
    """Tensors in `obj`: itself, or inside lists, tuples, dicts and dataclasses, `depth` levels down."""
    _seen = set() if _seen is None else _seen
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if depth <= 0 or id(obj) in _seen:
        return
    if isinstance(obj, (list, tuple)):
        children = obj
    elif isinstance(obj, dict):
        children = obj.values()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children = [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
    else:
        return
    _seen.add(id(obj))
    for child in children:
        yield from _tensors_in(child, depth - 1, _seen)


def _ctx_tensors(roots) -> tuple[list[torch.Tensor], bool]:
    """Tensors custom autograd Functions keep on their ctx, in the graph behind `roots`, and whether
    there was a graph at all. A custom Function's backward node is its ctx (a BackwardCFunction):
    what forward set on it is in its __dict__; saved tensors are not (the hooks see those)."""
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    visited, found = set(), []
    while stack:
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.extend(_tensors_in(vars(node)))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found, bool(visited)


def saved_bytes(impl: Impl, inputs: Inputs) -> int | None:
    """Bytes the forward keeps for backward, or None when the implementation cannot say. An autograd
    graph that keeps nothing but inputs and weights is 0; no graph at all, the implementation's own word."""
    seen: dict[int, int] = {}

    def pack(t):
        seen.update(_storages([t]))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = impl.forward(inputs.x, inputs.h0, inputs.c0)
    # Where the graph's roots are: the outputs, or (an AutogradImpl returns them detached) kept on the impl.
    roots = [t for t in (*_tensors_in(out), *_tensors_in(getattr(impl, "__dict__", {}))) if t.grad_fn is not None]
    on_ctx, graph = _ctx_tensors(roots)
    seen.update(_storages(on_ctx))
    own = impl.saved_bytes()
    if not seen:
        return 0 if own is None and graph else own
    exclude = _storages([inputs.x, inputs.h0, inputs.c0, *(t for w in inputs.weights for t in w.tensors()),
                         *impl.parameter_tensors()])
    return sum(n for ptr, n in seen.items() if ptr not in exclude)


# What `peak_bytes` of a timed phase is, recorded with every row that has one (the report prints it).
PEAK_INCLUDES = ("peak allocated by torch's CUDA allocator during the phase, above what was allocated before the "
                 "implementation was built: its weights, workspaces and captured graphs' live buffers count, the "
                 "harness's inputs do not; temporaries a captured graph keeps reserved in its private pool, and "
                 "CuPy's cuBLAS workspace, are not seen")


def tracks_allocations(device: str) -> bool:
    """Whether `device` has an allocator whose counts we read: torch's CUDA caching allocator."""
    return device == "cuda"


def allocated_bytes(device: str) -> int | None:
    """Bytes torch's allocator holds for tensors on `device` once queued work is done; None on the CPU."""
    if not tracks_allocations(device):
        return None
    torch.cuda.synchronize()  # frees queued behind running kernels land first
    return torch.cuda.memory_allocated()


def retained(device: str, make):
    """make()'s result, and the device bytes it left allocated (None on the CPU). For what the harness
    allocates after an implementation's baseline and keeps: added to the baseline, it is not the
    implementation's."""
    before = allocated_bytes(device)
    result = make()
    return result, None if before is None else allocated_bytes(device) - before


def peak_bytes(run, device: str, baseline: int | None = None) -> int | None:
    """Peak bytes torch's CUDA allocator held above `baseline` while `run()` ran (None on the CPU).

    `baseline`: what was allocated before the implementation was built, plus what the harness
    allocated since and still holds. What the implementation allocated at construction or capture
    then counts, though a replay of captured work allocates nothing. Without a baseline the peak
    is above what was allocated right before the call (the call's transient memory only).
    """
    if not tracks_allocations(device):
        return None
    before = allocated_bytes(device)
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - (before if baseline is None else baseline)
