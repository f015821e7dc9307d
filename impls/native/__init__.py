"""The C++ time loop of `fused` (lstm_steps.cpp): compiled on first use, cached, loaded.

Nothing is built at install time: the first process that asks compiles the source with the
system's C++ compiler through torch.utils.cpp_extension (ninja drives it), into torch's extension
cache (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions); later processes only load it.
The build's name carries a hash of the source, the flags, the torch version and the CPU's vector
capability, so a changed source or another machine never loads a stale library. Where there is
no compiler or the build fails, `native_steps()` says why and `fused` runs its Python loop.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("lstm_steps.cpp")
STALE_LOCK_SECONDS = 300
LOCK_WAIT_SECONDS = 120  # the most this process waits on another's build before running the Python loop
DISABLE_VARIABLE = "LSTM_HARNESS_NO_NATIVE"  # set to 1: never build or load it (the Python loop runs)

# Vector flags per torch's own reading of the CPU, not -march=native: the cache may be shared by
# machines of one capability but different models.
_VECTOR_FLAGS = {"AVX2": ["-mavx2", "-mfma"], "AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq",
                                                         "-mavx512bw", "-mavx512vl"]}


@dataclass(frozen=True)
class NativeSteps:
    ops: object | None  # torch.ops.lstm_harness_steps once loaded, else None
    reason: str  # why it is not available ("" when it is)
    seconds: float  # time this process spent building or loading it
    compiled: bool  # True: compiled in this process; False: loaded from the cache (or unavailable)
    flags: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return self.ops is not None

    def describe(self) -> str:
        if not self.available:
            return f"not built: {self.reason}"
        how = "compiled" if self.compiled else "loaded from cache"
        return f"{how} in {self.seconds:.1f} s, {' '.join(self.flags)}"


def compile_flags() -> list[str]:
    capability = torch.backends.cpu.get_cpu_capability()
    # -fno-trapping-math lets the compiler turn the clamps into vector selects (NaN still
    # propagates: that is -ffinite-math-only, which is not set).
    return ["-O3", "-fno-trapping-math", "-fopenmp", *_VECTOR_FLAGS.get(capability, [])]


def build_name(flags: list[str]) -> str:
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(flags).encode(), torch.__version__.encode(),
                 torch.backends.cpu.get_cpu_capability().encode()):
        key.update(part)
    return f"lstm_harness_steps_{key.hexdigest()[:12]}"


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


@functools.cache
def native_steps() -> NativeSteps:
    """Build (first time) or load the extension, once per process."""
    if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
        return NativeSteps(None, f"{DISABLE_VARIABLE} is set", 0.0, False)
    if compiler() is None:
        return NativeSteps(None, f"no C++ compiler found ({os.environ.get('CXX', 'c++')} is not on PATH)", 0.0, False)
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return NativeSteps(None, "ninja is not installed (pip install ninja)", 0.0, False)
    flags = compile_flags()
    name = build_name(flags)
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    library = build_dir / f"{name}.so"
    cached = library.exists()
    # torch waits without end on the build directory's lock file; one left by a process killed
    # mid-build (a crashed benchmark worker, say) would hang every later process. A build takes
    # seconds: a lock older than STALE_LOCK_SECONDS has no live owner.
    lock = build_dir / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    start = time.perf_counter()
    # A younger lock: another process is building, or was killed building (at a GPU check's step cap, say).
    # Wait for it a bounded time, not torch's forever; then run without the extension and say why.
    waited = wait_for_lock(lock, LOCK_WAIT_SECONDS)
    if waited is not None:
        return NativeSteps(None, f"another process holds the build lock {lock} (waited {waited:.0f} s; a build "
                                 f"killed midway leaves it: it is cleared once older than {STALE_LOCK_SECONDS} s)",
                           time.perf_counter() - start, False)
    try:
        cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                           is_python_module=False, verbose=False)
    except Exception as error:  # a compiler error, a missing header: the Python loop runs instead
        lines = str(error).strip().splitlines()
        first_error = next((line for line in lines if "error:" in line), lines[-1] if lines else repr(error))
        return NativeSteps(None, f"the build failed: {first_error.strip()}", time.perf_counter() - start, False)
    return NativeSteps(torch.ops.lstm_harness_steps, "", time.perf_counter() - start, not cached, tuple(flags))


def wait_for_lock(lock: Path, limit: float, poll: float = 0.2) -> float | None:
    """Wait up to `limit` seconds for `lock` to go; None when it is gone (or never was), else the wait."""
    started = time.monotonic()
    while lock.exists():
        waited = time.monotonic() - started
        if waited >= limit:
            return waited
        time.sleep(poll)
    return None
