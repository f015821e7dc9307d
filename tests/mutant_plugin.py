"""Plugin module for `--lstm-plugin mutant_plugin`: registers every mutant for a run."""

from mutants import MUTANTS

from harness.registry import register

for cls in MUTANTS:
    register(cls)
