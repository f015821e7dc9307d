"""Keep glibc's malloc from returning large blocks to the OS between calls.

By default glibc serves blocks above a threshold with mmap and unmaps them on free, so every
forward's activation buffers arrive as fresh pages and the run pays page faults and zeroing
that belong to no implementation (measured here: torch.nn.LSTM's own CPU forward 160 -> 140
ms at batch 20, length 100). Raising the thresholds once, for every implementation alike,
takes that noise out; the setting is recorded with the results.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
_state = {"setting": None}


def keep_freed_memory() -> str:
    """Apply once; returns what was done, for the results file."""
    if _state["setting"] is not None:
        return _state["setting"]
    setting = "default allocator (not glibc on Linux)"
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        big = 1 << 30
        ok = all(libc.mallopt(param, value) == 1 for param, value in
                 ((M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, big), (M_TOP_PAD, 1 << 28)))
        setting = ("glibc malloc: mmap and trim thresholds raised to 1 GiB (freed buffers are reused, "
                   "not unmapped)" if ok else "glibc malloc: mallopt refused; defaults kept")
    _state["setting"] = setting
    return setting
