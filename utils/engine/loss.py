"""The training loss: upstream's `nn.CrossEntropyLoss(ignore_index=255)` (mean over labelled pixels).

Not `jt.nn.cross_entropy_loss`: it divides by a float32 mean of the label mask, which Jittor's
sequential float32 sums get wrong at full size. Here a float64 sum is divided by the exact count
(on the CPU by the kernels of `models/kernels/float64.py`).
"""
import jittor as jt

from local_configs._base_ import IGNORE_LABEL
from models import kernels
from models.kernels import float64 as cpu_float64


def cross_entropy_sum(logits, label, ignore_index):
    """(sum of per-pixel cross-entropies, number of labelled pixels), both float64.
    logits: (B, K, H, W) float32; label: (B, H, W) integers, `ignore_index` = unlabelled."""
    if kernels.applies(logits) and logits.ndim == 4:
        return cpu_float64.cross_entropy_sum(logits, label, ignore_index)
    return stock_cross_entropy_sum(logits, label, ignore_index)


def stock_cross_entropy_sum(logits, label, ignore_index):
    """`cross_entropy_sum` with stock Jittor ops (the GPU's path), reduced over the class axis in
    place: `jt.nn.cross_entropy_loss` permutes to channels-last, a CPU-only op on a GPU without cutt."""
    shifted = logits - logits.max(1, keepdims=True)  # (B, K, H, W)
    log_sum = shifted.exp().sum(1).log()  # (B, H, W)
    target = label.broadcast(logits.shape, [1])
    picked = (shifted * (target.index(1) == target)).sum(1)  # the label's shifted logit (0 outside [0, K))
    valid = (label >= 0) & (label < logits.shape[1]) & (label != ignore_index)
    per_pixel = (log_sum - picked) * valid  # (B, H, W)
    labelled = (label != ignore_index).float64().sum()  # integer-valued, exact below 2^53
    return per_pixel.float64().sum(), labelled


def cross_entropy(logits, label, ignore_index=IGNORE_LABEL, normaliser=None):
    """Mean cross-entropy over labelled pixels (float32 scalar); `normaliser` replaces this batch's
    count (e.g. the whole accumulated step's). Without labelled pixels it is 0 (upstream: NaN)."""
    total, labelled = cross_entropy_sum(logits, label, ignore_index)
    count = jt.maximum(labelled, 1.0) if normaliser is None else (float(normaliser) or 1.0)
    return (total / count).float32()
