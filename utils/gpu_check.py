"""One-shot check of the seven NYUDepthv2 models on a real NVIDIA GPU: correctness, training, speed.

The lent GPU machines (H100/H200, CUDA 13, cuDNN 9, PyTorch preinstalled, no network) come with a
few minutes of device time and one prepared script run, so everything is in one command:

    python -m utils.jittor_doctor --fix && python -m utils.gpu_check --official-dir .official --out $OUT

For each model, with the synthetic stand-in weights of tests/synthetic_weights.py:
  1. eval logits at 1x3x64x96 (NMF bases pinned) against a CPU run of the same weights, made in a
     subprocess started with `nvcc_path=""` (Jittor cannot switch devices reliably inside one
     process): max |diff| <= 1e-3;
  2. three forward/backward/AdamW steps (utils.train.train_step, utils.optim.build_optimizer) on one
     batch with the same dropout draws each step: the loss must drop;
  3. `jt.argmax(logits, 1)[0]` on the GPU matches the CPU argmax on >= 99 % of the pixels;
  4. latency at 480x640, batch 1 and 8, fp32 (then fp16, informational, if time is left): eval,
     no_grad, 10 synced warm-up iterations, median of 30 synced ones (utils.latency.measure_latency);
  5. with --official-dir (a VCIP-RGBD/DFormer checkout) and an importable torch: the official
     PyTorch model in a subprocess, same weights, timed the same way in the same run, and its
     logits compared with Jittor's GPU logits (<= 1e-3).
First it prints the environment and refuses (exit 2) when `utils.jittor_doctor` reports problems
not yet fixed, and it checks that convolutions run through cuDNN (the `cudnn_conv` op).

Results go to --out (default output/gpu_check/): gpu_check.json and gpu_check.md, rewritten after
every step, so a run killed half-way still leaves its numbers. Exit code 0 only when every check
passed. On a fresh machine Jittor compiles its core at import and every kernel on first use: the
first minutes and the "first fwd" column are mostly compilation, not model time. fp32 runs without
TF32 on both sides (NVIDIA_TF32_OVERRIDE=0, cudnn.benchmark on for PyTorch) unless --tf32.
--budget-s (default 480 s on a GPU) stops starting steps early enough to write the report inside
the device tool's 10-minute command limit.

    python -m utils.gpu_check --cpu-smoke --models DFormer-Tiny,DFormerv2-S --out /tmp/smoke

runs the same pipeline on the CPU at 32x48 with 1-2 timing iterations, so CI checks the logic
without a GPU; the "GPU" side is then the CPU too, and the diff must be ~0.

Preparing a run on the lent machine (its python3 is 3.12 with PyTorch and numpy 2; Jittor needs
numpy<2, the official model needs mmcv-lite and mmengine). Here, in the repository root:

    printf '/.whl/\n/.official/\n' >> .git/info/exclude; mkdir -p .whl/jt .whl/pt .official
    cp -r ../official/{models,mmseg,utils} .official/      # a VCIP-RGBD/DFormer checkout
    P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
    pip download $P -d .whl/jt numpy==1.26.4 astunparse==1.6.3 easydict==1.14
    pip wheel --no-deps -w .whl/jt jittor==1.3.11.0                   # pure Python
    pip download $P -d .whl/pt mmcv-lite==2.1.0 mmengine==0.10.7 addict==2.4.0 yapf==0.43.0 \
        termcolor==3.3.0 platformdirs==4.14.8

and there (device tool, carry [".whl", ".official"], about 30 MB), two package folders so that the
PyTorch worker keeps the image's numpy 2:

    I="python3 -m pip install -q --no-index --no-deps --no-compile --target"; set -o pipefail;
    $I /tmp/jt .whl/jt/*.whl && $I /tmp/pt .whl/pt/*.whl && export PYTHONPATH=/tmp/jt PYTHONUNBUFFERED=1 &&
    { python3 -m utils.jittor_doctor --fix && python3 -m utils.gpu_check --official-dir .official \
      --torch-pythonpath /tmp/pt --out $OUT; } 2>&1 | tee $OUT/gpu_check.log

Without network Jittor cannot fetch oneDNN or cutt, so on a GPU this sets use_mkl=0 (unless the
jittor-offline package is installed), use_cutt=0, use_nccl=0 and mpicc_path="" unless already set.
"""
import argparse
import contextlib
import functools
import gzip
import importlib
import importlib.util
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if __package__ in (None, ""):
    # Run as a file, which only the PyTorch worker does: utils/ must leave the path so that the
    # official repository's own `models` and `utils` packages are the ones imported.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

# Official model name -> config module under local_configs/NYUDepthv2.
MODELS = {
    "DFormer-Tiny": "DFormer_Tiny", "DFormer-Small": "DFormer_Small", "DFormer-Base": "DFormer_Base",
    "DFormer-Large": "DFormer_Large", "DFormerv2-Small": "DFormerv2_S", "DFormerv2-Base": "DFormerv2_B",
    "DFormerv2-Large": "DFormerv2_L",
}
SYNTHETIC_WEIGHTS = os.path.join(ROOT, "tests", "synthetic_weights.py")
OFFICIAL_KEYS = os.path.join(ROOT, "tests", "fixtures", "official_keys.json.gz")
CHECK_SEED, TRAIN_SEED = 7, 11
TRAIN_STEPS = 3
ARGMAX_AGREEMENT = 0.99
OFFICIAL_TOLERANCE = 1e-3  # Jittor vs the official PyTorch model, same device, fp32 without TF32
JSON_NAME, MARKDOWN_NAME = "gpu_check.json", "gpu_check.md"
START = time.time()


def log(message):
    """Progress line with the elapsed time, flushed: a killed run still shows how far it got."""
    print(f"[{time.time() - START:6.1f}s] {message}", flush=True)


@dataclass
class Settings:
    smoke: bool
    check_shape: tuple  # (batch, height, width) of the logits compared with the CPU
    train_shape: tuple
    latency_size: tuple
    batches: tuple
    warmup: int
    iters: int
    fp16: bool
    tf32: bool
    diff_tolerance: float
    budget_s: float  # 0: no limit

    @classmethod
    def from_args(cls, args):
        if args.cpu_smoke:
            return cls(True, (1, 32, 48), (2, 32, 48), (32, 48), (1, 2), args.warmup or 1, args.iters or 2,
                       False, False, 1e-5, args.budget_s or 0)
        return cls(False, (1, 64, 96), (2, 64, 96), (480, 640), (1, 8), args.warmup or 10, args.iters or 30,
                   not args.no_fp16, args.tf32, 1e-3, 480 if args.budget_s is None else args.budget_s)

    def time_left(self):
        return math.inf if not self.budget_s else self.budget_s - (time.time() - START)

    def deadline(self):
        """Wall-clock time (time.time()) after which no step starts; a day away without a budget."""
        return START + self.budget_s if self.budget_s else time.time() + 86400


@functools.lru_cache(maxsize=None)
def load_synthetic():
    """tests/synthetic_weights.py, by path: the same formula the parity fixtures were made with."""
    spec = importlib.util.spec_from_file_location("synthetic_weights", SYNTHETIC_WEIGHTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_models(text):
    """Official names for "all" or a comma list of official names or config names (DFormerv2-S too)."""
    if text == "all":
        return list(MODELS)
    aliases = {}
    for name, module in MODELS.items():
        for alias in (name, module, module.replace("_", "-")):
            aliases[alias.lower()] = name
    names = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item.lower() not in aliases:
            raise ValueError(f"unknown model {item!r}; choose from {', '.join(MODELS)} (or 'all')")
        names.append(aliases[item.lower()])
    return list(dict.fromkeys(names))


def config_of(name):
    return importlib.import_module(f"local_configs.NYUDepthv2.{MODELS[name]}").C


def training_labels(batch, height, width, num_classes, seed):
    """Random class labels with ~10 % ignored (255) pixels, so the ignore index is exercised."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, (batch, height, width)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.1] = 255
    return labels


# ------------------------------------------------------------------------------------ Jittor side

def build_with_weights(name):
    """The model of `name` with the synthetic stand-in weights, loaded strictly; (model, config)."""
    import jittor as jt
    from models import build_model
    from utils.checkpoint import compare_keys

    C = config_of(name)
    model = build_model(C)  # sets use_cuda first: the depthwise-conv kernel is chosen at construction
    with gzip.open(OFFICIAL_KEYS, "rt") as file:
        entries = json.load(file)[name]["entries"]
    weights = load_synthetic().synthetic_state_dict(entries)
    targets = model.state_dict()
    missing, unexpected, mismatched = compare_keys({k: tuple(v.shape) for k, v in targets.items()}, weights, False)
    if missing or unexpected or mismatched:
        raise RuntimeError(f"{name}: state_dict differs from the official keys: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}, mismatched {mismatched[:5]}")
    for key, var in targets.items():
        var.update(jt.array(weights[key]))
    return model, C


def eval_logits(model, shape, seed):
    """Eval-mode logits (a synced Var) of the synthetic inputs of `shape`, NMF bases pinned."""
    import jittor as jt

    rgb, depth, raw_bases = load_synthetic().synthetic_inputs(*shape, seed)
    model.eval()
    model.decode_head.hamburger.ham.fixed_raw_bases = raw_bases
    with jt.no_grad():
        logits = model(jt.array(rgb), jt.array(depth))
        logits.sync()
    model.decode_head.hamburger.ham.fixed_raw_bases = None
    return logits


def training_losses(model, C, shape):
    """Losses of TRAIN_STEPS AdamW steps (upstream parameter groups) on one fixed batch."""
    import jittor as jt
    from utils.optim import build_optimizer
    from utils.train import train_step

    batch, height, width = shape
    rgb, depth, raw_bases = load_synthetic().synthetic_inputs(batch, height, width, TRAIN_SEED)
    data = {"data": jt.array(rgb), "modal_x": jt.array(depth),
            "label": jt.array(training_labels(batch, height, width, C.num_classes, TRAIN_SEED))}
    model.train()
    model.decode_head.hamburger.ham.fixed_raw_bases = raw_bases
    optimizer = build_optimizer(model, C)
    losses = []
    for _ in range(TRAIN_STEPS):
        # Same DropPath/dropout draws every step: the loss then moves only through the updates.
        jt.set_global_seed(TRAIN_SEED)
        losses.append(train_step(model, optimizer, [data], C))
    jt.sync_all(True)
    model.decode_head.hamburger.ham.fixed_raw_bases = None
    model.eval()
    return losses


def conv_ops_used():
    """Names of the ops a small convolution runs as ("cudnn_conv..." when cuDNN does the work)."""
    import jittor as jt
    from jittor import nn

    with jt.flag_scope(use_cuda=int(jt.has_cuda), log_silent=1):  # log_silent: no profiler printout
        conv = nn.Conv2d(8, 16, 3, padding=1)
        x = jt.rand(1, 8, 16, 16)
        with jt.no_grad(), jt.profile_scope(0, 1) as report:
            conv(x).sync()
    return sorted({row[0].split("«")[0] for row in report[1:] if "conv" in row[0].split("«")[0]})


def jittor_environment(settings):
    """Versions and the switches that decide Jittor's speed, after `import jittor`."""
    import jittor as jt
    from utils.latency import device_info

    info = device_info()
    extern = jt.compile_extern
    info.update(use_cuda=int(jt.flags.use_cuda), has_cuda=bool(jt.has_cuda),
                use_tensorcore=int(jt.flags.use_tensorcore), cudnn_loaded=extern.cudnn is not None,
                cutt=getattr(extern, "cutt_ops", None) is not None, onednn=extern.mkl_ops is not None,
                conv_ops=conv_ops_used(), tf32=settings.tf32,
                nvidia_tf32_override=os.environ.get("NVIDIA_TF32_OVERRIDE"))
    return info


def median_ms(model, batch, settings, precision):
    from utils.latency import measure_latency, summarize

    height, width = settings.latency_size
    run = measure_latency(model, batch, height, width, settings.warmup, settings.iters, precision)
    return summarize(run["times_s"], batch)["median_ms"]


# -------------------------------------------------------------------- CPU reference (subprocess)

def reference_paths(folder, name):
    return os.path.join(folder, f"{MODELS[name]}.npz"), os.path.join(folder, f"{MODELS[name]}.error")


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
            np.savez(npz + ".tmp.npz", logits=logits)
            os.replace(npz + ".tmp.npz", npz)  # whole files only: the parent polls for them
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
        self.log_path = os.path.join(folder, "cpu_reference.log")
        with open(self.log_path, "w") as out:
            command = [sys.executable, "-m", "utils.gpu_check", "--cpu-reference", spec_path]
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
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines=5):
        with open(self.log_path) as file:
            return " | ".join(file.read().strip().splitlines()[-lines:])


# ------------------------------------------------------------------ official PyTorch (subprocess)

class AttrDict(dict):
    """The attribute access the official builder expects of its EasyDict config."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class OfficialRunner:
    """The official models in this (PyTorch worker) process: build, logits, latency."""

    def __init__(self, spec):
        import torch
        import torch.nn.functional as F
        import models.decoders.ham_head as ham

        self.torch, self.spec = torch, spec
        self.device = torch.device(spec["device"])
        torch.backends.cudnn.benchmark = True  # Jittor also searches and caches cuDNN algorithms per shape
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = spec["tf32"]
        self.raw_bases, self.dtype = None, torch.float32

        def build_bases(module, B, S, D, R, cuda=False):
            # Pinned bases for the logits check; otherwise drawn on the device, as Jittor does
            # (upstream draws on the CPU and copies, a cost that has nothing to do with the model).
            raw = self.raw_bases if self.raw_bases is not None else torch.rand((B * S, D, R), device=self.device)
            return F.normalize(raw.to(self.dtype), dim=1)

        ham.NMF2D._build_bases = build_bases

    def environment(self):
        torch = self.torch
        return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "device": torch.cuda.get_device_name(0) if self.device.type == "cuda" else "cpu",
                "cudnn_benchmark": True, "tf32": self.spec["tf32"]}

    def build(self, spec_model):
        from models.builder import EncoderDecoder

        torch = self.torch
        with contextlib.redirect_stdout(io.StringIO()):  # the official constructors print their settings
            model = EncoderDecoder(AttrDict(spec_model["cfg"]), criterion=torch.nn.CrossEntropyLoss(),
                                   norm_layer=torch.nn.BatchNorm2d, syncbn=False)
        entries = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        weights = {k: torch.from_numpy(v) for k, v in load_synthetic().synthetic_state_dict(entries).items()}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise RuntimeError(f"official state_dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.dtype = torch.float32
        return model.to(self.device).eval()

    def logits(self, model, name):
        """Eval logits of the synthetic check inputs with the pinned bases, saved as .npy; the path."""
        import numpy as np

        torch = self.torch
        rgb, depth, raw = load_synthetic().synthetic_inputs(*self.spec["check_shape"], CHECK_SEED)
        self.raw_bases = torch.from_numpy(raw).to(self.device)
        with torch.no_grad():
            logits = model(torch.from_numpy(rgb).to(self.device), torch.from_numpy(depth).to(self.device))
        self.raw_bases = None
        path = os.path.join(self.spec["folder"], f"official_{MODELS[name]}.npy")
        np.save(path, logits.float().cpu().numpy())
        return path

    def latency(self, model, name, precision):
        """[{precision, batch, median_ms}] with Jittor's recipe: eval, no_grad, every iteration synced."""
        self.dtype = self.torch.float16 if precision == "fp16" else self.torch.float32
        model.to(self.dtype)
        rows = []
        for batch in self.spec["batches"]:
            if time.time() > self.spec["deadline"]:
                raise TimeoutError("time budget used up")
            rows.append({"precision": precision, "batch": batch, "median_ms": self.median_ms(model, batch)})
            print(f"[pytorch] {name} {precision} batch {batch}: {rows[-1]['median_ms']:.2f} ms", flush=True)
        return rows

    def median_ms(self, model, batch):
        torch, spec = self.torch, self.spec
        height, width = spec["latency_size"]
        rgb = torch.rand(batch, 3, height, width, device=self.device, dtype=self.dtype)
        depth = torch.rand(batch, 3, height, width, device=self.device, dtype=self.dtype)

        def sync():
            if self.device.type == "cuda":
                torch.cuda.synchronize()

        times = []
        with torch.no_grad():
            for _ in range(spec["warmup"]):
                model(rgb, depth)
                sync()
            for _ in range(spec["iters"]):
                start = time.perf_counter()
                model(rgb, depth)
                sync()
                times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)


def torch_worker_main(spec_path):
    """Subprocess body (run as a file, official repo first on the path): official logits and latency."""
    with open(spec_path) as file:
        spec = json.load(file)
    sys.path.insert(0, spec["official_dir"])
    runner = OfficialRunner(spec)
    result = dict(runner.environment(), models={})
    for spec_model in spec["models"]:
        name = spec_model["name"]
        entry = result["models"][name] = {"latency": [], "errors": [], "notes": []}
        model = None
        try:
            if time.time() > spec["deadline"]:
                raise TimeoutError("skipped, time budget used up")
            model = runner.build(spec_model)
            entry["logits"] = runner.logits(model, name)
            entry["latency"] += runner.latency(model, name, "fp32")
        except Exception as error:  # noqa: BLE001  (recorded; the next model still runs)
            entry["errors"].append(f"{type(error).__name__}: {error}")
            detail = str(error) if isinstance(error, TimeoutError) else traceback.format_exc()
            print(f"[pytorch] {name}: {detail}", flush=True)
        if model is not None and "fp16" in spec["precisions"] and not entry["errors"]:
            try:
                entry["latency"] += runner.latency(model, name, "fp16")
            except Exception as error:  # noqa: BLE001  (fp16 is informational)
                entry["notes"].append(f"fp16: {type(error).__name__}: {error}")
        del model
        if runner.device.type == "cuda":
            runner.torch.cuda.empty_cache()
        write_atomically(spec["result"], json.dumps(result, indent=1))
    return 0


def torch_environment(args):
    """The worker's interpreter and path, and whether it imports torch (version) or why not."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.torch_pythonpath is not None:
        env["PYTHONPATH"] = args.torch_pythonpath  # e.g. without the numpy<2 that Jittor needs
    probe = subprocess.run([args.torch_python, "-c", "import torch; print(torch.__version__)"],
                           env=env, capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        return env, None, (probe.stderr.strip().splitlines() or ["no output"])[-1]
    return env, probe.stdout.strip(), None


def run_official(args, names, settings, folder, deadline):
    """Run the PyTorch worker over `names`; its result dict, or raise with the reason it failed."""
    env, version, problem = torch_environment(args)
    if version is None:
        raise RuntimeError(f"torch is not importable by {args.torch_python}: {problem}")
    log(f"official PyTorch model: torch {version}, {args.official_dir}")
    spec = {"official_dir": args.official_dir, "device": "cpu" if settings.smoke else "cuda",
            "tf32": settings.tf32,
            "models": [{"name": name, "cfg": official_cfg(config_of(name))} for name in names],
            "check_shape": settings.check_shape, "latency_size": settings.latency_size,
            "batches": settings.batches, "warmup": settings.warmup, "iters": settings.iters,
            "precisions": ["fp32", "fp16"] if settings.fp16 else ["fp32"], "deadline": deadline,
            "folder": folder, "result": os.path.join(folder, "official.json")}
    spec_path = os.path.join(folder, "official_spec.json")
    with open(spec_path, "w") as file:
        json.dump(spec, file)
    process = subprocess.Popen([args.torch_python, os.path.abspath(__file__), "--torch-worker", spec_path],
                               cwd=folder, env=env)
    try:
        process.wait(timeout=max(deadline - time.time(), 0) + 30)  # it checks the deadline itself
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if not os.path.exists(spec["result"]):
        raise RuntimeError(f"the PyTorch worker wrote no result (exit {process.returncode})")
    with open(spec["result"]) as file:
        return json.load(file)


def official_cfg(C):
    """The config fields the official EncoderDecoder reads, from our config of the same model."""
    return {"backbone": C.backbone, "decoder": C.decoder, "decoder_embed_dim": C.decoder_embed_dim,
            "num_classes": C.num_classes, "drop_path_rate": C.drop_path_rate, "bn_eps": C.bn_eps,
            "bn_momentum": C.bn_momentum, "aux_rate": C.aux_rate, "pretrained_model": None}


# ---------------------------------------------------------------------------------------- report

class Report:
    """Everything measured so far; written to JSON and Markdown after every step."""

    def __init__(self, out_dir, settings, names):
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.data = {"script": "python -m utils.gpu_check", "mode": "cpu-smoke" if settings.smoke else "gpu",
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": asdict(settings),
                     "environment": {}, "checks": {}, "official": None, "official_status": "not requested",
                     "passed": False,
                     "models": {name: {"config": f"local_configs.NYUDepthv2.{MODELS[name]}", "errors": [],
                                       "notes": [], "checks": {}, "latency": []} for name in names}}
        self.settings = settings

    def model(self, name):
        return self.data["models"][name]

    def set_latency(self, name, precision, batch, **median_ms):
        """Record jittor_ms and/or pytorch_ms of one (precision, batch) and their ratio once both exist."""
        rows = self.model(name)["latency"]
        row = next((r for r in rows if (r["precision"], r["batch"]) == (precision, batch)), None)
        if row is None:
            row = {"precision": precision, "batch": batch, "jittor_ms": None, "pytorch_ms": None, "ratio": None}
            rows.append(row)
        row.update(median_ms)
        if row["jittor_ms"] is not None and row["pytorch_ms"] is not None:
            row["ratio"] = row["jittor_ms"] / row["pytorch_ms"]

    def failures(self):
        """One line per failed check, error, or model not (yet) checked."""
        failed = [f"{k} check failed" for k, ok in self.data["checks"].items() if not ok]
        for name, entry in self.data["models"].items():
            failed += [f"{name}: {k} check failed" for k, ok in entry["checks"].items() if not ok]
            failed += [f"{name}: {error}" for error in entry["errors"]]
            if not entry["checks"] and not entry["errors"]:
                failed.append(f"{name}: not checked")
        return failed

    def save(self):
        self.data["elapsed_s"] = round(time.time() - START, 1)
        self.data["failures"] = self.failures()
        self.data["passed"] = not self.data["failures"]
        write_atomically(os.path.join(self.out_dir, JSON_NAME), json.dumps(self.data, indent=1, default=str))
        write_atomically(os.path.join(self.out_dir, MARKDOWN_NAME), self.markdown())

    def markdown(self):
        lines = self.header_lines()
        for precision in ("fp32", "fp16"):
            table = self.latency_table(precision)
            if table:
                lines += table + [""]
        notes = [f"- {name}: {note}" for name, entry in self.data["models"].items() for note in entry["notes"]]
        if notes:
            lines += ["Notes (not counted as failures):"] + notes + [""]
        if self.data.get("refused"):
            lines += [f"Refused to run: {self.data['refused']}", ""]
        lines.append("Result: " + ("PASSED, every check" if self.data["passed"] else "FAILED"))
        lines += [f"- {failure}" for failure in self.data["failures"]]
        return "\n".join(lines) + "\n"

    def header_lines(self):
        """What was run, where and how, before the tables."""
        env, s = self.data["environment"], self.settings
        jittor, official = env.get("jittor", {}), self.data["official"] or {}
        pytorch = self.data["official_status"]
        if official.get("torch"):
            pytorch = f"{official['torch']} (cuDNN {official['cudnn']}, cudnn.benchmark, TF32 {official['tf32']})"
        return [f"# GPU check ({self.data['mode']}), {self.data['started']}, {self.data['elapsed_s']} s", "",
                f"- Device: {jittor.get('device', '?')}; Jittor {jittor.get('jittor', '?')}, "
                f"CUDA {jittor.get('cuda', '-')}, cuDNN {jittor.get('cudnn', '-')}, "
                f"conv ops {', '.join(jittor.get('conv_ops', [])) or '?'}, cutt {jittor.get('cutt', '?')}",
                f"- PyTorch: {pytorch}",
                f"- Jittor import {env.get('jittor_import_s', '?')} s (on a fresh machine: compiling its core)",
                f"- Checks: logits at {dims(s.check_shape)} vs a CPU run (max abs diff <= "
                f"{s.diff_tolerance:g}), argmax agreement >= {ARGMAX_AGREEMENT:.0%}, {TRAIN_STEPS} AdamW "
                f"steps on one batch of {dims(s.train_shape)} (loss must drop)",
                f"- Latency: {dims(s.latency_size)}, eval, no_grad, {s.warmup} warm-up + median of "
                f"{s.iters} synced iterations, TF32 {'on' if s.tf32 else 'off'}; ratio = Jittor / PyTorch "
                "(below 1: Jittor faster). 'first fwd' is the first forward, mostly JIT compilation.", ""]

    def latency_table(self, precision):
        batches = self.settings.batches
        header = ["model"]
        if precision == "fp32":
            header += ["max abs diff vs CPU", "vs official", "loss step 1 -> 3", "argmax agree", "first fwd s"]
        for batch in batches:
            header += [f"Jittor b{batch} ms", f"PyTorch b{batch} ms", f"ratio b{batch}"]
        rows = []
        for name, entry in self.data["models"].items():
            latency = {(r["precision"], r["batch"]): r for r in entry["latency"]}
            if precision == "fp16" and not any(p == "fp16" for p, _ in latency):
                continue
            cells = [name]
            if precision == "fp32":
                losses = entry.get("losses") or []
                cells += [fmt(entry.get("max_abs_diff_vs_cpu"), ".1e"),
                          fmt(entry.get("max_abs_diff_vs_official"), ".1e"),
                          f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "-",
                          fmt(entry.get("argmax_agreement"), ".4f"), fmt(entry.get("first_forward_s"), ".1f")]
            for batch in batches:
                row = latency.get((precision, batch), {})
                cells += [fmt(row.get(key), ".2f") for key in ("jittor_ms", "pytorch_ms", "ratio")]
            rows.append(cells)
        if not rows:
            return []
        title = ("Correctness and fp32 latency" if precision == "fp32"
                 else "fp16 latency (Jittor float16() + AMP level 5 / torch .half())")
        return [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
            ["| " + " | ".join(cells) + " |" for cells in rows]


def dims(shape):
    return "x".join(map(str, shape))


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def write_atomically(path, text):
    with open(path + ".tmp", "w") as file:
        file.write(text)
    os.replace(path + ".tmp", path)


@contextlib.contextmanager
def step(messages, what):
    """Run one step; an exception is appended to `messages` (errors or notes) and printed, not raised."""
    try:
        yield
    except Exception as error:  # noqa: BLE001  (the other steps and models still run)
        messages.append(f"{what}: {type(error).__name__}: {error}")
        log(f"  {what} FAILED: {traceback.format_exc().strip()}")


# ------------------------------------------------------------------------------------- pipeline

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
    """Environment defaults for the lent machines, set before Jittor is imported; never overriding.

    They have no network: Jittor would try to download oneDNN (used only by CPU ops) and cutt,
    and build MPI/NCCL support a one-GPU check does not need. TF32 stays off unless asked for, in
    Jittor and PyTorch alike (cuDNN's default math mode would use it for fp32 convolutions).
    """
    if importlib.util.find_spec("jittor_offline") is None:
        os.environ.setdefault("use_mkl", "0")
    for name, value in (("use_cutt", "0"), ("use_nccl", "0"), ("mpicc_path", "")):
        os.environ.setdefault(name, value)
    if not settings.tf32:
        os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")


def import_jittor(settings, report):
    start = time.time()
    import jittor as jt

    if settings.tf32:
        jt.flags.use_tensorcore = 1
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


@dataclass
class ModelRun:
    """What the later phases need from a model's first phase."""
    name: str
    model: object
    C: object
    logits: object  # numpy, eval logits at check_shape on the device under test
    pred: object  # numpy argmax computed on that device


def check_model(name, settings, report):
    """Phase 1 of a model: build, eval forward (timed: mostly compilation), argmax, training steps."""
    import jittor as jt

    entry = report.model(name)
    log(f"{name}: build, eval forward at {dims(settings.check_shape)}, {TRAIN_STEPS} training steps")
    run = None
    with step(entry["errors"], "build and forward"):
        model, C = build_with_weights(name)
        start = time.time()
        logits = eval_logits(model, settings.check_shape, CHECK_SEED)
        entry["first_forward_s"] = round(time.time() - start, 2)
        run = ModelRun(name, model, C, logits.numpy(), jt.argmax(logits, 1)[0].numpy())
        log(f"  first forward {entry['first_forward_s']:.1f}s, logits {tuple(run.logits.shape)}, "
            f"max |logit| {float(abs(run.logits).max()):.3f}")
    if run is None:
        entry["checks"]["forward"] = False
        return None
    with step(entry["errors"], "training"):
        start = time.time()
        losses = training_losses(run.model, run.C, settings.train_shape)
        entry.update(losses=losses, loss_before=losses[0], loss_after=losses[-1],
                     train_s=round(time.time() - start, 2))
        log(f"  losses {', '.join(f'{v:.5f}' for v in losses)} ({entry['train_s']:.1f}s incl. compilation)")
    losses = entry.get("losses")
    entry["checks"]["loss_decreased"] = bool(losses) and all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    jt.gc()
    return run


def compare_with_reference(run, reference, settings, report):
    """Diff and argmax agreement of the device logits against the CPU reference (or its error)."""
    import numpy as np

    entry = report.model(run.name)
    logits, error = reference
    if logits is None:
        entry["errors"].append(f"CPU reference: {error}")
        entry["checks"].update(diff_vs_cpu=False, argmax=False)
        log(f"{run.name}: no CPU reference: {error}")
        return
    diff = float(np.abs(run.logits - logits).max())
    agreement = float((run.pred == logits.argmax(1)).mean())
    entry.update(max_abs_diff_vs_cpu=diff, argmax_agreement=agreement)
    entry["checks"].update(diff_vs_cpu=diff <= settings.diff_tolerance, argmax=agreement >= ARGMAX_AGREEMENT)
    log(f"{run.name}: max |diff| vs CPU {diff:.2e} (<= {settings.diff_tolerance:g}: "
        f"{entry['checks']['diff_vs_cpu']}), argmax agreement {agreement:.4f}")


def collect_references(runs, cpu_reference, settings, report, wait):
    """Compare every run whose reference has arrived; with `wait`, wait for the rest first."""
    if wait:
        log("waiting for the CPU reference process (timing waits for a quiet CPU)")
        cpu_reference.wait(settings.time_left())
    for name in list(runs):
        logits, error = cpu_reference.result(name)
        if wait and logits is None and error is None:
            error = "not delivered in time"
        if logits is not None or error is not None:
            compare_with_reference(runs.pop(name), (logits, error), settings, report)
    report.save()


def time_jittor(runs, settings, report, precision):
    """Phase 3/5: Jittor latency of every model at every batch size (fp16 is informational)."""
    for run in runs:
        entry = report.model(run.name)
        messages = entry["errors"] if precision == "fp32" else entry["notes"]
        for batch in settings.batches:
            if settings.time_left() <= 0:
                messages.append(f"latency {precision} batch {batch}: skipped, time budget used up")
                break
            with step(messages, f"latency {precision} batch {batch}"):
                ms = median_ms(run.model, batch, settings, precision)
                report.set_latency(run.name, precision, batch, jittor_ms=ms)
                log(f"{run.name} Jittor {precision} batch {batch}: median {ms:.2f} ms")
        if precision == "fp32":
            rows = [r for r in entry["latency"] if r["precision"] == "fp32" and r["jittor_ms"] is not None]
            entry["checks"]["latency"] = len(rows) == len(settings.batches)
        report.save()


def add_official(result, runs_by_name, report):
    """Merge the PyTorch worker's numbers: latency, ratios and the logits diff."""
    import numpy as np

    report.data["official"] = {k: v for k, v in result.items() if k != "models"}
    for name, official in result["models"].items():
        entry = report.model(name)
        entry["errors"] += [f"official: {e}" for e in official["errors"]]
        entry["notes"] += [f"official: {n}" for n in official["notes"]]
        for row in official["latency"]:
            report.set_latency(name, row["precision"], row["batch"], pytorch_ms=row["median_ms"])
        run = runs_by_name.get(name)
        if official.get("logits") and run is not None:
            diff = float(np.abs(run.logits - np.load(official["logits"])).max())
            entry["max_abs_diff_vs_official"] = diff
            entry["checks"]["diff_vs_official"] = diff <= OFFICIAL_TOLERANCE
            log(f"{name}: max |diff| vs the official PyTorch model {diff:.2e}")
        fp32_rows = [r for r in official["latency"] if r["precision"] == "fp32"]
        entry["checks"]["official_latency"] = len(fp32_rows) == len(report.settings.batches)


def official_phase(args, runs, settings, report, folder):
    """Phase 4: the official PyTorch model in its own process, with Jittor's GPU memory released."""
    import jittor as jt

    jt.sync_all(True)
    jt.gc()
    try:
        result = run_official(args, [run.name for run in runs], settings, folder, settings.deadline())
    except Exception as error:  # noqa: BLE001  (a requested comparison that could not run: a failed check)
        report.data["official_status"] = f"failed: {error}"
        report.data["checks"]["official_pytorch"] = False
        log(f"official PyTorch comparison FAILED: {error}")
        return
    report.data["official_status"] = "ran"
    add_official(result, {run.name: run for run in runs}, report)
    report.save()


def check_models(names, cpu_reference, settings, report):
    """Phase 1 for every model, comparing with each CPU reference as it arrives; the ModelRuns."""
    runs, pending = [], {}
    for name in names:
        if settings.time_left() <= 0:
            report.model(name)["errors"].append("skipped, time budget used up")
            continue
        run = check_model(name, settings, report)
        if run is not None:
            runs.append(run)
            pending[name] = run
        collect_references(pending, cpu_reference, settings, report, wait=False)
    collect_references(pending, cpu_reference, settings, report, wait=True)
    return runs


def run_pipeline(args, settings, names, report, folder):
    jt = import_jittor(settings, report)
    report.save()
    cpu_reference = CpuReference(names, settings, folder)  # started after our import: they share a lock
    try:
        runs = check_models(names, cpu_reference, settings, report)
    finally:
        cpu_reference.wait(0)  # normally long finished; stopped if phase 1 broke off
    time_jittor(runs, settings, report, "fp32")
    if args.official_dir:
        official_phase(args, runs, settings, report, folder)
    if settings.fp16:
        jt.gc()
        time_jittor(runs, settings, report, "fp16")  # last: it casts the models to fp16 for good


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.gpu_check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all", help="'all' or a comma list, e.g. DFormer-Tiny,DFormerv2-S")
    parser.add_argument("--out", default=os.path.join("output", "gpu_check"),
                        help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--official-dir",
                        help="a VCIP-RGBD/DFormer checkout: also check and time the official PyTorch model")
    parser.add_argument("--torch-python", default=sys.executable, help="interpreter for the PyTorch worker")
    parser.add_argument("--torch-pythonpath",
                        help="PYTHONPATH for the PyTorch worker, replacing the inherited one")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run of the whole pipeline (for CI)")
    parser.add_argument("--warmup", type=int, help="untimed iterations (default 10; smoke 1)")
    parser.add_argument("--iters", type=int, help="timed iterations (default 30; smoke 2)")
    parser.add_argument("--no-fp16", action="store_true", help="skip the fp16 latency")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in both frameworks (default: full fp32)")
    parser.add_argument("--budget-s", type=float, help="start no new step after this many seconds "
                        "(default 480 on a GPU, none with --cpu-smoke; 0: none)")
    parser.add_argument("--cpu-reference", help=argparse.SUPPRESS)  # internal: the CPU reference subprocess
    parser.add_argument("--torch-worker", help=argparse.SUPPRESS)  # internal: the PyTorch subprocess
    args = parser.parse_args(argv)
    if args.official_dir and not os.path.isfile(os.path.join(args.official_dir, "models", "builder.py")):
        parser.error(f"--official-dir {args.official_dir} has no models/builder.py (a VCIP-RGBD/DFormer checkout)")
    if args.official_dir:
        args.official_dir = os.path.abspath(args.official_dir)
    try:
        args.model_names = resolve_models(args.models)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.torch_worker:
        return torch_worker_main(args.torch_worker)
    if args.cpu_reference:
        return cpu_reference_main(args.cpu_reference)
    settings = Settings.from_args(args)
    report = Report(args.out, settings, args.model_names)
    log(f"gpu_check ({'CPU smoke test' if settings.smoke else 'GPU'}): {', '.join(args.model_names)}; "
        f"results in {os.path.abspath(args.out)}")
    refusal = environment_or_refuse(settings, report)
    report.data["checks"]["environment"] = refusal is None
    if refusal:
        report.data["refused"] = refusal
        report.save()
        print(f"gpu_check refused: {refusal}", file=sys.stderr, flush=True)
        return 2
    if not settings.smoke:
        apply_gpu_defaults(settings)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        try:
            run_pipeline(args, settings, args.model_names, report, folder)
        except Exception:  # noqa: BLE001  (e.g. `import jittor` failing: keep what was found)
            report.data["checks"]["pipeline"] = False
            report.data["pipeline_error"] = traceback.format_exc()
            log(f"pipeline FAILED:\n{report.data['pipeline_error']}")
    report.save()
    print("\n" + report.markdown(), flush=True)
    return 0 if report.data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
