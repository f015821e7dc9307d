"""Confidence intervals of a ratio of medians, by bootstrap over the rounds of both sides.

Each side's per-round timings (pytest-benchmark's stats.data) are resampled with replacement and
the ratio of the resampled medians taken, many times; the interval is the central LEVEL share of
those ratios (percentile bootstrap). The two sides are resampled independently: when their rounds
were interleaved they are paired in time, and an independent bootstrap is the wider, safer one.
The random generator is seeded, so a report renders the same intervals every time.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
MIN_ROUNDS = 3  # fewer rounds than this on either side: no interval
SEED = 0


def _medians(data: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    # Chunked so that a thousand rounds x RESAMPLES never holds more than a few MB at once.
    out = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(len(data), 1))
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        out[start:start + n] = np.median(data[rng.integers(0, len(data), size=(n, len(data)))], axis=1)
    return out


def ratio_interval(numerator, denominator, level: float = LEVEL, resamples: int = RESAMPLES,
                   seed: int = SEED) -> tuple[float, float] | None:
    """(low, high) of median(numerator) / median(denominator) at `level`; None when either side has too few
    rounds or a median is not positive."""
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if len(num) < MIN_ROUNDS or len(den) < MIN_ROUNDS or np.median(num) <= 0 or np.median(den) <= 0:
        return None
    rng = np.random.default_rng(seed)
    ratios = _medians(num, rng, resamples) / _medians(den, rng, resamples)
    tail = (1 - level) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return float(low), float(high)


def format_interval(interval: tuple[float, float] | None, digits: int = 2) -> str:
    if interval is None:
        return ""
    return f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
