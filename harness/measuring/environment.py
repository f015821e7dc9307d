"""What a result was measured on: device, library versions, the harness's own commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy
import torch

import harness


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def harness_commit() -> str | None:
    """The git commit of the harness's source tree, with '-dirty' when it has local changes."""
    root = Path(harness.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def cupy_version() -> str | None:
    try:
        import cupy
    except Exception:  # noqa: BLE001
        return None
    return cupy.__version__


def gpu_driver() -> str | None:
    """The NVIDIA driver version, from nvidia-smi or else CuPy; None when neither can say."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip()
        if out:
            return out.splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import cupy

        version = cupy.cuda.runtime.driverGetVersion()  # e.g. 12040: the CUDA version it supports
        return f"CUDA driver API {version // 1000}.{version % 1000 // 10}"
    except Exception:  # noqa: BLE001
        return None


def describe(device: str) -> dict:
    info = {
        "device": device,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cupy": cupy_version(),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "harness": harness.__version__,
        "harness_commit": harness_commit(),
        "gpu": None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["gpu_driver"] = gpu_driver()
    info["device_name"] = device_name(info)
    return info


def device_name(info: dict) -> str:
    """One line naming what ran: 'NVIDIA H200 (CUDA 12.8)' or 'CPU: <model>, 2 threads'."""
    if info.get("device") == "cuda":
        return f"GPU: {info.get('gpu')} (CUDA {info.get('torch_cuda')})"
    return f"CPU: {info.get('cpu_model')}, {info.get('torch_threads')} threads"


def versions(device: str) -> list[str]:
    """describe(device) and the versions of what the GPU check runs with, one line each."""
    import importlib.metadata

    lines = [f"{k}: {v}" for k, v in describe(device).items()]
    try:
        import cupy

        lines.append(f"cupy CUDA runtime: {cupy.cuda.runtime.runtimeGetVersion()}")
    except Exception as exc:  # noqa: BLE001 - absent or without a device: say so
        lines.append(f"cupy CUDA runtime: unavailable ({type(exc).__name__}: {exc})")
    for name in ("triton", "flashrnn", "einops", "pytest_benchmark", "pandas", "seaborn"):
        try:
            lines.append(f"{name}: {importlib.metadata.version(name.replace('_', '-'))}")
        except Exception as exc:  # noqa: BLE001
            lines.append(f"{name}: unavailable ({type(exc).__name__})")
    lines.append(f"CUDA visible to torch: {torch.cuda.is_available()}")
    return lines


if __name__ == "__main__":  # the GPU check's first step: python -m harness.measuring.environment --device D
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m harness.measuring.environment")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    device = parser.parse_args().device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    text = versions(device)
    print("\n".join(text))
    print(f"device: {describe(device)['device_name']}")
    sys.exit(0)
