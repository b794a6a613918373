"""The ops a model's forward and backward execute, and those that would leave the GPU.

Jittor runs an op without a CUDA implementation on the CPU even inside a CUDA graph: it
synchronises the device, copies the op's inputs to the host, runs a single-threaded loop there and
copies the outputs back (`src/executor.cc`). In Jittor 1.3.11 these are (rows of
`jt.profile_scope`'s report, named by the part before the first "«"):
- `transpose`: a permute that moves the last axis, unless cutt is loaded (its CUDA `jit_run` is
  an empty stub); a permute that keeps the last axis is a `fuse_transpose`, which has a kernel;
- `arg_reduce`, `argsort`: CPU-only unless CUB is loaded, and then they transpose their input
  whenever the reduced axis is not the last one;
- `code`: a `jt.code` kernel; those of the models (`models/kernels/`) have CPU
  source only, and a CPU run cannot tell the others apart, so every one counts;
- `numpy_code`: a numpy callback.
(`random` has no CUDA kernel either, but with CUDA Jittor makes it a cuRAND op, and cuRAND loads
wherever Jittor imports with CUDA.)
On a GPU `jt.flags.use_cuda = 2` makes any of them an error (`gpu_jittor.run_under_use_cuda_2`). On the CPU,
DFORMER_CPU_KERNELS=0 (`models.kernels.SWITCH`) makes the models take the GPU's ops, so the
profile of a CPU run lists what a GPU would run on the host (`cpu_only_ops`); products and
convolutions run there as oneDNN ops, on the GPU as cuBLAS/cuDNN ops.
"""
import collections
import contextlib


CPU_ONLY_OPS = ("transpose", "arg_reduce", "argsort", "code", "numpy_code")


def op_name(row_name):
    """'transpose«Tx:float32«...' -> 'transpose'; a fused op ('«opkey0:...') -> 'fused'."""
    return row_name.split("«")[0] or "fused"


def fused_members(row_name):
    """The ops inside a fused op's key, with the operation of element-wise and reduce ops:
    '«opkey0:binary«Tx:float32«OP:add«opkey1:reduce«...«OP:add...' -> ['binary.add', 'reduce.add']."""
    members = []
    for part in row_name.split("«"):
        if part.startswith("opkey"):
            members.append(part.split(":", 1)[1])
        elif part.startswith("OP:") and members:
            members[-1] += "." + part[3:]
    return members


_SHOWN_FIELDS = ("XFORMAT", "YFORMAT", "Trans_a", "Trans_b", "OP")  # of a single op's key


def describe(row_name, width=90):
    """A short label of a profiled row: a fused op's members; a single op's name with its layouts,
    transpose flags or operation; a `jt.code` op's first source line."""
    parts = row_name.split("«")
    if not parts[0]:
        text = "fused(" + ", ".join(fused_members(row_name)) + ")"
    elif parts[0] == "code":
        source = next((p[5:] for p in parts if p.startswith("CODE:")), "")
        text = f"code({source.strip().splitlines()[0] if source.strip() else ''})"
    else:
        fields = [p for p in parts[1:] if p.split(":")[0] in _SHOWN_FIELDS]
        text = parts[0] + (f"({', '.join(fields)})" if fields else "")
    return text if len(text) <= width else text[:width - 3] + "..."


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


def top_ops(rows, n):
    """The `n` rows that took the most time: [{op, count, ms, share}], share of all rows' time."""
    total = sum(seconds for _, _, seconds in rows) or 1.0
    return [{"op": describe(name), "count": count, "ms": seconds * 1e3, "share": seconds / total}
            for name, count, seconds in rows[:n]]


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
    from models import kernels  # imports Jittor: not before the GPU check has set its defaults

    with kernels.gpu_ops():
        yield


def forward_graph_size(model, shape, repeats=3):
    """(ops, seconds): the Jittor ops one eval forward of `model` builds at `shape` (B, H, W),
    alive after the call and before anything runs, and the Python time it took to build them (CPU
    time of the building thread, which other jobs on the machine barely change); medians of
    `repeats` forwards, each graph dropped unrun. Inputs are made and run first."""
    import statistics
    import time

    import jittor as jt

    model.eval()
    rgb, depth = jt.rand((shape[0], 3, *shape[1:])), jt.rand((shape[0], 3, *shape[1:]))
    jt.sync([rgb, depth])
    counts, seconds = [], []
    for _ in range(repeats):
        jt.sync_all(True)
        before = jt.liveness_info()["lived_ops"]
        start = time.thread_time()
        with jt.no_grad():
            logits = model(rgb, depth)
        seconds.append(time.thread_time() - start)
        counts.append(jt.liveness_info()["lived_ops"] - before)
        del logits
    return statistics.median(counts), statistics.median(seconds)
