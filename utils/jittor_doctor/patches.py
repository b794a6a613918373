"""The known incompatibilities of Jittor 1.3.11.0 with CUDA 13 / cuDNN 9, and how they are patched.

Each fix is a list of exact text replacements that fails loudly when its anchor text is missing
(another Jittor version) and recognises itself once applied, so applying is idempotent. The first
change to a file saves the original next to it as `<file>.dformer-orig`, listed with its sha256 in
`.dformer-doctor.json` in the jittor folder; `revert_fixes` puts those originals back.
`utils/jittor_doctor/__init__.py` decides which fixes the installed CUDA/cuDNN need and is the command line.
"""
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Callable

BACKUP_SUFFIX = ".dformer-orig"
MANIFEST_NAME = ".dformer-doctor.json"


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
    applies: Callable  # (jittor_doctor.Environment) -> whether the fix is needed
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
