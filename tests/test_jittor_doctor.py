"""Tests of the Jittor doctor (utils/jittor_doctor/: the checks and the patches) on a scratch copy of the installed Jittor sources.

The patches target CUDA 13 / cuDNN 9, which this CPU-only CI cannot run. What is checked here:
every fix applies to the pinned Jittor 1.3.11.0 text, is idempotent and reverts byte for byte;
the report and check_environment() work without importing Jittor. Where CUDA or cuDNN headers are
on the machine, the patched C++ sources are also compiled (syntax only) against them.
"""
import ast
import hashlib
import os
import py_compile
import re
import shutil
import subprocess
import sys

import pytest

from utils import jittor_doctor as doctor
from utils.jittor_doctor import patches
from models.jittor_env import gpu_present

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALLED_JITTOR = doctor.find_jittor_dir()
CUDA_HOME = "/usr/local/cuda"
CUDA_INCLUDE = os.path.join(CUDA_HOME, "include")
pytestmark = pytest.mark.skipif(INSTALLED_JITTOR is None, reason="jittor is not installed")

# Text each fix must leave in the sources, and the removed CUDA/cuDNN API it must take away.
EXPECTED_NEW = {
    "extern/cuda/inc/helper_cuda.h": ["_jtDeviceAttribute(cudaDevAttrClockRate, current_device)"],
    "compiler.py": ['-std=c++17 -fPIC "', "if os.name != 'nt' and nvcc_version >= [11,0]:"],
    "other/code_softmax.py": ["struct SoftmaxMaxOp {{", "Reduce(v1, SoftmaxMaxOp())"],
    "depthwise_conv.py": ['asm("mov.u32 %0, %%laneid;" : "=r"(lane_id));'],
    "extern/cuda/cub/ops/cub_where_op.cc": ["thrust::counting_iterator<To> counting_itr(0);"],
    "compile_extern.py": ['f"/usr/include/{arch_key}-linux-gnu"]', '"libcudnn_graph.so", "libcudnn_ops.so"'],
    "extern/cuda/cudnn/inc/cudnn_rnn_descriptor.h": ["#if CUDNN_MAJOR < 9", "#else\n// cuDNN 9 removed"],
    "extern/cuda/cudnn/src/cudnn_rnn_descriptor.cc": ["#if CUDNN_MAJOR >= 9"],
}
REMOVED_API = {
    "extern/cuda/inc/helper_cuda.h": ["deviceProp.computeMode", "deviceProp.clockRate"],
    "other/code_softmax.py": ["cub::Max()"],
    "depthwise_conv.py": ["cub::LaneId()"],
    "extern/cuda/cub/ops/cub_where_op.cc": ["cub::CountingInputIterator", "cub::TransformInputIterator"],
}


def tree_hashes(root):
    """sha256 of every file under root, by relative path."""
    hashes = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


@pytest.fixture
def jittor_copy(tmp_path):
    """A private copy of the installed jittor package (bytecode caches left out)."""
    target = tmp_path / "jittor"
    shutil.copytree(INSTALLED_JITTOR, target, ignore=shutil.ignore_patterns("__pycache__"))
    return str(target)


def run_doctor(*args):
    return subprocess.run([sys.executable, "-m", "utils.jittor_doctor", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def fake_gpu_env(jittor_dir, tmp_path, cuda, cudnn):
    """An Environment as detect_environment() would build it on a GPU machine with these versions."""
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    runtime = tmp_path / "cuda" / "lib64" / "libcudart.so"
    for path in (nvcc, runtime):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return doctor.Environment(jittor_dir=jittor_dir, jittor_version="1.3.11.0", nvcc_path=str(nvcc),
                              nvcc_origin="env var nvcc_path", cuda_version=cuda, cudnn_version=cudnn)


def test_every_fix_applies_to_the_pinned_sources(jittor_copy):
    assert doctor.read_jittor_version(jittor_copy) == "1.3.11.0"
    assert {patches.fix_state(fix, jittor_copy) for fix in patches.FIXES} == {patches.NOT_APPLIED}
    changed = patches.apply_fixes(patches.FIXES, jittor_copy)
    assert sorted(changed) == sorted(EXPECTED_NEW)
    assert {patches.fix_state(fix, jittor_copy) for fix in patches.FIXES} == {patches.APPLIED}
    for rel, snippets in EXPECTED_NEW.items():
        text = patches.read_text(os.path.join(jittor_copy, rel))
        assert all(snippet in text for snippet in snippets), rel
        assert not any(api in text for api in REMOVED_API.get(rel, [])), rel


def test_fix_is_idempotent_and_revert_is_byte_exact(jittor_copy):
    original = tree_hashes(jittor_copy)
    first = run_doctor("--fix", "--all", "--jittor-dir", jittor_copy)
    assert first.returncode == 0, first.stderr
    assert "patched" in first.stdout and doctor.CLEAN_CACHE_COMMAND in first.stdout
    after_first = tree_hashes(jittor_copy)
    assert after_first != original

    second = run_doctor("--fix", "--all", "--jittor-dir", jittor_copy)
    assert second.returncode == 0, second.stderr
    assert "Nothing changed" in second.stdout and "patched" not in second.stdout
    assert tree_hashes(jittor_copy) == after_first

    reverted = run_doctor("--revert", "--jittor-dir", jittor_copy)
    assert reverted.returncode == 0, reverted.stderr
    assert tree_hashes(jittor_copy) == original  # also proves backups and manifest are gone


def test_unknown_source_fails_before_writing_anything(jittor_copy):
    softmax = os.path.join(jittor_copy, "other", "code_softmax.py")
    with open(softmax, "a") as f:
        f.write("\n# Reduce(v1, cub::Max()) seen twice: the anchor is no longer unique\n")
    before = tree_hashes(jittor_copy)
    with pytest.raises(patches.PatchError, match="cuda13-softmax-max"):
        patches.apply_fixes(patches.FIXES, jittor_copy)
    assert tree_hashes(jittor_copy) == before


def rendered_cuda_headers(path):
    """The cuda_header= strings of a Jittor Python file as nvcc gets them.

    Replacement fields render empty: the only one used, cub_home, is "" on CUDA >= 11.
    """
    def render(node):
        if isinstance(node, ast.BinOp):
            return render(node.left) + render(node.right)
        parts = node.values if isinstance(node, ast.JoinedStr) else [node]
        return "".join(part.value for part in parts if isinstance(part, ast.Constant))
    tree = ast.parse(patches.read_text(path))
    return [render(keyword.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
            for keyword in node.keywords if keyword.arg == "cuda_header"]


def test_patched_python_still_compiles_and_renders(jittor_copy, tmp_path):
    patches.apply_fixes(patches.FIXES, jittor_copy)
    for rel in ("compiler.py", "compile_extern.py", "other/code_softmax.py", "depthwise_conv.py"):
        py_compile.compile(os.path.join(jittor_copy, rel), cfile=str(tmp_path / "out.pyc"), doraise=True)
    # The softmax functor sits inside an f-string: its braces must come out single in the CUDA code.
    header = rendered_cuda_headers(os.path.join(jittor_copy, "other", "code_softmax.py"))[0]
    assert "struct SoftmaxMaxOp {\n" in header and "const { return b > a ? b : a; }" in header


def test_report_runs_in_cpu_mode_without_importing_jittor():
    result = run_doctor()
    assert result.returncode == 0, result.stderr
    assert "Jittor doctor report" in result.stdout and "1.3.11.0" in result.stdout
    for fix in patches.FIXES:
        assert fix.name in result.stdout
    if not gpu_present():
        assert "CPU mode: " in result.stdout and "nvidia-smi" in result.stdout
    probe = ("import sys; from utils import jittor_doctor as d; d.main([]); d.check_environment(); "
             "print('JITTOR IMPORTED' if {'jittor', 'jittor_utils'} & set(sys.modules) else 'NO JITTOR')")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip().endswith("NO JITTOR"), result.stdout + result.stderr


@pytest.mark.skipif(gpu_present(), reason="this machine has a GPU")
def test_check_environment_accepts_cpu_mode():
    assert doctor.check_environment() is None


def test_check_environment_asks_for_the_fix_on_cuda13_cudnn9(jittor_copy, tmp_path):
    env = fake_gpu_env(jittor_copy, tmp_path, cuda=(13, 0), cudnn=(9, 14, 0))
    message = doctor.check_environment(env)
    assert message and doctor.FIX_COMMAND in message and "--fix" in message
    assert "cuda13-cxx17" in message and "cudnn9-legacy-rnn" in message
    patches.apply_fixes([fix for fix in patches.FIXES if fix.applies(env)], jittor_copy)
    assert doctor.check_environment(env) is None


def test_only_the_fixes_the_versions_need_apply(jittor_copy, tmp_path):
    cuda12_cudnn8 = fake_gpu_env(jittor_copy, tmp_path, cuda=(12, 4), cudnn=(8, 9, 7))
    assert doctor.check_environment(cuda12_cudnn8) is None
    cuda12_cudnn9 = fake_gpu_env(jittor_copy, tmp_path, cuda=(12, 8), cudnn=(9, 8, 0))
    assert {fix.name for fix in patches.FIXES if fix.applies(cuda12_cudnn9)} == \
        {"cudnn9-header-search", "cudnn9-library-names", "cudnn9-legacy-rnn"}
    assert not any(fix.applies(doctor.Environment(cuda_version=(13, 0), cudnn_version=(9, 1, 0)))
                   for fix in patches.FIXES), "CPU mode (no nvcc) needs no fix"


def syntax_errors(source, jittor_dir, *includes, defines=()):
    """g++ -fsyntax-only on a Jittor C++ source, as Jittor's CUDA build would see it."""
    flags = ["-std=c++17", "-fsyntax-only", "-DHAS_CUDA", "-DIS_CUDA", *defines]
    dirs = ["src", "extern/cuda/inc", "extern/cuda/cudnn/inc", "extern/cuda/cudnn/ops"]
    command = ["g++", *flags, *[f"-I{os.path.join(jittor_dir, d)}" for d in dirs],
               *[f"-I{d}" for d in includes], source]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return [line for line in result.stderr.splitlines() if "error" in line]


def header_define(path, name):
    """The integer value of `#define name N` in a header, or None."""
    match = os.path.isfile(path) and re.search(rf"#define {name}\s+(\d+)", patches.read_text(path))
    return int(match.group(1)) if match else None


def cuda13_headers_present():
    cudart = header_define(os.path.join(CUDA_HOME, "include", "cuda_runtime_api.h"), "CUDART_VERSION")
    return bool(shutil.which("g++")) and (cudart or 0) >= 13000


def cudnn9_include_dir():
    """A folder with cuDNN 9 headers: $CUDNN_INCLUDE_DIR, else the places Jittor searches."""
    folders = [os.environ.get("CUDNN_INCLUDE_DIR", "")] + doctor.cudnn_search_dirs(CUDA_HOME)[0]
    for folder in filter(None, folders):
        if header_define(os.path.join(folder, "cudnn_version.h"), "CUDNN_MAJOR") == 9:
            return folder
    return None


@pytest.mark.skipif(not cuda13_headers_present(), reason="needs g++ and CUDA 13 headers in /usr/local/cuda")
def test_patched_helper_cuda_compiles_with_cuda13(jittor_copy, tmp_path):
    probe = tmp_path / "probe.cc"
    probe.write_text('#include <cuda_runtime.h>\n#include "helper_cuda.h"\n')
    assert any("computeMode" in e for e in syntax_errors(str(probe), jittor_copy, CUDA_INCLUDE))
    patches.apply_fixes(patches.FIXES, jittor_copy)
    assert syntax_errors(str(probe), jittor_copy, CUDA_INCLUDE) == []


@pytest.mark.skipif(not (cuda13_headers_present() and cudnn9_include_dir()),
                    reason="needs CUDA 13 headers and cuDNN 9 headers (or CUDNN_INCLUDE_DIR)")
def test_patched_cudnn_module_compiles_with_cudnn9(jittor_copy, tmp_path):
    sources = [os.path.join(jittor_copy, "extern/cuda/cudnn", rel) for rel in
               ("src/cudnn_rnn_descriptor.cc", "ops/cudnn_rnn_op.cc", "ops/cudnn_conv_op.cc")]
    includes = (CUDA_INCLUDE, cudnn9_include_dir())
    assert any("cudnnSetRNNDescriptor_v6" in e for e in syntax_errors(sources[0], jittor_copy, *includes))
    patches.apply_fixes(patches.FIXES, jittor_copy)
    for source in sources:
        assert syntax_errors(source, jittor_copy, *includes) == [], source
    # The conv ops' JIT half, compiled when a convolution first runs, as Jittor instantiates it.
    jit_defines = ["-DJIT", "-DJIT_cuda", "-DTx=float32", "-DTy=float32", "-DTw=float32"]
    for op in ("cudnn_conv_op.cc", "cudnn_conv_backward_x_op.cc", "cudnn_conv_backward_w_op.cc"):
        text = patches.read_text(os.path.join(jittor_copy, "extern/cuda/cudnn/ops", op))
        jit_source = tmp_path / op
        jit_source.write_text(text.replace("@XFORMAT", "abcd").replace("@YFORMAT", "abcd")
                              .replace("@WFORMAT", "oihw"))
        assert syntax_errors(str(jit_source), jittor_copy, *includes, defines=jit_defines) == [], op


KERNEL_PROBE = """
#include <cuda_runtime.h>
#include "helper_cuda.h"
#include "softmax.cuh"
#include "depthwise.cuh"
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

__global__ void softmax_max(float* x, float* y) {
    typedef cub::BlockReduce<float, 128> BlockReduce;
    __shared__ typename BlockReduce::TempStorage temp_storage;
    float v = BlockReduce(temp_storage).Reduce(x[threadIdx.x], SoftmaxMaxOp());
    if (threadIdx.x == 0) y[0] = v;
}
__global__ void warp_add(float* sum, float* x) { CudaAtomicAddWithWarp<float>(sum, x[threadIdx.x]); }

struct NonZero { __host__ __device__ bool operator()(const float& a) const { return a != 0; } };
void where_select(float* cond, int* out, int* count, int n) {  // as in the patched cub_where_op.cc
    size_t bytes = 0;
    thrust::counting_iterator<int> counting_itr(0);
    thrust::transform_iterator<NonZero, float*, bool> itr(cond, NonZero());
    cub::DeviceSelect::Flagged(nullptr, bytes, counting_itr, itr, out, count, n);
}
void arg_reduce_and_sort(float* x, cub::KeyValuePair<int, float>* out, int* offsets, int* idx, int n) {
    size_t bytes = 0;  // the CUB calls of Jittor's argmax/argmin and argsort ops, unchanged
    cub::DeviceSegmentedReduce::ArgMax(nullptr, bytes, x, out, 1, offsets, offsets + 1);
    cub::DeviceSegmentedReduce::ArgMin(nullptr, bytes, x, out, 1, offsets, offsets + 1);
    cub::DeviceSegmentedRadixSort::SortPairs(nullptr, bytes, x, x, idx, idx, n, 1, offsets, offsets + 1);
}
"""


@pytest.mark.skipif(os.environ.get("JITTOR_DOCTOR_NVCC") != "1" or not cuda13_headers_present(),
                    reason="slow (about 20 s): set JITTOR_DOCTOR_NVCC=1 on a machine with CUDA 13's nvcc")
def test_patched_kernels_compile_with_nvcc13(jittor_copy, tmp_path):
    """Device-compiles the patched CUDA snippets (sm_90) the way Jittor's JIT would, minus the GPU."""
    patches.apply_fixes(patches.FIXES, jittor_copy)
    (tmp_path / "softmax.cuh").write_text(
        rendered_cuda_headers(os.path.join(jittor_copy, "other", "code_softmax.py"))[0])
    depthwise_headers = rendered_cuda_headers(os.path.join(jittor_copy, "depthwise_conv.py"))
    (tmp_path / "depthwise.cuh").write_text(next(h for h in depthwise_headers if "WarpReduce" in h))
    (tmp_path / "probe.cu").write_text(KERNEL_PROBE)
    command = [os.path.join(CUDA_HOME, "bin", "nvcc"), "-std=c++17", "-arch=sm_90", "-c", "-w",
               "-DHAS_CUDA", "-DIS_CUDA", f"-I{tmp_path}", f"-I{jittor_copy}/src",
               f"-I{jittor_copy}/extern/cuda/inc", "-o", str(tmp_path / "probe.o"),
               str(tmp_path / "probe.cu")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
