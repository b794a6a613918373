"""Generate the parity fixtures from the official PyTorch code (VCIP-RGBD/DFormer).

    TORCH_PYTHON tests/make_official_fixtures.py --official PATH/TO/DFormer [--only parity,training,protocols,nmf]

Runs under a Python with torch, mmcv-lite, mmengine and timm (not this repository's Jittor venv)
and imports the official code from the checkout given (never copied here). Patched at run time:
`NMF2D._build_bases` (it calls `.cuda()`) returns bases this script injects. Every model is built
as upstream's `utils/train.py` builds it with `train.sh`'s `--syncbn` (`Official.build`) and gets
the deterministic stand-in weights of `utils/tools/stand_in_weights.py`. Writes into tests/fixtures/:

- parity_logits.npz (tests/test_parity.py): eval-mode decode-head output and 2048 sampled logits
  of all 7 NYUDepthv2 models at 1x64x64, 1x96x128 and 2x72x100.
- training_parity.npz (tests/test_training_parity.py): the names in upstream's two parameter groups
  of all 7 models, `--syncbn` and `--no-syncbn`; 3 AdamW steps of DFormer-Tiny and DFormerv2-S on
  20 (DFormer-Tiny) and 34 (DFormerv2-S) seeded 1x48x64 batches, official loop (loss as in `EncoderDecoder.forward`,
  `group_weight` with the SyncBN norm layer, `WarmUpPolyLR` set after each step), drop path 0,
  decode-head dropout off, BatchNorm in training mode, the same NMF bases in every forward; run in
  float64 (the ground truth) and in float32, keeping the first seeds on which the float32 run
  puts no decode-head ReLU input on the other side of 0 in any step (`make_training`). Saved per
  batch, from the float64 run: losses, step-1 gradients (named parameters and a sample of the whole
  vector), the update (weights after 3 steps - initial weights) at the positions of
  `update_positions`, the BatchNorm running statistics, each forward's ReLU inputs near 0; and the
  float32 run's losses and its errors against float64 on the same values.
- protocol_parity.npz (tests/test_training_parity.py): the official `evaluate_msf` (scales 0.5-1.5
  + flip) and its sliding-window variant on DFormer-Tiny, 1x96x128, with NMF bases drawn in forward
  order from numpy's default_rng(seed), as utils/engine/evaluate.py draws them: argmax map and
  sampled summed probabilities.
- nmf_parity.npz (tests/test_numerics.py): the official `NMF2D` alone (evaluation, 7 steps) on
  `nmf_inputs` (non-negative 2x512x12x16 maps at two scales, seeded bases), in float64 (sampled
  output) and float32 (its error against float64 on the same sample).
- flip_statistics.npz (only with `--only flips`; not a fixture: `tests/flip_statistics.py` runs it
  and compares): upstream's step 1 on 50 more training batches per model, float64 and float32,
  with the decode head's ReLU inputs near 0 (`make_flips`).
"""
import argparse
import atexit
import contextlib
import copy
import importlib
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import types
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# By path: the official checkout's own `utils` package is the one importable here.
_SPEC = importlib.util.spec_from_file_location(
    "stand_in_weights", os.path.join(os.path.dirname(HERE), "utils", "tools", "stand_in_weights.py"))
_SYNTHETIC = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_SYNTHETIC)
synthetic_inputs, synthetic_state_dict = _SYNTHETIC.synthetic_inputs, _SYNTHETIC.synthetic_state_dict

FIXTURES = os.path.join(HERE, "fixtures")
PARITY_CASES = [(1, 64, 64, 1), (1, 96, 128, 2), (2, 72, 100, 3)]  # (batch, H, W, seed)
PARITY_CONFIGS = {
    "DFormer-Tiny": "DFormer_Tiny", "DFormer-Small": "DFormer_Small", "DFormer-Base": "DFormer_Base",
    "DFormer-Large": "DFormer_Large", "DFormerv2-Small": "DFormerv2_S", "DFormerv2-Base": "DFormerv2_B",
    "DFormerv2-Large": "DFormerv2_L",
}
LOGIT_SAMPLES = 2048

TRAIN_MODELS = ["DFormer-Tiny", "DFormerv2-Small"]
TRAIN_SHAPE, TRAIN_STEPS = (1, 48, 64), 3
# batches per model whose official float32 run flips no ReLU (why, and why these counts: `make_training`)
TRAIN_BATCHES = {"DFormer-Tiny": 20, "DFormerv2-Small": 34}
TRAIN_TOTAL_ITERS, TRAIN_WARMUP_ITERS = 10, 2  # lr per step: base, 0 (warm-up from 0), base / 2
NAMED_GRADS = {
    "DFormer-Tiny": ["backbone.downsample_layers.0.0.weight", "backbone.stages.1.0.layer_scale_1",
                     "backbone.stages.1.0.attn.norm.weight"],
    "DFormerv2-Small": ["backbone.patch_embed.proj.0.weight", "backbone.layers.1.blocks.0.Geo.weight",
                        "backbone.layers.1.blocks.0.layer_norm1.weight"],
}
HEAD_GRADS = ["decode_head.squeeze.conv.weight", "decode_head.hamburger.ham_out.conv.weight",
              "decode_head.conv_seg.weight"]
GRAD_SAMPLES, STEP1_SAMPLES, UPDATE_SAMPLES = 512, 2048, 16384

PROTOCOL_MODEL, PROTOCOL_SHAPE, PROTOCOL_SEED = "DFormer-Tiny", (1, 96, 128), 11
PROTOCOL_SCALES, PROTOCOL_CROP, PROBABILITY_SAMPLES = [0.5, 0.75, 1.0, 1.25, 1.5], (64, 64), 4096
PROTOCOL_BASES_SEED = 12345  # C.seed: utils/engine/evaluate.py draws the bases from default_rng(C.seed)
NMF_SHAPE, NMF_SCALES, NMF_SEED, NMF_SAMPLES = (2, 512, 12, 16), (1.0, 20.0), 5, 16384
FLIP_SEEDS = range(100, 150)  # batches of the flip statistics (`make_flips`); no test uses them
RELU_SITES = ("squeeze", "ham_in", "x + ham_out", "align")  # the decode head's ReLU inputs
NEAR_ZERO = 1e-3  # float64 ReLU inputs within this share of their RMS of 0: the only ones a step-1 forward flips
TRAIN_NEAR_ZERO = 1e-2  # the training fixture's window: at steps 2-3 the float32 weights differ too
SITE_SAMPLES = 16384  # sampled elements per ReLU input for its relative error


def sample_index(size, count, key):
    """Sorted positions, the same in this script and the tests: all if there are few."""
    if size <= count:
        return np.arange(size)
    return np.sort(np.random.default_rng(zlib.crc32(key.encode())).choice(size, count, replace=False))


class Official:
    """The official code, imported from a checkout, with the NMF bases under our control."""

    def __init__(self, official_dir):
        import torch
        import torch.nn.functional as F

        self.torch = torch
        sys.path.insert(0, os.path.abspath(official_dir))
        self.workdir = tempfile.mkdtemp()  # importing an official config creates folders in the cwd
        atexit.register(shutil.rmtree, self.workdir, ignore_errors=True)
        os.chdir(self.workdir)
        import models.decoders.ham_head as ham

        self.bases = None  # a callable (B*S, D, R) -> raw bases (numpy), set by each section

        def build_bases(module, B, S, D, R, cuda=False):
            raw = torch.from_numpy(np.asarray(self.bases((B * S, D, R)))).to(self.dtype)
            return F.normalize(raw, dim=1)

        ham.NMF2D._build_bases = build_bases
        self.dtype = torch.float32

    def config(self, name, **overrides):
        # Every official config fills the one `C` of its dataset base module, so the last config
        # imported wins: re-run the base, then this config, for a fresh `C`.
        importlib.reload(importlib.import_module("local_configs._base_.datasets.NYUDepthv2"))
        C = importlib.reload(importlib.import_module(f"local_configs.NYUDepthv2.{PARITY_CONFIGS[name]}")).C
        C = copy.deepcopy(C)
        C.pretrained_model = None
        C.update(overrides)
        return C

    def build(self, name, syncbn=True, **overrides):
        """The official EncoderDecoder of `name` (float32, random weights) and its config, built as
        upstream's `utils/train.py` (and `utils/eval.py`) build it: `train.sh` and `eval.sh` pass
        `--syncbn`, so the norm layer is `nn.SyncBatchNorm` (`norm_cfg` SyncBN), with the
        criterion `nn.CrossEntropyLoss(reduction="none", ignore_index=C.background)`;
        `syncbn=False` builds it as `--no-syncbn` does (`nn.BatchNorm2d`). In one process a
        SyncBatchNorm computes what a BatchNorm2d computes (`F.batch_norm`); what differs is the
        parameter groups (`official_groups`)."""
        torch = self.torch
        from models.builder import EncoderDecoder

        C = self.config(name, **overrides)
        norm_layer = torch.nn.SyncBatchNorm if syncbn else torch.nn.BatchNorm2d
        criterion = torch.nn.CrossEntropyLoss(reduction="none", ignore_index=C.background)
        with contextlib.redirect_stdout(io.StringIO()):  # the constructors print their settings
            model = EncoderDecoder(cfg=C, criterion=criterion, norm_layer=norm_layer, syncbn=syncbn)
        return model, C

    def model(self, name, **overrides):
        """`build(name)` with the stand-in weights, in eval mode."""
        torch = self.torch
        model, C = self.build(name, **overrides)
        entries = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        weights = {k: torch.from_numpy(v) for k, v in synthetic_state_dict(entries).items()}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
        return model.eval(), C


def make_parity(official):
    torch = official.torch
    out = {}
    for name in PARITY_CONFIGS:
        model, _ = official.model(name)
        for batch, height, width, seed in PARITY_CASES:
            rgb, depth, raw_bases = synthetic_inputs(batch, height, width, seed)
            official.bases = lambda shape, raw=raw_bases: raw
            with torch.no_grad():
                features = model.backbone(torch.from_numpy(rgb), torch.from_numpy(depth))
                features = features[0] if len(features) == 2 else features
                head = model.decode_head(features).numpy()
                logits = model(torch.from_numpy(rgb), torch.from_numpy(depth)).numpy().reshape(-1)
            tag = f"{name}/{batch}x{height}x{width}"
            index = sample_index(logits.size, LOGIT_SAMPLES, tag)
            out.update({f"{tag}/head": head, f"{tag}/logit_index": index, f"{tag}/logit_values": logits[index]})
            print(f"parity {tag}: head {head.shape}")
    return out


def zero_gradient_tensors(grads):
    """Indices of the tensors whose float64 gradient is zero up to rounding (RMS below 1e-12 of the
    median tensor's): the biases of convs followed by train-mode BatchNorm and parameters whose
    output is never used. Their exact gradient is 0, so AdamW turns any float32 run's rounding
    noise into steps of up to about lr: a large, pure-chance share of the update vector's error."""
    rms = np.array([np.sqrt(np.mean(np.square(g))) for g in grads])
    return np.flatnonzero(rms < 1e-12 * np.median(rms))


def update_positions(sizes, exact, key):
    """Positions of the update vector the fixture keeps, and their weights: every element of the
    tensors `exact` (see `zero_gradient_tensors`; a uniform sample would hit them by chance) and a
    uniform sample of the rest, weighted by the inverse sampling rate, so that a weighted sum over
    the positions estimates the sum over the whole vector."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    whole = [np.arange(starts[i], starts[i] + sizes[i]) for i in exact]
    others = np.setdiff1d(np.arange(len(sizes)), exact)
    rest = np.concatenate([np.arange(starts[i], starts[i] + sizes[i]) for i in others])
    picked = rest[sample_index(rest.size, UPDATE_SAMPLES, key)]
    index = np.concatenate(whole + [picked])
    weight = np.concatenate([np.ones(index.size - picked.size), np.full(picked.size, rest.size / picked.size)])
    order = np.argsort(index)
    return index[order].astype(np.int32), weight[order].astype(np.float32)


def weighted_relative_error(a, b, weight):
    return float(np.sqrt(np.sum(weight * (a - b) ** 2) / np.sum(weight * b ** 2)))


def training_batch(seed):
    """rgb, depth (B,3,H,W), labels (B,H,W) int64 with ~30% ignored (255), raw bases per step."""
    batch, height, width = TRAIN_SHAPE
    rgb, depth, _ = synthetic_inputs(batch, height, width, seed)
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 40, (batch, height, width))
    label[:, : height // 4] = 255  # an unlabelled band, plus scattered unlabelled pixels
    label[rng.random(label.shape) < 0.1] = 255
    bases = rng.random((TRAIN_STEPS, batch, 512, 64), dtype=np.float32)
    return rgb, depth, label, bases


def official_groups(model, lr):
    """Upstream's parameter groups as its train.py builds them: `group_weight(params_list, model,
    BatchNorm2d, base_lr)` with the norm layer the model was built with (`--syncbn`:
    `nn.SyncBatchNorm`). Returns the groups and the parameter names of each."""
    from utils.init_func import group_weight

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the group sizes
        groups = group_weight([], model, model.norm_layer, lr)
    names = {id(p): n for n, p in model.named_parameters()}
    return groups, [[names[id(p)] for p in group["params"]] for group in groups]


def make_groups(official):
    """Names of upstream's (decay, no decay) groups of all 7 models, `--syncbn` and `--no-syncbn`."""
    out = {}
    for name in PARITY_CONFIGS:
        for mode, syncbn in (("syncbn", True), ("no_syncbn", False)):
            model, C = official.build(name, syncbn=syncbn)
            _, (decay, no_decay) = official_groups(model, C.lr)
            out[f"groups/{mode}/{name}/decay"] = np.array(decay)
            out[f"groups/{mode}/{name}/no_decay"] = np.array(no_decay)
            frozen = sum(1 for _ in model.parameters()) - len(decay) - len(no_decay)
            print(f"groups {name} --{mode.replace('_', '-')}: {len(decay)} decay, {len(no_decay)} no decay, "
                  f"{frozen} in neither", flush=True)
    return out


def run_official_loop(official, model, C, dtype, seed):
    """Upstream's training loop for TRAIN_STEPS steps; returns what the fixture records, with the
    decode head's ReLU inputs of every step's forward (`sites`: one dict site -> array per step)."""
    torch = official.torch
    from utils.lr_policy import WarmUpPolyLR

    official.dtype = dtype
    model = model.to(dtype).train()
    model.decode_head.dropout = None  # decode-head dropout off (BaseDecodeHead skips a None dropout)
    record, sites = {}, []
    hook_relu_inputs(model.decode_head, record)
    params, _ = official_groups(model, C.lr)
    with contextlib.redirect_stdout(io.StringIO()):
        optimizer = torch.optim.AdamW(params, lr=C.lr, betas=(0.9, 0.999), weight_decay=C.weight_decay)
    schedule = WarmUpPolyLR(C.lr, C.lr_power, TRAIN_TOTAL_ITERS, TRAIN_WARMUP_ITERS)
    rgb, depth, label, bases = training_batch(seed)
    rgb, depth = torch.from_numpy(rgb).to(dtype), torch.from_numpy(depth).to(dtype)
    label = torch.from_numpy(label)
    names = [n for n, _ in model.named_parameters()]
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses, grads = [], {}
    for step in range(TRAIN_STEPS):
        official.bases = lambda shape, raw=bases[step]: raw
        loss = model(rgb, depth, label)  # upstream: CE(reduction="none")[label != 255].mean()
        sites.append(dict(record))
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            grads = {n: p.grad.detach().double().numpy().copy() for n, p in model.named_parameters()}
        optimizer.step()
        lr = schedule.get_lr(step)  # upstream sets the lr after the step
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses.append(float(loss.detach()))
        print(f"  {dtype} step {step + 1}: loss {losses[-1]:.8f}", flush=True)
    update = np.concatenate([(p.detach() - initial[n]).double().numpy().ravel()
                             for n, p in model.named_parameters()])
    stats = {k: v.detach().double().numpy() for k, v in model.state_dict().items()
             if k.endswith("running_mean") or k.endswith("running_var")}
    return dict(names=names, losses=np.array(losses), grads=grads, update=update, stats=stats, sites=sites)


def relative_error(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def near_zero(x64, window=NEAR_ZERO):
    """Positions of the float64 ReLU input `x64` within `window` times its RMS of 0."""
    x64 = x64.ravel()
    return np.flatnonzero(np.abs(x64) <= window * np.sqrt(np.mean(x64 ** 2))).astype(np.int32)


def official_relu_flips(fp64, fp32):
    """Elements of the float32 run on the other side of a decode-head ReLU's kink than in float64,
    summed over the steps and sites, and the largest |float64 value| / RMS among them."""
    total, farthest = 0, 0.0
    for sites64, sites32 in zip(fp64["sites"], fp32["sites"]):
        for site in RELU_SITES:
            x64, x32 = sites64[site].ravel(), sites32[site].ravel()
            flipped = (x32 > 0) != (x64 > 0)
            total += int(np.count_nonzero(flipped))
            if flipped.any():
                farthest = max(farthest, float(np.abs(x64[flipped]).max() / np.sqrt(np.mean(x64 ** 2))))
    return total, farthest


def make_training(official, models=TRAIN_MODELS, batches=None, first_seed=0):
    """Why several batches, and why only some: a ReLU input within float32 rounding of zero lands
    on either side of the kink by chance, in any float32 code, and one such flip in any of the 3
    forwards moves the gradients by up to 2e-3 and the update vector by up to 4x its rounding error
    (which inputs flip depends even on the thread count). The test compares rounding on the
    batches where neither side flipped in any step, so the fixture keeps the first `batches`
    (default TRAIN_BATCHES) seeds from `first_seed` on which the official float32 run flips no
    decode-head ReLU in any step; the seeds it skipped are saved with it. The counts: the official
    run flips on 23% (DFormer-Tiny) and 57% (DFormerv2-S) of the seeds, this port on up to ~15%
    and ~50% of the kept ones, and with 20 and 34 batches fewer than the test's 8 flip-free ones
    has a chance below 1e-3 (docs/parity.md). Per kept batch it saves, besides the losses,
    gradients, update and statistics, each step's positions of every decode-head ReLU input within
    TRAIN_NEAR_ZERO of 0 in float64 and whether the value there is positive: the test counts its
    own flips there."""
    out = make_groups(official)
    for name in models:
        model, C = official.model(name, drop_path_rate=0.0)
        out[f"{name}/lr"] = np.array([C.lr, C.weight_decay, C.lr_power])
        kept, skipped, seed = [], [], first_seed
        while len(kept) < (batches or TRAIN_BATCHES[name]):
            with contextlib.redirect_stdout(io.StringIO()):
                fp64, fp32 = (run_official_loop(official, copy.deepcopy(model), C, dtype, seed)
                              for dtype in (official.torch.float64, official.torch.float32))
            names = fp64["names"]
            if f"{name}/param_names" not in out:
                sizes = np.array([fp64["grads"][n].size for n in names])
                exact = zero_gradient_tensors([fp64["grads"][n] for n in names])
                out[f"{name}/param_names"], out[f"{name}/param_sizes"] = np.array(names), sizes
                out[f"{name}/update_index"], out[f"{name}/update_weight"] = update_positions(sizes, exact, f"{name}/update")
                out[f"{name}/step1_index"] = sample_index(sizes.sum(), STEP1_SAMPLES, f"{name}/step1").astype(np.int32)
                out[f"{name}/stat_names"] = np.array(sorted(fp64["stats"]))
            tag = f"{name}/{seed}"
            flips, farthest = official_relu_flips(fp64, fp32)
            update_error = relative_error(fp32["update"], fp64["update"])
            print(f"training {tag}: float32 vs float64: {flips} ReLU input(s) on the other side of 0 (farthest "
                  f"{farthest:.1e} RMS from 0), update {update_error:.2e}" + ("; skipped" if flips else ""), flush=True)
            seed += 1
            if flips:
                skipped.append(seed - 1)
                continue
            kept.append(seed - 1)
            index, weight = out[f"{name}/update_index"], out[f"{name}/update_weight"]
            step1 = out[f"{name}/step1_index"]
            out[f"{tag}/fp64/loss"], out[f"{tag}/fp32/loss"] = fp64["losses"], fp32["losses"]
            grads64, grads32 = (np.concatenate([run["grads"][n].ravel() for n in names]) for run in (fp64, fp32))
            out[f"{tag}/fp64/step1_sample"] = grads64[step1].astype(np.float32)
            out[f"{tag}/fp32/step1_error"] = np.array(relative_error(grads32[step1], grads64[step1]))
            for key in NAMED_GRADS[name] + HEAD_GRADS:
                at = sample_index(fp64["grads"][key].size, GRAD_SAMPLES, key)
                reference = fp64["grads"][key].ravel()[at]
                out[f"{tag}/fp64/grad/{key}"] = reference.astype(np.float32)
                out[f"{tag}/fp32/grad_error/{key}"] = np.array(relative_error(fp32["grads"][key].ravel()[at], reference))
            out[f"{tag}/fp64/update_sample"] = fp64["update"][index].astype(np.float32)  # ~6e-8 rel.: enough
            out[f"{tag}/fp32/update_error"] = np.array(weighted_relative_error(fp32["update"][index], fp64["update"][index], weight))
            stats64, stats32 = (np.concatenate([run["stats"][k].ravel() for k in out[f"{name}/stat_names"]]) for run in (fp64, fp32))
            out[f"{tag}/fp64/stats"] = stats64.astype(np.float32)
            out[f"{tag}/fp32/stat_error"] = np.array(relative_error(stats32, stats64))
            for step, sites64 in enumerate(fp64["sites"]):
                for site in RELU_SITES:
                    near = near_zero(sites64[site], TRAIN_NEAR_ZERO)
                    out[f"{tag}/step{step + 1}/{site}/near"] = near
                    out[f"{tag}/step{step + 1}/{site}/positive"] = sites64[site].ravel()[near] > 0
        out[f"{name}/seeds"], out[f"{name}/skipped_seeds"] = np.array(kept), np.array(skipped, dtype=np.int64)
        print(f"training {name}: kept {len(kept)} batches, skipped {len(skipped)} with an official float32 flip",
              flush=True)
    return out


class OneBatch(list):
    """A one-batch loader whose len() is 2: upstream's progress print takes `% int(len * 0.5)`."""

    def __len__(self):
        return 2


def make_protocols(official):
    """The official evaluate_msf (plain and sliding) on one image; bases drawn in forward order."""
    torch = official.torch
    import utils.val_mm as val_mm

    model, C = official.model(PROTOCOL_MODEL)
    C.eval_crop_size = list(PROTOCOL_CROP)
    batch, height, width = PROTOCOL_SHAPE
    rgb, depth, _ = synthetic_inputs(batch, height, width, PROTOCOL_SEED)
    label = np.zeros((batch, height, width), np.int64)
    minibatch = dict(data=torch.from_numpy(rgb), modal_x=torch.from_numpy(depth), label=torch.from_numpy(label),
                     fn=["synthetic.png"])
    engine = types.SimpleNamespace(distributed=False, local_rank=0)
    out = dict(scales=np.array(PROTOCOL_SCALES), crop=np.array(PROTOCOL_CROP), bases_seed=np.array(PROTOCOL_BASES_SEED))
    recorded = []

    class Recorder:  # stands in for the official Metrics: keeps the summed probabilities
        def __init__(self, *args):
            pass

        def update(self, pred, target):
            recorded.append(pred.numpy())

    val_mm.Metrics = Recorder
    for mode, sliding in (("msf", False), ("sliding", True)):
        rng = np.random.default_rng(PROTOCOL_BASES_SEED)
        official.bases = lambda shape, rng=rng: rng.random(shape, dtype=np.float32)
        with contextlib.redirect_stdout(io.StringIO()):
            val_mm.evaluate_msf(model, OneBatch([minibatch]), C, "cpu", PROTOCOL_SCALES, True, engine, sliding=sliding)
        probabilities = recorded.pop()
        index = sample_index(probabilities.size, PROBABILITY_SAMPLES, mode)
        out[f"{mode}/prediction"] = probabilities.argmax(1).astype(np.uint8)
        out[f"{mode}/probability_index"] = index
        out[f"{mode}/probability_values"] = probabilities.reshape(-1)[index]
        print(f"protocol {mode}: probabilities {probabilities.shape}")
    return out


def nmf_inputs(scale):
    """A post-ReLU (non-negative) input map times `scale` and the raw bases (B, D, R) for it."""
    rng = np.random.default_rng(NMF_SEED)
    x = (np.maximum(rng.standard_normal(NMF_SHAPE), 0) * scale).astype(np.float32)
    raw_bases = rng.random((NMF_SHAPE[0], NMF_SHAPE[1], 64), dtype=np.float32)
    return x, raw_bases


def make_nmf(official):
    """The official NMF2D in float64 and float32 on the same input and bases."""
    torch = official.torch
    import models.decoders.ham_head as ham

    out = {}
    for scale in NMF_SCALES:
        x, raw_bases = nmf_inputs(scale)
        official.bases = lambda shape, raw=raw_bases: raw
        outputs = []
        for dtype in (torch.float64, torch.float32):
            official.dtype = dtype
            with contextlib.redirect_stdout(io.StringIO()):  # the constructor prints its settings
                nmf = ham.NMF2D({}).eval()
            with torch.no_grad():
                outputs.append(nmf(torch.from_numpy(x).to(dtype)).double().numpy().ravel())
        fp64, fp32 = outputs
        at = sample_index(fp64.size, NMF_SAMPLES, f"nmf/{scale}")
        out[f"{scale}/fp64_sample"] = fp64[at]
        out[f"{scale}/fp32_error"] = np.array(relative_error(fp32[at], fp64[at]))
        print(f"nmf x{scale}: official float32 vs float64 {float(out[f'{scale}/fp32_error']):.2e}")
    official.dtype = torch.float32
    return out


def hook_relu_inputs(head, record):
    """Forward hooks that store the inputs of the decode head's 4 ReLUs in `record` (site -> array).
    Copies, because mmcv's ReLUs work in place; `x + ham_out` is the same float addition as
    upstream's `F.relu(x + enjoy)`."""
    def keep(site):
        return lambda module, inputs, output: record.__setitem__(site, output.detach().double().numpy().copy())

    head.squeeze.bn.register_forward_hook(keep("squeeze"))
    head.hamburger.ham_in.register_forward_hook(keep("ham_in"))
    head.align.bn.register_forward_hook(keep("align"))
    head.hamburger.register_forward_pre_hook(lambda module, inputs: record.__setitem__("x", inputs[0].detach().clone()))
    head.hamburger.ham_out.register_forward_hook(
        lambda module, inputs, output: record.__setitem__(
            "x + ham_out", (record.pop("x") + output.detach()).double().numpy()))


def official_step1(official, model, dtype, seed):
    """Step-1 gradients (whole vector, parameter order) and the decode head's ReLU inputs of
    upstream's training forward on batch `seed` (NMF bases of step 1, dropout off)."""
    torch = official.torch
    official.dtype = dtype
    model = copy.deepcopy(model).to(dtype).train()
    model.decode_head.dropout = None
    record = {}
    hook_relu_inputs(model.decode_head, record)
    rgb, depth, label, bases = training_batch(seed)
    official.bases = lambda shape, raw=bases[0]: raw
    loss = model(torch.from_numpy(rgb).to(dtype), torch.from_numpy(depth).to(dtype), torch.from_numpy(label))
    loss.backward()
    grads = np.concatenate([p.grad.detach().double().numpy().ravel() for p in model.parameters()])
    return grads, record


def wrong_side(values, reference):
    """Elements on the other side of the ReLU's kink than in `reference` (float64)."""
    return int(np.count_nonzero((values > 0) != (reference > 0)))


def make_flips(official, models=TRAIN_MODELS, seeds=FLIP_SEEDS):
    """Flip statistics (not a committed fixture; tests/flip_statistics.py runs this section and our
    side): for each seeded training batch, upstream's step 1 in float64 and float32 as in
    `make_training`. Saved per batch: the float64 step-1 gradient at the `make_training` sample
    positions and the float32 run's error there (a ReLU flip shows as an error above ~1e-4); at
    each decode-head ReLU input the positions whose float64 value lies within NEAR_ZERO of the
    site's RMS of 0, their float64 values, and how many elements the float32 run put on the
    other side of 0 (all of them lie among those positions: asserted); a sample of each site's
    float64 values and the float32 run's relative error on it."""
    torch = official.torch
    out = {}
    for name in models:
        model, C = official.model(name, drop_path_rate=0.0)
        out[f"{name}/seeds"] = np.array(list(seeds))
        out[f"{name}/param_names"] = np.array([n for n, _ in model.named_parameters()])
        for seed in seeds:
            with contextlib.redirect_stdout(io.StringIO()):
                (grads64, sites64), (grads32, sites32) = (official_step1(official, model, dtype, seed)
                                                          for dtype in (torch.float64, torch.float32))
            step1 = sample_index(grads64.size, STEP1_SAMPLES, f"{name}/step1")
            tag = f"{name}/{seed}"
            out[f"{tag}/fp64/step1_sample"] = grads64[step1].astype(np.float32)
            out[f"{tag}/fp32/step1_error"] = np.array(relative_error(grads32[step1], grads64[step1]))
            counts = []
            for site in RELU_SITES:
                x64, x32 = sites64[site].ravel(), sites32[site].ravel()
                near = near_zero(x64)
                flipped = wrong_side(x32, x64)
                assert flipped == wrong_side(x32[near], x64[near]), (tag, site)
                out[f"{tag}/{site}/index"], out[f"{tag}/{site}/fp64"] = near, x64[near]
                out[f"{tag}/{site}/fp32/wrong_side"] = np.array(flipped)
                at = sample_index(x64.size, SITE_SAMPLES, f"{name}/{site}")
                out[f"{tag}/{site}/sample"] = x64[at]
                out[f"{tag}/{site}/fp32/error"] = np.array(relative_error(x32[at], x64[at]))
                counts.append(f"{site} {flipped}/{near.size}")
            print(f"flips {tag}: float32 step-1 gradient error {float(out[f'{tag}/fp32/step1_error']):.2e}; "
                  f"wrong side / near zero: {', '.join(counts)}", flush=True)
    official.dtype = torch.float32
    return out


SECTIONS = {"parity": ("parity_logits.npz", make_parity), "training": ("training_parity.npz", make_training),
            "protocols": ("protocol_parity.npz", make_protocols), "nmf": ("nmf_parity.npz", make_nmf),
            "flips": ("flip_statistics.npz", make_flips)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="checkout of VCIP-RGBD/DFormer (814799b)")
    parser.add_argument("--only", default="parity,training,protocols,nmf",
                        help="comma list of sections (the fixtures by default; 'flips' on request)")
    parser.add_argument("--out", default=FIXTURES, help="output folder (default: tests/fixtures)")
    parser.add_argument("--training-models", default=",".join(TRAIN_MODELS),
                        help="models of the training and flips sections (default: both; a subset writes a "
                        "partial file)")
    parser.add_argument("--training-batches", type=int,
                        help=f"flip-free batches per model of the training section (default: {TRAIN_BATCHES})")
    parser.add_argument("--flip-batches", type=int, default=len(FLIP_SEEDS),
                        help=f"batches per model of the flips section (seeds from {FLIP_SEEDS[0]})")
    args = parser.parse_args()
    out_dir = os.path.abspath(args.out)
    official = Official(args.official)
    official.torch.manual_seed(0)
    for section in args.only.split(","):
        filename, make = SECTIONS[section]
        if section == "training":
            arrays = make(official, args.training_models.split(","), args.training_batches)
        elif section == "flips":
            seeds = range(FLIP_SEEDS[0], FLIP_SEEDS[0] + args.flip_batches)
            arrays = make(official, args.training_models.split(","), seeds)
        else:
            arrays = make(official)
        np.savez_compressed(os.path.join(out_dir, filename), **arrays)
        print(f"wrote {os.path.join(out_dir, filename)}")


if __name__ == "__main__":
    main()
