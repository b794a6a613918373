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

Each fix is a list of exact text replacements that fails loudly when its anchor text is missing
(another Jittor version) and recognises itself once applied, so `--fix` is idempotent. The first
change to a file saves the original next to it as `<file>.dformer-orig`, listed with its sha256 in
`.dformer-doctor.json` in the jittor folder; `--revert` puts those originals back.

Nothing here imports Jittor: importing it compiles, may download, and is exactly what can fail.
`check_environment()` is the cheap pre-flight check the entry points call before importing Jittor.
"""
import argparse
import functools
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

BACKUP_SUFFIX = ".dformer-orig"
MANIFEST_NAME = ".dformer-doctor.json"
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
    gpus: Optional[list] = None  # None: not queried, or nvidia-smi missing or failing

    @property
    def cpu_mode(self):
        return not self.nvcc_path

    @property
    def cuda_home(self):
        """Jittor takes the CUDA home to be the parent of nvcc's (symlink-resolved) folder."""
        if not self.nvcc_path:
            return None
        return os.path.dirname(os.path.dirname(os.path.realpath(self.nvcc_path)))


# --------------------------------------------------------------------------------- the fixes

@dataclass(frozen=True)
class Edit:
    """Replace `old` by `new` in `path` (relative to the jittor package); `new` marks it applied."""
    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Fix:
    name: str
    summary: str
    applies: Callable[[Environment], bool]
    edits: tuple

    @property
    def files(self):
        return sorted({edit.path for edit in self.edits})


def needs_cuda13(env):
    return not env.cpu_mode and env.cuda_version is not None and env.cuda_version[0] >= 13


def needs_cudnn9(env):
    return not env.cpu_mode and env.cudnn_version is not None and env.cudnn_version[0] >= 9


# The replacement texts, verbatim as they land in Jittor's sources. Those for code_softmax.py sit
# inside a Python f-string, hence the doubled braces.
HELPER_CUDA = "extern/cuda/inc/helper_cuda.h"
DEVICE_ATTRIBUTE_HELPER = """#ifdef __CUDA_RUNTIME_H__
// CUDA 13 removed cudaDeviceProp::computeMode and ::clockRate; device attributes work everywhere
inline int _jtDeviceAttribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  cudaDeviceGetAttribute(&value, attr, device);
  return value;
}

// General GPU Device CUDA Initialization"""
COMPUTE_MODE = "_jtDeviceAttribute(cudaDevAttrComputeMode, {})"

NVCC_STD_FLAG_ORIGINAL = "        if nvcc_version >= [11,4]:\n            nvcc_flags = nvcc_flags.replace("
NVCC_STD_FLAG = """        if os.name != 'nt' and nvcc_version >= [11,0]:
            pass  # keep -std=c++17, nvcc hands it to g++; the cl spelling below breaks g++
        elif nvcc_version >= [11,4]:
            nvcc_flags = nvcc_flags.replace("""

SOFTMAX_MAX_FUNCTOR = """#include <type/fp16_compute.h>
// cub::Max was removed in CUDA 13; this is its definition, valid for every CUB version
struct SoftmaxMaxOp {{
    __device__ __forceinline__ float operator()(float a, float b) const {{ return b > a ? b : a; }}
}};
''', cuda_src=f'''"""

WARP_LANE_ID = """    unsigned int lane_id;
    // cub::LaneId was removed in CUDA 13; it read this register
    asm("mov.u32 %0, %%laneid;" : "=r"(lane_id));
    if (lane_id == 0) """

WHERE_ITERATORS = """    // CUDA 13 removed these cub iterators; thrust's exist in every CUDA version
    thrust::counting_iterator<To> counting_itr(0);
    thrust::transform_iterator<NonZeroOp<Ti>, Ti*, bool> itr("""

CUDNN_HEADER_SEARCH = """# NVIDIA's Debian/Ubuntu cuDNN packages install to /usr/include/<arch>-linux-gnu
        cuda_include_name = search_file([cuda_include, extra_include_path, "/usr/include",
            f"/usr/include/{arch_key}-linux-gnu"], """

CUDNN8_LIBS = ('libs = ["libcudnn_ops_infer.so", "libcudnn_ops_train.so", '
               '"libcudnn_cnn_infer.so", "libcudnn_cnn_train.so"]\n')
CUDNN9_LIBS = CUDNN8_LIBS + """\
                if glob.glob(os.path.join(os.path.dirname(culib_path), "libcudnn_graph.so*")):
                    # cuDNN 9 (the first with libcudnn_graph) split its libraries differently
                    libs = ["libcudnn_graph.so", "libcudnn_ops.so", "libcudnn_cnn.so"]
                    prefer_version = ("9",)
"""

CUDNN_RNN_HEADER = "extern/cuda/cudnn/inc/cudnn_rnn_descriptor.h"
CUDNN_RNN_SOURCE = "extern/cuda/cudnn/src/cudnn_rnn_descriptor.cc"
RNN_UNSUPPORTED = ('LOGf << "Jittor\'s cuDNN RNN ops use the legacy RNN API that cuDNN 9 removed; '
                   'run RNNs without cuDNN (jt.flags.use_cuda=0)";')
RNN_DESCRIPTOR_END = "        return size;\n    }\n};\n"
RNN_STAND_IN = f"""#else
// cuDNN 9 removed the legacy RNN API used above (cudnnSetRNNDescriptor_v6, cudnnGetRNNParamsSize,
// ...). This stand-in keeps the cuDNN module, i.e. the convolutions, compiling; RNN ops fail when run.
struct RnnDescriptor {{
    cudnnRNNDescriptor_t desc = nullptr;
    RnnDescriptor(cudnnHandle_t, string, int, int, float, bool) {{
        {RNN_UNSUPPORTED}
    }}
    size_t weight_space_size(const cudnnTensorDescriptor_t&) {{ return 0; }}
    size_t work_space_size(const cudnnTensorDescriptor_t*, int) {{ return 0; }}
    size_t reserve_space_size(const cudnnTensorDescriptor_t*, int) {{ return 0; }}
}};
#endif
"""
RNN_WEIGHT_DESCRIPTOR = "\n/** \n */\nstruct RnnWeightDescriptor {"
RNN_OFFSET_SIGNATURE = ("vector<int32_t> cudnn_rnn_weight_offset(string mode, int input_size, "
                        "int hidden_size, int num_layers, int proj_size, bool bias, bool bidirectional) {\n")
RNN_OFFSET_GUARD = f"#if CUDNN_MAJOR >= 9\n    {RNN_UNSUPPORTED}\n    return {{}};\n#else\n"

FIXES = (
    Fix("cuda13-device-props",
        "helper_cuda.h reads cudaDeviceProp::computeMode/clockRate, gone in CUDA 13: query attributes",
        needs_cuda13, (
            Edit(HELPER_CUDA, "#ifdef __CUDA_RUNTIME_H__\n// General GPU Device CUDA Initialization",
                 DEVICE_ATTRIBUTE_HELPER),
            Edit(HELPER_CUDA, "if (deviceProp.computeMode == cudaComputeModeProhibited) {",
                 f"if ({COMPUTE_MODE.format('devID')} == cudaComputeModeProhibited) {{"),
            Edit(HELPER_CUDA, "if (deviceProp.computeMode != cudaComputeModeProhibited) {",
                 f"if ({COMPUTE_MODE.format('current_device')} != cudaComputeModeProhibited) {{"),
            Edit(HELPER_CUDA, "sm_per_multiproc * deviceProp.clockRate;",
                 "sm_per_multiproc * _jtDeviceAttribute(cudaDevAttrClockRate, current_device);"),
            Edit(HELPER_CUDA, "&&\n        (deviceProp.computeMode != cudaComputeModeProhibited)) {",
                 f"&&\n        ({COMPUTE_MODE.format('current_device')} != cudaComputeModeProhibited)) {{"),
        )),
    Fix("cuda13-cxx17",
        "build host and nvcc code as C++17, which CUDA 13's CUB/Thrust require (Jittor forces C++14)",
        needs_cuda13, (
            Edit("compiler.py", 'cc_flags += " -Wall -Wno-unknown-pragmas -std=c++14 -fPIC "',
                 "# C++17: CUDA 13's CUB/Thrust/libcu++ reject C++14\n"
                 'cc_flags += " -Wall -Wno-unknown-pragmas -std=c++17 -fPIC "'),
            Edit("compiler.py", NVCC_STD_FLAG_ORIGINAL, NVCC_STD_FLAG),
        )),
    Fix("cuda13-softmax-max",
        "the CUDA softmax kernel uses cub::Max, removed in CUDA 13: use a local max functor",
        needs_cuda13, (
            Edit("other/code_softmax.py", "#include <type/fp16_compute.h>\n''', cuda_src=f'''",
                 SOFTMAX_MAX_FUNCTOR),
            Edit("other/code_softmax.py", "Reduce(v1, cub::Max())", "Reduce(v1, SoftmaxMaxOp())"),
        )),
    Fix("cuda13-depthwise-lane-id",
        "depthwise-conv backward uses cub::LaneId, removed in CUDA 13: read the lane register directly",
        needs_cuda13, (
            Edit("depthwise_conv.py", "    if (cub::LaneId() == 0) ", WARP_LANE_ID),
        )),
    Fix("cuda13-where-iterators",
        "CUDA where/nonzero uses cub's Counting/TransformInputIterator, removed in CUDA 13: use thrust's",
        needs_cuda13, (
            Edit("extern/cuda/cub/ops/cub_where_op.cc", "#include <thrust/transform.h>\n#endif",
                 "#include <thrust/transform.h>\n#include <thrust/iterator/counting_iterator.h>\n"
                 "#include <thrust/iterator/transform_iterator.h>\n#endif"),
            Edit("extern/cuda/cub/ops/cub_where_op.cc",
                 "    cub::CountingInputIterator<To> counting_itr(0);\n"
                 "    cub::TransformInputIterator<bool, NonZeroOp<Ti>, Ti*> itr(", WHERE_ITERATORS),
        )),
    Fix("cudnn9-header-search",
        "also look for cudnn.h in /usr/include/<arch>-linux-gnu, where NVIDIA's Debian packages put it",
        needs_cudnn9, (
            Edit("compile_extern.py",
                 'cuda_include_name = search_file([cuda_include, extra_include_path, "/usr/include"], ',
                 CUDNN_HEADER_SEARCH),
        )),
    Fix("cudnn9-library-names",
        "preload cuDNN 9's libcudnn_{graph,ops,cnn} instead of cuDNN 8's *_infer/*_train libraries",
        needs_cudnn9, (
            Edit("compile_extern.py", CUDNN8_LIBS, CUDNN9_LIBS),
        )),
    Fix("cudnn9-legacy-rnn",
        "guard the cuDNN RNN code that calls APIs cuDNN 9 removed, so the cuDNN conv module compiles",
        needs_cudnn9, (
            Edit(CUDNN_RNN_HEADER, "/** A wrapper for CUDNN RNN descriptor\n */\nstruct RnnDescriptor {",
                 "#if CUDNN_MAJOR < 9\n/** A wrapper for CUDNN RNN descriptor\n */\nstruct RnnDescriptor {"),
            Edit(CUDNN_RNN_HEADER, RNN_DESCRIPTOR_END + RNN_WEIGHT_DESCRIPTOR,
                 RNN_DESCRIPTOR_END + RNN_STAND_IN + RNN_WEIGHT_DESCRIPTOR),
            Edit(CUDNN_RNN_SOURCE, RNN_OFFSET_SIGNATURE, RNN_OFFSET_SIGNATURE + RNN_OFFSET_GUARD),
            Edit(CUDNN_RNN_SOURCE, "    return weight_offsets;\n}", "    return weight_offsets;\n#endif\n}"),
        )),
)

APPLIED, NOT_APPLIED = "applied", "not applied"
PARTLY_APPLIED, UNKNOWN_SOURCE = "partly applied", "anchor not found"


class PatchError(RuntimeError):
    """The installed sources are not what a fix expects (another Jittor version, or hand edits)."""


def edit_state(text, edit):
    if edit.new in text:
        return APPLIED
    return NOT_APPLIED if text.count(edit.old) == 1 else UNKNOWN_SOURCE


def read_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def fix_state(fix, jittor_dir):
    """APPLIED, NOT_APPLIED, PARTLY_APPLIED or UNKNOWN_SOURCE for the files under jittor_dir."""
    states = set()
    for edit in fix.edits:
        path = os.path.join(jittor_dir, edit.path)
        states.add(edit_state(read_text(path), edit) if os.path.isfile(path) else UNKNOWN_SOURCE)
    if len(states) == 1:
        return states.pop()
    return UNKNOWN_SOURCE if UNKNOWN_SOURCE in states else PARTLY_APPLIED


def patched_texts(fixes, jittor_dir):
    """{relative path: (original text, patched text)}; raises PatchError before anything is written."""
    texts = {}
    for fix in fixes:
        for edit in fix.edits:
            path = os.path.join(jittor_dir, edit.path)
            if edit.path not in texts:
                if not os.path.isfile(path):
                    raise PatchError(f"{fix.name}: {path} does not exist")
                original = read_text(path)
                texts[edit.path] = (original, original)
            original, text = texts[edit.path]
            state = edit_state(text, edit)
            if state == UNKNOWN_SOURCE:
                raise PatchError(f"{fix.name}: expected text not found exactly once in {path}:\n{edit.old}")
            if state == NOT_APPLIED:
                texts[edit.path] = (original, text.replace(edit.old, edit.new, 1))
    return {rel: pair for rel, pair in texts.items() if pair[0] != pair[1]}


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_manifest(jittor_dir):
    path = os.path.join(jittor_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def save_manifest(jittor_dir, manifest):
    with open(os.path.join(jittor_dir, MANIFEST_NAME), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


def apply_fixes(fixes, jittor_dir):
    """Apply the fixes; return the relative paths of the files changed (empty when all were applied)."""
    changes = patched_texts(fixes, jittor_dir)
    manifest = load_manifest(jittor_dir)
    for rel, (_, patched) in sorted(changes.items()):
        path = os.path.join(jittor_dir, rel)
        if rel not in manifest:
            # Record the backup before the first write, so an interrupted run can still be reverted.
            shutil.copy2(path, path + BACKUP_SUFFIX)
            manifest[rel] = sha256_of(path)
            save_manifest(jittor_dir, manifest)
        with open(path, "wb") as f:
            f.write(patched.encode("utf-8"))
    return sorted(changes)


def revert_fixes(jittor_dir):
    """Restore every file the doctor changed; return their relative paths."""
    manifest = load_manifest(jittor_dir)
    for rel, original_sha in manifest.items():
        backup = os.path.join(jittor_dir, rel) + BACKUP_SUFFIX
        if not os.path.isfile(backup) or sha256_of(backup) != original_sha:
            raise PatchError(f"backup {backup} is missing or altered; reinstall Jittor instead "
                             "(pip install --force-reinstall --no-deps jittor==1.3.11.0)")
    for rel in manifest:
        path = os.path.join(jittor_dir, rel)
        os.replace(path + BACKUP_SUFFIX, path)  # the backup kept the original bytes and mtime
    if manifest:
        os.remove(os.path.join(jittor_dir, MANIFEST_NAME))
    return sorted(manifest)


# ------------------------------------------------------------------------ environment detection

@functools.lru_cache(maxsize=None)
def command_output(*command):
    """stdout of a command, or None when it is missing or fails; cached, the answer won't change."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


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


def query_gpus():
    """GPU names with driver versions from nvidia-smi, or None when nvidia-smi is missing or fails."""
    output = command_output("nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader")
    return None if output is None else [line.strip() for line in output.splitlines() if line.strip()]


def detect_environment(jittor_dir=None, environ=None, with_gpus=True):
    environ = os.environ if environ is None else environ
    jittor_dir = jittor_dir or find_jittor_dir()
    nvcc_path, nvcc_origin = resolve_nvcc(environ)
    env = Environment(jittor_dir=jittor_dir, nvcc_path=nvcc_path, nvcc_origin=nvcc_origin,
                      conv_opt=environ.get("conv_opt", "0") not in ("", "0"),
                      gpus=query_gpus() if with_gpus else None)
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
        chosen = "set by hand" if env.gpus else "as utils/jittor_env.py sets it when no GPU is listed"
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


if __name__ == "__main__":
    sys.exit(main())
