"""The CuPy ElementwiseKernels, executed on the CPU.

No GPU here, so the kernel bodies are compiled as C++ (same text, a loop over i standing in
for the CUDA grid, references for the output arguments as CuPy declares them) and their
results compared with the NumPy ufunc path that agreement already covers. T is double here, so
what only CUDA's types reject (CuPy's float16) is test_cupy_nvrtc.py's part: it compiles the
real generated source with NVRTC for every dtype offered.
"""

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from impls.cupy_lstm import _BACKWARD_KERNEL, _FORWARD_KERNEL, UfuncGateMath

WRAPPER = """
#include <cmath>
#include <cstddef>
using std::exp; using std::tanh;
typedef double T;
extern "C" void forward(const T* rec, const T* c_prev_in, int H, T* gates, T* c_out, T* tanh_c_out,
                        T* h_out, ptrdiff_t n) {
  for (ptrdiff_t i = 0; i < n; ++i) {
    const T c_prev = c_prev_in[i]; T& c = c_out[i]; T& tanh_c = tanh_c_out[i]; T& h = h_out[i];
    FORWARD_BODY
  }
}
extern "C" void backward(const T* gates, const T* c_prev_in, const T* tanh_c_in, const T* dh_in, int H,
                         T clip, T* d_gates, T* dc_io, ptrdiff_t n) {
  for (ptrdiff_t i = 0; i < n; ++i) {
    const T c_prev = c_prev_in[i]; const T tanh_c = tanh_c_in[i]; const T dh = dh_in[i]; T& dc = dc_io[i];
    BACKWARD_BODY
  }
}
"""


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler to run the kernel bodies on the CPU")
    src = tmp_path_factory.mktemp("kernels") / "kernels.cpp"
    src.write_text(WRAPPER.replace("FORWARD_BODY", _FORWARD_KERNEL).replace("BACKWARD_BODY", _BACKWARD_KERNEL))
    lib = src.with_suffix(".so")
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return ctypes.CDLL(str(lib))


def ptr(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


def test_forward_kernel_matches_ufunc_math(kernels):
    rng = np.random.default_rng(0)
    B, H = 3, 5
    x_proj, rec, c_prev = rng.normal(size=(B, 4 * H)), rng.normal(size=(B, 4 * H)), rng.normal(size=(B, H))
    expected = [x_proj.copy()] + [np.empty((B, H)) for _ in range(3)]
    UfuncGateMath(np, B, H, np.float64).forward(expected[0], rec, c_prev, *expected[1:])
    got = [x_proj.copy()] + [np.empty((B, H)) for _ in range(3)]
    kernels.forward(ptr(rec), ptr(c_prev), H, *map(ptr, got), ctypes.c_ssize_t(B * H))
    for name, g, e in zip(("gates", "c", "tanh_c", "h"), got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_backward_kernel_matches_ufunc_math(kernels, clip):
    rng = np.random.default_rng(1)
    B, H = 4, 3
    gates = np.concatenate([1 / (1 + np.exp(-rng.normal(size=(B, 3 * H)))), np.tanh(rng.normal(size=(B, H)))], 1)
    c_prev, tanh_c, dh, dc = (rng.normal(size=(B, H)) for _ in range(4))
    tanh_c = np.tanh(tanh_c)
    exp_d, exp_dc = np.empty((B, 4 * H)), dc.copy()
    UfuncGateMath(np, B, H, np.float64).backward(gates, c_prev, tanh_c, dh, exp_dc, exp_d, clip)
    got_d, got_dc = np.empty((B, 4 * H)), dc.copy()
    kernels.backward(ptr(gates), ptr(c_prev), ptr(tanh_c), ptr(dh), H, ctypes.c_double(clip), ptr(got_d),
                     ptr(got_dc), ctypes.c_ssize_t(B * H))
    if clip:
        assert np.abs(got_d).max() == clip  # the clamp really engaged
    np.testing.assert_allclose(got_d, exp_d, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_dc, exp_dc, rtol=1e-12, atol=1e-14)
