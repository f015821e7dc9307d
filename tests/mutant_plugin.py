"""Plugin module for `--lstm-plugin mutant_plugin`: registers every mutant and broken impl for a run."""

from mutants import BROKEN, MUTANTS, TRUST_MUTANTS

from harness.contract.registry import register

for cls in MUTANTS + BROKEN + list(TRUST_MUTANTS):
    register(cls)
