"""Metrics against a confusion matrix computed by hand (official formulas, `utils/metrics_new.py`)."""
import numpy as np
import pytest

from utils.engine.metrics import Metrics, trivial_baseline

# 4 classes; class 3 appears nowhere except as a prediction on ignored pixels.
GT = np.array([[0, 0, 0, 1, 1], [2, 2, 2, 255, 255]])
PRED = np.array([[0, 0, 1, 1, 2], [2, 2, 0, 3, 1]])
# rows = GT, cols = prediction:  gt 0 -> pred 0, 0, 1;  gt 1 -> 1, 2;  gt 2 -> 2, 2, 0
HIST = np.array([[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]])


def test_confusion_matrix_ignores_255():
    metrics = Metrics(4)
    metrics.update(PRED, GT)
    assert metrics.hist.dtype == np.int64
    np.testing.assert_array_equal(metrics.hist, HIST)
    metrics.update(PRED[:1], GT[:1])
    np.testing.assert_array_equal(metrics.hist, HIST + [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_summary_by_hand():
    metrics = Metrics(4)
    metrics.update(PRED, GT)
    res = metrics.summary()
    # IoU = tp / (row + col - tp): 2/(3+3-2), 1/(2+2-1), 2/(3+3-2), absent class 0/0 -> 0
    assert res["IoU"] == [50.0, 33.33, 50.0, 0.0]
    assert res["mIoU"] == 33.33  # (0.5 + 1/3 + 0.5 + 0) / 4, the absent class counted as 0
    assert res["Acc"] == [66.67, 50.0, 66.67, 0.0]  # tp / row
    assert res["mAcc"] == 45.83
    assert res["F1"] == [66.67, 50.0, 66.67, 0.0]  # 2 tp / (row + col)
    assert res["mF1"] == 45.83
    assert res["aAcc"] == 62.5  # 5 of the 8 non-ignored pixels


def test_from_hist_is_exact_for_large_counts():
    big = 2**24 + 1  # not representable in float32, upstream's hist type
    res = Metrics.from_hist([[big, 1], [0, big]]).summary()
    assert res["IoU"] == [100.0, 100.0] and res["aAcc"] == 100.0
    assert Metrics.from_hist([[big, 1], [0, big]]).hist[0, 0] == big


def test_empty_metrics_are_zero():
    res = Metrics(3).summary()
    assert res["mIoU"] == res["aAcc"] == res["mAcc"] == 0.0


def test_bad_values_raise():
    metrics = Metrics(3)
    with pytest.raises(ValueError):
        metrics.update(np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(ValueError):
        metrics.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError):
        metrics.update(np.zeros(3, int), np.zeros(2, int))


def test_format_table_names_classes_and_mode():
    metrics = Metrics(4)
    metrics.update(PRED, GT)
    text = metrics.format_table(["wall", "floor", "bed", "lamp"], "MS 0.5-1.5 + flip, sliding")
    assert "MS 0.5-1.5 + flip, sliding" in text.splitlines()[0]
    summary_row = [line for line in text.splitlines() if line.startswith("| MS")][0]
    assert "62.50" in summary_row and "33.33" in summary_row and "45.83" in summary_row
    lamp_row = [line for line in text.splitlines() if "lamp" in line][0]
    assert lamp_row.count("0.00") == 3


def test_trivial_baseline():
    res = trivial_baseline([5, 2, 3, 0])  # always predict class 0
    assert res["class_index"] == 0
    assert res["IoU"] == [50.0, 0.0, 0.0, 0.0] and res["mIoU"] == 12.5
    assert res["aAcc"] == 50.0 and res["mAcc"] == 25.0 and res["mF1"] == 16.67
