"""Jittor's environment defaults: `apply_defaults()`, called before Jittor is first imported by
`build_model`, every entry point (`utils/entry.py`) and the tests (`tests/conftest.py`). Importing
this module changes nothing. `size_cudnn_algorithm_cache()`, called by `build_model` after the
import, is the one setting made on Jittor itself.

Jittor reads its switches from environment variables at import time. Stock Jittor 1.3.11 would
otherwise download cutlass (unused by any op), probe a CUDA toolkit that may be a wrapper script
or have no GPU behind it, import torch as a side effect, and print a dozen `[i ...]` info lines
(cache paths, compilers found) before every command's own output. Every default here is only a
default: a variable the user has set is never changed.
"""
import functools
import importlib.abc
import importlib.machinery
import os
import shutil
import subprocess
import sys

CUDA_NVCC = "/usr/local/cuda/bin/nvcc"
JITTOR_LOG_VARIABLES = ("log_silent", "log_v", "log_vprefix")  # Jittor's own; set one to see its info lines


@functools.lru_cache(maxsize=None)
def command_output(*command):
    """stdout of a command, or None when it is missing or fails; cached, the answer won't change."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def nvidia_smi_gpus():
    """("name, driver version", ...) of the GPUs nvidia-smi lists, or None when nvidia-smi is missing
    or fails (no NVIDIA driver)."""
    out = command_output("nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader")
    return None if out is None else tuple(line.strip() for line in out.splitlines() if line.strip())


def gpu_present():
    """True when nvidia-smi lists at least one GPU."""
    return bool(nvidia_smi_gpus())


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


class QuietJittorImport(importlib.abc.MetaPathFinder):
    """Imports Jittor without its info lines; warnings and errors still print.

    Python-side info goes through `jittor_utils.LOG.i`, replaced by a no-op. The C++ side has a
    single switch, `log_silent`, that hides info and warnings alike; its info lines come from
    loading the core library, so the switch is on only while `import jittor` runs.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "jittor":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        load = spec.loader.exec_module

        def exec_module(module):
            import jittor_utils

            if self in sys.meta_path:
                sys.meta_path.remove(self)
            jittor_utils.LOG.i = lambda *msg: None
            os.environ["log_silent"] = "1"  # read once, when the core library loads
            try:
                load(module)
            finally:
                del os.environ["log_silent"]
                if hasattr(module, "flags"):
                    module.flags.log_silent = 0

        spec.loader.exec_module = exec_module
        return spec


# Entries of each of cuDNN's algorithm caches (forward, input gradient, weight gradient). Jittor keeps
# 100, then runs cuDNN's heuristic again for every new convolution; the 7 models at batch 1 and 8
# (480x640) have 240 distinct forward configurations, and training crops and evaluation scales add more.
CUDNN_ALGORITHM_CACHE = 1024


def size_cudnn_algorithm_cache():
    """Let cuDNN's algorithm caches hold every convolution of the 7 models at two batch sizes; once
    Jittor has been imported, and only where it loaded cuDNN. The caches are keyed by shapes,
    padding, stride, dilation and groups, not by dtype: a process that times float32 must not then
    time float16 (the GPU check gives each its own process)."""
    import jittor as jt

    cudnn = getattr(jt.compile_extern, "cudnn", None)
    if cudnn is not None:
        cudnn.set_algorithm_cache_size(CUDNN_ALGORITHM_CACHE)


def apply_defaults():
    """Set Jittor's environment defaults unless the user already set them."""
    if "jittor" in sys.modules:
        return
    os.environ.setdefault("use_cutlass", "0")  # downloaded at import, used by no op in 1.3.11
    os.environ.setdefault("FIX_TORCH_ERROR", "0")  # else `import jittor` imports torch if present
    if "nvcc_path" not in os.environ:
        os.environ["nvcc_path"] = default_nvcc_path()
    if not any(name in os.environ for name in JITTOR_LOG_VARIABLES):
        if not any(isinstance(finder, QuietJittorImport) for finder in sys.meta_path):
            sys.meta_path.insert(0, QuietJittorImport())
