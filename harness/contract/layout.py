"""Gate layouts: canonical (torch.nn.LSTM) i, f, g, o, and the reorderings fused designs use."""

from __future__ import annotations

import torch


def gate_rows(hidden: int, order: str) -> torch.Tensor:
    """Row indices taking a canonical i, f, g, o block to `order` (e.g. "ifog", "oifg").

    Fused designs reorder so the sigmoid gates (i, f, o) are one contiguous block; "oifg" also
    keeps together the three gates whose gradient is dc times something.
    """
    if sorted(order) != sorted("ifgo"):
        raise ValueError(f"gate order must be a permutation of 'ifgo', got {order!r}")
    blocks = dict(zip("ifgo", torch.arange(4 * hidden).chunk(4), strict=True))
    return torch.cat([blocks[g] for g in order])
