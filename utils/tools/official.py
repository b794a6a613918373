"""The official PyTorch models, in a process of their own, for the GPU check (`utils/tools/gpu_check.py`).

The parent (`run_official`) writes a JSON spec and starts this file as a script with the
interpreter that has torch (`--torch-python`, `--torch-pythonpath`): Jittor needs numpy<2, a
GPU machine's PyTorch may have numpy 2. The worker has the official checkout first on its `PYTHONPATH`
(it has its own `models` and `utils` packages), builds each model with the same stand-in weights
as the Jittor side (`stand_in_weights.py`, loaded by path), and writes logits (.npy), latency and
training speed to the spec's result JSON after every model, so a run stopped by its deadline
still reports what it finished. Only the standard library is imported at module level.
"""
import contextlib
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
STAND_IN_WEIGHTS = os.path.join(HERE, "stand_in_weights.py")


def load_synthetic():
    spec = importlib.util.spec_from_file_location("stand_in_weights", STAND_IN_WEIGHTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logits_path(folder, name):
    return os.path.join(folder, f"official_{name}.npy")


class AttrDict(dict):
    """The attribute access the official builder expects of its EasyDict config."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def build_official(cfg):
    """The official EncoderDecoder as upstream's train.py and eval.py build it with their default
    `--syncbn` (SyncBatchNorm norm layer, CE loss over labelled pixels); run in the torch worker."""
    import torch
    from models.builder import EncoderDecoder

    criterion = torch.nn.CrossEntropyLoss(reduction="none", ignore_index=cfg["background"])
    with contextlib.redirect_stdout(io.StringIO()):  # the official constructors print their settings
        return EncoderDecoder(AttrDict(cfg), criterion=criterion, norm_layer=torch.nn.SyncBatchNorm, syncbn=True)


def official_optimizer(model, cfg):
    """AdamW over upstream's `group_weight` parameter groups, as its train.py builds it."""
    import torch
    from utils.init_func import group_weight  # the official checkout's utils, first on the worker's path

    params = group_weight([], model, torch.nn.SyncBatchNorm, cfg["lr"])
    return torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, 0.999), weight_decay=cfg["weight_decay"])


class OfficialRunner:
    """The official models in this (PyTorch worker) process: build, logits, latency, training speed."""

    def __init__(self, spec):
        import torch
        import torch.nn.functional as F
        import models.decoders.ham_head as ham

        self.torch, self.spec, self.synthetic = torch, spec, load_synthetic()
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
        torch = self.torch
        model = build_official(spec_model["cfg"])
        entries = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        weights = {k: torch.from_numpy(v) for k, v in self.synthetic.synthetic_state_dict(entries).items()}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise RuntimeError(f"official state_dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.dtype = torch.float32
        return model.to(self.device).eval()

    def logits(self, model, name):
        """Eval logits of the synthetic check inputs with the pinned bases, saved as .npy; the path."""
        import numpy as np

        torch = self.torch
        rgb, depth, raw = self.synthetic.synthetic_inputs(*self.spec["check_shape"], self.spec["check_seed"])
        self.raw_bases = torch.from_numpy(raw).to(self.device)
        with torch.no_grad():
            logits = model(torch.from_numpy(rgb).to(self.device), torch.from_numpy(depth).to(self.device))
        self.raw_bases = None
        path = logits_path(self.spec["folder"], name)
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

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def median_ms(self, model, batch):
        torch, spec = self.torch, self.spec
        height, width = spec["latency_size"]
        rgb = torch.rand(batch, 3, height, width, device=self.device, dtype=self.dtype)
        depth = torch.rand(batch, 3, height, width, device=self.device, dtype=self.dtype)
        times = []
        with torch.no_grad():
            for _ in range(spec["warmup"]):
                model(rgb, depth)
                self.sync()
            for _ in range(spec["iters"]):
                start = time.perf_counter()
                model(rgb, depth)
                self.sync()
                times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    def training_speed(self, model, spec_model):
        """Images/s (median of 3 steps after 2) and peak reserved memory of fp32 training steps."""
        torch = self.torch
        batch, height, width = spec_model["train_size"]
        model.to(torch.float32).train()
        self.dtype = torch.float32
        optimizer = official_optimizer(model, spec_model["cfg"])
        rgb = torch.rand(batch, 3, height, width, device=self.device)
        depth = torch.rand(batch, 3, height, width, device=self.device)
        label = torch.randint(0, spec_model["cfg"]["num_classes"], (batch, height, width), device=self.device)
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for index in range(5):
            start = time.perf_counter()
            loss = model(rgb, depth, label)  # upstream's training loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            self.sync()
            if index >= 2:
                times.append(time.perf_counter() - start)
        model.eval()
        return {"images_per_s": batch / statistics.median(times),
                "peak_gib": torch.cuda.max_memory_reserved() / 2**30 if on_gpu else None}


def check_one(runner, spec, spec_model, entry):
    """All measurements of one model; failures are recorded in `entry`, the next model still runs."""
    name, model = spec_model["name"], None
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
        return
    optional = [("training speed", lambda: entry.update(train_speed=runner.training_speed(model, spec_model)))
                if spec_model.get("train_size") else None,
                ("fp16", lambda: entry["latency"].extend(runner.latency(model, name, "fp16")))
                if "fp16" in spec["precisions"] else None]
    for what, measure in filter(None, optional):
        try:
            if time.time() > spec["deadline"]:
                raise TimeoutError("time budget used up")
            measure()
        except Exception as error:  # noqa: BLE001  (informational)
            entry["notes"].append(f"{what}: {type(error).__name__}: {error}")
        if runner.device.type == "cuda":
            runner.torch.cuda.empty_cache()


def worker_main(spec_path):
    """Process body: every model of the spec, the result JSON rewritten after each."""
    with open(spec_path) as file:
        spec = json.load(file)
    runner = OfficialRunner(spec)
    result = dict(runner.environment(), models={})
    for spec_model in spec["models"]:
        entry = result["models"][spec_model["name"]] = {"latency": [], "errors": [], "notes": []}
        check_one(runner, spec, spec_model, entry)
        with open(spec["result"] + ".tmp", "w") as file:
            json.dump(result, file, indent=1)
        os.replace(spec["result"] + ".tmp", spec["result"])
    return 0


# ------------------------------------------------------------------------------------ parent side

def official_cfg(C):
    """The config fields the official EncoderDecoder and its training step read, from our config of
    the same model."""
    from local_configs._base_ import IGNORE_LABEL

    return {"backbone": C.backbone, "decoder": C.decoder, "decoder_embed_dim": C.decoder_embed_dim,
            "num_classes": C.num_classes, "drop_path_rate": C.drop_path_rate, "bn_eps": C.bn_eps,
            "bn_momentum": C.bn_momentum, "aux_rate": C.aux_rate, "pretrained_model": None,
            "background": IGNORE_LABEL, "lr": C.lr, "weight_decay": C.weight_decay}


# What the official models import beyond the standard library (timm imports torchvision, whose build
# must match torch's: a CUDA torchvision next to a CPU torch fails here, not after an hour of runs).
OFFICIAL_IMPORTS = "import torch, timm, mmcv, mmengine"


def torch_environment(python, pythonpath=None):
    """(environment, torch version or None, why not) of the worker's interpreter, which must import
    the official models' dependencies."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath  # e.g. without the numpy<2 that Jittor needs
    probe = subprocess.run([python, "-c", f"{OFFICIAL_IMPORTS}; print(torch.__version__)"],
                           env=env, capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        return env, None, (probe.stderr.strip().splitlines() or ["no output"])[-1]
    return env, probe.stdout.strip(), None


def run_official(spec, python, pythonpath):
    """Run the worker on `spec` (written next to its result); the result dict, or raise why not."""
    env, version, problem = torch_environment(python, pythonpath)
    if version is None:
        raise RuntimeError(f"{python} cannot import the official models' dependencies: {problem}")
    spec_path = os.path.join(spec["folder"], "official_spec.json")
    with open(spec_path, "w") as file:
        json.dump(spec, file)
    # the official checkout's own `models` and `utils` packages come first on the worker's path
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.abspath(spec["official_dir"]), env.get("PYTHONPATH")) if p)
    process = subprocess.Popen([python, os.path.abspath(__file__), spec_path], cwd=spec["folder"], env=env)
    try:
        process.wait(timeout=max(spec["deadline"] - time.time(), 0) + 30)  # it checks the deadline itself
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: Jittor quits on a child killed by any other signal
        process.wait()
    if not os.path.exists(spec["result"]):
        raise RuntimeError(f"the PyTorch worker wrote no result (exit {process.returncode})")
    with open(spec["result"]) as file:
        return dict(json.load(file), torch_version=version)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
