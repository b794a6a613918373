"""Segmentation metrics from one confusion matrix (rows ground truth), as upstream's `utils/metrics_new.py`.

As upstream, undefined per-class scores count as 0 in the means, in percent rounded to 2 decimals.
Unlike upstream the matrix is int64 (float32 rounds counts above 2^24) and aAcc is added.
"""
import numpy as np
from tabulate import tabulate

from local_configs._base_ import IGNORE_LABEL


def _ratio(num, den):
    """num / den elementwise, with 0 where den is 0 (upstream's NaN -> 0)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _percent(values):
    """Per-class values as a list of percentages and their mean, both rounded like upstream."""
    return (values * 100).round(2).tolist(), round(float(values.mean()) * 100, 2)


def segmentation_scores(hist):
    """aAcc, mIoU, mAcc, mF1 and per-class IoU/Acc/F1 (all in %) of confusion matrix `hist`."""
    tp, gt_count, pred_count = np.diag(hist), hist.sum(1), hist.sum(0)
    iou, miou = _percent(_ratio(tp, gt_count + pred_count - tp))
    acc, macc = _percent(_ratio(tp, gt_count))
    f1, mf1 = _percent(_ratio(2 * tp, gt_count + pred_count))
    aacc = round(float(_ratio(tp.sum(), hist.sum())) * 100, 2)
    return dict(aAcc=aacc, mIoU=miou, mAcc=macc, mF1=mf1, IoU=iou, Acc=acc, F1=f1)


class Metrics:
    """A confusion matrix over `num_classes` classes, filled with `update`."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.hist = np.zeros((num_classes, num_classes), np.int64)

    @classmethod
    def from_hist(cls, hist):
        """Metrics around an existing confusion matrix, e.g. the sum of the processes' `.hist`."""
        metrics = cls(len(hist))
        metrics.hist = np.asarray(hist, np.int64).copy()
        return metrics

    def update(self, pred, gt):
        """Add predicted class indices `pred` against labels `gt` (same shape, any integer dtype)."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from label shape {gt.shape}")
        keep = gt != IGNORE_LABEL
        pred, gt = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
        for what, values in (("label", gt), ("prediction", pred)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(f"{what} values must be in [0, {self.num_classes}) or {IGNORE_LABEL}")
        k = self.num_classes
        self.hist += np.bincount(gt * k + pred, minlength=k * k).reshape(k, k)

    def summary(self):
        """See `segmentation_scores`."""
        return segmentation_scores(self.hist)

    def format_table(self, class_names, mode_text):
        """Per-class IoU/Acc/F1 and a summary row, mmsegmentation-style, labelled with the eval mode."""
        res = self.summary()
        rows = [[name, *(f"{v:.2f}" for v in values)] for name, *values in
                zip(class_names, res["IoU"], res["Acc"], res["F1"])]
        per_class = tabulate(rows, headers=["Class", "IoU", "Acc", "F1"], tablefmt="pretty")
        overall = [[mode_text, *(f"{res[key]:.2f}" for key in ("aAcc", "mIoU", "mAcc", "mF1"))]]
        summary = tabulate(overall, headers=["Mode", "aAcc", "mIoU", "mAcc", "mF1"], tablefmt="pretty")
        return f"per-class results ({mode_text}):\n{per_class}\nsummary:\n{summary}"


def trivial_baseline(label_counts):
    """Metrics of predicting everywhere the most frequent class of `label_counts` (pixels per class):
    the floor a trained model has to beat, e.g. `trivial_baseline(metrics.hist.sum(1))`."""
    counts = np.asarray(label_counts, np.int64)
    hist = np.zeros((counts.size, counts.size), np.int64)
    hist[:, counts.argmax()] = counts
    return dict(segmentation_scores(hist), class_index=int(counts.argmax()))
