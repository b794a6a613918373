"""Mixed precision (`--amp`: `models/precision.py` autocast and `utils/engine/amp.py` loss scale)
and float16 inference that cannot overflow, on the CPU.

The CPU runs the GPU's op graph under autocast (`kernels.enabled()` is off there): float16
convolutions and products, everything else float32, so no float16 comparison (which Jittor's CPU
compiler rejects) is ever built.
"""
import numpy as np
import pytest

AMP_MODELS = ["DFormer-Tiny", "DFormerv2-Small"]
SHAPE = (2, 64, 64)  # (batch, height, width)
# Relative L2 distance of the AMP update from the float32 update (SGD: the update is the gradient).
# Measured (2-core AMD EPYC, stand-in weights, two code versions): 0.096 and 0.099 for DFormer-Tiny,
# 0.127 and 0.122 for DFormerv2-Small; the float32 step with only its inputs rounded to float16
# (one rounding of 2^-11) is already 0.020 from it for DFormer-Tiny: these random-weight models
# amplify a rounding about 40 times, and AMP rounds the operands of every product. Bound: twice the
# largest measured.
UPDATE_TOLERANCE = 0.25


def sgd_update(model, C, data, amp, initial):
    """Parameter change of one `train_step` (SGD, lr 1e-2) from the `initial` state; float64 arrays."""
    import jittor as jt

    from utils.engine.amp import LossScaler
    from utils.engine.trainer import train_step
    from utils.tools.gpu_jittor import TRAIN_SEED

    for key, var in model.state_dict().items():
        var.update(jt.array(initial[key]))
    params = [p for p in model.parameters() if not p.is_stop_grad()]
    before = [p.numpy().astype(np.float64) for p in params]
    optimizer = jt.optim.SGD(params, lr=1e-2)
    jt.set_global_seed(TRAIN_SEED)  # the same DropPath draws in both runs
    loss = train_step(model, optimizer, [data], C, LossScaler() if amp else None)
    return loss, np.concatenate([(p.numpy() - b).ravel() for p, b in zip(params, before)])


@pytest.mark.parametrize("name", AMP_MODELS)
def test_amp_training_step(name, monkeypatch):
    """One `train_step` under --amp: every parameter, AdamW moment and BatchNorm statistic stays
    float32 (no gradient is float16), float16 ops run (and none without a CUDA kernel), the loss is finite with inputs of
    mean 10 (BatchNorm sums of squares far past float16's 65504), and the SGD update is within
    `UPDATE_TOLERANCE` of float32's."""
    import jittor as jt

    from models import kernels
    from utils.engine.amp import LossScaler
    from utils.engine.optim import build_optimizer
    from utils.engine.trainer import train_step
    from utils.tools.gpu_graph import cpu_only_ops, profile
    from utils.tools.gpu_jittor import TRAIN_SEED, build_with_weights, training_labels
    from utils.tools.stand_in_weights import synthetic_inputs

    monkeypatch.setattr(kernels, "switched_on", False)
    model, C = build_with_weights(name)
    rgb, depth, raw_bases = synthetic_inputs(*SHAPE, TRAIN_SEED)
    label = jt.array(training_labels(*SHAPE, C.num_classes, TRAIN_SEED))
    model.train()
    model.decode_head.hamburger.ham.fixed_raw_bases = raw_bases
    initial = {k: v.numpy() for k, v in model.state_dict().items()}

    data = {"data": jt.array(rgb), "modal_x": jt.array(depth), "label": label}
    loss32, update32 = sgd_update(model, C, data, False, initial)
    loss16, update16 = sgd_update(model, C, data, True, initial)
    distance = np.linalg.norm(update16 - update32) / np.linalg.norm(update32)
    print(f"{name}: loss fp32 {loss32:.6f}, AMP {loss16:.6f}; AMP update off by {distance:.4f} (relative)")
    assert abs(loss16 - loss32) < 1e-2 * abs(loss32)
    assert distance < UPDATE_TOLERANCE

    for key, var in model.state_dict().items():
        var.update(jt.array(initial[key]))
    optimizer, scaler = build_optimizer(model, C), LossScaler()
    shifted = {"data": jt.array(rgb + 10), "modal_x": jt.array(depth + 10), "label": label}
    losses = []
    rows = profile(lambda: losses.append(train_step(model, optimizer, [shifted], C, scaler)) or jt.sync_all(True))
    assert np.isfinite(losses[0]) and scaler.scale == 2.0 ** 16  # stepped: no inf/NaN gradient
    assert any("float16" in row_name for row_name, _, _ in rows), "no float16 op ran under --amp"
    assert cpu_only_ops(rows) == {}
    not_float32 = {k: str(v.dtype) for k, v in model.state_dict().items() if v.dtype != "float32"}
    for group in optimizer.param_groups:
        for kind in ("m", "values"):  # AdamW's moments
            not_float32.update({f"{kind}[{i}]": str(v.dtype) for i, v in enumerate(group[kind]) if v.dtype != "float32"})
    assert not_float32 == {}
    # gradients: float32, or float64 where BatchNorm's float64 statistics meet its weight, as in float32
    assert not [g for group in optimizer.param_groups for g in group["grads"] if g.dtype == "float16"]
    assert all(np.isfinite(v.numpy()).all() for v in model.state_dict().values())


def test_batchnorm_after_a_float16_product_does_not_overflow():
    """A 1x1 convolution then train-mode BatchNorm under autocast, inputs of mean 10 over 8192
    pixels per channel (sum of squares 8e5 > 65504): output and gradient within float16 rounding
    of float64 NumPy; the convolution ran in float16."""
    import jittor as jt

    from models import precision
    from models.batchnorm import BatchNorm2d
    from models.layers import PointwiseConv2d

    rng = np.random.default_rng(0)
    x = (10 + rng.standard_normal((2, 4, 64, 64))).astype(np.float32)
    conv, bn = PointwiseConv2d(4, 4, bias=False), BatchNorm2d(4)
    weight = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    conv.weight.update(jt.array(weight))
    bn.train()
    with precision.autocast():
        product = conv(jt.array(x))
        y = bn(product)
    assert product.dtype == "float32" and y.dtype == "float32"
    grad = jt.grad((y * y * y).sum(), conv.weight)  # y^3: a gradient that depends on the statistics
    x16, w16 = (a.astype(np.float16).astype(np.float64) for a in (x, weight[:, :, 0, 0]))  # the float16 operands
    z = np.einsum("oi,bihw->bohw", w16, x16)
    mean, var = z.mean((0, 2, 3), keepdims=True), z.var((0, 2, 3), keepdims=True)
    expected = (z - mean) / np.sqrt(var + 1e-5)
    assert np.isfinite(y.numpy()).all() and np.isfinite(grad.numpy()).all()
    assert np.abs(y.numpy() - expected).max() < 0.05  # float16 product: 2^-11 of |z| ~ 40, over its spread ~2
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * mean.ravel(), rtol=2e-3)


def test_loss_scaler_skips_inf_steps_and_grows_after_clean_ones():
    """GradScaler's rules: an inf gradient skips the step (weights unchanged) and halves the scale;
    `growth_interval` clean steps in a row double it; a finite step applies the unscaled gradient."""
    import jittor as jt

    from utils.engine.amp import LossScaler

    w = jt.array(np.array([1.0, 2.0], np.float32))
    optimizer = jt.optim.SGD([w], lr=0.5)
    scaler = LossScaler(init_scale=2.0 ** 16, growth_interval=3)
    assert scaler.scale == 65536.0

    def step(x):
        optimizer.backward(scaler.scaled((w * jt.array(np.array(x, np.float32))).sum()))
        return scaler.step(optimizer)

    assert not step([np.inf, 1.0]) and scaler.scale == 32768.0
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
    assert not step([np.nan, 1.0]) and scaler.scale == 16384.0
    assert step([1.0, 3.0]) and step([1.0, 3.0])
    np.testing.assert_allclose(w.numpy(), [1.0 - 2 * 0.5, 2.0 - 2 * 1.5])  # the unscaled gradient
    assert scaler.scale == 16384.0
    assert step([1.0, 3.0]) and scaler.scale == 32768.0  # the third clean step in a row
    assert not step([1.0, -np.inf]) and scaler.scale == 16384.0 and scaler.clean_steps == 0
    assert scaler.state_dict() == {"scale": 16384.0, "clean_steps": 0}


def test_float16_layer_norm_of_large_activations():
    """LayerNorm of float16 activations with |x - mean| up to ~2000 (squares past 65504): within
    float16 rounding of float64, where squaring in float16 gives inf variance and zeros."""
    import jittor as jt

    from models.layers import layer_norm

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 6, 64)) * 500).astype(np.float16)
    weight, bias = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    y = layer_norm(jt.array(x), jt.array(weight), jt.array(bias), 1e-6)
    assert y.dtype == "float16"
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6) * weight + bias
    assert np.abs(y.numpy().astype(np.float64) - expected).max() < 1e-2  # float16 output: 2^-11 of |y| < 8


def test_float16_inference_keeps_statistics_and_rotary_phase_float32():
    """`to_float16`: BatchNorm running variance 1e5 (inf in float16) and DFormerv2's rotary tables at
    stage 1 of a 480x640 image (phase up to 19199 rad) stay float32; float16 activations through
    the BatchNorm come out within float16 rounding of float64."""
    import jittor as jt

    from models import precision
    from models.batchnorm import BatchNorm2d
    from models.encoders.DFormerv2 import GeoPriorGen
    from models.layers import LayerNorm, Linear

    class Net(jt.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.geo, self.norm, self.fc = BatchNorm2d(3), GeoPriorGen(64, 4, 2, 4), LayerNorm(8), Linear(8, 8)

    net = Net()
    net.bn.running_var.update(jt.array(np.array([1e5, 4e5, 100.0], np.float32)))
    net.bn.running_mean.update(jt.array(np.array([300.0, -500.0, 0.0], np.float32)))
    net.eval()
    precision.to_float16(net)
    assert net.fc.weight.dtype == "float16" and net.fc.bias.dtype == "float16"
    kept = [net.bn.running_var, net.bn.running_mean, net.bn.weight, net.geo.angle, net.geo.decay, net.norm.weight]
    assert all(v.dtype == "float32" for v in kept)

    rng = np.random.default_rng(0)
    x = (np.array([300.0, -500.0, 0.0]).reshape(1, 3, 1, 1) + rng.standard_normal((2, 3, 8, 8)) * 100)
    y = net.bn(jt.array(x.astype(np.float16)))  # a float16 activation
    assert y.dtype == "float16"
    x = x.astype(np.float16).astype(np.float64)
    expected = (x - [[[[300.0]], [[-500.0]], [[0.0]]]]) / np.sqrt(np.array([1e5, 4e5, 100.0]).reshape(1, 3, 1, 1) + 1e-5)
    assert np.abs(y.numpy() - expected).max() < 0.05  # float16 output: 2^-11 of |y| < 40

    sin, cos = net.geo.rotary_tables(120, 160)
    angle = 1.0 / 10000 ** np.linspace(0, 1, 8, dtype=np.float32)
    phase = np.arange(120 * 160, dtype=np.float32)[:, None] * np.repeat(angle, 2)[None]  # float32, as upstream
    assert sin.dtype == "float32"
    np.testing.assert_allclose(sin.numpy().reshape(-1, 16), np.sin(phase), atol=1e-5)
    np.testing.assert_allclose(cos.numpy().reshape(-1, 16), np.cos(phase), atol=1e-5)
