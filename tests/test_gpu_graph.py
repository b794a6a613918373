"""The op graph a GPU runs has no op without a CUDA implementation, tested on the CPU.

With DFORMER_CPU_KERNELS=0 the CPU takes the GPU's ops (`models.kernels.enabled`). For each
of the 7 models an eval forward at 1x64x64 and a training step (`utils.engine.trainer.train_step`: forward,
loss, backward, AdamW) run under Jittor's profiler; none of the executed ops may be one that Jittor
would run on the host inside a CUDA graph (`utils.tools.gpu_graph.CPU_ONLY_OPS`: `transpose`, `jt.code`
CPU kernels, ...). The eval logits must still match the official model's (parity fixture).
"""
import os

import numpy as np
import pytest

from conftest import FIXTURES, OFFICIAL_KEYS

SHAPE = (1, 64, 64)  # (batch, height, width), the first case of the parity fixture
FIXTURE_SEED = 1
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    return np.load(os.path.join(FIXTURES, "parity_logits.npz"))


@pytest.mark.parametrize("name", sorted(OFFICIAL_KEYS))
def test_gpu_graph_runs_no_cpu_only_op(name, reference, monkeypatch):
    from models import kernels
    from utils.tools.gpu_graph import cpu_only_ops, profile
    from utils.tools.gpu_jittor import build_with_weights, eval_logits, training_losses

    monkeypatch.setattr(kernels, "switched_on", False)
    model, C = build_with_weights(name)
    found = {}
    logits = []
    rows = profile(lambda: logits.append(eval_logits(model, SHAPE, FIXTURE_SEED).numpy()))
    found["eval forward"] = cpu_only_ops(rows)
    found["training step"] = cpu_only_ops(profile(lambda: training_losses(model, C, SHAPE, steps=1)))
    print(f"{name}: CPU-only ops executed: {found}")
    assert found == {"eval forward": {}, "training step": {}}, f"{name} runs ops without a CUDA kernel: {found}"

    tag = f"{name}/{'x'.join(map(str, SHAPE))}"
    error = np.abs(logits[0].reshape(-1)[reference[tag + "/logit_index"]] - reference[tag + "/logit_values"]).max()
    assert error < TOLERANCE, (tag, error)


def test_profile_sees_cpu_kernels():
    """The same check with the CPU kernels on finds them: the detector is not blind to `jt.code`."""
    from models import kernels
    from utils.tools.gpu_graph import cpu_only_ops, profile
    from utils.tools.gpu_jittor import CHECK_SEED, build_with_weights, eval_logits

    assert kernels.enabled()
    model, _ = build_with_weights("DFormer-Tiny")
    assert cpu_only_ops(profile(lambda: eval_logits(model, SHAPE, CHECK_SEED))).get("code", 0) > 0


def test_profile_row_names():
    """Rows of `jt.profile_scope` are sorted into op kinds; CPU-only ones are counted."""
    from utils.tools.gpu_graph import cpu_only_ops, describe, op_kinds, top_ops

    fused = "«opkey0:broadcast_to«Tx:float32«DIM=4«opkey1:binary«Tx:float32«OP:multiply«JIT:1«JIT_cuda:1"
    rows = [("transpose«Tx:float32«DIM=4«AXES0=0«JIT:1«JIT_cpu:1", 3, 0.004), (fused, 10, 0.003),
            ("code«...«JIT_cpu:1", 2, 0.002), ("cudnn_conv«Tx:float32«JIT_cuda:1", 5, 0.001)]
    assert describe(fused) == "fused(broadcast_to, binary.multiply)"
    assert describe("cudnn_conv«Tx:float32«XFORMAT:acdb«WFORMAT:oihw«YFORMAT:acdb«JIT:1") == \
        "cudnn_conv(XFORMAT:acdb, YFORMAT:acdb)"
    assert describe("code«in0_dim:2«HEADER:#include <cmath>«CODE:// Two-pass LayerNorm\nconst int64 N;") == \
        "code(// Two-pass LayerNorm)"
    assert op_kinds(rows) == {"transpose": 3, "fused": 10, "code": 2, "cudnn_conv": 5}
    assert cpu_only_ops(rows) == {"transpose": 3, "code": 2}
    assert top_ops(rows, 2) == [{"op": "transpose", "count": 3, "ms": pytest.approx(4.0), "share": pytest.approx(0.4)},
                                {"op": "fused(broadcast_to, binary.multiply)", "count": 10, "ms": pytest.approx(3.0),
                                 "share": pytest.approx(0.3)}]


def test_layout_ops_match_stock_ops(monkeypatch):
    """The GPU path's own ops against Jittor's: `argmax` (ties: the first index, as numpy), and the
    channels-last convolution by the library (oneDNN here, cuDNN on a GPU) against the stock
    convolution of an NCHW copy, values and gradients."""
    import jittor as jt

    from models import kernels, layout
    from models.layers import ChannelsLastConv2d

    monkeypatch.setattr(kernels, "switched_on", False)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (2, 5, 6, 7)).astype(np.float32)  # many ties
    for dim in range(4):
        np.testing.assert_array_equal(layout.argmax(jt.array(x), dim).numpy(), x.argmax(dim))

    for groups, stride in [(8, 1), (1, 2)]:  # depthwise, and a strided dense conv
        conv = ChannelsLastConv2d(8, 8, 5, stride=stride, padding=2, groups=groups)
        x = jt.array(rng.standard_normal((2, 9, 11, 8)).astype(np.float32))
        weights = jt.array(rng.standard_normal(conv(x).shape).astype(np.float32))

        def run():
            y = conv(x)
            return [y.numpy()] + [g.numpy() for g in jt.grad((y * weights).sum(), [x, conv.weight, conv.bias])]

        library = run()
        with monkeypatch.context() as patch:
            patch.setattr(layout, "library_conv_ops", lambda x: None)
            stock = run()
        for a, b in zip(library, stock):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_mlp_decoder(monkeypatch):
    """The all-MLP decoder (no shipped config uses it): the GPU's op graph has no CPU-only op and
    gives the CPU path's values and gradients."""
    import jittor as jt

    from models import kernels
    from models.decoders.MLPDecoder import DecoderHead
    from utils.tools.gpu_graph import cpu_only_ops, profile

    rng = np.random.default_rng(0)
    head = DecoderHead([8, 16, 24, 32], num_classes=5, embed_dim=12)
    head.eval()
    inputs = [jt.array(rng.standard_normal((2, c, 16 // 2 ** i, 20 // 2 ** i)).astype(np.float32))
              for i, c in enumerate([8, 16, 24, 32])]
    params = [p for p in head.parameters() if not p.is_stop_grad()]

    def run():
        y = head(inputs)
        return [y.numpy()] + [g.numpy() for g in jt.grad((y * y).sum(), inputs + params)]

    cpu = run()
    monkeypatch.setattr(kernels, "switched_on", False)
    gpu_graph = []
    assert cpu_only_ops(profile(lambda: gpu_graph.extend(run()))) == {}
    for a, b in zip(cpu, gpu_graph):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
