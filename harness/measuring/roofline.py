"""The device's measured GEMM ceiling, the yardstick for every implementation's FLOP rate."""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from harness.contract.problem import torch_dtype
from harness.measuring.timing import precision, synchronize

# Square matrix products big enough to run at the device's best rate.
SIZES = {"cpu": 2048, "cuda": 8192}
REPEATS = 5
# Products run for this long before the measured ones, whatever the device: one product (~1 ms on
# a GPU) is not enough, an idle GPU has been seen at 345 MHz before its first large product.
WARMUP_SECONDS = 0.2


@dataclass(frozen=True)
class Ceiling:
    device: str
    dtype: str
    gflops: float  # the best library's median over REPEATS
    size: int
    repeats: int
    by_library: tuple[tuple[str, float], ...] = ()
    warmup_seconds: float = WARMUP_SECONDS  # per library, before its measured products

    @property
    def how(self) -> str:
        libraries = ", ".join(f"{name} {rate:.0f}" for name, rate in self.by_library)
        return (f"{self.dtype} matrix product {self.size} x {self.size} x {self.size} on {self.device}, "
                f"median of {self.repeats} after {1000 * self.warmup_seconds:.0f} ms of warm-up, "
                f"best of: {libraries} GFLOP/s")

    def as_dict(self) -> dict:
        return {**asdict(self), "how": self.how}


def _warm_up(product, device: str, seconds: float) -> int:
    """Run `product` (each to completion) until `seconds` have passed, at least once: library
    initialisation, caches, and clocks that an idle device has lowered. Returns the count."""
    start = time.perf_counter()
    count = 0
    while count == 0 or time.perf_counter() - start < seconds:
        product()
        synchronize(device)
        count += 1
    return count


def _median_gflops(product, n: int, repeats: int, device: str) -> float:
    _warm_up(product, device, WARMUP_SECONDS)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        synchronize(device)
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


@functools.cache
def measure_ceiling(device: str, dtype: str, size: int | None = None, repeats: int = REPEATS) -> Ceiling:
    """Median GFLOP/s of a large matrix product (device completion included); cached per run.

    On the CPU both of torch's GEMM libraries are tried, torch.mm (MKL) and oneDNN with a
    prepacked weight, and the faster one is the ceiling: on some CPUs (AMD's) oneDNN is far
    ahead, and torch.nn.LSTM's CPU kernel runs on it.
    """
    n = size or SIZES[device]
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(n, n, generator=gen).to(device=device, dtype=torch_dtype(dtype)) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=torch_dtype(dtype))
    products = {"torch.mm": lambda: torch.mm(a, b, out=out)}
    if device == "cpu" and dtype == "float32" and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        packed = torch.ops.mkldnn._reorder_linear_weight(b, n)
        products["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    with precision(dtype):
        rates = tuple((name, _median_gflops(p, n, repeats, device)) for name, p in products.items())
    return Ceiling(device, dtype, max(rate for _, rate in rates), n, repeats, rates, WARMUP_SECONDS)
