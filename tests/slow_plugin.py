"""Plugin module for compare tests: `tunable` is fused, doing its work LSTM_TEST_REPEAT times a call.

Repeating the work (not sleeping a fixed time) keeps tunable's slowdown a ratio of fused's own
time: a busier machine stretches both alike, so the slowdown survives normalising by fused.
"""

import os

from harness.contract.registry import register
from impls.fused import FusedLSTM


def repeats() -> int:
    value = os.environ.get("LSTM_TEST_REPEAT", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"LSTM_TEST_REPEAT={value!r}: expected a whole number of repeats, 1 or more")
    return int(value)


@register
class Tunable(FusedLSTM):
    name = "tunable"
    description = "fused, deliberately slowed: each forward and backward runs $LSTM_TEST_REPEAT times"

    def forward(self, x, h0, c0):
        # Every repeat computes the same outputs from the same inputs; the last one is returned.
        for _ in range(repeats() - 1):
            super().forward(x, h0, c0)
        return super().forward(x, h0, c0)

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        # Backward reads only what forward saved and writes fresh gradients: safe to repeat.
        for _ in range(repeats() - 1):
            super().backward(dy, dh_n, dc_n, gate_clip)
        return super().backward(dy, dh_n, dc_n, gate_clip)
