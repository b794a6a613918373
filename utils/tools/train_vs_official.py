"""Whole training runs of this port next to the official PyTorch code on the synthetic set, for Chart 1:
training loss and single-scale test mIoU after every epoch, from the same start on the same batches.

    python -m utils.tools.train_vs_official --official-dir ../DFormer --torch-python ../torchvenv/bin/python \\
        --configs DFormer_Tiny DFormerv2_S --seeds 6 4 --epochs 12 12 --json runs.json --work-dir work
    python -m utils.tools.charts training runs.json docs/training_vs_official.png

For config c and seed k, this repository's code writes once into `--work-dir`: the initial weights
(`seed_everything(k)` then `build_model`, as utils/train.py) as a checkpoint, every epoch's augmented
batches (our loader after `seed_epoch(k, epoch)`) and the test set. Then, each in a process of its own:
- `jittor/seed<k>`: this repository's trainer (`build_training`, `train_epoch`, `evaluate`) on those
  batches from those weights;
- `pytorch/seed<k>`: upstream's model, parameter groups (`--syncbn`), AdamW, warm-up + poly schedule and
  loss as its train.py builds them (`official.py`), imported from `--official-dir` by a worker run with
  `--torch-python`, on the same batches, the same weights loaded by key; evaluated single scale with the
  NMF bases drawn as utils/engine/evaluate.py draws them.
Drop path, decode-head dropout and the NMF bases of training are each framework's own draws, seeded
from (k, epoch). Once per config, on seed 0: the `shared` pair (drop path and dropout off, the same NMF
bases on both sides, drawn from (k, step)) and `jittor/seed0/np2` (`mpirun -np 2`, each process half of
every global batch). Each run enters `--json` when it ends and is never run again, so the tool
continues where it stopped. It ends by printing, per config, the paired difference of final mIoU (mean
of the last two epochs), Jittor minus PyTorch per seed, with its 90% t-interval.
"""
import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FINAL_EPOCHS = 2  # a run's final mIoU is the mean of its last epochs: one epoch moves ~0.4 point
EQUIVALENCE_MARGIN = 1.0  # points of mIoU: the paired difference's 90% interval must lie within +-this
CONFIDENCE = 0.90


# ------------------------------------------------------------------------------ runs and results

def run_name(model, framework, seed, shared=False, processes=1):
    """e.g. 'DFormer-Tiny/jittor/seed0', 'DFormer-Tiny/pytorch/shared', 'DFormer-Tiny/jittor/seed0/np2'."""
    return f"{model}/{framework}/{'shared' if shared else f'seed{seed}'}{f'/np{processes}' if processes > 1 else ''}"


def planned_runs(model, seeds, frameworks):
    """Runs of one config in order: each seed's pair, then the shared pair and the 2-process run (seed 0)."""
    runs = [dict(framework=f, seed=k, shared=False, processes=1) for k in range(seeds) for f in frameworks]
    runs += [dict(framework=f, seed=0, shared=True, processes=1) for f in frameworks]
    if "jittor" in frameworks:
        runs.append(dict(framework="jittor", seed=0, shared=False, processes=2))
    return [dict(run, model=model, name=run_name(model, **run)) for run in runs]


def final_miou(run):
    return float(np.mean([epoch["miou"] for epoch in run["epochs"][-FINAL_EPOCHS:]]))


def paired_differences(results, model):
    """{seed: final mIoU of Jittor - PyTorch} over the seeds where both runs are done."""
    runs = results["runs"]
    return {run["seed"]: final_miou(run) - final_miou(runs[other])
            for run in runs.values() if run["model"] == model and run["framework"] == "jittor"
            and not run["shared"] and run["processes"] == 1
            for other in [run_name(model, "pytorch", run["seed"])] if other in runs}


def t_interval(values, confidence=CONFIDENCE):
    """(mean, low, high): the two-sided t-interval of the mean; (mean, None, None) below 2 values."""
    from scipy import stats

    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, None, None
    half = stats.t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return mean, float(mean - half), float(mean + half)


def steps_equal(run_a, run_b, tolerance=1e-3):
    """How many first steps the two runs' losses agree within `tolerance` (relative)."""
    a, b = np.asarray(run_a["step_losses"]), np.asarray(run_b["step_losses"])
    n = min(a.size, b.size)
    apart = np.flatnonzero(np.abs(a[:n] - b[:n]) > tolerance * np.abs(b[:n]))
    return int(apart[0]) if apart.size else n


def summary(results):
    """The criteria of the comparison, one line each, per model."""
    runs, lines = results["runs"], []
    for model in dict.fromkeys(run["model"] for run in runs.values()):
        diffs = paired_differences(results, model)
        if diffs:
            mean, low, high = t_interval(list(diffs.values()))
            per_seed = ", ".join(f"{d:+.2f}" for _, d in sorted(diffs.items()))
            if low is None:
                verdict = "needs 2 seeds for an interval"
            else:
                inside = -EQUIVALENCE_MARGIN <= low and high <= EQUIVALENCE_MARGIN
                verdict = (f"{CONFIDENCE:.0%} t-interval [{low:+.2f}, {high:+.2f}] "
                           f"{'inside' if inside else 'NOT inside'} [-{EQUIVALENCE_MARGIN}, +{EQUIVALENCE_MARGIN}]")
            lines.append(f"{model}: final mIoU Jittor - PyTorch over {len(diffs)} seeds ({per_seed}): "
                         f"mean {mean:+.2f}, {verdict}")
        singles = [final_miou(run) for run in runs.values() if run["model"] == model
                   and run["framework"] == "jittor" and not run["shared"] and run["processes"] == 1]
        two = runs.get(run_name(model, "jittor", 0, processes=2))
        if two and singles:
            low, high = min(singles) - EQUIVALENCE_MARGIN, max(singles) + EQUIVALENCE_MARGIN
            ok = low <= final_miou(two) <= high
            lines.append(f"{model}: 2 processes final mIoU {final_miou(two):.2f}, "
                         f"{'inside' if ok else 'NOT inside'} the 1-process range widened by "
                         f"{EQUIVALENCE_MARGIN}: [{low:.2f}, {high:.2f}]")
        shared = [runs.get(run_name(model, f, 0, shared=True)) for f in ("jittor", "pytorch")]
        if all(shared):
            total = len(shared[0]["step_losses"])
            lines.append(f"{model}: shared draws: per-step losses within 0.1% for the first "
                         f"{steps_equal(*shared)} of {total} steps; final mIoU Jittor "
                         f"{final_miou(shared[0]):.2f}, PyTorch {final_miou(shared[1]):.2f}")
    return lines


def load_results(path):
    if not os.path.exists(path):
        return {"runs": {}}
    with open(path) as file:
        return json.load(file)


def save_results(path, results):
    from utils.files import atomic_open

    with atomic_open(path, "w") as file:
        json.dump(results, file, indent=1)


# ---------------------------------------------------------------- inputs, written once (Jittor)

class CachedBatches:
    """An epoch of batches written by `write_inputs`, as the trainer iterates a loader: `set_epoch`
    (called by the trainer's `seed_epoch`) opens that epoch's file; under MPI each process takes its
    share of every global batch. `before_batch(step, rank_slice)` runs before each batch is handed out."""

    def __init__(self, folder, before_batch=None):
        import jittor as jt

        self.folder, self.before_batch, self.arrays = folder, before_batch, None
        self.rank, self.world = jt.rank, jt.world_size

    def set_epoch(self, epoch_seed):
        self.arrays = np.load(os.path.join(self.folder, f"batches_{epoch_seed}.npz"), mmap_mode="r")
        self.epoch_seed = epoch_seed

    def __len__(self):
        return len(self.arrays["label"])

    @property
    def niters_per_epoch(self):  # what the trainer reads of a loader
        return len(self)

    def __iter__(self):
        import jittor as jt

        for step in range(len(self)):
            batch = self.arrays["label"].shape[1]
            share = slice(self.rank * batch // self.world, (self.rank + 1) * batch // self.world)
            if self.before_batch:
                self.before_batch(step, share)
            yield {key: jt.array(np.ascontiguousarray(self.arrays[key][step, share]))
                   for key in ("data", "modal_x", "label")}


def write_inputs(C, seed, folder):
    """Seed `seed`'s initial weights (init.pkl) and every epoch's batches (batches_<epoch seed>.npz,
    listed in epochs.json) into `folder`, with this repository's model and loader; once."""
    manifest = os.path.join(folder, "epochs.json")
    if os.path.exists(manifest):
        return
    from tqdm import tqdm

    from models import build_model
    from utils.dataloader.dataset import RGBXDataset
    from utils.engine.checkpoint import save_checkpoint, state_dict_numpy
    from utils.engine.trainer import seed_epoch, seed_everything

    os.makedirs(folder, exist_ok=True)
    seed_everything(seed)  # the initial weights, as build_training draws them
    save_checkpoint(os.path.join(folder, "init.pkl"), model=state_dict_numpy(build_model(C)))
    train_set = RGBXDataset(C, "train")  # the global batch C.batch_size
    epochs = []
    for epoch in tqdm(range(1, C.nepochs + 1), desc=f"batches of seed {seed}", leave=False):
        seed_epoch(seed, epoch, train_set)
        arrays = {"data": [], "modal_x": [], "label": []}
        for batch in train_set:
            for key, values in arrays.items():
                values.append(batch[key].numpy())
        np.savez(os.path.join(folder, f"batches_{train_set.epoch_seed}.npz"),
                 **{key: np.stack(values) for key, values in arrays.items()})
        epochs.append(train_set.epoch_seed)
    with open(manifest, "w") as file:
        json.dump(epochs, file)


def write_test_set(C, path):
    """The test set as evaluation reads it (normalised, one image per batch), for the PyTorch side."""
    if os.path.exists(path):
        return
    from utils.dataloader.dataset import RGBXDataset

    arrays = {"data": [], "modal_x": [], "label": []}
    for batch in RGBXDataset(C, "test", batch_size=1):
        for key, values in arrays.items():
            values.append(batch[key].numpy()[0])
    np.savez(path, **{key: np.stack(values) for key, values in arrays.items()})


def shared_bases(seed, step, shape):
    """Raw NMF bases (B*S, D, R) of training step `step` when both frameworks share the draws."""
    return np.random.default_rng([seed, step]).random(shape, dtype=np.float32)


# ------------------------------------------------------------------ the Jittor worker (MPI too)

class StepRecorder:
    """The trainer's run log, kept in memory: messages are dropped, per-step losses kept."""

    def __init__(self):
        self.losses = []

    def __call__(self, message):
        pass

    def scalar(self, tag, value, step):
        if tag == "train/loss":
            self.losses.append(float(value))


def training_args(config, dataset_dir, epochs, extra=()):
    """utils/train.py's command line for a run of this comparison: whole batches (as upstream), no
    ImageNet weights (both sides start from the written initial weights), float32."""
    from utils.train import parse_args

    return parse_args(["--config", config, "--epochs", str(epochs), "--accum-steps", "1", "--no-pretrained",
                       *(["--dataset-dir", dataset_dir] if dataset_dir else []), *extra])


def jittor_worker(spec):
    """One run with this repository's trainer on the written inputs; process 0 writes the result."""
    import jittor as jt

    from utils.dataloader.dataset import RGBXDataset
    from utils.engine.checkpoint import load_checkpoint
    from utils.engine.evaluate import evaluate
    from utils.engine.trainer import build_training, load_training_config, seed_epoch, train_epoch

    args = training_args(spec["config"], spec["dataset_dir"], spec["epochs"],
                         ["--set", "drop_path_rate=0.0"] if spec["shared"] else [])
    C = load_training_config(args)  # C.seed stays the data set's
    log = StepRecorder()
    model, optimizer, schedule, _, _, _ = build_training(C, args, spec["niters_per_epoch"], log)  # float32: no loss scaler
    load_checkpoint(model, spec["init"])  # every process: the written initial weights
    nmf = model.decode_head.hamburger.ham

    def pin_bases(step, share):
        shape = (C.batch_size * nmf.S, nmf.D, nmf.R)
        nmf.fixed_raw_bases = shared_bases(spec["seed"], step_offset[0] + step, shape)[share]

    step_offset = [0]
    if spec["shared"]:
        model.decode_head.dropout.p = 0.0
    batches = CachedBatches(spec["inputs"], pin_bases if spec["shared"] else None)
    test_set = RGBXDataset(C, "test")
    epochs, start = [], time.time()
    for epoch in range(1, C.nepochs + 1):
        seed_epoch(spec["seed"], epoch, batches)
        loss = train_epoch(model, optimizer, schedule, batches, C, epoch, log, progress=False)
        step_offset[0] += len(batches)
        nmf.fixed_raw_bases = None
        metrics, _, _ = evaluate(model, test_set, C, "ss", progress=False)
        epochs.append({"epoch": epoch, "loss": loss, "miou": metrics.summary()["mIoU"]})
        if jt.rank == 0:
            print(f"[jittor x{jt.world_size}] {spec['name']} epoch {epoch}: loss {loss:.4f}, "
                  f"mIoU {epochs[-1]['miou']:.2f} ({time.time() - start:.0f} s)", flush=True)
    if jt.rank == 0:
        write_json(spec["result"], {"epochs": epochs, "step_losses": log.losses})


def write_json(path, content):
    with open(path + ".tmp", "w") as file:
        json.dump(content, file)
    os.replace(path + ".tmp", path)


# ------------------------------------------------------- the PyTorch worker (official checkout)

def torch_worker(spec):
    """One run of upstream's training on the written inputs, in a Python with torch whose path starts
    with the official checkout; imports nothing of this repository but `official.py`."""
    import torch
    import torch.nn.functional as F
    import models.decoders.ham_head as ham
    from official import build_official, official_optimizer  # this file's folder leads sys.path
    from utils.lr_policy import WarmUpPolyLR  # the official checkout's

    cfg, seed = spec["cfg"], spec["seed"]
    torch.manual_seed(seed)
    draw = {"bases": None}  # None: torch.rand, as upstream (on the CPU instead of its `.cuda()`)

    def build_bases(module, B, S, D, R, cuda=False):
        raw = torch.rand((B * S, D, R)) if draw["bases"] is None else torch.from_numpy(draw["bases"]((B * S, D, R)))
        return F.normalize(raw, dim=1)

    ham.NMF2D._build_bases = build_bases
    model = build_official(cfg)
    with open(spec["init"], "rb") as file:
        initial = pickle.load(file)["model"]
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in initial.items()}, strict=False)
    leftovers = re.compile("|".join(f"(?:{p})" for p in spec["leftovers"]))
    if unexpected or any(not leftovers.fullmatch(k) for k in missing):
        raise RuntimeError(f"initial weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if spec["shared"]:
        model.decode_head.dropout = None  # upstream's head skips a None dropout
    optimizer = official_optimizer(model, cfg)
    policy = WarmUpPolyLR(cfg["lr"], spec["lr_power"], spec["total_iters"], spec["warmup_iters"])
    test = np.load(spec["test_set"])
    with open(os.path.join(spec["inputs"], "epochs.json")) as file:
        epoch_seeds = json.load(file)
    epochs, step_losses, start, step = [], [], time.time(), 0
    for epoch, epoch_seed in enumerate(epoch_seeds[:spec["epochs"]], 1):
        torch.manual_seed(epoch_seed)
        batches = np.load(os.path.join(spec["inputs"], f"batches_{epoch_seed}.npz"), mmap_mode="r")
        model.train()
        losses = []
        for idx in range(len(batches["label"])):
            if spec["shared"]:
                draw["bases"] = lambda shape, step=step: shared_bases(seed, step, shape)
            rgb, depth, label = (torch.from_numpy(np.ascontiguousarray(batches[key][idx]))
                                 for key in ("data", "modal_x", "label"))
            loss = model(rgb, depth, label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            lr = policy.get_lr((epoch - 1) * spec["niters_per_epoch"] + idx)  # upstream: after the step
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses.append(float(loss.detach()))
            step += 1
        step_losses += losses
        epochs.append({"epoch": epoch, "loss": float(np.mean(losses)),
                       "hist": evaluate_official(model, test, spec, draw, torch).tolist()})
        print(f"[pytorch] {spec['name']} epoch {epoch}: loss {epochs[-1]['loss']:.4f} "
              f"({time.time() - start:.0f} s)", flush=True)
    write_json(spec["result"], {"epochs": epochs, "step_losses": step_losses})


def evaluate_official(model, test, spec, draw, torch):
    """Confusion matrix (labels x predictions) of single-scale evaluation, one image per forward, the
    NMF bases drawn in order from numpy's default_rng(C.seed) as utils/engine/evaluate.py does."""
    rng, k = np.random.default_rng(spec["eval_seed"]), spec["cfg"]["num_classes"]
    draw["bases"] = lambda shape: rng.random(shape, dtype=np.float32)
    hist = np.zeros((k, k), np.int64)
    model.eval()
    with torch.no_grad():
        for index in range(len(test["label"])):
            logits = model(torch.from_numpy(test["data"][index:index + 1]),
                           torch.from_numpy(test["modal_x"][index:index + 1]))
            pred, label = logits.argmax(1)[0].numpy(), test["label"][index]
            keep = label != spec["cfg"]["background"]
            hist += np.bincount(label[keep].astype(np.int64) * k + pred[keep], minlength=k * k).reshape(k, k)
    draw["bases"] = None
    return hist


# ------------------------------------------------------------------------------------ the driver

def config_module(name):
    """'DFormer_Tiny' -> local_configs.Synthetic.DFormer_Tiny; a module path or .py file as given."""
    return name if name.endswith(".py") or "." in name else f"local_configs.Synthetic.{name}"


def run_one(run, C, config, args, folder, test_path):
    """Start the run's worker, wait for it; its result (epochs, step losses)."""
    from utils.dataloader.dataset import RGBXDataset
    from utils.engine.checkpoint import TRAINED_LEFTOVERS
    from utils.errors import UserError
    from utils.tools.official import official_cfg

    tag = run["name"].replace("/", "_")
    spec = dict(name=run["name"], config=config, dataset_dir=C.dataset_path, seed=run["seed"], shared=run["shared"],
                epochs=C.nepochs, niters_per_epoch=RGBXDataset(C, "train").niters_per_epoch,  # the trainer's count
                inputs=folder, init=os.path.join(folder, "init.pkl"),
                result=os.path.join(folder, f"{tag}.result.json"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if run["framework"] == "jittor":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        command = [sys.executable, "-m", "utils.tools.train_vs_official", "--worker", "jittor"]
        if run["processes"] > 1:
            root_flag = ["--allow-run-as-root"] if os.geteuid() == 0 else []
            command = ["mpirun", "-np", str(run["processes"]), *root_flag, "--oversubscribe", *command]
        cwd = ROOT
    else:
        cfg = official_cfg(C)
        if run["shared"]:
            cfg["drop_path_rate"] = 0.0
        niters = spec["niters_per_epoch"]
        spec.update(cfg=cfg, lr_power=C.lr_power, total_iters=C.nepochs * niters, warmup_iters=niters * C.warm_up_epoch,
                    test_set=test_path, eval_seed=C.seed, leftovers=TRAINED_LEFTOVERS)
        # the official checkout's own `models` and `utils` packages come first on the worker's path
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.abspath(args.official_dir), env.get("PYTHONPATH")) if p)
        command = [args.torch_python, os.path.abspath(__file__), "--worker", "torch"]
        cwd = folder  # importing an official config may create folders in the working folder
    spec_path = os.path.join(folder, f"{tag}.spec.json")
    write_json(spec_path, spec)
    if os.path.exists(spec["result"]):
        os.remove(spec["result"])
    print(f"run {run['name']} ({C.nepochs} epochs)", flush=True)
    done = subprocess.run(command + [spec_path], cwd=cwd, env=env)
    if done.returncode != 0 or not os.path.exists(spec["result"]):
        raise UserError(f"run {run['name']} failed (exit {done.returncode}); its output is above")
    with open(spec["result"]) as file:
        result = json.load(file)
    for epoch in result["epochs"]:
        if "hist" in epoch:
            from utils.engine.metrics import Metrics

            epoch["miou"] = Metrics.from_hist(epoch.pop("hist")).summary()["mIoU"]
    return result


def compare_config(name, seeds, epochs, args, results):
    """Every planned run of config `name` that `results` lacks, saved to the JSON as each ends."""
    from utils.engine.trainer import load_training_config
    from utils.errors import UserError
    from utils.synthetic.generate import ensure_synthetic_dataset
    from utils.speed.timing import provenance

    config = config_module(name)
    default = load_training_config(training_args(config, None, epochs))
    C = load_training_config(training_args(config, os.path.abspath(default.dataset_path), epochs))  # workers run elsewhere
    ensure_synthetic_dataset(C)
    work = os.path.join(args.work_dir, C.backbone)
    test_path = os.path.join(work, "test.npz")
    runs = planned_runs(C.backbone, seeds, args.frameworks)
    for run in runs:
        done = results["runs"].get(run["name"])
        if done and len(done["epochs"]) != C.nepochs:
            raise UserError(f"{args.json} holds {run['name']} with {len(done['epochs'])} epochs, not "
                            f"{C.nepochs}; pass --epochs {len(done['epochs'])} or another --json")
    for index, run in enumerate(runs):
        folder = os.path.join(work, f"seed{run['seed']}")
        if run["name"] not in results["runs"]:
            write_inputs(C, run["seed"], folder)
            write_test_set(C, test_path)
            start = time.time()
            result = run_one(run, C, config, args, folder, test_path)
            results["runs"][run["name"]] = dict(
                {k: run[k] for k in ("model", "framework", "seed", "shared", "processes")}, config=config,
                **result, seconds=round(time.time() - start), **provenance())
            save_results(args.json, results)
        if not any(later["seed"] == run["seed"] and later["name"] not in results["runs"] for later in runs[index:]):
            shutil.rmtree(folder, ignore_errors=True)  # this seed's inputs are needed no more


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.tools.train_vs_official",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["DFormer_Tiny", "DFormerv2_S"],
                        help="local_configs.Synthetic names (or config modules / .py files)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[6, 4], help="seeds per config (0..n-1)")
    parser.add_argument("--epochs", nargs="+", type=int, default=[12, 12], help="epochs per config")
    parser.add_argument("--json", required=True, help="results, read to resume and rewritten after every run")
    parser.add_argument("--work-dir", required=True,
                        help="a folder for the written inputs (~1.2 GB per seed in use for DFormer-Tiny)")
    parser.add_argument("--frameworks", nargs="+", choices=["jittor", "pytorch"], default=["jittor", "pytorch"])
    parser.add_argument("--official-dir", help="a checkout of the official VCIP-RGBD/DFormer repository")
    parser.add_argument("--torch-python", help="a Python interpreter with torch, mmcv-lite, mmengine, timm")
    args = parser.parse_args(argv)
    if not len(args.configs) == len(args.seeds) == len(args.epochs):
        parser.error("give one --seeds and one --epochs value per config")
    return args


def check_torch_python(args):
    """Before any run: the PyTorch side's interpreter imports what the official models need."""
    from utils.errors import UserError
    from utils.tools.official import torch_environment

    if "pytorch" not in args.frameworks:
        return
    if not (args.official_dir and args.torch_python):
        raise UserError("the PyTorch runs need --official-dir and --torch-python")
    _, version, problem = torch_environment(args.torch_python)
    if version is None:
        raise UserError(f"--torch-python {args.torch_python} cannot import the official models' dependencies "
                        f"({problem}): it needs torch with a torchvision of the same build (CPU or CUDA), "
                        "mmcv-lite, mmengine and timm (docs/installation.md)")


def main(argv=None):
    from utils.jittor_private import survive_stopped_children

    args = parse_args(argv)
    check_torch_python(args)
    survive_stopped_children()  # the workers are this process's children
    results = load_results(args.json)
    results["command"] = "python -m utils.tools.train_vs_official " + " ".join(sys.argv[1:] if argv is None else argv)
    for name, seeds, epochs in zip(args.configs, args.seeds, args.epochs):
        compare_config(name, seeds, epochs, args, results)
    for line in summary(results):
        print(line)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        with open(sys.argv[3]) as spec_file:
            worker_spec = json.load(spec_file)
        if sys.argv[2] == "torch":
            torch_worker(worker_spec)
        else:
            from utils.entry import main_guard

            main_guard(lambda: jittor_worker(worker_spec))
    else:
        from utils.entry import main_guard

        main_guard(main)
