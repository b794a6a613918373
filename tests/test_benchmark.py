"""benchmark.py (utils/speed/flops.py): params and thop-compatible FLOPs of all 7 NYUDepthv2 models at 480x640.

The count runs the forward lazily (shapes only), so the whole file takes seconds on a CPU.
THOP_480x640 holds what `thop.profile` (0.1.1) gives on the official PyTorch models at 480x640
(MACs, and `sum(p.numel() for p in model.parameters())`), measured outside this repository.
"""
import importlib

import pytest

import benchmark
from models.registry import MODELS
from utils.speed import flops

THOP_480x640 = {  # name: (MACs, params)
    "DFormer-Tiny": (11749408224, 6003912), "DFormer-Small": (25673487744, 18747144),
    "DFormer-Base": (41937024576, 29524840), "DFormer-Large": (65696154720, 39030392),
    "DFormerv2_S": (33850982400, 26686018), "DFormerv2_B": (67195776000, 53923050),
    "DFormerv2_L": (124134835200, 95550074),
}


@pytest.fixture(scope="module")
def counts():
    from models import build_model

    result = {}
    for name, spec in MODELS.items():
        model = build_model(importlib.import_module(spec.config_module()).C)
        result[name] = (flops.count_params(model), flops.count_macs(model, 480, 640))
    return result


@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_published(name, counts):
    (_, _, params), macs = counts[name]
    published_params, published_gflops = MODELS[name].params_m, MODELS[name].gflops[0]
    assert abs(params / 1e6 - published_params) <= 0.1, params
    assert abs(macs["module"]["total"] / 1e9 - published_gflops) <= 0.1, macs["module"]["total"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_thop_exactly(name, counts):
    (backbone, head, params), macs = counts[name]
    assert (macs["module"]["total"], params) == THOP_480x640[name]
    assert backbone + head == params
    assert macs["module"]["backbone"] + macs["module"]["head"] == macs["module"]["total"]
    # the full count adds the attention and NMF products thop cannot see (3.1 to 13 GMACs here)
    assert 3e9 < macs["full"]["total"] - macs["module"]["total"] < 14e9


def test_counting_computes_nothing():
    """The count must not run the network (a 2048x2048 forward takes minutes on a CPU): Jittor's
    profiler, which lists every operator it executes, lists none during the count."""
    import jittor as jt

    from models import build_model

    model = build_model(importlib.import_module("local_configs.NYUDepthv2.DFormer_Tiny").C)
    jt.sync_all()  # the weights' initialisation, before the count
    with jt.profile_scope() as executed:
        macs = flops.count_macs(model, 2048, 2048)
    assert executed[1:] == [], [row[0] for row in executed[1:6]]  # row 0: the column names
    assert macs["module"]["total"] > 11e9 * (2048 * 2048) / (480 * 640) * 0.9
    with jt.profile_scope() as executed:  # the profiler does see a computation
        (jt.ones((4, 4)) * 2).sum().sync()
    assert len(executed) > 1


def test_command_line(capsys, tmp_path):
    """`python benchmark.py --config ... --json ...` prints the table and writes the counts."""
    import json

    results = benchmark.main(["--config", "local_configs.NYUDepthv2.DFormer_Tiny", "--sizes", "480x640",
                              "--json", str(tmp_path / "flops.json")])
    table = capsys.readouterr().out
    assert "DFormer-Tiny" in table and "6.00" in table and "11.75" in table
    saved = json.loads((tmp_path / "flops.json").read_text())
    assert saved == results and saved[0]["macs"]["480x640"]["module"]["total"] == THOP_480x640["DFormer-Tiny"][0]
