"""LSTM benchmarking harness: validate implementations against a float64 reference, then time them."""

from harness.impl import Grads, Impl, Outputs, Support
from harness.problem import Inputs, LayerWeights, Problem
from harness.registry import discover, register

__version__ = "0.1.0"

__all__ = ["Grads", "Impl", "Inputs", "LayerWeights", "Outputs", "Problem", "Support",
           "discover", "register", "__version__"]
