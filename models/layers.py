"""Building blocks shared by the encoders and decode heads, each computing what its PyTorch/mmcv
counterpart computes (where Jittor's own op differs, the docstring says how).

Each block is the portable maths, in the dtypes `precision.py` decides; on the CPU fast path (the
`kernels` predicates: `enabled`, `applies` for float32, `applies_with_onednn` where oneDNN is
called) it calls its CPU version in `kernels/` (same maths, multi-threaded or oneDNN). The GPU
takes the stock ops and changes layouts only through `layout.py`, so no op of its graph runs on the
host. Constant matrices come from `constants.py`, built once per shape.
"""
import math

import jittor as jt
import numpy as np
from jittor import nn

from . import constants, kernels, precision
from .kernels import layers as cpu_layers
from .kernels import ops as cpu_ops
from .batchnorm import BatchNorm2d
from .layout import conv_nchw, conv_nhwc, linear, matmul, matmul_2d, permute


def layer_norm(x, weight, bias, eps):
    """LayerNorm over the last axis with PyTorch's two-pass variance: `jt.nn.LayerNorm`'s
    E[x^2] - E[x]^2 loses digits on the large activations of deep stages and breaks 1e-4 parity.
    Computed in float32 whatever the input type, the result in the input's type."""
    if kernels.applies(x):
        return cpu_ops.layer_norm(x, weight, bias, eps)
    wide = precision.widened(x)
    xc = wide - wide.mean(-1, keepdims=True)
    var = (xc * xc).mean(-1, keepdims=True)
    return precision.like(xc / jt.sqrt(var + constants.filled(eps, var.shape, var.dtype)) * weight + bias, x)


def gelu(x):
    """GELU (erf form), `nn.gelu`'s formula with its constants built once; on the CPU one
    multi-threaded kernel each way."""
    if kernels.applies(x):
        return cpu_ops.gelu(x)
    erf = jt.erf(x / constants.scalar_like(math.sqrt(2), x)) + constants.scalar_like(1, x)
    return erf * x * constants.scalar_like(0.5, x)


class GELU(nn.Module):
    def execute(self, x):
        return gelu(x)

    def onnx(self, ex, x):
        return ex.g.gelu(x)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, state_dict entries and isinstance) whose product takes
    `precision`'s dtypes; off the CPU fast path one library product per call (`layout.linear`)."""

    def execute(self, x):
        if not kernels.enabled():
            return linear(x, self.weight, self.bias)
        x, weight = precision.product_operands(x, self.weight)
        y = precision.product_result(nn.matmul_transpose(x, weight))
        return y if self.bias is None else y + precision.like(self.bias, y)

    def onnx(self, ex, x):
        return ex.g.linear(x, self.weight.numpy(), None if self.bias is None else self.bias.numpy(), ex.name(self))

    def macs(self, inputs, output):
        """thop: output elements x in_features."""
        return math.prod(output.shape) * self.in_features, 0


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` (same parameters and isinstance) computed with `layer_norm` above."""

    keeps_float32 = True  # its parameters, in float16 inference (`precision.to_float16`)

    def execute(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)

    def onnx(self, ex, x):
        return ex.g.layer_norm(x, ex.param(self, "weight"), ex.param(self, "bias"), self.eps)

    def macs(self, inputs, output):
        """thop: 2 x input elements, doubled for the affine weight and bias."""
        return math.prod(inputs[0].shape) * (4 if self.elementwise_affine else 2), 0


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters and isinstance) whose convolution takes `precision`'s dtypes;
    the base of the convolutions below."""

    def execute(self, x):
        if x.dtype == self.weight.dtype and not precision.autocast_enabled():
            return super().execute(x)
        x, weight = precision.product_operands(x, self.weight)
        if hasattr(self, "depthwise_conv"):  # Jittor's CUDA depthwise kernel
            y = self.depthwise_conv(x, weight)
        else:
            y = nn.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)
        y = precision.product_result(y)
        return y if self.bias is None else y + precision.like(self.bias, y).reshape(1, -1, 1, 1)

    def onnx(self, ex, x):
        return ex.conv_bn(x, self)

    def macs(self, inputs, output):
        """thop: output elements x in_channels / groups x kh x kw (the bias not counted)."""
        kh, kw = self.kernel_size
        return math.prod(output.shape) * (self.in_channels // self.groups) * kh * kw, 0


def resize(x, size):
    """Bilinear resize of an NCHW tensor with align_corners=False, as the official models do.

    Off the CPU fast path it is two products with PyTorch's interpolation weights (columns, then
    rows), whose matrices are built once per shape (`constants`): five graph ops where Jittor's
    `interpolate` builds about fifty. Same result to rounding (each output sums two weighted inputs).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if kernels.enabled():
        return cpu_layers.resize(x, size)
    B, C, h, w = x.shape
    H, W = (int(s) for s in size)
    cols = constants.matrix("bilinear", w, W, x.dtype, transposed=True)  # (w, W)
    x = matmul_2d(x.reshape(B * C * h, w), cols)  # (B*C*h, W)
    rows = constants.matrix("bilinear", h, H, x.dtype, batch=B * C)  # (B*C, H, h)
    return matmul(rows, x.reshape(B * C, h, W)).reshape(B, C, H, W)


def relu(x):
    """ReLU: off the CPU fast path max(x, 0) with the 0 built once (two graph ops where Jittor's
    `nn.relu`, a compare and a select, builds six; the same values)."""
    return nn.relu(x) if kernels.enabled() else jt.maximum(x, constants.scalar_like(0, x))


class ConvModule(nn.Module):
    """mmcv's ConvModule (conv, optional BN, optional ReLU; mmcv's names), with mmcv's
    `bias='auto'`: no conv bias when a norm follows, as in every checkpoint."""

    def __init__(self, in_channels, out_channels, norm=True, act=True):
        super().__init__()
        self.conv = PointwiseConv2d(in_channels, out_channels, bias=not norm)
        self.bn = BatchNorm2d(out_channels) if norm else None
        self.activate = nn.ReLU() if act else None

    def execute(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = relu(x)
        return x

    def onnx(self, ex, x):
        x = ex.conv_bn(x, self.conv, self.bn)
        return x if self.activate is None else ex(self.activate, x)


def rotate_pairs(x):
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) over the last axis (rotary embeddings)."""
    if kernels.applies(x):
        return cpu_layers.rotate_pairs(x)
    swapped = x.reshape((*x.shape[:-1], x.shape[-1] // 2, 2))[..., ::-1].reshape(x.shape)  # (x1, x0, x3, x2, ...)
    return swapped * constants.constant(("pair_signs", x.shape[-1]), x.dtype,
                                        lambda: np.tile(np.array([-1, 1], np.float32), x.shape[-1] // 2))


def adaptive_avg_pool_nhwc(x, out):
    """PyTorch-exact AdaptiveAvgPool2d((out, out)) of an NHWC tensor, NHWC out (Jittor's uses
    fixed-stride bins, and divides by zero on maps smaller than `out`), with the averaging matrices
    of `constants.adaptive_pool_matrix`; off the CPU fast path one product over all positions."""
    B, H, W, C = x.shape
    if kernels.enabled():
        pool_h = constants.matrix("pool", H, out, x.dtype)  # (out, H)
        pool_w = constants.matrix("pool", W, out, x.dtype)  # (out, W)
        return cpu_layers.adaptive_avg_pool_nhwc(x, pool_h, pool_w)
    pool = constants.grid_matrix("pool", (H, W), (out, out), x.dtype, B)  # (B, out*out, H*W)
    return matmul(pool, x.reshape(B, H * W, C)).reshape(B, out, out, C)


def upsample_nhwc(x, size):
    """Bilinear resize (align_corners=False) of a small NHWC map, NHWC out; off the CPU fast path
    one product with the (H*W, h*w) interpolation matrix, no layout changes (DFormer's 7x7 global
    awareness back to its stage's size)."""
    B, h, w, C = x.shape
    if kernels.enabled():
        return permute(resize(permute(x, 0, 3, 1, 2), size), 0, 2, 3, 1)
    H, W = (int(s) for s in size)
    grid = constants.grid_matrix("bilinear", (h, w), (H, W), x.dtype, B)  # (B, H*W, h*w)
    return matmul(grid, x.reshape(B, h * w, C)).reshape(B, H, W, C)


class ChannelsLastConv2d(Conv2d):
    """`nn.Conv2d` (same parameters, state_dict entries and isinstance) on NHWC tensors, NHWC out,
    so channels-last blocks pay no transposes around their convolutions: on the CPU
    `cpu_ops.conv_nhwc`, on the GPU cuDNN on the NHWC tensor (`layout.conv_nhwc`)."""

    def execute(self, x, residual_gelu=False):
        """conv(x), or with `residual_gelu` gelu(conv(x) + x) (DFormer's MLP position encoding and
        activation, fused into the depthwise kernel in inference)."""
        if kernels.applies_with_onednn(x):
            return cpu_ops.conv_nhwc(x, self, residual_gelu)
        y = conv_nhwc(x, self)
        if y is None:  # no library for channels-last convolutions loaded
            y = permute(super().execute(permute(x, 0, 3, 1, 2)), 0, 2, 3, 1)
        return gelu(y + x) if residual_gelu else y

    def onnx(self, ex, x, residual_gelu=False):
        y = ex.g.nchw_to_nhwc(ex.conv_bn(ex.g.nhwc_to_nchw(x), self))
        return ex.g.gelu(ex.g.add(y, x)) if residual_gelu else y


class TapSumConv2d(Conv2d):
    """`nn.Conv2d` (same parameters and state_dict entries) whose CPU training forward sums one
    matrix product per kernel tap (`kernels/layers.tap_sum_conv`), so that its float32 rounding
    does not grow with the input channels and training steps stay as close to a float64 run as the
    official code's (numbers: docs/training.md). It holds kh*kw copies of the input, so inference
    and the GPU run the stock convolution.
    """

    def execute(self, x):
        if self.is_training() and self.groups == 1 and kernels.applies_with_onednn(x):
            return cpu_layers.tap_sum_conv(x, self)
        y = None if kernels.enabled() else conv_nchw(x, self)
        return super().execute(x) if y is None else y

    onnx = Conv2d.onnx  # the same convolution


class PointwiseConv2d(Conv2d):
    """1x1 `nn.Conv2d` (NCHW, same parameters); on the CPU one matrix product per image."""

    def __init__(self, in_channels, out_channels, bias=True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def execute(self, x):
        if kernels.applies_with_onednn(x):
            return cpu_layers.pointwise_conv(x, self)
        y = None if kernels.enabled() else conv_nchw(x, self)
        return super().execute(x) if y is None else y

    onnx = Conv2d.onnx  # the same convolution


def axial_attention(q, k, v, mask_w, mask_h):
    """Attention along each row (over W), then along each column (over H), with additive masks.

    q, k: (B, n, H, W, d), k already scaled; v: (B, H, W, n*d); mask_w: (B, n, H, W, W);
    mask_h: (B, n, W, H, H). Returns (B, H, W, n*d). The CPU takes the fused kernel; the GPU
    batched products that read k transposed in place.
    """
    if kernels.applies(q):
        return cpu_layers.axial_attention(q, k, v, mask_w, mask_h)
    B, n, H, W, d = q.shape
    C = n * d
    q_w, k_w = permute(q, 0, 2, 1, 3, 4), permute(k, 0, 2, 1, 3, 4)  # (B, H, n, W, d)
    v = permute(v.reshape(B, H, W, n, d), 0, 1, 3, 2, 4)  # (B, H, n, W, d)
    scores_w = precision.widened(matmul(q_w, k_w, trans_b=True)) + permute(mask_w, 0, 2, 1, 3, 4)
    attn_w = precision.softmax(scores_w, dim=-1)  # (B, H, n, W, W)
    v = permute(matmul(attn_w, v), 0, 3, 2, 1, 4)  # (B, W, n, H, d)
    q_h, k_h = permute(q, 0, 3, 1, 2, 4), permute(k, 0, 3, 1, 2, 4)  # (B, W, n, H, d)
    scores_h = precision.widened(matmul(q_h, k_h, trans_b=True)) + permute(mask_h, 0, 2, 1, 3, 4)
    attn_h = precision.softmax(scores_h, dim=-1)  # (B, W, n, H, H)
    return permute(matmul(attn_h, v), 0, 3, 1, 2, 4).reshape(B, H, W, C)


def full_attention(q, k, v, mask):
    """Attention over all H*W positions with an additive mask.

    q, k: (B, n, H, W, d), k already scaled; v: (B, H, W, n*d); mask: (B, n, HW, HW).
    Returns (B, H, W, n*d).
    """
    if kernels.applies(q):
        return cpu_layers.full_attention(q, k, v, mask)
    B, n, H, W, d = q.shape
    C = n * d
    q, k = q.reshape(B, n, H * W, d), k.reshape(B, n, H * W, d)
    v = permute(v.reshape(B, H * W, n, d), 0, 2, 1, 3)  # (B, n, HW, d)
    attn = precision.softmax(precision.widened(matmul(q, k, trans_b=True)) + mask, dim=-1)  # (B, n, HW, HW)
    return permute(matmul(attn, v), 0, 2, 1, 3).reshape(B, H, W, C)


def pooled_attention(q, kv):
    """Attention of a few queries over all positions, per head, without a mask (DFormer's global
    awareness: 49 pooled queries over H*W positions).

    q: (B, Lq, n, d), already scaled; kv: (B, Lk, 2, n, d), keys then values. Returns (B, n, Lq, d).
    The CPU takes the fused kernel.
    """
    if kernels.applies(q):
        return cpu_layers.pooled_attention(q, kv)
    kv = permute(kv, 2, 0, 3, 1, 4)  # (2, B, n, Lk, d)
    attn = precision.softmax(matmul(permute(q, 0, 2, 1, 3), kv[0], trans_b=True), dim=-1)  # (B, n, Lq, Lk)
    return matmul(attn, kv[1])
