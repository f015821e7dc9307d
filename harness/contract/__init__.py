"""The contract: what a grid point is (problem, inputs), what an implementation must do (impl,
registry), and how its answers are judged (reference, agreement)."""
