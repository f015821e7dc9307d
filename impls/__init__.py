"""In-tree LSTM implementations; each module registers itself with @harness.register."""
