"""Check, and if needed patch, the installed Jittor for today's NVIDIA stacks (CUDA 13, cuDNN 9).

Stock Jittor 1.3.11.0 predates CUDA 13 and cuDNN 9: its core build reads `cudaDeviceProp` fields
CUDA 13 removed, it forces C++14 where CUDA 13's CUB/Thrust need C++17, a few kernels use CUB
helpers CUDA 13 dropped, and its cuDNN module looks for cuDNN 8 files and compiles RNN code against
an API cuDNN 9 removed. Any of these aborts `import jittor` or the first training step.

    python -m utils.jittor_doctor                  # report the setup and the state of every fix
    python -m utils.jittor_doctor --fix            # patch what the detected CUDA/cuDNN versions need
    python -m utils.jittor_doctor --fix --all      # apply every fix whatever the versions
    python -m utils.jittor_doctor --revert         # restore the original Jittor files byte for byte
    (all take --jittor-dir DIR to work on another copy of the jittor package)

The fixes themselves, exact and idempotent text replacements with byte-for-byte backups, are in
`utils/jittor_doctor/patches.py`; this module detects what the installed Jittor will find (nvcc, CUDA,
cuDNN, GPUs) and so which fixes are needed, reports it, and is the command line.

Nothing here imports Jittor: importing it compiles, may download, and is exactly what can fail.
`check_environment()` is the cheap pre-flight check the entry points call before importing Jittor.
"""
import argparse
import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass, field
from typing import Optional

from models.jittor_env import command_output, nvidia_smi_gpus
from utils.jittor_doctor.patches import (APPLIED, BACKUP_SUFFIX, FIXES, UNKNOWN_SOURCE, PatchError, apply_fixes,
                                  fix_state, read_text, revert_fixes)

FIX_COMMAND = "python -m utils.jittor_doctor --fix"
CLEAN_CACHE_COMMAND = "python -m jittor_utils.clean_cache all"
ARCH = "aarch64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


@dataclass
class Environment:
    """What Jittor will find at import time; `nvcc_path == ""` means CPU mode."""
    jittor_dir: Optional[str] = None
    jittor_version: Optional[str] = None
    nvcc_path: str = ""
    nvcc_origin: str = ""
    cuda_version: Optional[tuple] = None
    cudnn_version: Optional[tuple] = None
    cudnn_headers: list = field(default_factory=list)
    cudnn_libs: list = field(default_factory=list)
    conv_opt: bool = False
    gpus: Optional[tuple] = None  # ("name, driver", ...); None: not queried, or no nvidia-smi

    @property
    def cpu_mode(self):
        return not self.nvcc_path

    @property
    def cuda_home(self):
        """Jittor takes the CUDA home to be the parent of nvcc's (symlink-resolved) folder."""
        if not self.nvcc_path:
            return None
        return os.path.dirname(os.path.dirname(os.path.realpath(self.nvcc_path)))


# ------------------------------------------------------------------------ environment detection

def find_jittor_dir():
    """The installed jittor package folder, found without importing (and so compiling) Jittor."""
    spec = importlib.util.find_spec("jittor")
    return list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None


def read_jittor_version(jittor_dir):
    init = read_text(os.path.join(jittor_dir, "__init__.py"))
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", init)
    return match.group(1) if match else None


def jittor_cache_root(environ):
    """~/.cache/jittor, or JITTOR_HOME's, including the sticky value Jittor keeps in config.json."""
    home = os.path.expanduser("~")
    config = os.path.join(home, ".cache", "jittor", "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            home = json.load(f).get("JITTOR_HOME", home)
    return os.path.join(environ.get("JITTOR_HOME", home), ".cache", "jittor")


def find_system_nvcc():
    """The nvcc Jittor's own search finds (PATH first, then the usual toolkit folders), or ""."""
    candidates = [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc", "/usr/bin/nvcc", "/opt/cuda/bin/nvcc"]
    return next((path for path in candidates if path and os.access(path, os.X_OK)), "")


def resolve_nvcc(environ):
    """(nvcc path, where it came from), mirroring the search order in jittor/compiler.py."""
    if "nvcc_path" in environ:
        return environ["nvcc_path"], "env var nvcc_path"
    bundled = sorted(glob.glob(os.path.join(jittor_cache_root(environ), "jtcuda", "*", "bin", "nvcc")))
    if bundled:
        return bundled[-1], "Jittor's own CUDA bundle (jtcuda)"
    found = find_system_nvcc()
    return found, ("search: PATH, /usr/local/cuda, /usr/bin, /opt/cuda" if found else "no nvcc found")


def nvcc_version(nvcc_path):
    output = command_output(nvcc_path, "--version") if nvcc_path else None
    match = re.search(r"release (\d+)\.(\d+)", output or "")
    return tuple(map(int, match.groups())) if match else None


def cudnn_search_dirs(cuda_home):
    """Header and library folders Jittor's setup_cuda_lib searches, plus the Debian header folder."""
    cuda = [cuda_home] if cuda_home else []
    includes = [os.path.join(c, sub) for c in cuda for sub in ("include", f"targets/{ARCH}-linux/include")]
    libs = [os.path.join(c, sub) for c in cuda for sub in ("bin", "lib64", f"targets/{ARCH}-linux/lib")]
    return (includes + ["/usr/include", f"/usr/include/{ARCH}-linux-gnu"],
            libs + [f"/usr/lib/{ARCH}-linux-gnu", "/usr/lib"])


def find_cudnn(cuda_home):
    """(version tuple or None, header files, library files) of the cuDNN Jittor would see."""
    include_dirs, lib_dirs = cudnn_search_dirs(cuda_home)
    headers = [path for d in include_dirs for pattern in ("cudnn.h", "cudnn_version*.h")
               for path in sorted(glob.glob(os.path.join(d, pattern)))]
    libs = [path for d in lib_dirs for path in sorted(glob.glob(os.path.join(d, "libcudnn*.so*")))]
    for header in headers:
        text = read_text(header)
        parts = [re.search(rf"#define CUDNN_{key}\s+(\d+)", text) for key in ("MAJOR", "MINOR", "PATCHLEVEL")]
        if all(parts):
            return tuple(int(p.group(1)) for p in parts), headers, libs
    return None, headers, libs


def detect_environment(jittor_dir=None, environ=None, with_gpus=True):
    environ = os.environ if environ is None else environ
    jittor_dir = jittor_dir or find_jittor_dir()
    nvcc_path, nvcc_origin = resolve_nvcc(environ)
    env = Environment(jittor_dir=jittor_dir, nvcc_path=nvcc_path, nvcc_origin=nvcc_origin,
                      conv_opt=environ.get("conv_opt", "0") not in ("", "0"),
                      gpus=nvidia_smi_gpus() if with_gpus else None)
    env.jittor_version = read_jittor_version(jittor_dir) if jittor_dir else None
    env.cuda_version = nvcc_version(nvcc_path)
    env.cudnn_version, env.cudnn_headers, env.cudnn_libs = find_cudnn(env.cuda_home)
    return env


def cpu_mode_reason(env):
    if env.gpus is None:
        gpus = "nvidia-smi is missing or fails (no NVIDIA driver)"
    else:
        gpus = f"nvidia-smi lists {len(env.gpus)} GPU(s)" if env.gpus else "nvidia-smi lists no GPU"
    if env.nvcc_origin == "env var nvcc_path":
        chosen = "set by hand" if env.gpus else "as models/jittor_env.py sets it when no GPU is listed"
        return f'nvcc_path="" ({chosen}), so Jittor skips CUDA; {gpus}'
    if env.gpus:
        return f"no nvcc was found; {gpus}, so Jittor will try to download its own CUDA bundle: set nvcc_path"
    return f"no nvcc was found, so Jittor builds without CUDA; {gpus}"


# ---------------------------------------------------------------------------- report and checks

def format_version(version):
    return ".".join(map(str, version)) if version else "not found"


def offline_archives(cache_root):
    """Downloads Jittor will not need: the jittor-offline package's archives and what is cached."""
    spec = importlib.util.find_spec("jittor_offline")
    found = []
    if spec and spec.submodule_search_locations:
        folder = list(spec.submodule_search_locations)[0]
        found += [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith((".tgz", ".zip"))]
    return found + [os.path.join(cache_root, n) for n in ("mkl", "cub", "cutt", "nccl", "cutlass", "jtcuda")
                    if os.path.isdir(os.path.join(cache_root, n))]


def report_lines(env):
    cache_root = jittor_cache_root(os.environ)
    gpus = ", ".join(env.gpus) if env.gpus else "none (nvidia-smi missing or lists none)"
    cuda_home = f" (home {env.cuda_home})" if env.cuda_home else ""
    lines = ["Jittor doctor report",
             f"  Jittor           {env.jittor_version or 'not installed'} at {env.jittor_dir}",
             f"  Python / numpy   {platform.python_version()} / {installed_version('numpy')}",
             f"  GPUs, driver     {gpus}",
             f"  nvcc             {env.nvcc_path or '(empty)'}  [{env.nvcc_origin}]",
             f"  CUDA             {format_version(env.cuda_version)}{cuda_home}",
             f"  cuDNN            {format_version(env.cudnn_version)}",
             *[f"    file           {path}" for path in env.cudnn_headers + env.cudnn_libs],
             f"  Jittor cache     {cache_root}",
             *[f"  offline archive  {path}" for path in offline_archives(cache_root)]]
    if env.cpu_mode:
        lines.append(f"CPU mode: {cpu_mode_reason(env)}.")
        toolkit = find_system_nvcc()
        if toolkit:
            version = format_version(nvcc_version(toolkit))
            lines.append(f"  (a CUDA {version} toolkit is on disk at {toolkit}, unused in CPU mode)")
    else:
        lines.append(f"GPU mode: Jittor will build with {env.nvcc_path} (conv_opt={int(env.conv_opt)}).")
    lines.append("Known incompatibilities of Jittor 1.3.11.0 (needed = for the versions detected above):")
    for fix in FIXES:
        state = fix_state(fix, env.jittor_dir) if env.jittor_dir else UNKNOWN_SOURCE
        needed = "needed" if fix.applies(env) else "not needed"
        lines.append(f"  [{needed:>10} | {state:>16}] {fix.name}: {fix.summary}")
        lines.append(f"{'':33}files: {', '.join(fix.files)}")
    problem = check_environment(env)
    mode = "CPU" if env.cpu_mode else "GPU"
    lines.append(f"Verdict: {problem}" if problem else f"Verdict: usable as is ({mode} mode).")
    return lines


def installed_version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def check_environment(env=None):
    """None when Jittor can be imported as set up, else one paragraph saying what is wrong and the fix.

    Cheap enough for every entry point: file reads and one cached `nvcc --version`, no Jittor import.
    """
    env = env or detect_environment(with_gpus=False)
    if not env.jittor_dir:
        return f"Jittor is not installed for {sys.executable}; install requirements.txt into this Python."
    if env.cpu_mode:
        return None
    problems = []
    if env.cuda_version is None:
        problems.append(f"`{env.nvcc_path} --version` failed, so the CUDA version is unknown.")
    runtime = os.path.join(env.cuda_home, "lib64", "libcudart.so")
    if env.nvcc_path != "/usr/bin/nvcc" and not os.path.exists(runtime):
        problems.append(f"Jittor takes {env.cuda_home} as the CUDA home (the parent of nvcc's folder) but "
                        f"{runtime} is missing: set nvcc_path to the toolkit's own bin/nvcc, not a wrapper.")
    if env.cudnn_version is None and not env.conv_opt:
        problems.append("No cuDNN headers were found, and Jittor aborts its import without cuDNN: install "
                        "cuDNN (8.9 for CUDA 12, 9 for CUDA 13), or set conv_opt=1 (slow convolutions).")
    missing = [fix.name for fix in FIXES if fix.applies(env) and fix_state(fix, env.jittor_dir) != APPLIED]
    if missing:
        problems.append(f"Jittor {env.jittor_version} at {env.jittor_dir} needs patches for CUDA "
                        f"{format_version(env.cuda_version)} / cuDNN {format_version(env.cudnn_version)} "
                        f"({', '.join(missing)}): run `{FIX_COMMAND}`, then `{CLEAN_CACHE_COMMAND}`.")
    return " ".join(problems) or None


# ----------------------------------------------------------------------------------------- CLI

def run_fix(env, apply_all):
    fixes = [fix for fix in FIXES if apply_all or fix.applies(env)]
    if not fixes:
        print("Nothing to fix for the detected versions" + (" (CPU mode)." if env.cpu_mode else ".")
              + " Use --fix --all to apply every fix anyway.")
        return 0
    states_before = [fix_state(fix, env.jittor_dir) for fix in fixes]
    changed = apply_fixes(fixes, env.jittor_dir)
    for fix, state in zip(fixes, states_before):
        print(f"  {fix.name}: {'already applied' if state == APPLIED else 'patched'}")
    if not changed:
        print("Nothing changed.")
        return 0
    print(f"Changed {len(changed)} file(s) under {env.jittor_dir}; originals kept as *{BACKUP_SUFFIX} "
          f"(undo with --revert).\nJittor may have cached objects built from the old sources; if the next "
          f"import or first step still fails, clear the cache with:\n    {CLEAN_CACHE_COMMAND}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.jittor_doctor",
                                     description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--fix", action="store_true", help="patch the installed Jittor where needed")
    action.add_argument("--revert", action="store_true", help="restore the original Jittor files")
    parser.add_argument("--all", action="store_true", help="with --fix: apply every fix, needed or not")
    parser.add_argument("--jittor-dir", help="the jittor package folder (default: the installed one)")
    args = parser.parse_args(argv)
    if args.all and not args.fix:
        parser.error("--all only goes with --fix")
    env = detect_environment(args.jittor_dir)
    if not env.jittor_dir:
        parser.error("Jittor is not installed here; pass --jittor-dir")
    try:
        if args.fix:
            return run_fix(env, args.all)
        if args.revert:
            restored = revert_fixes(env.jittor_dir)
            print(f"Restored {len(restored)} file(s): {', '.join(restored)}" if restored
                  else "Nothing to revert.")
            return 0
    except PatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(report_lines(env)))
    return 0

