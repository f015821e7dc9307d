"""Measuring: a run's session, the checks around timing, the timing itself, the device's ceiling,
memory, the environment, and the pytest plugin that drives it."""
