"""Strict loading and its error messages, with state dicts this repository writes.

Files written by torch itself are tested in `test_torch_checkpoints.py`.
"""
import importlib
import os

import numpy as np
import pytest

from conftest import FIXTURES, OFFICIAL_KEYS
from utils.tools.stand_in_weights import synthetic_state_dict
from utils.engine.checkpoint import CheckpointMismatch, load_checkpoint, save_checkpoint
from utils.engine.torch_reader import read_checkpoint
from utils.errors import UserError


def build(config):
    from models import build_model

    return build_model(importlib.import_module(f"local_configs.NYUDepthv2.{config}").C)


def official_weights(name, prefix=""):
    weights = synthetic_state_dict(OFFICIAL_KEYS[name]["entries"])
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def test_trained_checkpoint_fills_every_entry_and_skips_old_norms(tmp_path):
    model = build("DFormer_Tiny")
    weights = official_weights("DFormer-Tiny")
    weights.update({f"backbone.norm{i}.weight": np.ones(4, np.float32) for i in range(4)})  # 2023 leftovers
    path = str(tmp_path / "trained.pkl")
    save_checkpoint(path, model=weights, epoch=500)
    assert load_checkpoint(model, path)["epoch"] == 500
    state = model.state_dict()
    for key in ("backbone.stages.2.4.attn.kv.weight", "decode_head.conv_seg.bias", "decode_head.squeeze.bn.running_var"):
        np.testing.assert_array_equal(state[key].numpy(), weights[key])


def test_pretrained_dformer_backbone_prefers_ema(tmp_path):
    model = build("DFormer_Tiny")
    head_before = model.state_dict()["decode_head.conv_seg.weight"].numpy().copy()
    ema = official_weights("DFormer-Tiny", "backbone.")
    ema.update({"pred.weight": np.zeros((1000, 256), np.float32),
                "stages.3.1.mlp_e2.fc1.weight": np.zeros((512, 128), np.float32),
                "stages.3.1.layer_scale_1_e": np.zeros(128, np.float32)})
    plain = {k: np.zeros_like(v) for k, v in ema.items()}
    path = str(tmp_path / "DFormer_Tiny.pth.tar")
    save_checkpoint(path, state_dict_ema={f"module.{k}": v for k, v in ema.items()}, state_dict=plain)
    load_checkpoint(model, path)
    state = model.state_dict()
    np.testing.assert_array_equal(state["backbone.stages.0.0.attn.q.weight"].numpy(), ema["stages.0.0.attn.q.weight"])
    np.testing.assert_array_equal(state["decode_head.conv_seg.weight"].numpy(), head_before)


def test_pretrained_dformerv2_backbone(tmp_path):
    model = build("DFormerv2_S")
    weights = official_weights("DFormerv2-Small", "backbone.")
    path = str(tmp_path / "DFormerv2_Small_pretrained.pth")
    save_checkpoint(path, model=weights)
    load_checkpoint(model, path)
    np.testing.assert_array_equal(model.state_dict()["backbone.layers.3.blocks.0.Geo.decay"].numpy(),
                                  weights["layers.3.blocks.0.Geo.decay"])


def test_wrong_model_names_the_checkpoint(tmp_path):
    path = str(tmp_path / "base.pkl")
    save_checkpoint(path, model=official_weights("DFormer-Base"))
    with pytest.raises(CheckpointMismatch, match="DFormer-Base") as error:
        load_checkpoint(build("DFormer_Large"), path)
    assert "shape mismatch" in str(error.value)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    weights = official_weights("DFormer-Tiny")
    del weights["decode_head.align.bn.running_mean"]
    weights["decode_head.extra.weight"] = np.zeros(3, np.float32)
    path = str(tmp_path / "partial.pkl")
    save_checkpoint(path, model=weights)
    with pytest.raises(CheckpointMismatch) as error:
        load_checkpoint(build("DFormer_Tiny"), path)
    message = str(error.value)
    assert "missing (1): decode_head.align.bn.running_mean" in message
    assert "unexpected (1): decode_head.extra.weight" in message


def test_truncated_file_gives_a_clear_message(tmp_path):
    source = os.path.join(FIXTURES, "torch_checkpoints", "dtypes.pth")
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(open(source, "rb").read()[:1500])
    with pytest.raises(UserError, match="truncated"):
        read_checkpoint(str(truncated))
    with pytest.raises(UserError, match="not found"):
        read_checkpoint(str(tmp_path / "absent.pth"))


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pkl"
    save_checkpoint(str(path), epoch=1)
    monkeypatch.setattr("pickle.dump", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(str(path), epoch=2)
    assert read_checkpoint(str(path)) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["ckpt.pkl"]
