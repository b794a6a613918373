"""Inference latency and training throughput of a model, timed correctly under Jittor's lazy
execution (the library of `utils/latency.py`).

Why the care: Jittor only runs a graph when a result is needed, so in `for ...: _ = model(x)` the
overwritten outputs are never computed and the loop times only graph building. Here every
iteration syncs its output, `jt.sync_all(True)` brackets the timed loop, and `warm_up` runs until
an iteration compiles no new op. Then the timed loop runs `prepared()`: Jittor's parallel compiler
(`src/parallel_compiler.cc`) prepares every fused op of every run a second time, looking for ops
to compile, until 100,000 ops have run without a new compile (about 110 DFormer-Tiny forwards);
with nothing left to compile that is bookkeeping a long-running job no longer pays, so the timed
loop switches it off (`use_parallel_op_compiler = 0`) and restores it after. Inputs follow upstream `utils/latency.py`:
uniform random rgb (B, 3, H, W) and depth (B, 3, H, W) (depth is 3 channels, as the data loader
gives it), but unlike upstream the model is in eval mode (upstream never calls `model.eval()`).

Also: `timing_stats` (median / min / p90), `device_info`, `protocol_sizes` and
`projected_protocol_time` (what evaluation prints as its cost estimate).
"""
import contextlib
import math
import os
import platform
import resource
import statistics
import time

from local_configs._base_ import DATASETS
from models.jittor_env import nvidia_smi_gpus
from utils.errors import UserError

# The official NYUDepthv2 evaluation: its test images at every scale, each plus its horizontal flip.
NYU_TEST_IMAGES = DATASETS["NYUDepthv2"]["num_eval_imgs"]
PROTOCOL_SCALES = tuple(DATASETS["NYUDepthv2"]["eval_scale_array"])


# ----------------------------------------------------------------------------- environment report

def cpu_model():
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info():
    """Device and library versions a latency number is meaningless without."""
    import jittor as jt

    from models import kernels

    info = {"jittor": jt.__version__, "python": platform.python_version(), "cpu": cpu_model(),
            "cpu_threads": os.cpu_count(), "mode": "GPU" if jt.flags.use_cuda else "CPU"}
    if jt.flags.use_cuda:
        info["gpu"] = (nvidia_smi_gpus() or [None])[0]
        info["device"] = info["gpu"]
        info["cuda"] = _version_or_none(lambda: ".".join(
            map(str, jt.compiler.jit_utils.get_int_version(jt.compiler.nvcc_path))))
        info["cudnn"] = _version_or_none(lambda: str(jt.cudnn.cudnn.cudnnGetVersion()))
    else:
        info["device"] = f"{info['cpu']} ({info['cpu_threads']} threads)"
        info["onednn"] = kernels.onednn_available()
    return info


def provenance():
    """date (UTC), machine (the CPU's model name) and commit of a measurement."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": cpu_model(), "commit": sha.stdout.strip() or "unknown"}


def _version_or_none(read):
    """A version string, or None where this Jittor build does not expose it."""
    try:
        return read()
    except Exception:  # noqa: BLE001  (best-effort report: any failure just means "unknown")
        return None


# ----------------------------------------------------------------------------- warm-up

MAX_EXTRA_WARMUP = 20  # runs past the requested warm-up while ops still compile (shapes that keep changing)
COMPILE_LOG = "jit_compiler.cc=10"  # Jittor logs "Compile op <key>" there for every op new to the process


def ops_compiled(step):
    """Run `step()` and return how many ops Jittor compiled (or loaded from its cache) for it:
    the "Compile op" lines of Jittor's own log, captured silently. The parallel compiler is off
    inside (`jt.log_capture_scope` switches it off), so every new op compiles where it runs.
    In the process that compiled Jittor's core (its first use on a machine) the capture records
    nothing: there the count is 0 and `warm_up` runs only the requested number of times."""
    import jittor as jt

    with jt.log_capture_scope(log_v=0, log_vprefix=COMPILE_LOG, log_silent=1) as logs:
        step()
    return sum(entry["msg"].startswith("Compile op") for entry in logs)


def warm_up(step, iters):
    """Run `step()` at least `iters` times (at least twice) and until one run compiles no new op;
    at most MAX_EXTRA_WARMUP runs more. The first run compiles with Jittor's parallel compiler,
    the others count what they compile. Returns the counts of those runs (the last is 0 when the
    warm-up ended compiled)."""
    step()
    counts = []
    while len(counts) < max(iters, 2) - 1 + MAX_EXTRA_WARMUP:
        counts.append(ops_compiled(step))
        if counts[-1] == 0 and len(counts) + 1 >= iters:
            break
    return counts


@contextlib.contextmanager
def prepared():
    """Inside: Jittor's parallel compiler off, so no run prepares its ops twice (timed loops, after
    `warm_up`); the flag is restored on the way out."""
    import jittor as jt

    with jt.flag_scope(use_parallel_op_compiler=0):
        yield


# ----------------------------------------------------------------------------- inference latency

def random_inputs(batch_size, height, width, seed=0, dtype="float32"):
    """Upstream latency inputs: uniform rgb and 3-channel depth, both (B, 3, H, W), already computed."""
    import jittor as jt

    jt.set_global_seed(seed)
    rgb = jt.rand((batch_size, 3, height, width)).cast(dtype)
    depth = jt.rand((batch_size, 3, height, width)).cast(dtype)
    jt.sync([rgb, depth])
    return rgb, depth


def measure_latency(model, batch_size=1, height=480, width=640, warmup=10, iters=30,
                    precision="fp32", progress=False):
    """Per-iteration forward times (seconds) of `model` in eval mode, plus the loop's wall time.

    Each iteration syncs its output and (on a GPU) the device, so a time covers one whole forward;
    `loop_s` is the wall time of all timed iterations between two `jt.sync_all(True)`.
    """
    import jittor as jt

    from models import precision as mixed

    model.eval()
    if precision != "fp32" and not jt.flags.use_cuda:
        raise UserError(f"--precision {precision} is for GPUs: on the CPU, Jittor's oneDNN convolution and "
                        "GEMM paths are fp32-only, so float16 would time slow fallback loops")
    if precision == "fp16":
        mixed.to_float16(model)  # float16 weights, norms and rotary tables float32
    dtype = "float16" if precision == "fp16" else "float32"
    rgb, depth = random_inputs(batch_size, height, width, dtype=dtype)
    device_sync = bool(jt.flags.use_cuda)
    with jt.no_grad(), mixed.autocast(precision == "amp"):
        compiled = warm_up(lambda: model(rgb, depth).sync(device_sync), warmup)  # kernels, allocator
        times = []
        steps = range(iters)
        if progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc=f"batch {batch_size}", unit="it", leave=False)
        with prepared():
            jt.sync_all(True)
            loop_start = time.perf_counter()
            for _ in steps:
                start = time.perf_counter()
                model(rgb, depth).sync(device_sync)
                times.append(time.perf_counter() - start)
            jt.sync_all(True)
            loop_s = time.perf_counter() - loop_start
    return {"times_s": times, "loop_s": loop_s, "warmup_compiled": compiled}


def measure_side_by_side(model, session, batch_size=1, height=480, width=640, warmup=10, iters=30,
                         progress=False):
    """Per-iteration forward times (seconds) of the Jittor `model` and of an ONNX Runtime `session`
    of it, on the same inputs, alternating: {"jittor": [...], "onnxruntime": [...]}."""
    import jittor as jt

    model.eval()
    rgb, depth = random_inputs(batch_size, height, width)
    feeds = {"rgb": rgb.numpy(), "depth": depth.numpy()}
    device_sync = bool(jt.flags.use_cuda)
    runners = {"jittor": lambda: model(rgb, depth).sync(device_sync),
               "onnxruntime": lambda: session.run(["logits"], feeds)}
    times = {name: [] for name in runners}
    with jt.no_grad():
        warm_up(runners["jittor"], warmup)
        for _ in range(warmup):
            runners["onnxruntime"]()
        steps = range(iters)
        if progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc=f"batch {batch_size}, Jittor and ONNX Runtime", unit="it", leave=False)
        with prepared():
            for _ in steps:
                for name, run in runners.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
    return times


def timing_stats(times_s, batch_size):
    """median / min / p90 in ms and images/s at the median."""
    ordered = sorted(times_s)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    median = statistics.median(ordered)
    return {"median_ms": 1e3 * median, "min_ms": 1e3 * ordered[0], "p90_ms": 1e3 * p90,
            "images_per_s": batch_size / median, "iters": len(ordered)}


# ----------------------------------------------------------------------------- training throughput

def peak_memory():
    """Peak memory so far: {"what": ..., "bytes": ...}; the method is named because they differ."""
    import jittor as jt

    if jt.flags.use_cuda:
        # Jittor's caching allocator keeps freed blocks, so used + cached after the steps is the
        # high-water mark of reserved device memory (like torch.cuda.max_memory_reserved).
        return {"what": "Jittor GPU allocator reserved (used + cached)",
                "bytes": int(jt.get_mem_info().total_cuda_used)}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"what": "peak RSS of the process (resource.getrusage ru_maxrss)", "bytes": int(rss_kib) * 1024}


def measure_training(model, num_classes, batch_size=8, height=480, width=640, warmup=2, iters=5,
                     lr=6e-5, progress=False, optimizer=None):
    """Images/s of forward + cross-entropy + backward + AdamW step on one fixed batch, and peak memory.

    `optimizer`: the one to step (e.g. `utils.engine.optim.build_optimizer`, the official parameter
    groups); by default AdamW over all parameters.

    The step is synced (`jt.sync_all(True)`) each iteration: Jittor would otherwise defer the
    parameter updates. Run it in a fresh process for a per-model peak memory figure.
    """
    import jittor as jt

    from local_configs._base_ import IGNORE_LABEL
    from utils.engine.loss import cross_entropy

    model.train()
    optimizer = optimizer or jt.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rgb, depth = random_inputs(batch_size, height, width)
    label = jt.randint(0, num_classes, (batch_size, height, width))

    def step():
        loss = cross_entropy(model(rgb, depth), label, IGNORE_LABEL)  # the training loss of utils/train.py
        optimizer.step(loss)
        jt.sync_all(True)

    warm_up(step, warmup)
    times = []
    steps = range(iters)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=f"train batch {batch_size}", unit="step", leave=False)
    with prepared():
        for _ in steps:
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    result = timing_stats(times, batch_size)
    result["peak_memory"] = peak_memory()
    return result


# ----------------------------------------------------------------------------- evaluation cost

def protocol_sizes(height=480, width=640, scales=PROTOCOL_SCALES):
    """Input sizes of upstream `evaluate_msf` at each scale (`evaluate.scaled_size`)."""
    from utils.engine.evaluate import scaled_size

    return [scaled_size(height, width, s) for s in scales]


def projected_protocol_time(images_per_second, height=480, width=640, num_images=NYU_TEST_IMAGES,
                            scales=PROTOCOL_SCALES, flip=True):
    """Projected wall time of the official multi-scale + flip evaluation from one measured throughput.

    `images_per_second` is measured at height x width (480x640 for NYUDepthv2). Each test image
    costs one forward per scale, twice with flip (10 forwards for NYU), at the sizes of
    `protocol_sizes` (256x320, 384x480, 480x640, 608x800, 736x960). The projection assumes the
    cost of a forward is proportional to its pixel count: true for convolutions, linears, the
    decomposed (axial) attention to first order and NMF, optimistic for the small full-attention
    last stage of DFormerv2, whose cost grows with pixels squared. Resizing and softmax
    accumulation are not included. For NYU the 10 forwards cost 2 x 5.75 = 11.5 forwards at
    480x640, so the full protocol is 654 x 11.5 = 7521 forward-equivalents.
    """
    sizes = protocol_sizes(height, width, scales)
    passes = 2 if flip else 1
    equivalents = passes * sum(h * w for h, w in sizes) / (height * width)
    seconds = num_images * equivalents / images_per_second
    return {"images_per_s": images_per_second, "num_images": num_images, "sizes": sizes,
            "forwards_per_image": passes * len(sizes), "forward_equivalents_per_image": equivalents,
            "projected_s": seconds}


def format_protocol_time(projection):
    """One line for logs: throughput and projected protocol time."""
    sizes = ", ".join(f"{h}x{w}" for h, w in projection["sizes"])
    seconds = projection["projected_s"]
    return (f"{projection['images_per_s']:.2f} images/s -> official MS+flip protocol "
            f"({projection['num_images']} images x {projection['forwards_per_image']} forwards at {sizes}) "
            f"projected {seconds / 60:.1f} min ({seconds / 3600:.2f} h), cost taken as proportional to pixels")
