"""Files written by torch itself, in the official layouts, loaded through `load_checkpoint`.

The fixtures in `fixtures/torch_checkpoints/` come from `fixtures/make_checkpoint_fixtures.py`
(torch 2.13, the official code @814799b, timm's CheckpointSaver); see its docstring for what each
file is. The segmentors are the official architectures at small widths, so every layout detail is
real while the files stay small; every value they hold is `synthetic_tensor(key, shape)`.

Run as a script with a folder written by `make_checkpoint_fixtures.py --full-size DIR` to check
that the official trained-layout files of all 7 models load strictly and give the official logits:
    python tests/test_torch_checkpoints.py DIR
"""
import json
import os
import sys

import numpy as np
import pytest

from conftest import FIXTURES, OFFICIAL_KEYS
from utils.tools.stand_in_weights import synthetic_inputs, synthetic_tensor
from utils.engine.checkpoint import CheckpointMismatch, extract_state_dict, load_checkpoint
from utils.engine.torch_reader import read_checkpoint
from utils.errors import UserError

HERE = os.path.join(FIXTURES, "torch_checkpoints")
with open(os.path.join(HERE, "manifest.json")) as _file:
    MANIFEST = json.load(_file)


def fixture(name):
    return os.path.join(HERE, name)


def small_segmentor(family, **head_changes):
    """The segmentor layout of upstream around the small backbone of the fixtures, NMF bases pinned."""
    from jittor import nn
    from models.builder import EncoderDecoder, init_decode_head
    from models.decoders.ham_head import LightHamHead
    from models.encoders.DFormer import DFormer
    from models.encoders.DFormerv2 import dformerv2

    spec = dict(MANIFEST["specs"][family], **head_changes.pop("spec_changes", {}))
    head = dict(MANIFEST["head"], **head_changes)

    class SmallSegmentor(EncoderDecoder):
        def __init__(self):
            nn.Module.__init__(self)
            sizes = {k: v for k, v in spec.items() if k != "family"}
            self.backbone_name = f"small {spec['family']}"
            self.backbone = (DFormer if spec["family"] == "DFormer" else dformerv2)(**sizes)
            self.decode_head = LightHamHead(self.backbone.out_channels[1:], head["num_classes"],
                                            channels=head["channels"], ham_channels=head["ham_channels"])
            init_decode_head(self.decode_head, bn_eps=1e-3, bn_momentum=0.1)  # as the fixtures' official model

    return SmallSegmentor()


def state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def assert_all_saved(model, prefix="", only=None):
    """Every entry (of `only`'s prefix) equals the synthetic value the generator saved."""
    checked = 0
    for key, value in state(model).items():
        if only and not key.startswith(only):
            continue
        np.testing.assert_array_equal(value, synthetic_tensor(prefix + key[len(only or ""):], value.shape), key)
        checked += 1
    assert checked > 0


def logits(model):
    import jittor as jt

    batch, height, width, seed = MANIFEST["logits_input"]
    rgb, depth, _ = synthetic_inputs(batch, height, width, seed)
    model.decode_head.hamburger.ham.fixed_raw_bases = np.random.default_rng(seed).random(
        (batch, MANIFEST["head"]["ham_channels"], 64), dtype=np.float32)
    model.eval()
    with jt.no_grad():
        return model(jt.array(rgb), jt.array(depth)).numpy()


def test_batchnorm_saved_by_torch_loads():
    """The issue's example: torch.save({'model': BatchNorm2d(4).state_dict(), 'epoch': 3})."""
    from jittor import nn

    weights = extract_state_dict(read_checkpoint(fixture("batchnorm.pth")))
    assert weights["num_batches_tracked"].shape == () and weights["num_batches_tracked"].dtype == np.int64
    bn = nn.BatchNorm2d(4)
    for var in bn.state_dict().values():
        var.update(var + 3)
    assert load_checkpoint(bn, fixture("batchnorm.pth"))["epoch"] == 3
    loaded = state(bn)
    np.testing.assert_array_equal(loaded["weight"], np.ones(4, np.float32))
    np.testing.assert_array_equal(loaded["running_mean"], np.zeros(4, np.float32))
    np.testing.assert_array_equal(loaded["running_var"], np.ones(4, np.float32))


@pytest.mark.parametrize("name", ["dtypes.pth", "dtypes_legacy.pth", "dtypes_legacy_protocol4.pth"])
def test_every_dtype_and_view(name):
    """float32/16/64, bfloat16, int64/32/16/8, uint8, bool, 0-dim, empty, slices, strides, broadcast."""
    obj = read_checkpoint(fixture(name))
    assert "torch" not in sys.modules
    expected = np.load(fixture("dtypes_expected.npz"))
    tensors = obj["state_dict"]
    assert sorted(tensors) == sorted(expected.files)
    for key in expected.files:
        assert isinstance(tensors[key], np.ndarray), key
        assert tensors[key].dtype == expected[key].dtype and tensors[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(tensors[key], expected[key], key)
    assert tensors["scalar_int64"].shape == () and tensors["scalar_int64"] == 5
    assert (obj["args"].lr, obj["args"].sched, obj["epoch"]) == (0.1, "cosine", 3)


@pytest.mark.parametrize("family, name", [("dformer", "dformer_trained.pth"),
                                          ("dformer", "dformer_trained_legacy.pth"),
                                          ("dformerv2", "dformerv2_trained.pth")])
def test_official_trained_layout(family, name):
    """Engine.save_checkpoint's {'model', 'optimizer', 'epoch', 'iteration'}: every entry, and the
    official logits (DFormer's file also holds the 2023 release's unused backbone.norm0..3)."""
    model = small_segmentor(family)
    obj = load_checkpoint(model, fixture(name))
    assert_all_saved(model)
    saved = MANIFEST[name]
    assert (obj["epoch"], obj["iteration"]) == (saved["epoch"], saved["iteration"])
    optimizer = obj["optimizer"]
    assert len(optimizer["param_groups"]) == saved["optimizer_groups"]
    assert optimizer["param_groups"][0]["lr"] == saved["lr"]
    for index, moments in enumerate(optimizer["state"].values()):
        assert moments["step"].shape == () and moments["step"] == 1
        for moment in ("exp_avg", "exp_avg_sq"):
            expected = np.abs(synthetic_tensor(f"optimizer.{index}.{moment}", moments[moment].shape))
            np.testing.assert_array_equal(moments[moment], expected)
    if name != "dformer_trained_legacy.pth":
        error = np.abs(logits(model) - np.load(fixture("logits.npz"))[family]).max()
        print(f"{name}: max |logit - official| = {error:.2e}")
        assert error < 1e-4


def test_shared_and_strided_storages():
    """All tensors views of one storage (offsets, transposed, broadcast), counters 0-dim, keys
    under the `module.` prefix of a DDP-wrapped model."""
    model = small_segmentor("dformer")
    assert all(k.startswith("module.") for k in read_checkpoint(fixture("shared_storage.pth"))["model"])
    load_checkpoint(model, fixture("shared_storage.pth"))
    assert_all_saved(model)


def test_dformer_pretrained_timm_layout():
    """RGBD-Pretrain's .pth.tar (timm CheckpointSaver): the EMA weights fill the backbone; pred and
    the last block's depth branch are the documented leftovers; the head is left alone."""
    model = small_segmentor("dformer")
    head_before = {k: v for k, v in state(model).items() if k.startswith("decode_head.")}
    obj = load_checkpoint(model, fixture("DFormer_pretrained.pth.tar"))
    assert_all_saved(model, only="backbone.")
    for key, value in head_before.items():
        np.testing.assert_array_equal(state(model)[key], value)
    saved = MANIFEST["DFormer_pretrained.pth.tar"]
    assert (obj["epoch"], obj["metric"], obj["arch"], obj["args"].model) == (
        saved["epoch"], saved["metric"], saved["arch"], "DFormer_Tiny")
    raw = obj["state_dict"]  # the non-EMA weights, under the module. prefix of a wrapped model
    assert all(k.startswith("module.") for k in raw)
    np.testing.assert_array_equal(raw["module.pred.weight"], synthetic_tensor("raw.pred.weight", saved["pred_shape"]))
    assert "stages.3.1.mlp_e2.fc1.weight" in obj["state_dict_ema"]


def test_dformerv2_pretrained_layout():
    """{'model': backbone} with the ImageNet classifier, without extra_norms: those are set to
    LayerNorm identity, as upstream's init_weights leaves them."""
    model = small_segmentor("dformerv2")
    for key, var in model.state_dict().items():
        if "extra_norms" in key:
            var.update(var + 5)
    load_checkpoint(model, fixture("DFormerv2_pretrained.pth"), backbone_only=True)
    loaded = state(model)
    for key, value in loaded.items():
        if key.startswith("backbone.extra_norms."):
            np.testing.assert_array_equal(value, np.ones_like(value) if key.endswith("weight") else 0 * value)
        elif key.startswith("backbone."):
            np.testing.assert_array_equal(value, synthetic_tensor(key[len("backbone."):], value.shape), key)


def test_whole_segmentor_as_pretrained_backbone():
    """DFormer issue #56: a "pretrained" file holding a whole segmentor. Its backbone fills a model
    with another head; a backbone that does not fit names the model the file holds."""
    model = small_segmentor("dformerv2", num_classes=7, channels=12)
    head_before = state(model)["decode_head.conv_seg.weight"]
    load_checkpoint(model, fixture("dformerv2_trained.pth"), backbone_only=True)
    assert_all_saved(model, only="backbone.", prefix="backbone.")
    np.testing.assert_array_equal(state(model)["decode_head.conv_seg.weight"], head_before)
    with pytest.raises(CheckpointMismatch, match="holds a whole segmentor, DFormerv2 .* with a 8-wide "
                                                 "decode head and 3 classes") as error:
        load_checkpoint(small_segmentor("dformerv2", spec_changes={"embed_dims": [8, 8, 16, 24]}),
                        fixture("dformerv2_trained.pth"), backbone_only=True)
    assert "shape mismatch" in str(error.value)
    with pytest.raises(CheckpointMismatch, match="decode_head.conv_seg.weight"):  # loading it whole: strict
        load_checkpoint(small_segmentor("dformerv2", num_classes=7), fixture("dformerv2_trained.pth"))


@pytest.mark.parametrize("name, says", [
    ("weights.safetensors", "a safetensors file"),
    ("scripted.pt", "a TorchScript archive"),
    ("whole_module.pth", "holds a pickled torch.nn.modules.batchnorm.BatchNorm2d object"),
    ("list.pth", "holds a list"),
    ("empty", "an empty file"),
])
def test_files_that_are_not_checkpoints_get_one_clear_line(name, says, tmp_path):
    path = fixture(name)
    if name == "empty":
        path = str(tmp_path / "empty.pth")
        open(path, "wb").close()
    with pytest.raises(UserError) as error:
        load_checkpoint(small_segmentor("dformer"), path)
    message = str(error.value)
    assert says in message and "\n" not in message, message


def check_full_size(folder):
    """All 7 official trained-layout files: strict load and the official logits (parity fixture)."""
    import importlib

    import jittor as jt
    from models import build_model
    from test_parity import CASES

    reference = np.load(os.path.join(FIXTURES, "parity_logits.npz"))
    batch, height, width, seed = CASES[0]
    rgb, depth, raw_bases = synthetic_inputs(batch, height, width, seed)
    for name, info in sorted(OFFICIAL_KEYS.items()):
        model = build_model(importlib.import_module(info["config"]).C)
        path = os.path.join(folder, info["config"].rsplit(".", 1)[1] + ".pth")
        load_checkpoint(model, path)
        model.eval()
        model.decode_head.hamburger.ham.fixed_raw_bases = raw_bases
        with jt.no_grad():
            out = model(jt.array(rgb), jt.array(depth)).numpy()
        tag = f"{name}/{batch}x{height}x{width}"
        error = np.abs(out.reshape(-1)[reference[tag + "/logit_index"]] - reference[tag + "/logit_values"]).max()
        print(f"{name}: {os.path.basename(path)} loaded strictly, max |logit - official| = {error:.2e}", flush=True)
        assert error < 1e-4, (name, error)


if __name__ == "__main__":
    check_full_size(sys.argv[1])
