"""LSTM benchmarking harness: validate implementations against a float64 reference, then time them."""

import importlib

__version__ = "0.1.0"

# Imported on first use (PEP 562): the pytest plugin loads this package in every pytest run of an
# environment that has the harness installed, and those runs should not pay for importing torch.
_EXPORTS = {
    **dict.fromkeys(("Grads", "Impl", "Outputs", "Support"), "harness.contract.impl"),
    **dict.fromkeys(("Inputs", "LayerWeights"), "harness.contract.inputs"),
    "Problem": "harness.contract.problem",
    "AutogradImpl": "harness.contract.autograd_impl",
    **dict.fromkeys(("discover", "register"), "harness.contract.registry"),
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
