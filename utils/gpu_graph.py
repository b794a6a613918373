"""The ops a model's forward and backward execute, and those that would leave the GPU.

Jittor runs an op without a CUDA implementation on the CPU even inside a CUDA graph: it
synchronises the device, copies the op's inputs to the host, runs a single-threaded loop there and
copies the outputs back (`src/executor.cc`). In Jittor 1.3.11 these are (rows of
`jt.profile_scope`'s report, named by the part before the first "«"):
- `transpose`: a permute that moves the last axis, unless cutt is loaded (its CUDA `jit_run` is
  an empty stub); a permute that keeps the last axis is a `fuse_transpose`, which has a kernel;
- `arg_reduce`, `argsort`: CPU-only unless CUB is loaded, and then they transpose their input
  whenever the reduced axis is not the last one;
- `code`: a `jt.code` kernel with CPU source only (the models' CPU kernels);
- `numpy_code`: a numpy callback.
On a GPU `jt.flags.use_cuda = 2` makes any of them an error (`run_under_use_cuda_2`). On the CPU,
DFORMER_CPU_KERNELS=0 (`models.cpu_kernels.SWITCH`) makes the models take the GPU's ops, so the
profile of a CPU run lists what a GPU would run on the host (`cpu_only_ops`); products and
convolutions run there as oneDNN ops, on the GPU as cuBLAS/cuDNN ops.
"""
import collections
import contextlib

import numpy as np

from models import cpu_kernels
from utils.synthetic_weights import synthetic_inputs

CPU_ONLY_OPS = ("transpose", "arg_reduce", "argsort", "code", "numpy_code")
STEP_SEED = 5


def op_name(row_name):
    """'transpose«Tx:float32«...' -> 'transpose'; a fused op ('«opkey0:...') -> 'fused'."""
    return row_name.split("«")[0] or "fused"


def fused_members(row_name):
    """The op names inside a fused op's key: '«opkey0:binary.add«...«opkey1:reduce.add...' ->
    ['binary.add', 'reduce.add']."""
    return [part.split(":", 1)[1] for part in row_name.split("«") if part.startswith("opkey")]


def profile(fn):
    """Run `fn()` (which must sync its results) under Jittor's profiler: a list of
    (row name, count, total seconds), slowest first."""
    import jittor as jt

    with jt.flag_scope(log_silent=1), jt.profile_scope(0, 0) as report:  # log_silent: no printout
        fn()
    header, rows = report[0], report[1:]
    name, count, total = header.index("Name"), header.index("Count"), header.index("TotalTime")
    rows = [(row[name], int(row[count]), float(row[total]) * 1e-9) for row in rows]  # TotalTime in ns
    return sorted(rows, key=lambda row: -row[2])


def cpu_only_ops(rows):
    """{op name: executions} of the profiled rows that have no CUDA implementation."""
    counts = collections.Counter()
    for name, count, _ in rows:
        if op_name(name) in CPU_ONLY_OPS:
            counts[op_name(name)] += count
    return dict(counts)


def op_kinds(rows):
    """{op name: executions} of all profiled rows (fused ops under 'fused')."""
    counts = collections.Counter()
    for name, count, _ in rows:
        counts[op_name(name)] += count
    return dict(counts)


@contextlib.contextmanager
def gpu_op_graph():
    """On the CPU, the models take the GPU's ops (DFORMER_CPU_KERNELS=0) inside this block."""
    import os

    saved = os.environ.get(cpu_kernels.SWITCH)
    os.environ[cpu_kernels.SWITCH] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[cpu_kernels.SWITCH]
        else:
            os.environ[cpu_kernels.SWITCH] = saved


def eval_forward(model, shape, seed=STEP_SEED):
    """Eval-mode logits (synced) of the synthetic inputs of `shape` = (batch, height, width)."""
    import jittor as jt

    rgb, depth, raw_bases = synthetic_inputs(*shape, seed)
    model.eval()
    model.decode_head.hamburger.ham.fixed_raw_bases = raw_bases
    try:
        with jt.no_grad():
            logits = model(jt.array(rgb), jt.array(depth))
            logits.sync()
    finally:
        model.decode_head.hamburger.ham.fixed_raw_bases = None
    return logits


def training_step(model, C, shape, seed=STEP_SEED):
    """One step of `utils.train.train_step` (forward, the training loss, backward, AdamW over the
    official parameter groups) on synthetic inputs and labels of `shape`; the loss."""
    import jittor as jt
    from utils.optim import build_optimizer
    from utils.train import train_step

    batch, height, width = shape
    rgb, depth, _ = synthetic_inputs(batch, height, width, seed)
    labels = np.random.default_rng(seed).integers(0, C.num_classes, (batch, height, width)).astype(np.int32)
    labels[:, :2] = C.background  # some unlabelled pixels
    data = {"data": jt.array(rgb), "modal_x": jt.array(depth), "label": jt.array(labels)}
    model.train()
    try:
        loss = train_step(model, build_optimizer(model, C), [data], C)
        jt.sync_all(True)
    finally:
        model.eval()
    return loss


def model_steps(model, C, shape):
    """What a GPU runs of a model: an eval forward and a training step at `shape`."""
    eval_forward(model, shape)
    training_step(model, C, shape)


def run_under_use_cuda_2(model, C, shape):
    """On a GPU: `model_steps` with `jt.flags.use_cuda = 2`, where Jittor stops with an error
    ("Op transpose doesn't have cuda version") at the first op that would run on the CPU.
    None when every op ran on the GPU, else the error's first line."""
    import jittor as jt

    try:
        with jt.flag_scope(use_cuda=2):
            model_steps(model, C, shape)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if "cuda version" in line or "cuda" in line]
        return (lines or str(error).strip().splitlines() or ["RuntimeError"])[0]
    return None
