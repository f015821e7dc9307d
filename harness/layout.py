"""Gate layouts: canonical (torch.nn.LSTM) i, f, g, o and the seed's fused i, f, o, g."""

from __future__ import annotations

import torch


def sigmoid_gates_first(hidden: int) -> torch.Tensor:
    """Row indices taking a canonical i, f, g, o block to i, f, o, g (sigmoid gates contiguous).

    The permutation only swaps two blocks, so it is its own inverse.
    """
    i, f, g, o = torch.arange(4 * hidden).chunk(4)
    return torch.cat([i, f, o, g])
