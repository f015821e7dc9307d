"""The device's measured GEMM ceiling, the yardstick for every implementation's FLOP rate."""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from harness.problem import DTYPES
from harness.timing import precision, synchronize

# Square matrix products big enough to run at the device's best rate.
SIZES = {"cpu": 2048, "cuda": 8192}
REPEATS = 5


@dataclass(frozen=True)
class Ceiling:
    device: str
    dtype: str
    gflops: float  # median over REPEATS
    size: int
    repeats: int

    @property
    def how(self) -> str:
        return (f"{self.dtype} matrix product {self.size} x {self.size} x {self.size} on {self.device}, "
                f"median of {self.repeats} after a warm-up")

    def as_dict(self) -> dict:
        return {**asdict(self), "how": self.how}


@functools.cache
def measure_ceiling(device: str, dtype: str, size: int | None = None, repeats: int = REPEATS) -> Ceiling:
    """Median GFLOP/s of a large matrix product (device completion included); cached per run."""
    n = size or SIZES[device]
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(n, n, generator=gen).to(device=device, dtype=DTYPES[dtype]) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=DTYPES[dtype])
    rates = []
    with precision(dtype):
        torch.mm(a, b, out=out)  # warm-up: library initialisation, caches
        synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            synchronize(device)
            rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return Ceiling(device, dtype, statistics.median(rates), n, repeats)
