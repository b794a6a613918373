"""models/registry.py: one entry per official model, consistent with the configs, the official
key lists (written by the official code) and the checkpoint guess."""
import importlib

import numpy as np
import pytest

from conftest import OFFICIAL_KEYS
from models.registry import DATASETS, MODELS, find_model
from utils.engine.checkpoint import describe_checkpoint


def test_registry_names_the_official_models():
    assert {spec.name for spec in MODELS.values()} == set(OFFICIAL_KEYS)
    assert {spec.config_module() for spec in MODELS.values()} == {v["config"] for v in OFFICIAL_KEYS.values()}


@pytest.mark.parametrize("dataset", DATASETS)
def test_configs_follow_the_registry(dataset):
    for spec in MODELS.values():
        C = importlib.import_module(spec.config_module(dataset)).C
        assert C.backbone == spec.backbone
        assert C.pretrained_model == spec.pretrained_path
    assert MODELS["DFormerv2_S"].pretrained_path == "checkpoints/pretrained/DFormerv2_Small_pretrained.pth"
    assert MODELS["DFormer-Large"].trained_path("NYUDepthv2") == "checkpoints/trained/NYUv2_DFormer_Large.pth"
    assert MODELS["DFormerv2_B"].trained_path("SUNRGBD") == "checkpoints/trained/DFormerv2_Base_SUNRGBD.pth"


def test_find_model_accepts_every_spelling():
    for text in ("DFormerv2_S", "DFormerv2-S", "dformerv2-small", " DFormerv2_Small"):
        assert find_model(text) is MODELS["DFormerv2_S"]
    assert find_model("DFormer_Tiny") is find_model("DFormer-Tiny") is MODELS["DFormer-Tiny"]
    with pytest.raises(KeyError, match="DFormer-Tiny"):
        find_model("DFormer-Huge")


@pytest.mark.parametrize("name", sorted(OFFICIAL_KEYS))
def test_checkpoint_guess_on_the_official_keys(name):
    """The guess names the right model for the key/shape lists of all seven official models."""
    state_dict = {key: np.broadcast_to(np.float32(0), shape) for key, shape in OFFICIAL_KEYS[name]["entries"]}
    assert describe_checkpoint(state_dict).startswith(f"{name} with a ")
    assert describe_checkpoint(state_dict).endswith("-wide decode head and 40 classes")
    backbone_only = {k: v for k, v in state_dict.items() if k.startswith("backbone.")}
    assert describe_checkpoint(backbone_only) == name
