"""Marks this folder as the harness's suites: the pytest plugin acts on runs that collect it."""

LSTM_HARNESS_SUITES = True
