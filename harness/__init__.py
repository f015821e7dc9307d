"""LSTM benchmarking harness: validate implementations against a float64 reference, then time them."""

import importlib

__version__ = "0.1.0"

# Imported on first use (PEP 562): the pytest plugin loads this package in every pytest run of an
# environment that has the harness installed, and those runs should not pay for importing torch.
_EXPORTS = {"Grads": "harness.impl", "Impl": "harness.impl", "Outputs": "harness.impl", "Support": "harness.impl",
            "Inputs": "harness.problem", "LayerWeights": "harness.problem", "Problem": "harness.problem",
            "discover": "harness.registry", "register": "harness.registry"}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
