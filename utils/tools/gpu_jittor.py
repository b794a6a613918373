"""The Jittor side of the GPU check (`utils/tools/gpu_check.py`): environment, stand-in models, measurements.

Everything that imports Jittor does so inside the function: the doctor check must run first, and
the CPU reference process (`cpu_reference_main`) must start Jittor in CPU mode with its own cache.
"""
import contextlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import traceback

from models import registry
from utils.entry import load_config
from utils.files import atomic_open
from utils.tools.stand_in_weights import synthetic_inputs, synthetic_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Official model name -> config module under local_configs/NYUDepthv2.
CHECK_MODELS = {spec.name: spec.config for spec in registry.MODELS.values()}
CHECK_SEED, TRAIN_SEED = 7, 11
TRAIN_STEPS = 3
ARGMAX_AGREEMENT = 0.99
CUTT_PROBE_S = 300  # at most, for the subprocess that tries `import jittor` with cutt
OFFICIAL_TOLERANCE = 1e-3  # Jittor vs the official PyTorch model, same device, fp32 without TF32
START = time.time()


def log(message):
    """Progress line with the elapsed time, flushed: a killed run still shows how far it got."""
    print(f"[{time.time() - START:6.1f}s] {message}", flush=True)


@contextlib.contextmanager
def step(messages, what):
    """Run one step; an exception is appended to `messages` (errors or notes) and printed, not raised."""
    try:
        yield
    except Exception as error:  # noqa: BLE001  (the other steps and models still run)
        messages.append(f"{what}: {type(error).__name__}: {error}")
        log(f"  {what} FAILED: {traceback.format_exc().strip()}")


def config_module(name):
    return f"local_configs.NYUDepthv2.{CHECK_MODELS[name]}"


def config_of(name):
    return load_config(config_module(name))


def training_labels(batch, height, width, num_classes, seed):
    """Random class labels with ~10 % ignored (255) pixels, so the ignore index is exercised."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, (batch, height, width)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.1] = 255
    return labels


def build_with_weights(name):
    """The model of `name` with the synthetic stand-in weights (the parity tests prove that its
    keys and shapes are the official ones); (model, config)."""
    import jittor as jt
    from models import build_model

    C = config_of(name)
    model = build_model(C)  # sets use_cuda first: the depthwise-conv kernel is chosen at construction
    targets = model.state_dict()
    weights = synthetic_state_dict([(key, tuple(var.shape)) for key, var in targets.items()])
    for key, var in targets.items():
        var.update(jt.array(weights[key]))
    return model, C


def eval_logits(model, shape, seed):
    """Eval-mode logits (a synced Var) of the synthetic inputs of `shape`, NMF bases pinned."""
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


def training_losses(model, C, shape, steps=TRAIN_STEPS, amp=False):
    """Losses of `steps` AdamW steps (upstream parameter groups) on one fixed batch; `amp`: as
    `train.py --amp` (autocast and a loss scaler)."""
    import jittor as jt
    from utils.engine.amp import LossScaler
    from utils.engine.optim import build_optimizer
    from utils.engine.trainer import train_step

    batch, height, width = shape
    rgb, depth, raw_bases = synthetic_inputs(batch, height, width, TRAIN_SEED)
    data = {"data": jt.array(rgb), "modal_x": jt.array(depth),
            "label": jt.array(training_labels(batch, height, width, C.num_classes, TRAIN_SEED))}
    model.train()
    model.decode_head.hamburger.ham.fixed_raw_bases = raw_bases
    optimizer = build_optimizer(model, C)
    scaler = LossScaler() if amp else None
    losses = []
    try:
        for _ in range(steps):
            # Same DropPath/dropout draws every step: the loss then moves only through the updates.
            jt.set_global_seed(TRAIN_SEED)
            losses.append(float(train_step(model, optimizer, [data], C, scaler)))  # one micro-batch per step
        jt.sync_all(True)
    finally:
        model.decode_head.hamburger.ham.fixed_raw_bases = None
        model.eval()
    return losses


def model_steps(model, C, shape):
    """What a GPU runs of a model: an eval forward and a training step at `shape`."""
    eval_logits(model, shape, CHECK_SEED)
    training_losses(model, C, shape, steps=1)


def run_under_use_cuda_2(model, C, shape):
    """On a GPU: `model_steps` with `jt.flags.use_cuda = 2`, where Jittor stops with an error
    ("Op transpose doesn't have cuda version") at the first op that would run on the CPU.
    None when every op ran on the GPU, else the error's first line."""
    import jittor as jt

    try:
        with jt.flag_scope(use_cuda=2):
            model_steps(model, C, shape)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        cause = [line for line in lines if "cuda version" in line or "allocated in cuda" in line]
        return (cause or lines or ["RuntimeError"])[0][:300]
    return None


def conv_ops_used():
    """Names of the ops a small convolution runs as ("cudnn_conv..." when cuDNN does the work)."""
    import jittor as jt
    from jittor import nn

    from utils.tools.gpu_graph import op_name, profile

    with jt.flag_scope(use_cuda=int(jt.has_cuda)):
        conv = nn.Conv2d(8, 16, 3, padding=1)
        x = jt.rand(1, 8, 16, 16)
        with jt.no_grad():
            rows = profile(lambda: conv(x).sync())
    return sorted({op_name(name) for name, _, _ in rows if "conv" in op_name(name)})


def jittor_environment(settings):
    """Versions and the switches that decide Jittor's speed, after `import jittor`."""
    import jittor as jt

    from models import kernels
    from utils.speed.timing import device_info

    info = device_info()
    extern = jt.compile_extern
    info.update(use_cuda=int(jt.flags.use_cuda), has_cuda=bool(jt.has_cuda),
                use_tensorcore=int(jt.flags.use_tensorcore), cudnn_loaded=extern.cudnn is not None,
                cutt=getattr(extern, "cutt_ops", None) is not None, onednn=kernels.onednn_available(),
                conv_ops=conv_ops_used(), tf32=settings.tf32,
                nvidia_tf32_override=os.environ.get("NVIDIA_TF32_OVERRIDE"))
    return info


def median_ms(model, batch, settings, precision):
    from utils.speed.timing import measure_latency, timing_stats

    height, width = settings.latency_size
    run = measure_latency(model, batch, height, width, settings.warmup, settings.iters, precision)
    return timing_stats(run["times_s"], batch)["median_ms"]


def official_train_size(name):
    """(batch, height, width) of the official training recipe of `name` (its NYUDepthv2 config)."""
    C = config_of(name)
    return C.batch_size, C.image_height, C.image_width


def train_speed_jittor(runs, settings, report, folder):
    """Training images/s and peak GPU memory at the official batch and crop, one fresh process per model."""
    for run in runs:
        entry = report.model(run.name)
        if settings.time_left() <= 0:
            entry["notes"].append("training speed: skipped, time budget used up")
            continue
        batch, height, width = official_train_size(run.name)
        path = os.path.join(folder, f"train_{CHECK_MODELS[run.name]}.json")
        command = [sys.executable, os.path.join(ROOT, "utils", "latency.py"), "--config",
                   config_module(run.name), "--batch-sizes", "1", "--warmup", "1",
                   "--iters", "1", "--height", str(height), "--width", str(width), "--train",
                   "--train-batch-size", str(batch), "--train-iters", "3", "--no-progress", "--json", path]
        with step(entry["notes"], "training speed"):
            process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                limit = settings.time_left()
                output, _ = process.communicate(timeout=None if math.isinf(limit) else max(limit, 30) + 60)
            except subprocess.TimeoutExpired:
                process.terminate()  # SIGTERM: Jittor quits on a child killed by any other signal
                output, _ = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"exit {process.returncode}: " + " | ".join(output.strip().splitlines()[-3:]))
            with open(path) as file:
                train = json.load(file)["train"]
            entry["train_speed"] = {"batch": batch, "height": height, "width": width,
                                    "jittor_images_per_s": train["images_per_s"],
                                    "jittor_peak_gib": train["peak_memory"]["bytes"] / 2**30}
            log(f"{run.name} Jittor training {batch}x{height}x{width}: {train['images_per_s']:.2f} images/s, "
                f"peak {entry['train_speed']['jittor_peak_gib']:.1f} GiB")
        report.save()


def reference_paths(folder, name):
    return os.path.join(folder, f"{CHECK_MODELS[name]}.npz"), os.path.join(folder, f"{CHECK_MODELS[name]}.error")


def cpu_reference_main(spec_path):
    """Subprocess body: CPU logits of every model, one .npz (or .error) per model, as they finish."""
    import numpy as np

    with open(spec_path) as file:
        spec = json.load(file)
    import jittor as jt

    print(f"CPU reference: Jittor {jt.__version__}, use_cuda={jt.flags.use_cuda}", flush=True)
    for name in spec["models"]:
        npz, error = reference_paths(spec["folder"], name)
        start = time.time()
        try:
            model, _ = build_with_weights(name)
            logits = eval_logits(model, tuple(spec["check_shape"]), CHECK_SEED).numpy()
            with atomic_open(npz) as file:  # whole files only: the parent polls for them
                np.savez(file, logits=logits)
            print(f"CPU reference {name}: {time.time() - start:.1f}s", flush=True)
        except Exception:  # noqa: BLE001  (reported to the parent, which records it per model)
            with open(error, "w") as file:
                file.write(traceback.format_exc())
        jt.gc()
    return 0


class CpuReference:
    """The CPU reference subprocess and the logits it has delivered so far."""

    def __init__(self, names, settings, folder):
        self.folder = folder
        spec_path = os.path.join(folder, "cpu_reference.json")
        with open(spec_path, "w") as file:
            json.dump({"models": names, "check_shape": settings.check_shape, "folder": folder}, file)
        env = dict(os.environ, nvcc_path="", use_cuda="0")  # Jittor in CPU mode from the start
        if not settings.smoke:
            # Its own cache next to a GPU process: Jittor keeps one jittor_core build per cache
            # folder, and a CPU build there breaks every later GPU process.
            env["cache_name"] = os.environ.get("cache_name", "default") + "-cpu"
        self.log_path = os.path.join(folder, "cpu_reference.log")
        with open(self.log_path, "w") as out:
            command = [sys.executable, "-m", "utils.tools.gpu_check", "--cpu-reference", spec_path]
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def result(self, name):
        """(logits, None), (None, error text), or (None, None) while still pending."""
        import numpy as np

        ended = self.process.poll() is not None  # before looking: its last files are then on disk
        npz, error = reference_paths(self.folder, name)
        if os.path.exists(npz):
            return np.load(npz)["logits"], None
        if os.path.exists(error):
            with open(error) as file:
                return None, file.read().strip().splitlines()[-1]
        if ended:
            return None, f"CPU reference process ended (exit {self.process.returncode}): {self.log_tail()}"
        return None, None

    def wait(self, timeout):
        """Wait for the process to end, at most `timeout` seconds; then stop it."""
        try:
            self.process.wait(timeout=None if math.isinf(timeout) else max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            self.process.terminate()  # SIGTERM: Jittor quits on a child killed by any other signal
            self.process.wait()

    def log_tail(self, lines=5):
        with open(self.log_path) as file:
            return " | ".join(file.read().strip().splitlines()[-lines:])


def environment_or_refuse(settings, report):
    """Doctor summary, recorded and printed; the reason to stop, or None."""
    from utils import jittor_doctor as doctor

    env = doctor.detect_environment()
    problem = doctor.check_environment(env)
    summary = {"jittor": env.jittor_version, "nvcc": env.nvcc_path, "gpus": env.gpus, "cpu_mode": env.cpu_mode,
               "cuda": doctor.format_version(env.cuda_version), "cudnn": doctor.format_version(env.cudnn_version),
               "problem": problem}
    report.data["environment"]["doctor"] = summary
    mode = "CPU mode" if env.cpu_mode else f"GPU mode, nvcc {env.nvcc_path}"
    log(f"doctor: Jittor {env.jittor_version}, {mode}, "
        f"CUDA {summary['cuda']}, cuDNN {summary['cudnn']}, GPUs: {', '.join(env.gpus or []) or 'none'}")
    if problem:
        print("\n".join(doctor.report_lines(env)), flush=True)
        return problem if doctor.FIX_COMMAND in problem else f"{problem} Fix that before running the GPU check."
    if not settings.smoke and (env.cpu_mode or not env.gpus):
        return ("no GPU for Jittor here (" + doctor.cpu_mode_reason(env) + "); "
                "use --cpu-smoke to check the pipeline on the CPU")
    return None


def apply_gpu_defaults(settings):
    """Environment defaults for a GPU machine without network, set before Jittor is imported; never overriding.
    Returns what became of cutt (a sentence for the report).

    Without network Jittor would try to download oneDNN (used only by CPU ops) unless
    `jittor-offline` carries it, and build MPI/NCCL support a one-GPU check does not need. cutt is
    optional (the models never need it, see models/layout.py): used when it loads, else off. TF32
    stays off unless asked for, in Jittor and PyTorch alike (cuDNN's default math mode would use it
    for fp32 convolutions).
    """
    if importlib.util.find_spec("jittor_offline") is None:
        os.environ.setdefault("use_mkl", "0")
    for name, value in (("use_nccl", "0"), ("mpicc_path", "")):
        os.environ.setdefault(name, value)
    if not settings.tf32:
        os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
    if "use_cutt" in os.environ:
        return f"use_cutt={os.environ['use_cutt']} set by the user"
    loaded, reason = cutt_loads(min(CUTT_PROBE_S, max(settings.time_left(), 60)))
    if not loaded:
        os.environ["use_cutt"] = "0"
    return reason


def cutt_loads(timeout):
    """(whether `import jittor` loads cutt, a sentence), probed in a subprocess: Jittor downloads
    and builds cutt at import unless use_cutt=0, and a download or build that fails makes the import
    itself fail. The probe's core build stays in the cache for the real import."""
    code = "from models.jittor_env import apply_defaults; apply_defaults(); import jittor; print('cutt loaded:', getattr(jittor.compile_extern, 'cutt_ops', None) is not None)"
    env = dict(os.environ, use_cutt="1")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"cutt not loaded: `import jittor` with cutt took over {timeout:.0f} s; running with use_cutt=0"
    if done.returncode == 0:
        if "cutt loaded: True" in done.stdout:
            return True, "cutt loaded"
        return False, "cutt not loaded: Jittor imports without it here (no CUDA, or cutt switched off)"
    last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
    return False, f"cutt not loaded ({last[0][:200]}); running with use_cutt=0"


def import_jittor(settings, report):
    start = time.time()
    import jittor as jt

    if settings.tf32:
        jt.flags.use_tensorcore = 1
    jt.flags.use_cuda = int(jt.has_cuda)  # as build_model does; the report below reads it
    report.data["environment"]["jittor_import_s"] = round(time.time() - start, 1)
    info = jittor_environment(settings)
    report.data["environment"]["jittor"] = info
    log(f"Jittor {info['jittor']} imported in {time.time() - start:.1f}s (first import on a machine compiles its "
        f"core); {info['mode']} {info['device']}, CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')} "
        f"(loaded: {info['cudnn_loaded']}), convolutions run as {info['conv_ops'] or 'fused Jittor ops'}, "
        f"cutt {info['cutt']}, oneDNN {info['onednn']}, use_tensorcore {info['use_tensorcore']}")
    if not settings.smoke:
        cudnn_ok = info["cudnn_loaded"] and any(op.startswith("cudnn") for op in info["conv_ops"])
        report.data["checks"]["cudnn_convolutions"] = cudnn_ok
        if not cudnn_ok:
            log("  cuDNN does NOT run the convolutions: latency is not comparable with PyTorch")
    return jt


# ------------------------------------------------------------------------ what is most likely to fail

def risky_ops_fp32():
    """{check: max |diff|} of the library calls a GPU run reaches first and the CPU never tests on
    cuDNN/cuBLAS: an NHWC depthwise convolution by cuDNN (values and both gradients) against the
    stock NCHW convolution, and products with transposed operands (cuBLAS flags) against numpy."""
    import jittor as jt
    import numpy as np
    from jittor import nn

    from models import layout
    from models.layers import ChannelsLastConv2d

    rng = np.random.default_rng(CHECK_SEED)
    results = {}
    conv = ChannelsLastConv2d(16, 16, 7, padding=3, groups=16)
    x = jt.array(rng.standard_normal((2, 12, 10, 16)).astype(np.float32))  # (B, H, W, C)
    weights = jt.array(rng.standard_normal((2, 12, 10, 16)).astype(np.float32))
    runs = []
    for fn in (conv, lambda v: layout.permute(nn.Conv2d.execute(conv, layout.permute(v, 0, 3, 1, 2)), 0, 2, 3, 1)):
        y = fn(x)
        runs.append([y.numpy()] + [g.numpy() for g in jt.grad((y * weights).sum(), [x, conv.weight])])
    results["NHWC depthwise convolution (cuDNN), values and gradients"] = max(
        float(np.abs(a - b).max()) for a, b in zip(*runs))
    a = rng.standard_normal((3, 5, 7)).astype(np.float32)
    b = rng.standard_normal((3, 7, 4)).astype(np.float32)
    diffs = []
    for trans_a in (False, True):
        for trans_b in (False, True):
            left = a.transpose(0, 2, 1) if trans_a else a
            right = b.transpose(0, 2, 1) if trans_b else b
            ours = layout.matmul(jt.array(left), jt.array(right), trans_a, trans_b).numpy()
            diffs.append(float(np.abs(ours - a @ b).max()))
    results["batched products with transposed operands (cuBLAS)"] = max(diffs)
    ours = layout.matmul_2d(jt.array(a[0]), jt.array(b[0].T.copy()), trans_b=True).numpy()
    results["2-D products with a transposed operand (cuBLAS)"] = float(np.abs(ours - a[0] @ b[0]).max())
    return results


def half_precision_main(spec_path):
    """Subprocess body: float16 work in a process of its own, because cuDNN's algorithm caches do
    not tell float16 from float32. For each model: AMP training steps, and with `latency` the fp16
    latency; results written to spec["result"] after every model."""
    with open(spec_path) as file:
        spec = json.load(file)
    import jittor as jt

    from utils.speed.timing import measure_latency, timing_stats

    results = {}
    for name in spec["models"]:
        entry = results[name] = {"errors": [], "fp16_ms": {}}
        if time.time() > spec["deadline"]:
            entry["errors"].append("skipped, time budget used up")
            continue
        try:
            model, C = build_with_weights(name)
            entry["amp_losses"] = training_losses(model, C, tuple(spec["train_shape"]), amp=True)
            print(f"{name} AMP losses {', '.join(f'{v:.5f}' for v in entry['amp_losses'])}", flush=True)
            for batch in spec["batches"] if spec["latency"] else ():
                run = measure_latency(model, batch, *spec["latency_size"], spec["warmup"], spec["iters"], "fp16")
                entry["fp16_ms"][str(batch)] = timing_stats(run["times_s"], batch)["median_ms"]
                print(f"{name} Jittor fp16 batch {batch}: median {entry['fp16_ms'][str(batch)]:.2f} ms", flush=True)
        except Exception as error:  # noqa: BLE001  (recorded per model; the next model still runs)
            entry["errors"].append(f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}")
        jt.gc()
        with atomic_open(spec["result"]) as file:
            json.dump(results, file)
    return 0


def run_half_precision(names, settings, folder, latency, tag):
    """`half_precision_main` in a subprocess for `names`; its results ({} if none came back) and
    the last lines of its output."""
    spec_path = os.path.join(folder, f"half_{tag}.json")
    result_path = os.path.join(folder, f"half_{tag}_result.json")
    with open(spec_path, "w") as file:
        json.dump({"models": names, "train_shape": settings.train_shape, "latency": latency,
                   "batches": settings.batches, "latency_size": settings.latency_size, "warmup": settings.warmup,
                   "iters": settings.iters, "deadline": settings.deadline(), "result": result_path}, file)
    command = [sys.executable, "-m", "utils.tools.gpu_check", "--half-precision", spec_path]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    limit = settings.time_left()
    try:
        output, _ = process.communicate(timeout=None if math.isinf(limit) else max(limit, 30) + 60)
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: Jittor quits on a child killed by any other signal
        output, _ = process.communicate()
    results = {}
    if os.path.exists(result_path):
        with open(result_path) as file:
            results = json.load(file)
    return results, " | ".join(output.strip().splitlines()[-3:])
