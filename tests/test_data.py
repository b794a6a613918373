"""The data pipeline against the official DFormer code, the depth conventions, and bad input.

`fixtures/data/official_pipeline.npz` holds three small RGB-D samples (24x32; the encoded jpg/png
files themselves) and what the official `RGBXDataset` with `TrainPre`/`ValPre`
(VCIP-RGBD/DFormer, PyTorch) returned for them: training items for a few Python/numpy seeds chosen
so their draws cover both mirror outcomes, padding (scale < 1), cropping and the inclusive last
crop offset; evaluation items; and SUNRGBD+DFormerv2 items (RGB order, padded to 531x730, stored
as a window plus per-channel sums). `fixtures/data/official_depth_palette.npz` holds matplotlib's
`Greys_r` table, a depth map written with `plt.imsave(cmap="Greys_r")` and read back as grey (how
the official depth PNGs were made), and the official `utils/nyucmap.npy`.
"""
import os
import random

import cv2
import numpy as np
import pytest

from local_configs._base_ import make_config
from utils.dataloader.dataset import (
    InferenceDataset,
    RGBXDataset,
    list_inference_pairs,
    read_depth,
    read_inference_pair,
    read_label,
)
from utils.errors import UserError
from utils.dataloader.transforms import GREYS_R_LUT, depth_to_uint8
from utils.engine.visualize import nyu_palette, save_prediction

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")
PIPELINE = np.load(os.path.join(FIXTURES, "official_pipeline.npz"))
DEPTH = np.load(os.path.join(FIXTURES, "official_depth_palette.npz"))
NAMES = ["a0", "b1", "c2"]
LAYOUT = {"rgb": ("RGB", ".jpg"), "depth": ("Depth", ".png"), "label": ("Label", ".png")}


@pytest.fixture
def root(tmp_path):
    """The fixture samples written out in the NYUDepthv2 layout."""
    for kind, (folder, ext) in LAYOUT.items():
        os.makedirs(tmp_path / folder, exist_ok=True)
        for name in NAMES:
            (tmp_path / folder / f"{name}{ext}").write_bytes(PIPELINE[f"file_{kind}_{name}"].tobytes())
    for split in ("train", "test"):
        (tmp_path / f"{split}.txt").write_text("".join(f"RGB/{name}.jpg\n" for name in NAMES))
    return tmp_path


def nyu_config(root, **values):
    """NYUDepthv2 + DFormer (BGR input) on the fixture layout, with the fixture's crop size."""
    values = {**dict(dataset_path=str(root), image_height=20, image_width=28, num_train_imgs=3, num_eval_imgs=3,
                     batch_size=3, num_workers=0), **values}
    return make_config("NYUDepthv2", "DFormer-Tiny", **values)


@pytest.mark.parametrize("seed", PIPELINE["train_seeds"].tolist())
def test_train_items_equal_official(root, seed):
    dataset = RGBXDataset(nyu_config(root), "train")
    random.seed(seed)
    np.random.seed(seed)
    for index, name in enumerate(NAMES):
        item = dataset[index]
        assert item["fn"] == name
        for key in ("data", "modal_x", "label"):
            expected = PIPELINE[f"train_{seed}_{name}_{key}"]
            assert item[key].dtype == (np.int32 if key == "label" else np.float32)
            np.testing.assert_array_equal(item[key], expected, err_msg=f"seed {seed}, {name}, {key}")


def test_eval_items_equal_official(root):
    dataset = RGBXDataset(nyu_config(root), "val")
    assert dataset.total_len == 3 and len(dataset) == 3  # eval batch size 1
    for index, name in enumerate(NAMES):
        item = dataset[index]
        for key in ("data", "modal_x", "label"):
            np.testing.assert_array_equal(item[key], PIPELINE[f"eval_{name}_{key}"], err_msg=f"{name}, {key}")
    assert (item["label"] == 255).any(), "label 0 must wrap to the ignore index 255"


def test_sunrgbd_v2_padding_and_rgb_order_equal_official(root):
    C = make_config("SUNRGBD", "DFormerv2_S", dataset_path=str(root), gt_folder="Label", num_eval_imgs=None)
    assert not C.bgr_input and C.pad_SUNRGBD
    dataset = RGBXDataset(C, "test")
    for index, name in enumerate(NAMES):
        item = dataset[index]
        for key in ("data", "modal_x"):
            value = item[key]
            assert value.shape == tuple(PIPELINE[f"sun_{name}_{key}_shape"]) == (3, 531, 730)
            np.testing.assert_array_equal(value[:, :28, :36], PIPELINE[f"sun_{name}_{key}_window"])
            np.testing.assert_allclose(value.astype(np.float64).sum(axis=(1, 2)), PIPELINE[f"sun_{name}_{key}_sums"],
                                       rtol=1e-9)
        assert item["label"].shape == (531, 730)
        np.testing.assert_array_equal(item["label"][:28, :36], PIPELINE[f"sun_{name}_label_window"])
        assert (item["label"] == 255).sum() == PIPELINE[f"sun_{name}_label_count255"]


def test_bgr_and_rgb_configs_read_swapped_channels(root):
    bgr = RGBXDataset(nyu_config(root), "val").read_sample("a0")[0]
    rgb = RGBXDataset(nyu_config(root, bgr_input=False), "val").read_sample("a0")[0]
    np.testing.assert_array_equal(bgr[..., ::-1], rgb)
    assert bgr[:, :4, 0].min() > 200  # the fixture's strong strip is in the B channel of the file


def test_label_shift_wraps_in_uint8(tmp_path):
    path = str(tmp_path / "l.png")
    cv2.imwrite(path, np.array([[0, 1, 40]], np.uint8))
    np.testing.assert_array_equal(read_label(path, True), [[255, 0, 39]])
    np.testing.assert_array_equal(read_label(path, False), [[0, 1, 40]])


def test_train_length_and_batches(root):
    C = nyu_config(root)  # niters_per_epoch = 3 // 3 + 1 = 2 -> 6 samples per epoch
    dataset = RGBXDataset(C, "train")
    assert dataset.total_len == C.batch_size * dataset.niters_per_epoch == 6
    assert len(dataset) == 2  # batches, drop_last
    short = RGBXDataset(C, "train", file_length=4)  # the list once, then one random fill
    assert [short.name_at(i) for i in range(3)] == NAMES and short.name_at(3) in NAMES
    batch = next(iter(dataset))
    assert tuple(batch["data"].shape) == (3, 3, 20, 28) and tuple(batch["label"].shape) == (3, 20, 28)
    assert len(batch["fn"]) == 3


def test_image_counts_come_from_the_list_files(root):
    """A count the config sets must match its list file; without one, the list decides."""
    with pytest.raises(UserError, match=r"train.txt lists 3 samples but the config's num_train_imgs is 795"):
        RGBXDataset(nyu_config(root, num_train_imgs=795), "train")
    with pytest.raises(UserError, match=r"test.txt lists 3 samples but the config's num_eval_imgs is 654"):
        RGBXDataset(make_config("NYUDepthv2", "DFormer-Tiny", dataset_path=str(root)), "test")
    C = nyu_config(root, num_train_imgs=None, num_eval_imgs=None, batch_size=2)
    assert RGBXDataset(C, "train").niters_per_epoch == 3 // 2 + 1 and len(RGBXDataset(C, "test")) == 3


def test_epoch_seed_makes_items_independent_of_read_order(root):
    dataset = RGBXDataset(nyu_config(root), "train", file_length=5)
    dataset.set_epoch(7)
    forward = [dataset[i] for i in range(5)]
    backward = [dataset[i] for i in reversed(range(5))][::-1]
    for a, b in zip(forward, backward):
        assert a["fn"] == b["fn"]
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["label"], b["label"])
    dataset.set_epoch(8)
    assert any(not np.array_equal(a["data"], dataset[i]["data"]) for i, a in enumerate(forward))


def test_set_epoch_seeds_the_shuffle_order(root):
    orders = []
    for seed in (7, 7, 8):
        dataset = RGBXDataset(nyu_config(root), "train", batch_size=1, file_length=12)
        dataset.set_epoch(seed)
        orders.append([batch["fn"][0] for batch in dataset])
    assert orders[0] == orders[1] != orders[2]
    assert sorted(orders[0]) == sorted(orders[2]) == sorted(NAMES * 4)


def test_list_entries_may_be_bare_names(root):
    (root / "test.txt").write_text("RGB/a0.jpg\nb1.jpg\nc2\n\n")
    assert RGBXDataset(nyu_config(root), "test").names == NAMES


def test_greys_r_table_and_depth_conversion_equal_matplotlib():
    np.testing.assert_array_equal(GREYS_R_LUT, DEPTH["greys_r_lut"])
    np.testing.assert_array_equal(depth_to_uint8(DEPTH["metric_depth"]), DEPTH["imsave_grey"])


def test_16bit_depth_is_converted_per_image(tmp_path):
    path = str(tmp_path / "d.png")
    depth_mm = np.round(DEPTH["metric_depth"] * 1000).astype(np.uint16)
    cv2.imwrite(path, depth_mm)
    depth = read_depth(path)
    assert depth.dtype == np.uint8
    np.testing.assert_array_equal(depth, depth_to_uint8(depth_mm / 1000.0))  # units don't matter
    # rounding to millimetres moves a few pixels by at most one of the 256 bins (<= 2 grey levels)
    diff = np.abs(depth.astype(int) - DEPTH["imsave_grey"])
    assert diff.max() <= np.diff(GREYS_R_LUT.astype(int)).max() == 2 and (diff == 0).mean() > 0.95
    depth_mm[:3, :5] = 0  # no measurement
    cv2.imwrite(path, depth_mm)
    depth = read_depth(path)
    assert (depth[:3, :5] == 255).all()  # holes -> far
    valid = depth_mm > 0
    assert depth[valid][depth_mm[valid].argmin()] == 0 and depth[valid][depth_mm[valid].argmax()] == 255
    np.testing.assert_array_equal(depth[valid], depth_to_uint8(np.where(valid, depth_mm, 0))[valid])


def test_depth_edge_cases():
    assert (depth_to_uint8(np.zeros((2, 2))) == 255).all()
    assert (depth_to_uint8(np.full((2, 2), 3.0)) == 0).all()
    np.testing.assert_array_equal(depth_to_uint8(np.array([[1.0, np.nan, 2.0]])), [[0, 255, 255]])


def test_inference_folder_and_pair(root):
    pairs = list_inference_pairs(str(root))
    assert [p[0] for p in pairs] == NAMES
    C = nyu_config(root)
    dataset = InferenceDataset(C, pairs)
    item = dataset[0]
    expected = RGBXDataset(C, "test")[0]
    np.testing.assert_array_equal(item["data"], expected["data"])
    np.testing.assert_array_equal(item["modal_x"], expected["modal_x"])
    assert item["image"].shape == (24, 32, 3) and item["image"][:, :4, 2].min() > 200  # RGB order
    single = list_inference_pairs(str(root / "RGB" / "b1.jpg"), str(root / "Depth" / "b1.png"))
    assert single == [("b1", str(root / "RGB" / "b1.jpg"), str(root / "Depth" / "b1.png"))]
    image, depth, data, modal_x = read_inference_pair(C, *single[0][1:])
    assert depth.shape == (24, 32) and data.shape == modal_x.shape == (3, 24, 32)


def test_palette_equals_official_nyucmap():
    np.testing.assert_array_equal(nyu_palette(), DEPTH["nyucmap"])


def test_save_prediction_writes_palette_png(tmp_path):
    pred = np.arange(24 * 32).reshape(24, 32) % 13
    rgb = np.zeros((24, 32, 3), np.uint8)
    paths = save_prediction(str(tmp_path / "out"), "x", rgb, np.zeros((24, 32), np.uint8), pred)
    from PIL import Image

    label = Image.open(paths[0])
    assert label.mode == "P" and np.array_equal(np.array(label), pred)
    assert np.array_equal(np.array(label.convert("RGB")), nyu_palette()[pred])
    assert Image.open(paths[2]).size[0] == 3 * 32 + 8


def test_overlay_and_panel_have_a_legend_of_the_classes_present(tmp_path):
    pred = np.full((24, 32), 5)
    pred[:, :10] = 1
    names = [f"c{i}" for i in range(8)]
    paths = save_prediction(str(tmp_path), "x", np.zeros((24, 32, 3), np.uint8), np.zeros((24, 32), np.uint8), pred,
                            names)
    for path in paths[1:]:
        image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        strip = image[24:].reshape(-1, 3)  # below the 24-pixel-high images
        assert len(strip) >= 12 * image.shape[1]
        colours = {tuple(c) for c in strip}
        assert {tuple(nyu_palette()[k]) for k in (1, 5)} <= colours  # swatches of the two classes
        assert tuple(nyu_palette()[3]) not in colours  # no swatch of an absent class
        assert any(max(c) < 100 for c in colours)  # the names, in dark grey to black


# ---- bad input: one clear UserError naming the file ----


def test_missing_dataset_folder(tmp_path):
    C = nyu_config(tmp_path / "NYUDepthv2")
    with pytest.raises(UserError, match="drive.google.com") as err:
        RGBXDataset(C, "train")
    assert str(tmp_path / "NYUDepthv2") in str(err.value) and "train.txt" in str(err.value)


@pytest.mark.parametrize("kind", ["rgb", "depth", "label"])
def test_listed_file_missing(root, kind):
    folder, ext = LAYOUT[kind]
    os.remove(root / folder / f"b1{ext}")
    with pytest.raises(UserError, match="missing") as err:
        RGBXDataset(nyu_config(root), "train")
    assert str(root / folder / f"b1{ext}") in str(err.value)


@pytest.mark.parametrize("kind", ["rgb", "depth", "label"])
def test_listed_file_unreadable(root, kind):
    folder, ext = LAYOUT[kind]
    (root / folder / f"b1{ext}").write_text("not an image")
    dataset = RGBXDataset(nyu_config(root), "test")
    with pytest.raises(UserError, match="cannot read") as err:
        dataset[1]
    assert str(root / folder / f"b1{ext}") in str(err.value) and "test.txt" in str(err.value)


@pytest.mark.parametrize("kind", ["rgb", "depth", "label"])
def test_truncated_file_stops_training_evaluation_and_inference(root, kind):
    """A file cut short (interrupted copy): OpenCV would decode the JPEG half grey and go on."""
    folder, ext = LAYOUT[kind]
    path = root / folder / f"b1{ext}"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 2 // 3])
    if kind == "rgb":
        assert cv2.imread(str(path)) is not None  # what the check is for: OpenCV's silent half image
    for split in ("train", "test"):
        with pytest.raises(UserError, match=f"(?s)1 file.*{path} \\(truncated\\)"):
            RGBXDataset(nyu_config(root), split)
    if kind != "label":
        with pytest.raises(UserError, match=f"{path} \\(truncated\\)"):
            InferenceDataset(nyu_config(root), list_inference_pairs(str(root)))
        with pytest.raises(UserError, match=f"{path} is truncated"):
            read_inference_pair(nyu_config(root), str(root / "RGB" / "b1.jpg"), str(root / "Depth" / "b1.png"))
    path.write_bytes(whole + bytes(range(256)) * 20)  # bytes after the end marker: still a whole image
    assert len(RGBXDataset(nyu_config(root), "test").names) == 3


def test_rgb_and_depth_of_different_size(root):
    cv2.imwrite(str(root / "Depth" / "c2.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(UserError, match="same size") as err:
        RGBXDataset(nyu_config(root), "test")[2]
    assert str(root / "Depth" / "c2.png") in str(err.value)


def test_label_value_outside_classes(root):
    label = np.full((24, 32), 3, np.uint8)
    label[5, 5] = 50
    cv2.imwrite(str(root / "Label" / "a0.png"), label)
    with pytest.raises(UserError, match=r"\[50\]") as err:
        RGBXDataset(nyu_config(root), "test")[0]
    assert str(root / "Label" / "a0.png") in str(err.value)
    RGBXDataset(nyu_config(root, class_names=[str(i) for i in range(50)]), "test")[0]  # 50 = class 49


def test_non_image_in_inference_folder(root):
    (root / "RGB" / "notes.txt").write_text("hello")
    (root / "RGB" / ".DS_Store").write_text("")  # hidden files are skipped
    with pytest.raises(UserError, match="notes.txt"):
        list_inference_pairs(str(root))


def test_inference_input_errors(root, tmp_path):
    os.remove(root / "Depth" / "c2.png")
    with pytest.raises(UserError, match="c2.jpg"):
        list_inference_pairs(str(root))
    with pytest.raises(UserError, match="depth"):
        list_inference_pairs(str(root / "RGB" / "a0.jpg"))
    with pytest.raises(UserError, match="RGB/"):
        list_inference_pairs(str(tmp_path / "nowhere"))
    colour = str(tmp_path / "colour_depth.png")
    cv2.imwrite(colour, cv2.applyColorMap(np.arange(96, dtype=np.uint8).reshape(8, 12), cv2.COLORMAP_JET))
    with pytest.raises(UserError, match="colour_depth.png"):
        read_depth(colour, strict=True)


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write"):
        save_prediction(str(blocker / "out"), "x", np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)), np.zeros((2, 2)))
