"""Plugin module for `--lstm-plugin oom_plugin`: an implementation that runs out of memory the way
CuPy reports it (a MemoryError, not torch's OutOfMemoryError), on the larger problems only."""

from harness.contract.registry import register
from impls.fused import FusedLSTM


class OutOfMemoryError(MemoryError):
    """Named and built like cupy.cuda.memory.OutOfMemoryError (a MemoryError), without CuPy."""

    def __init__(self, size: int, total: int) -> None:
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).")


class CupyRunsOutOfMemory(FusedLSTM):
    """Runs out of CuPy memory in backward at batch 5 and above."""

    name = "oom_cupy"
    description = "CuPy-style out of memory in backward at batch 5"

    def backward(self, dy, dh_n, dc_n):
        if dy.shape[1] >= 5:
            raise OutOfMemoryError(2**40, 2**30)
        return super().backward(dy, dh_n, dc_n)


register(CupyRunsOutOfMemory)
