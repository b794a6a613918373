"""The one evaluation, shared by training-time validation, `eval.py` and `infer.py` (upstream `utils/val_mm.py`).

Modes: `ss` (whole image), `msf` (softmax summed over scales and flips) and `sliding` (msf over
`eval_crop_size` windows, upstream's `eval.sh` protocol). NMF bases are drawn from a generator seeded
with `C.seed`, so the same checkpoint and data give the same numbers in every run. Precisions
(`models/precision.py`): fp32 (default), amp (forwards under autocast, upstream's `--val_amp`),
fp16 (float16 weights and inputs); the class probabilities are float32 in all three.
"""
import math
import time

import jittor as jt
import numpy as np
from jittor import nn
from tqdm import tqdm

from models import precision as mixed
from models.layout import argmax

from ..jittor_private import repeated_in_last_batch
from .metrics import Metrics

MODES = ("ss", "msf", "sliding")


def eval_settings(C, mode, scales=None, flip=None):
    """(scales, flip) for `mode`; `msf`/`sliding` default to the config's scales and flip."""
    if mode not in MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; choose one of {MODES}")
    if mode == "ss":
        return [1.0], False if flip is None else flip
    return list(scales or C.eval_scale_array), C.eval_flip if flip is None else flip


def describe_mode(C, mode, scales, flip):
    """Human-readable protocol printed next to every number, e.g. 'msf (scales 0.5-1.5 + flip)'."""
    parts = [f"scales {','.join(f'{s:g}' for s in scales)}"] if scales != [1.0] else ["single scale"]
    if flip:
        parts.append("flip")
    if mode == "sliding":
        crop = C.eval_crop_size
        parts.append(f"sliding {crop[0]}x{crop[1]} stride {int(C.eval_stride_rate * crop[0])}x"
                     f"{int(C.eval_stride_rate * crop[1])}")
    if C.get("pad_SUNRGBD"):
        parts.append("padded to 531x730")
    return f"{mode} ({' + '.join(parts)})"


def resize_align_corners(x, size):
    """Bilinear, align_corners=True as upstream's evaluation (the model's own resize uses False)."""
    return nn.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class _SeededForward:
    """model(rgb, depth) at `precision`, float32 logits, NMF bases drawn from `rng` (deterministic)."""

    def __init__(self, model, rng, precision="fp32"):
        self.model, self.rng, self.precision = model, rng, precision
        head = getattr(model, "decode_head", None)  # None for an ONNX model: its bases are fixed
        self.nmf = getattr(getattr(head, "hamburger", None), "ham", None)

    def __call__(self, rgb, depth):
        if self.nmf is not None:
            shape = (rgb.shape[0] * self.nmf.S, self.nmf.D, self.nmf.R)
            self.nmf.fixed_raw_bases = self.rng.random(shape, dtype=np.float32)
        if self.precision == "fp16":
            rgb, depth = rgb.float16(), depth.float16()
        with mixed.autocast(self.precision == "amp"):
            return mixed.widened(self.model(rgb, depth))

    def release(self):
        if self.nmf is not None:
            self.nmf.fixed_raw_bases = None


def slide_inference(forward, rgb, depth, C):
    """Average of window logits over an `eval_crop_size` grid (upstream `slide_inference`); an image
    smaller than the crop is first resized to it, upstream's quirk kept."""
    crop_h, crop_w = C.eval_crop_size
    if crop_h > rgb.shape[2] or crop_w > rgb.shape[3]:
        rgb, depth = (resize_align_corners(x, (crop_h, crop_w)) for x in (rgb, depth))
    stride_h, stride_w = int(C.eval_stride_rate * crop_h), int(C.eval_stride_rate * crop_w)
    B, _, H, W = rgb.shape
    rows = max(H - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(W - crop_w + stride_w - 1, 0) // stride_w + 1
    logits_sum = jt.zeros((B, C.num_classes, H, W))
    counts = np.zeros((1, 1, H, W), np.float32)
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * stride_h + crop_h, H), min(j * stride_w + crop_w, W)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            logits = forward(rgb[:, :, y1:y2, x1:x2], depth[:, :, y1:y2, x1:x2])
            logits_sum += nn.pad(logits, (x1, W - x2, y1, H - y2))
            counts[:, :, y1:y2, x1:x2] += 1
    return logits_sum / jt.array(counts)


def scaled_size(height, width, scale):
    """Upstream `evaluate_msf`'s input size at `scale`: each side scaled, then rounded up to a multiple of 32."""
    return math.ceil(int(scale * height) / 32) * 32, math.ceil(int(scale * width) / 32) * 32


def predict(forward, rgb, depth, C, mode, scales, flip):
    """Summed class probabilities (B, K, H, W) of one batch under the chosen protocol."""
    H, W = rgb.shape[2:]
    if mode == "ss":
        return nn.softmax(forward(rgb, depth), dim=1)
    total = jt.zeros((rgb.shape[0], C.num_classes, H, W))
    for scale in scales:
        size = scaled_size(H, W, scale)
        scaled = [resize_align_corners(rgb, size), resize_align_corners(depth, size)]
        for flipped in ([False, True] if flip else [False]):
            inputs = [jt.flip(x, 3) for x in scaled] if flipped else scaled
            logits = slide_inference(forward, *inputs, C) if mode == "sliding" else forward(*inputs)
            if flipped:
                logits = jt.flip(logits, 3)
            total += nn.softmax(resize_align_corners(logits, (H, W)), dim=1)
    return total


def evaluate(model, loader, C, mode="ss", scales=None, flip=None, on_prediction=None, progress=True,
             precision="fp32"):
    """(Metrics, mode text, images per second) of the protocol over `loader`; under MPI every rank
    returns the summed metrics. `on_prediction(batch, pred)` gets each (B, H, W) numpy class map.
    `precision` "fp16" casts a Jittor model's weights to float16 for good (`precision.to_float16`)."""
    if precision not in mixed.PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {mixed.PRECISIONS}")
    scales, flip = eval_settings(C, mode, scales, flip)
    metrics = Metrics(C.num_classes)
    if precision == "fp16" and isinstance(model, jt.Module):
        mixed.to_float16(model)
    forward = _SeededForward(model, np.random.default_rng(C.seed), precision)
    model.eval()
    images, start = 0, time.time()
    try:
        with jt.no_grad():
            repeated = repeated_in_last_batch(loader)
            for index, batch in enumerate(tqdm(loader, desc=f"eval {mode}", disable=not progress or jt.rank != 0,
                                               leave=False)):
                if index == len(loader) - 1 and repeated:
                    if repeated == len(batch["fn"]):
                        continue
                    batch = {key: value[repeated:] for key, value in batch.items()}
                probs = predict(forward, batch["data"], batch["modal_x"], C, mode, scales, flip)
                pred = argmax(probs, 1).numpy()  # (B, H, W)
                if "label" in batch:
                    metrics.update(pred, batch["label"].numpy())
                images += pred.shape[0]
                if on_prediction is not None:
                    on_prediction(batch, pred)
    finally:
        forward.release()
    seconds = time.time() - start
    if jt.in_mpi:
        metrics = Metrics.from_hist(jt.array(metrics.hist.astype(np.float64)).mpi_all_reduce("add").numpy())
        images = int(jt.array(np.array([images], np.float64)).mpi_all_reduce("add").numpy()[0])
    text = describe_mode(C, mode, scales, flip) + ("" if precision == "fp32" else f", {precision}")
    return metrics, text, images / max(seconds, 1e-9)
