"""The training loss: upstream's `nn.CrossEntropyLoss(ignore_index=255)` (mean over labelled pixels).

Why not `jt.nn.cross_entropy_loss(..., reduction="mean")`: it divides a float32 mean of the
per-pixel losses by a float32 mean of the label mask, and Jittor's float32 reductions are
sequential sums, so the mean of a 2.5M-pixel mask of ones comes out as 1.015; the loss (and every
gradient) of an official 8x480x640 batch is ~1.7% too small. Here the per-pixel losses are summed
in float64 and divided by the exact integer count of labelled pixels. On the CPU (float32) one
multi-threaded kernel each way computes the same sums (`models/kernels/float64.py`).
"""
import jittor as jt

from models import kernels
from models.kernels import float64 as cpu_float64


def cross_entropy_sum(logits, label, ignore_index):
    """(sum of per-pixel cross-entropies over labelled pixels, number of labelled pixels), float64.

    logits: (B, K, H, W) float32; label: (B, H, W) integers, `ignore_index` = unlabelled.
    """
    if kernels.applies(logits) and logits.ndim == 4:
        return cpu_float64.cross_entropy_sum(logits, label, ignore_index)
    return stock_cross_entropy_sum(logits, label, ignore_index)


def stock_cross_entropy_sum(logits, label, ignore_index):
    """`cross_entropy_sum` with Jittor's element-wise ops and reductions (the GPU's path).

    The maths of `jt.nn.cross_entropy_loss`, reduced over the class axis in place: it would first
    permute the logits to channels-last, a CPU-only op on a GPU without cutt.
    """
    shifted = logits - logits.max(1, keepdims=True)  # (B, K, H, W)
    log_sum = shifted.exp().sum(1).log()  # (B, H, W)
    target = label.broadcast(logits.shape, [1])
    picked = (shifted * (target.index(1) == target)).sum(1)  # the label's shifted logit (0 outside [0, K))
    valid = (label >= 0) & (label < logits.shape[1]) & (label != ignore_index)
    per_pixel = (log_sum - picked) * valid  # (B, H, W)
    labelled = (label != ignore_index).float64().sum()  # integer-valued, exact below 2^53
    return per_pixel.float64().sum(), labelled


def cross_entropy(logits, label, ignore_index, normaliser=None):
    """Mean cross-entropy over the labelled pixels of this batch (float32 scalar).

    `normaliser` (a number) divides the sum instead of this batch's own count, e.g. the labelled
    pixels of all micro-batches of one accumulated step. Without labelled pixels the loss is 0
    (upstream: NaN).
    """
    total, labelled = cross_entropy_sum(logits, label, ignore_index)
    count = jt.maximum(labelled, 1.0) if normaliser is None else (float(normaliser) or 1.0)
    return (total / count).float32()
