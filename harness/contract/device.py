"""Device completion: results are read, and times taken, only after the device has finished."""

from __future__ import annotations


def synchronize(device: str) -> None:
    """Wait for all queued device work; a GPU timing without this reads far too fast."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
