"""Gate layouts: canonical (torch.nn.LSTM) i, f, g, o, and the reorderings fused designs use."""

from __future__ import annotations

import torch


def sigmoid_gates_first(hidden: int) -> torch.Tensor:
    """Row indices taking a canonical i, f, g, o block to i, f, o, g (sigmoid gates contiguous).

    The permutation only swaps two blocks, so it is its own inverse.
    """
    i, f, g, o = torch.arange(4 * hidden).chunk(4)
    return torch.cat([i, f, o, g])


def output_gate_first(hidden: int) -> torch.Tensor:
    """Row indices taking a canonical i, f, g, o block to o, i, f, g: the sigmoid gates stay
    contiguous, and so do the three gates whose gradient is dc times something."""
    i, f, g, o = torch.arange(4 * hidden).chunk(4)
    return torch.cat([o, i, f, g])
