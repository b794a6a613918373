"""The synthetic RGB-D generator: determinism, geometry/label/depth consistency, file layout."""
import filecmp
import os

import cv2
import numpy as np
import pytest

from local_configs._base_ import SYNTHETIC_CLASSES, make_config
from utils.dataloader.dataset import RGBXDataset
from utils.errors import UserError
from utils.engine.metrics import Metrics
from utils.synthetic.__main__ import main
from utils.synthetic.generate import ensure_synthetic_dataset, generate_dataset, render, sample_rng
from utils.dataloader.transforms import depth_to_uint8

FLOOR, WALL, CEILING = (SYNTHETIC_CLASSES.index(name) + 1 for name in ("floor", "wall", "ceiling"))


def renders(count, split="train", seed=3, size=(64, 80)):
    return [render(sample_rng(seed, split, i), *size, SYNTHETIC_CLASSES) for i in range(count)]


def test_config_lists_exactly_the_drawn_classes():
    C = make_config("Synthetic", "DFormer-Tiny", pretrained_model=None)
    assert C.class_names == SYNTHETIC_CLASSES and C.num_classes == len(SYNTHETIC_CLASSES)
    assert all(name in make_config("NYUDepthv2", "DFormer-Tiny").class_names for name in SYNTHETIC_CLASSES)
    seen = set()
    for _, _, label in renders(40):
        seen |= set(np.unique(label).tolist())
    assert seen == set(range(len(SYNTHETIC_CLASSES) + 1))  # every class, plus 0 = unlabelled clutter


def test_render_is_deterministic_per_image():
    a, b = renders(2), renders(2)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    other = render(sample_rng(4, "train", 0), 64, 80, SYNTHETIC_CLASSES)
    assert not np.array_equal(other[0], a[0][0])
    assert not np.array_equal(render(sample_rng(3, "test", 0), 64, 80, SYNTHETIC_CLASSES)[0], a[0][0])


def test_planes_are_planes_in_depth():
    """For a plane seen by a pinhole camera, 1/z is affine in the pixel coordinates."""
    for _, depth, label in renders(6):
        v, u = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]]
        floor = label == FLOOR
        A = np.stack([u[floor], v[floor], np.ones(floor.sum())], 1)
        coef, *_ = np.linalg.lstsq(A, 1 / depth[floor], rcond=None)
        np.testing.assert_allclose(A @ coef, 1 / depth[floor], atol=1e-9)
        assert coef[1] > 0  # inverse depth grows downwards: the floor is farther at the top


def test_floor_is_farther_at_the_top_in_the_8bit_depth():
    for _, depth, label in renders(6):
        depth8 = depth_to_uint8(depth)
        assert depth8.min() == 0 and depth8.max() == 255  # per-image min-max, every pixel valid
        assert depth8[depth == depth.min()].max() == 0  # near is dark
        for col in range(0, depth.shape[1], 7):
            rows = np.flatnonzero(label[:, col] == FLOOR)
            if rows.size > 2:
                assert np.all(np.diff(depth[rows, col]) < 0)
                assert depth8[rows[0], col] > depth8[rows[-1], col]


def test_ceiling_above_floor_and_walls_in_between():
    for _, _, label in renders(10):
        rows = np.arange(label.shape[0])[:, None] * np.ones(label.shape)
        if (label == CEILING).any():
            assert rows[label == CEILING].mean() < rows[label == WALL].mean() < rows[label == FLOOR].mean()


def test_colour_alone_is_not_enough():
    """A per-pixel colour lookup (16^3 RGB bins -> majority class) stays far from solving the task."""
    def pixels(items):
        rgb = np.concatenate([r.reshape(-1, 3) for r, _, _ in items]).astype(np.int64) // 16
        return rgb @ np.array([256, 16, 1]), np.concatenate([label.ravel() for _, _, label in items])

    bins, labels = pixels(renders(30, "train"))
    table = np.zeros((4096, len(SYNTHETIC_CLASSES) + 1))
    np.add.at(table, (bins, labels), 1)
    table[:, 0] = -1  # never predict "unlabelled"; unseen bins fall back to the first class
    bins, labels = pixels(renders(10, "test"))
    metrics = Metrics(len(SYNTHETIC_CLASSES))
    metrics.update(table.argmax(1)[bins] - 1, np.where(labels == 0, 255, labels - 1))
    assert 5 < metrics.summary()["mIoU"] < 35


def test_files_layout_and_independence_from_count(tmp_path):
    generate_dataset(str(tmp_path / "a"), 3, 2, 48, 64, seed=9)
    generate_dataset(str(tmp_path / "b"), 2, 1, 48, 64, seed=9)
    assert (tmp_path / "a" / "train.txt").read_text().splitlines() == [f"RGB/train_{i:05d}.jpg" for i in range(3)]
    assert (tmp_path / "a" / "test.txt").read_text().splitlines() == ["RGB/test_00000.jpg", "RGB/test_00001.jpg"]
    for rel in ("RGB/train_00001.jpg", "Depth/train_00001.png", "Label/train_00001.png", "Label/test_00000.png"):
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False), rel
    rgb = cv2.imread(str(tmp_path / "a" / "RGB" / "train_00000.jpg"), cv2.IMREAD_UNCHANGED)
    depth = cv2.imread(str(tmp_path / "a" / "Depth" / "train_00000.png"), cv2.IMREAD_UNCHANGED)
    label = cv2.imread(str(tmp_path / "a" / "Label" / "train_00000.png"), cv2.IMREAD_UNCHANGED)
    assert rgb.shape == (48, 64, 3) and depth.shape == label.shape == (48, 64)
    assert depth.dtype == label.dtype == np.uint8 and label.max() <= len(SYNTHETIC_CLASSES)
    expected = render(sample_rng(9, "train", 0), 48, 64, SYNTHETIC_CLASSES)
    np.testing.assert_array_equal(depth, depth_to_uint8(expected[1]))
    np.testing.assert_array_equal(label, expected[2])


def test_loader_never_writes_and_stale_data_is_regenerated_explicitly(tmp_path):
    C = make_config("Synthetic", "DFormer-Tiny", pretrained_model=None, dataset_path=str(tmp_path / "Synthetic"),
                    num_train_imgs=3, num_eval_imgs=2, image_height=32, image_width=48, batch_size=2)
    C.config_name = "my_config.py"
    with pytest.raises(UserError, match="not found.*python -m utils.synthetic --config my_config.py"):
        RGBXDataset(C, "train")
    assert os.listdir(tmp_path) == []  # building a dataset writes nothing
    ensure_synthetic_dataset(C)
    assert sorted(os.listdir(tmp_path)) == ["Synthetic"]
    item = RGBXDataset(C, "train")[0]
    assert item["data"].shape == (3, 32, 48)
    assert set(np.unique(item["label"])) <= set(range(C.num_classes)) | {255}
    before = os.path.getmtime(tmp_path / "Synthetic" / "train.txt")
    ensure_synthetic_dataset(C)  # up to date: nothing happens
    assert os.path.getmtime(tmp_path / "Synthetic" / "train.txt") == before

    C.image_height, C.image_width = 24, 40  # the config changed: the old images no longer fit
    with pytest.raises(UserError, match="height 32 instead of 24, width 48 instead of 40.*Regenerate"):
        RGBXDataset(C, "test")
    ensure_synthetic_dataset(C)
    assert cv2.imread(str(tmp_path / "Synthetic" / "RGB" / "test_00001.jpg")).shape == (24, 40, 3)
    assert len(RGBXDataset(C, "test").names) == 2 and sorted(os.listdir(tmp_path)) == ["Synthetic"]


def test_foreign_folder_is_never_replaced(tmp_path):
    (tmp_path / "Synthetic").mkdir()
    C = make_config("Synthetic", "DFormer-Tiny", dataset_path=str(tmp_path / "Synthetic"))
    with pytest.raises(UserError, match="delete it"):
        ensure_synthetic_dataset(C)


def test_command_line(tmp_path, capsys):
    main(["--out", str(tmp_path / "s"), "--num-train", "2", "--num-test", "1", "--height", "24", "--width", "32"])
    assert "2 train + 1 test" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "s" / "RGB")) == 3
    config = tmp_path / "cfg.py"
    config.write_text("from local_configs._base_ import make_config\n"
                      f"C = make_config('Synthetic', 'DFormer-Tiny', dataset_path={str(tmp_path / 'c')!r}, "
                      "num_train_imgs=1, num_eval_imgs=1, image_height=16, image_width=24)\n")
    main(["--config", str(config)])
    assert "Generating" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "c" / "RGB")) == ["test_00000.jpg", "train_00000.jpg"]
