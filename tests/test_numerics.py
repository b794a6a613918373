"""Numerics against float64: the loss of an official-size batch of logits and train-mode BatchNorm
with a large mean offset (NumPy float64 references; the CPU kernels and the stock-op path the GPU
takes), and NMF2D against the official float32 and float64 runs. Jittor's own float32 reductions
are sequential sums whose error grows with the number of elements; these sizes are where it showed."""
import os

import numpy as np
import pytest

from conftest import FIXTURES
from make_official_fixtures import NMF_SAMPLES, NMF_SCALES, nmf_inputs, relative_error, sample_index


def float64_cross_entropy(logits, label, ignore_index):
    """Mean cross-entropy over the labelled pixels, float64, one class at a time (memory)."""
    peak = logits.max(1).astype(np.float64)  # (B, H, W)
    total = np.zeros_like(peak)
    for k in range(logits.shape[1]):
        total += np.exp(logits[:, k].astype(np.float64) - peak)
    labelled = label != ignore_index
    picked = np.take_along_axis(logits, np.where(labelled, label, 0)[:, None], 1)[:, 0].astype(np.float64)
    return float(((np.log(total) + peak - picked)[labelled]).sum() / labelled.sum())


@pytest.mark.parametrize("path", ["cpu_kernel", "stock"])
def test_loss_of_an_official_size_batch(path):
    """8x40x480x640 logits (NYUDepthv2's 40 classes, batch 8), a quarter of the pixels unlabelled:
    within 1e-6 of float64 (measured: 4e-10 and 8e-10). Jittor's `cross_entropy_loss` (float32
    mean of the mask): 1.5e-2 on this batch."""
    import jittor as jt

    from utils.engine import loss

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 40, 480, 640), dtype=np.float32) * 4
    label = rng.integers(0, 40, (8, 480, 640)).astype(np.int32)
    label[rng.random(label.shape) < 0.25] = 255
    reference = float64_cross_entropy(logits, label, 255)
    sums = loss.cross_entropy_sum if path == "cpu_kernel" else loss.stock_cross_entropy_sum
    total, count = sums(jt.array(logits), jt.array(label), 255)
    assert count.item() == (label != 255).sum()
    ours = (total / count).item()
    print(f"{path}: loss {ours:.9f}, float64 {reference:.9f}, rel. error {abs(ours / reference - 1):.1e}")
    assert abs(ours / reference - 1) < 1e-6


@pytest.mark.parametrize("path", ["cpu_kernel", "stock"])
def test_train_mode_batchnorm_with_a_large_mean_offset(path, monkeypatch):
    """8x16x240x320, channel means up to 500 times the channel's spread: output within one float32
    ulp of each channel's mean, scaled by weight / std, of float64: the error of any float32 code
    that subtracts a float32 mean (2.5e-5 here; measured 6.5e-6, the same on both paths, 1 and 2
    threads, Intel and AMD; PyTorch's BatchNorm2d 6.7e-6 on the same input; Jittor's own,
    E[x^2]-E[x]^2 in float32: 2.0e3, and a float32 mean or variance accumulated over the 1.2M
    elements of a channel would be ~1e-2 off). Running statistics updated with the unbiased
    variance as PyTorch, evaluation with them as PyTorch."""
    import jittor as jt

    from models import batchnorm
    from models.batchnorm import BatchNorm2d

    if path == "stock":
        monkeypatch.setattr(batchnorm.cpu_float64, "batch_norm_train",
                            lambda x, w, b, eps, sync: bn.stock_forward(x, sync))
    rng = np.random.default_rng(1)
    C = 16
    spread, offset = rng.uniform(0.2, 2.0, C), rng.uniform(-50, 50, C) * 2.0
    x = (rng.standard_normal((8, C, 240, 320)) * spread[:, None, None] + offset[:, None, None]).astype(np.float32)
    weight, bias = rng.uniform(0.5, 1.5, C).astype(np.float32), rng.uniform(-0.5, 0.5, C).astype(np.float32)
    bn = BatchNorm2d(C)
    bn.weight.assign(weight)
    bn.bias.assign(bias)
    bn.train()
    y = bn(jt.array(x)).numpy()

    x64 = x.astype(np.float64)

    def normalised(mean, var):  # float64 BatchNorm output with these statistics, (C,) each
        shape = (1, C, 1, 1)
        return (x64 - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + bn.eps) * weight.reshape(shape) \
            + bias.reshape(shape)

    mean, var = x64.mean((0, 2, 3)), x64.var((0, 2, 3))
    error = np.abs(y - normalised(mean, var)).max()
    bound = np.max(weight / np.sqrt(var + bn.eps) * np.spacing(np.abs(mean).astype(np.float32)))
    print(f"{path}: train-mode output max |error| vs float64 {error:.1e} (one float32 ulp of the mean: {bound:.1e})")
    assert error < bound
    n = x.size // C
    m = bn.momentum  # from running mean 0 and running variance 1
    np.testing.assert_allclose(bn.running_mean.numpy(), m * mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bn.running_var.numpy(), (1 - m) + m * var * n / (n - 1), rtol=1e-6)

    bn.eval()
    y = bn(jt.array(x)).numpy()
    expected = normalised(bn.running_mean.numpy().astype(np.float64), bn.running_var.numpy().astype(np.float64))
    assert np.abs(y - expected).max() < 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("scale", NMF_SCALES)
def test_nmf_is_no_noisier_than_the_official(scale):
    """NMF2D alone (evaluation, 7 steps) on the input and bases the official float32 and float64
    runs had (`make_official_fixtures.py`): relative error against float64 at most 2x the official
    float32 one (measured: 1.0x-1.2x; a larger error inside the model comes from its input)."""
    import jittor as jt

    from models.decoders.ham_head import NMF2D

    ref = np.load(os.path.join(FIXTURES, "nmf_parity.npz"))
    x, raw_bases = nmf_inputs(scale)
    nmf = NMF2D()
    nmf.eval()
    nmf.fixed_raw_bases = raw_bases
    with jt.no_grad():
        ours = nmf(jt.array(x)).numpy().astype(np.float64).ravel()
    expected = ref[f"{scale}/fp64_sample"]
    error = relative_error(ours[sample_index(ours.size, NMF_SAMPLES, f"nmf/{scale}")], expected)
    official = float(ref[f"{scale}/fp32_error"])
    print(f"NMF x{scale}: rel. error vs float64 {error:.2e} (official float32 {official:.2e}), ratio {error / official:.2f}")
    assert error <= 2 * official
