"""Plugin module for `--lstm-plugin mutant_plugin`: registers every mutant and broken impl for a run."""

from mutants import BROKEN, HONESTY_MUTANTS, MUTANTS, TRUST_MUTANTS

from harness.contract.registry import register

for cls in MUTANTS + BROKEN + list(TRUST_MUTANTS) + list(HONESTY_MUTANTS):
    register(cls)

# A correct LSTM whose steps keep their activations as attributes of a custom Function's ctx.
from test_saved_memory import StepLSTM  # noqa: E402

register(StepLSTM)
