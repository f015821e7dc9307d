"""Plugin module for compare tests: `tunable` is fused, slowed by LSTM_TEST_DELAY_S seconds a call."""

import os
import time

from harness.registry import register
from impls.fused import FusedLSTM


@register
class Tunable(FusedLSTM):
    name = "tunable"
    description = "fused, deliberately slowed by $LSTM_TEST_DELAY_S seconds per forward and backward"

    def forward(self, x, h0, c0):
        time.sleep(float(os.environ.get("LSTM_TEST_DELAY_S", "0")))
        return super().forward(x, h0, c0)

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        time.sleep(float(os.environ.get("LSTM_TEST_DELAY_S", "0")))
        return super().backward(dy, dh_n, dc_n, gate_clip)
