"""The CuPy ElementwiseKernels compiled by NVRTC, as CuPy compiles them, for every dtype offered.

test_cupy_kernels.py runs the kernel bodies as C++ with T = double: it checks their arithmetic
but cannot see what only CUDA's types reject (CuPy's float16 arithmetic yields float, so a
`?:` with a float16 on one side and a float on the other is ambiguous). Here CuPy's own code
generator writes the complete translation unit (its headers, typedefs, parameter list and loop)
and NVRTC, from the nvidia-cuda-nvrtc wheel, compiles it: no GPU is needed to compile.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from harness.contract.impl import Support
from harness.contract.problem import DTYPES, Problem, torch_dtype
from impls import cupy_lstm
from impls.cupy_lstm import KERNELS, CupyLSTM

cupy = pytest.importorskip("cupy", reason="CuPy is not importable here (pip install -e '.[kernels]')",
                           exc_type=ImportError)

# CuPy compiles for the device's architecture, and CUDA's half-precision headers differ by
# architecture: the oldest that CUDA 13 supports (Turing) and the H100/H200's.
ARCHES = ("75", "90")
# Parameters that the implementation passes as scalars (everything else is an array).
SCALARS = {"H", "clip"}
# ArgInfo kinds of CuPy 14 (cupy/_core/_kernel.pxd, enum _ArgKind).
NDARRAY, INDEXER, SCALAR = 1, 2, 3


def claimed_dtypes() -> list[np.dtype]:
    """The storage dtypes CupyLSTM offers on CUDA when CuPy works there."""
    usable = cupy_lstm.cupy_usable
    cupy_lstm.cupy_usable = Support.yes
    try:
        names = [d for d in DTYPES if CupyLSTM.supports(Problem(1, 1, 1, 1, 1, dtype=d, device="cuda")).ok]
    finally:
        cupy_lstm.cupy_usable = usable
    return sorted({torch.empty(0, dtype=torch_dtype(d)).numpy().dtype for d in names}, key=str)


def test_the_claimed_dtypes_are_the_three_cuda_float_types():
    assert [d.name for d in claimed_dtypes()] == ["float16", "float32", "float64"]


@pytest.fixture(scope="module")
def nvrtc():
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        path = load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception as exc:  # noqa: BLE001 - any failure to find it means "not installed here"
        pytest.skip(f"NVRTC is not installed (pip install -e '.[kernels]'): {exc}")
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def cupy_source(step: str, dtype: np.dtype) -> str:
    """The complete CUDA source CuPy compiles for KERNELS[step] at `dtype`, with the argument
    kinds the implementation passes: raw arrays 2-D ([B, 4H] slices), the others reduced to 1-D
    (CuPy reduces C-contiguous arguments), H and clip scalars."""
    from cupy._core import _carray, _kernel, _scalar, core

    in_params, out_params, body, name = KERNELS[step]
    kernel = cupy.ElementwiseKernel(in_params, out_params, body, name)
    infos = []
    for p in kernel.params:
        if p.name == "_ind":
            infos.append(_kernel._ArgInfo(INDEXER, _carray.Indexer, None, 1, True, True))
        elif p.name in SCALARS:
            infos.append(_kernel._ArgInfo(SCALAR, _scalar.CScalar, p.dtype or dtype, 0, True, True))
        else:
            infos.append(_kernel._ArgInfo(NDARRAY, cupy.ndarray, dtype, 2 if p.raw else 1, True, True))
    code = _kernel._get_elementwise_kernel_code(tuple(infos), _kernel._TypeMap((("T", dtype),)), kernel.params,
                                                kernel.operation, kernel.name, kernel.preamble)
    # compile_with_cache prepends these headers (cupy/_core/_compile_with_cache.pyx).
    return "".join(f"#include <{h}>\n" for h in core._cupy_header_list) + code


def cupy_options(arch: str) -> tuple[str, ...]:
    """NVRTC options as CuPy passes them: its include paths and C++ standard, then what
    _compile_with_cache_cuda and compile_using_nvrtc add."""
    from cupy._core import core

    return core.assemble_cupy_compiler_options(()) + ("-ftz=true", "--device-as-default-execution-space",
                                                      f"-arch=sm_{arch}")


def compile_with_nvrtc(lib, source: str, options: tuple[str, ...], name: str) -> tuple[bool, str]:
    """(compiled, NVRTC's log)."""
    prog = ctypes.c_void_p()
    status = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None)
    assert status == 0, f"nvrtcCreateProgram: {lib.nvrtcGetErrorString(status).decode()}"
    try:
        argv = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        status = lib.nvrtcCompileProgram(prog, len(options), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        return status == 0, f"{lib.nvrtcGetErrorString(status).decode()}\n{log.value.decode(errors='replace')}"
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def generated(step: str, dtype: np.dtype) -> str:
    try:
        return cupy_source(step, dtype)
    except (AttributeError, ImportError, TypeError) as exc:
        pytest.fail(f"CuPy {cupy.__version__} changed the private code generator this test uses "
                    f"(cupy._core._kernel._get_elementwise_kernel_code, _ArgInfo, _TypeMap): {exc}; "
                    "update cupy_source() in tests/test_cupy_nvrtc.py", pytrace=False)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("dtype", claimed_dtypes(), ids=str)
@pytest.mark.parametrize("step", sorted(KERNELS))
def test_kernel_compiles_with_nvrtc(nvrtc, step, dtype, arch):
    source = generated(step, dtype)
    ok, log = compile_with_nvrtc(nvrtc, source, cupy_options(arch), KERNELS[step][3])
    assert ok, f"the {step} kernel does not compile for {dtype} on sm_{arch}:\n{log}\nsource:\n{source}"


def test_the_generated_source_is_cupys_float16():
    """The check above really compiles CuPy's float16 (not a stand-in), with the clamp in it."""
    source = generated("backward", np.dtype(np.float16))
    assert '#include "cupy/float16.cuh"' in source and "typedef float16 T;" in source
    assert "const float16 clip" in source and "CUPY_FOR(i, _ind.size())" in source


def test_the_float16_clamp_bug_is_caught_with_nvrtcs_log(nvrtc):
    """The clamp as it once was (`-clip` is a float for CuPy's float16) must fail here, naming why."""
    fixed = "d[k] < lo ? lo :"
    source = generated("backward", np.dtype(np.float16))
    assert fixed in source
    ok, log = compile_with_nvrtc(nvrtc, source.replace(fixed, "d[k] < -clip ? -clip :"), cupy_options("90"), "old")
    assert not ok and "NVRTC_ERROR_COMPILATION" in log and 'ambiguous "?" operation' in log
