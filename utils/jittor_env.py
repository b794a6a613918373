"""Jittor environment defaults, applied once before Jittor is first imported.

Jittor reads its switches from environment variables at import time. Stock Jittor 1.3.11 would
otherwise download cutlass (unused by any op), probe a CUDA toolkit that may be a wrapper script
or have no GPU behind it, and import torch as a side effect. Every default here is only a default:
a variable the user has set is never changed.
"""
import os
import shutil
import subprocess

CUDA_NVCC = "/usr/local/cuda/bin/nvcc"


def gpu_present():
    """True when `nvidia-smi -L` lists at least one GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def default_nvcc_path():
    """The nvcc Jittor should use: the toolkit's own binary with a GPU, "" (CPU mode) without.

    Why not let Jittor search PATH: on the project's CPU machines `nvcc` on PATH is a wrapper
    script, from which Jittor derives a wrong CUDA home and dies at import.
    """
    if not gpu_present():
        return ""
    if os.path.exists(CUDA_NVCC):
        return CUDA_NVCC
    return shutil.which("nvcc") or ""


def apply_defaults():
    """Set Jittor's environment defaults unless the user already set them."""
    if "jittor" in __import__("sys").modules:
        return
    os.environ.setdefault("use_cutlass", "0")  # downloaded at import, used by no op in 1.3.11
    os.environ.setdefault("FIX_TORCH_ERROR", "0")  # else `import jittor` imports torch if present
    if "nvcc_path" not in os.environ:
        os.environ["nvcc_path"] = default_nvcc_path()
