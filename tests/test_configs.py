"""Every config imports without side effects, carries the official values and builds its model."""
import glob
import importlib
import os

import numpy as np
import pytest

from conftest import OFFICIAL_KEYS, ROOT

CONFIGS = sorted(
    os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    for path in glob.glob(os.path.join(ROOT, "local_configs", "*", "*.py"))
    if not path.endswith("__init__.py") and "_base_" not in path
)
OFFICIAL_PARAMS = {info["config"]: info["num_params"] for info in OFFICIAL_KEYS.values()}
# (config, key, official value) spot checks from upstream's config files
OFFICIAL_VALUES = [
    ("NYUDepthv2.DFormer_Large", "drop_path_rate", 0.15), ("NYUDepthv2.DFormerv2_S", "batch_size", 16),
    ("NYUDepthv2.DFormerv2_L", "decoder_embed_dim", 1024), ("NYUDepthv2.DFormerv2_L", "batch_size", 12),
    ("NYUDepthv2.DFormer_Tiny", "num_train_imgs", 795), ("NYUDepthv2.DFormerv2_B", "drop_path_rate", 0.2),
    ("SUNRGBD.DFormer_Base", "lr", 8e-5), ("SUNRGBD.DFormerv2_S", "decoder_embed_dim", 1024),
    ("SUNRGBD.DFormerv2_L", "drop_path_rate", 0.27), ("SUNRGBD.DFormer_Small", "image_width", 480),
    ("SUNRGBD.DFormer_Tiny", "num_classes", 37), ("NYUDepthv2.DFormer_Base", "num_classes", 40),
    ("SUNRGBD.DFormerv2_B", "bgr_input", False), ("SUNRGBD.DFormer_Large", "bgr_input", True),
    ("SUNRGBD.DFormerv2_B", "pad_SUNRGBD", True), ("NYUDepthv2.DFormerv2_B", "pad_SUNRGBD", False),
]


def test_fourteen_official_configs_plus_synthetic_and_template():
    assert len([c for c in CONFIGS if ".NYUDepthv2." in c or ".SUNRGBD." in c]) == 14
    assert {"local_configs.Synthetic.DFormer_Tiny", "local_configs.Synthetic.DFormerv2_S",
            "local_configs.template.DFormer_Large"} <= set(CONFIGS)


@pytest.mark.parametrize("config, key, value", OFFICIAL_VALUES)
def test_official_values(config, key, value):
    assert importlib.import_module(f"local_configs.{config}").C[key] == value


def test_import_has_no_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in CONFIGS:
        importlib.reload(importlib.import_module(name))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", CONFIGS)
def test_builds_model(name):
    from models import build_model

    C = importlib.import_module(name).C
    model = build_model(C)
    params = sum(int(np.prod(v.shape)) for k, v in model.state_dict().items()
                 if not k.endswith(("running_mean", "running_var")) and not k.endswith((".angle", ".decay")))
    assert model.decode_head.conv_seg.weight.shape[0] == C.num_classes
    if name in OFFICIAL_PARAMS:  # the official parameter count of the NYU configs
        assert params == OFFICIAL_PARAMS[name]


def test_optimizer_key_is_honoured():
    """C.optimizer: upstream's "SGDM" is SGD with C.momentum (as torch.optim.SGD), weight decay on
    conv/linear weights only; resuming restores its momentum; anything else is refused."""
    import jittor as jt
    from easydict import EasyDict
    from jittor import nn

    from utils.errors import UserError
    from utils.engine.optim import build_optimizer, optimizer_state, restore_optimizer

    def make(name):
        jt.set_global_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2))
        return model, build_optimizer(model, EasyDict(optimizer=name, lr=0.1, momentum=0.9, weight_decay=0.5))

    model, optimizer = make("SGDM")
    conv, bn = model[0].weight, model[1].weight
    w, b = conv.numpy().copy(), bn.numpy().copy()
    buf_w, buf_b = np.zeros_like(w), np.zeros_like(b)
    for _ in range(2):  # loss = sum(w) + sum(bn weight): gradients are ones
        optimizer.step(conv.sum() + bn.sum())
        buf_w, buf_b = 0.9 * buf_w + 1 + 0.5 * w, 0.9 * buf_b + 1  # torch.optim.SGD, dampening 0
        w, b = w - 0.1 * buf_w, b - 0.1 * buf_b
    np.testing.assert_allclose(conv.numpy(), w, rtol=1e-6)
    np.testing.assert_allclose(bn.numpy(), b, rtol=1e-6)
    resumed_model, resumed = make("SGDM")
    restore_optimizer(resumed, optimizer_state(optimizer))
    np.testing.assert_allclose(resumed.param_groups[0]["values"][0].numpy(), buf_w, rtol=1e-6)
    other = build_optimizer(nn.Sequential(nn.Conv2d(2, 3, 1, bias=False)), EasyDict(optimizer="SGDM", lr=0.1,
                                                                                  momentum=0.9, weight_decay=0.5))
    with pytest.raises(UserError, match="does not fit"):
        restore_optimizer(other, optimizer_state(optimizer))
    assert isinstance(make("AdamW")[1], jt.optim.AdamW)
    with pytest.raises(ValueError, match="SGDM"):
        make("Adam")


def test_auxiliary_head_is_refused():
    """Upstream's `aux_rate > 0` adds an FCN head and a second training loss, which is not ported:
    such a config stops with a message instead of training without it."""
    from easydict import EasyDict

    from models import build_model

    C = EasyDict(importlib.import_module("local_configs.NYUDepthv2.DFormer_Tiny").C)
    C.aux_rate = 0.4
    with pytest.raises(ValueError, match="aux_rate = 0.4: upstream's auxiliary FCN head"):
        build_model(C)


def keys_read(paths):
    """The names code reads as `x.name`, `x["name"]` or `x.get("name")` in the files `paths`."""
    import ast

    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                names.add(node.slice.value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    return names


def test_every_config_key_is_read():
    """Each key is read by the code it configures: the models, the engine, the data, the command lines
    or make_config (not only by maintainer tools such as utils/tools/official.py)."""
    from local_configs._base_ import KEYS

    paths = [p for p in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True)
             if os.path.relpath(p, ROOT).split(os.sep)[0] in ("models", "utils", "local_configs")
             and os.path.join("utils", "tools") not in p]
    assert sorted(KEYS - keys_read(paths)) == []


def test_config_is_final_once_the_command_line_is_applied():
    """`load_config` applies the command line, then nothing changes `C`; `make_config` refuses keys
    that code derives."""
    from local_configs._base_ import ConfigError, make_config
    from utils.entry import load_config

    C = load_config("local_configs.Synthetic.DFormer_Tiny", dict(nepochs=3, seed=None), ["lr=0.5", "val_mode=ss"])
    assert (C.nepochs, C.seed, C.lr, C.val_mode) == (3, 12345, 0.5, "ss")
    with pytest.raises(ConfigError, match="the config is final"):
        C.lr = 0.1
    assert importlib.import_module("local_configs.Synthetic.DFormer_Tiny").C.nepochs == 8  # the module's C untouched
    with pytest.raises(ConfigError, match="'num_classes' is derived"):
        make_config("Synthetic", "DFormer-Tiny", num_classes=3)
