"""Small building blocks shared by the DFormer/DFormerv2 encoders and the decode heads.

Each mirrors a PyTorch/mmcv behaviour that Jittor lacks or computes differently:
`LayerNorm` (two-pass variance), `ConvModule` (mmcv parameter names, `bias='auto'`) and
`adaptive_avg_pool_nhwc` (PyTorch's overlapping adaptive-pool bins), `TapSumConv2d` (a training
convolution whose float32 rounding does not grow with its input channels).

The rest is CPU speed, same maths: on the CPU Jittor's own kernels are single-threaded and only
2-D products and convolutions reach oneDNN. `resize`, `PointwiseConv2d` and `bmm` turn work into
2-D oneDNN products; on the CPU (float32, training and inference alike) `ChannelsLastConv2d`,
`layer_norm`, `gelu`, `axial_attention`, `full_attention` and `pooled_attention` run the multi-threaded kernels of
`kernels/ops.py` and `kernels/attention.py`, each with its own backward pass (`kernels.applies`
decides). The GPU takes the stock Jittor ops and changes layouts only through `layout.py`, so that
no op of its graph runs on the host.
"""
import functools
import math

import jittor as jt
import numpy as np
from jittor import nn

from . import kernels
from .kernels import attention as cpu_attention
from .kernels import ops as cpu_ops
from .batchnorm import BatchNorm2d
from .layout import conv_nhwc, matmul, permute


def layer_norm(x, weight, bias, eps):
    """LayerNorm over the last axis with PyTorch's two-pass variance.

    Why not `jt.nn.LayerNorm`: it computes E[x^2] - E[x]^2, which loses digits on the large
    residual-stream activations of deep stages and breaks 1e-4 parity. On the CPU one
    multi-threaded kernel each way (`cpu_ops.layer_norm`).
    """
    if kernels.applies(x):
        return cpu_ops.layer_norm(x, weight, bias, eps)
    xc = x - x.mean(-1, keepdims=True)
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / jt.sqrt(var + eps) * weight + bias


def gelu(x):
    """GELU (erf form); on the CPU one multi-threaded kernel each way."""
    return cpu_ops.gelu(x) if kernels.applies(x) else nn.gelu(x)


class GELU(nn.Module):
    def execute(self, x):
        return gelu(x)


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` (same parameters and isinstance) computed with `layer_norm` above."""

    def execute(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


def resize(x, size):
    """Bilinear resize of an NCHW tensor with align_corners=False, as the official models do.

    On the CPU it is two matrix products with PyTorch's interpolation weights, rows then columns:
    Jittor's `interpolate` is a single-threaded gather, the products run in oneDNN (the final
    logits upsampling, 40x60x80 -> 40x480x640, takes half the time on one core and scales with
    cores). Same result to rounding (~5e-7); differentiable. The GPU keeps `interpolate`.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if not kernels.enabled():
        return nn.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    (h, w), (H, W) = x.shape[-2:], size
    rows = jt.array(_bilinear_matrix(int(h), int(H)))  # (H, h)
    cols = jt.array(_bilinear_matrix(int(w), int(W)))  # (W, w)
    x = nn.matmul_transpose(x.transpose(0, 1, 3, 2), rows)  # (B, C, w, H)
    return nn.matmul_transpose(x.transpose(0, 1, 3, 2), cols)  # (B, C, H, W)


@functools.lru_cache(maxsize=None)
def _bilinear_matrix(size, out):
    """(out, size) weights of PyTorch's bilinear resize, align_corners=False, in float32 like it:
    source = max((i + 0.5) * size/out - 0.5, 0), split between floor(source) and the next pixel."""
    matrix = np.zeros((out, size), dtype=np.float32)
    scale = np.float32(size) / np.float32(out)
    for i in range(out):
        source = max(scale * np.float32(i + 0.5) - np.float32(0.5), np.float32(0))
        low = int(source)
        high = low + 1 if low < size - 1 else low
        weight = np.float32(source - low)
        matrix[i, low] += np.float32(1) - weight
        matrix[i, high] += weight
    return matrix


class ConvModule(nn.Module):
    """mmcv's ConvModule: conv, optional BN, optional ReLU, with mmcv's parameter names.

    mmcv's `bias='auto'` means no conv bias when a norm follows; a port that keeps the bias there
    gets three decode-head biases that no checkpoint fills.
    """

    def __init__(self, in_channels, out_channels, norm=True, act=True, bn_eps=1e-5):
        super().__init__()
        self.conv = PointwiseConv2d(in_channels, out_channels, bias=not norm)
        self.bn = BatchNorm2d(out_channels, eps=bn_eps) if norm else None
        self.activate = nn.ReLU() if act else None

    def execute(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


def rotate_pairs(x):
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) over the last axis (rotary embeddings).

    On the CPU one product with a fixed signed permutation matrix (exact: each output is one input
    times +-1): the strided slices and `stack` of the stock version are single-threaded copies,
    with full-size zero tensors and `setitem`s in their backward (~80 ms of a DFormerv2-B
    training step at 8x120x160). The GPU keeps the slices.
    """
    if kernels.applies(x):
        return x @ jt.array(_pair_rotation_matrix(int(x.shape[-1])))
    x1, x2 = x[..., ::2], x[..., 1::2]
    return jt.stack([-x2, x1], dim=-1).reshape(x.shape)


@functools.lru_cache(maxsize=None)
def _pair_rotation_matrix(d):
    """(d, d) matrix R with (x @ R)[2i] = -x[2i+1] and (x @ R)[2i+1] = x[2i]."""
    matrix = np.zeros((d, d), dtype=np.float32)
    matrix[1::2, 0::2] = -np.eye(d // 2, dtype=np.float32)
    matrix[0::2, 1::2] = np.eye(d // 2, dtype=np.float32)
    return matrix


def _adaptive_pool_matrix(size, out):
    """(out, size) averaging matrix with PyTorch's bins [floor(i*size/out), ceil((i+1)*size/out))."""
    matrix = np.zeros((out, size), dtype=np.float32)
    for i in range(out):
        start, end = (i * size) // out, math.ceil((i + 1) * size / out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool_nhwc(x, out):
    """PyTorch-exact AdaptiveAvgPool2d((out, out)) of an NHWC tensor, returned NHWC.

    Why not `jt.nn.AdaptiveAvgPool2d`: it uses fixed-stride bins (different numbers when the size
    is not a multiple of `out`) and divides by zero on maps smaller than `out`.
    """
    B, H, W, C = x.shape
    pool_h = jt.array(_adaptive_pool_matrix(H, out))  # (out, H)
    pool_w = jt.array(_adaptive_pool_matrix(W, out))  # (out, W)
    if not kernels.enabled():  # the GPU: two batched products, no transposes
        x = matmul(pool_h.broadcast((B, out, H), [0]), x.reshape(B, H, W * C))  # pool rows: (B, out_h, W*C)
        x = matmul(pool_w.broadcast((B * out, out, W), [0]), x.reshape(B * out, W, C))  # (B*out_h, out_w, C)
        return x.reshape(B, out, out, C)
    x = x.permute(0, 2, 3, 1).reshape(B * W * C, H)  # (B*W*C, H)
    x = nn.matmul_transpose(x, pool_h).reshape(B, W, C * out)  # pool rows: (B, W, C*out)
    x = x.permute(0, 2, 1).reshape(B * C * out, W)  # (B*C*out_h, W)
    x = nn.matmul_transpose(x, pool_w).reshape(B, C, out, out)  # pool cols: (B, C, out_h, out_w)
    return x.permute(0, 2, 3, 1)  # (B, out_h, out_w, C)


class ChannelsLastConv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters, state_dict entries and isinstance) on NHWC tensors, NHWC out.

    Why: Jittor's convolution is NCHW, so a channels-last block would pay two transposes around
    every convolution, and oneDNN's depthwise backward passes are slow. On the CPU this is
    `cpu_ops.conv_nhwc`: oneDNN with NHWC ("acdb") input and output, an OpenMP kernel for wide
    3x3 depthwise convs, and OpenMP kernels for depthwise gradients. The GPU runs cuDNN on the NHWC
    tensor (`layout.conv_nhwc`), not Jittor's depthwise kernel (one thread block per channel and
    image); only without cuDNN the stock convolution of an NCHW copy.
    """

    def execute(self, x, residual_gelu=False):
        """conv(x), or with `residual_gelu` gelu(conv(x) + x) (DFormer's MLP position encoding and
        activation, fused into the depthwise kernel in inference)."""
        if kernels.applies_with_onednn(x):
            return cpu_ops.conv_nhwc(x, self, residual_gelu)
        y = conv_nhwc(x, self)
        if y is None:  # no library for channels-last convolutions loaded
            y = permute(super().execute(permute(x, 0, 3, 1, 2)), 0, 2, 3, 1)
        return nn.gelu(y + x) if residual_gelu else y


class TapSumConv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters and state_dict entries) whose CPU training forward is one
    matrix product per kernel tap, summed: for a 3x3 kernel, nine (B*OH*OW, in) @ (in, out).

    Why: oneDNN's direct convolution accumulates all in x kh x kw products of an output in one
    float32 chain, so its rounding error grows with the input channels, unlike PyTorch's; per-tap
    chains keep the training steps as close to a float64 run as the official code's (numbers:
    docs/training.md). The taps are one `reindex` (nine strided slices trip Jittor's parallel
    kernel compiler). It holds the taps (kh*kw copies of the input), so it runs in training mode
    only; inference and the GPU run the stock convolution.
    """

    def execute(self, x):
        if not (self.is_training() and kernels.applies_with_onednn(x)) or self.groups != 1:
            return super().execute(x)
        B, C, H, W = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        taps = x.reindex([kh * kw, B, OH, OW, C], [  # (kh*kw, B, OH, OW, C), zero in the padding
            "i1", "i4", f"i2*{sh}+i0/{kw}-{ph}", f"i3*{sw}+i0%{kw}-{pw}"]).reshape(kh * kw, B * OH * OW, C)
        weight = self.weight.permute(2, 3, 1, 0).reshape(kh * kw, C, self.out_channels)  # (kh*kw, C, out)
        y = cpu_ops.batched_matmul(taps, weight).sum(0)  # (B*OH*OW, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(B, OH, OW, self.out_channels).permute(0, 3, 1, 2)


class PointwiseConv2d(nn.Conv2d):
    """1x1 `nn.Conv2d` (NCHW, same parameters) computed as one matrix product per image.

    Why: Jittor's CPU convolution wraps oneDNN's in layout reorders; a 1x1 convolution is a plain
    GEMM, (out, in) @ (in, H*W), and runs about twice as fast as one (the whole decode head but
    NMF is 1x1 convolutions). On the CPU `cpu_ops.batched_matmul`, the GPU keeps cuDNN.
    """

    def __init__(self, in_channels, out_channels, bias=True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def execute(self, x):
        if not kernels.applies_with_onednn(x):
            return super().execute(x)
        B, C, H, W = x.shape
        weight = self.weight.reshape(1, self.out_channels, C)
        y = cpu_ops.batched_matmul(weight, x.reshape(B, C, H * W))  # (B, out, H*W)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1)
        return y.reshape(B, self.out_channels, H, W)


def bmm(a, b, transpose_a=False, transpose_b=False):
    """Batched product op_a(a) @ op_b(b), op = transpose when asked: (B, n, m) @ (B, m, k) -> (B, n, k).

    Why not `jt.bmm` on the CPU: Jittor runs any batched product as one single-threaded
    broadcast-multiply-sum loop; `cpu_ops.batched_matmul` runs one multi-threaded oneDNN sgemm
    per batch entry (transposed operands read in place), in one op. On the GPU one cuBLAS product
    with transpose flags (`layout.matmul`).
    """
    if not kernels.applies_with_onednn(a):
        return matmul(a, b, transpose_a, transpose_b)
    return cpu_ops.batched_matmul(a, b, transpose_a, transpose_b)


def axial_attention(q, k, v, mask_w, mask_h):
    """Attention along each row (over W), then along each column (over H), with additive masks.

    q, k: (B, n, H, W, d), k already scaled; v: (B, H, W, n*d); mask_w: (B, n, H, W, W);
    mask_h: (B, n, W, H, H). Returns (B, H, W, n*d). The CPU takes the fused kernel, which reads
    every layout through strides; the GPU batched products that read k transposed in place.
    """
    B, n, H, W, d = q.shape
    C = n * d
    if kernels.applies(q):
        qk_rows = (n * H * W * d, H * W * d, W * d, d)  # groups (b, head, row), position = column
        qk_cols = (n * H * W * d, H * W * d, d, W * d)  # groups (b, head, column), position = row
        v_rows = (H * W * C, d, W * C, C)  # v (B, H, W, n*d) seen as groups (b, head, row)
        out_cols = (H * W * C, d, C, W * C)  # output (B, H, W, n*d) as groups (b, head, column)
        attend = cpu_attention.attention
        rows = attend(q, k, v, mask_w, (B, n, H), [qk_rows, qk_rows, v_rows, qk_rows], (B, n, H, W, d), d)
        return attend(q, k, rows, mask_h, (B, n, W), [qk_cols, qk_cols, qk_cols, out_cols], (B, H, W, C), d)
    q_w, k_w = permute(q, 0, 2, 1, 3, 4), permute(k, 0, 2, 1, 3, 4)  # (B, H, n, W, d)
    v = permute(v.reshape(B, H, W, n, d), 0, 1, 3, 2, 4)  # (B, H, n, W, d)
    attn_w = nn.softmax(matmul(q_w, k_w, trans_b=True) + permute(mask_w, 0, 2, 1, 3, 4), dim=-1)  # (B, H, n, W, W)
    v = permute(matmul(attn_w, v), 0, 3, 2, 1, 4)  # (B, W, n, H, d)
    q_h, k_h = permute(q, 0, 3, 1, 2, 4), permute(k, 0, 3, 1, 2, 4)  # (B, W, n, H, d)
    attn_h = nn.softmax(matmul(q_h, k_h, trans_b=True) + permute(mask_h, 0, 2, 1, 3, 4), dim=-1)  # (B, W, n, H, H)
    return permute(matmul(attn_h, v), 0, 3, 1, 2, 4).reshape(B, H, W, C)


def full_attention(q, k, v, mask):
    """Attention over all H*W positions with an additive mask.

    q, k: (B, n, H, W, d), k already scaled; v: (B, H, W, n*d); mask: (B, n, HW, HW).
    Returns (B, H, W, n*d).
    """
    B, n, H, W, d = q.shape
    C = n * d
    if kernels.applies(q):  # one group per (b, head); v and the output read as (B, HW, n, d)
        qk, vo = (n * H * W * d, H * W * d, 0, d), (H * W * C, d, 0, C)
        return cpu_attention.attention(q, k, v, mask, (B, n, 1), [qk, qk, vo, vo], (B, H, W, C), d)
    q, k = q.reshape(B, n, H * W, d), k.reshape(B, n, H * W, d)
    v = permute(v.reshape(B, H * W, n, d), 0, 2, 1, 3)  # (B, n, HW, d)
    attn = nn.softmax(matmul(q, k, trans_b=True) + mask, dim=-1)  # (B, n, HW, HW)
    return permute(matmul(attn, v), 0, 2, 1, 3).reshape(B, H, W, C)


def pooled_attention(q, kv):
    """Attention of a few queries over all positions, per head, without a mask (DFormer's global
    awareness: 49 pooled queries over H*W positions).

    q: (B, Lq, n, d), already scaled; kv: (B, Lk, 2, n, d), keys then values. Returns (B, n, Lq, d).
    The CPU takes the fused kernel, which reads the keys and values inside kv through strides.
    """
    B, Lq, n, d = q.shape
    Lk = kv.shape[1]
    if kernels.applies(q):  # one group per (b, head)
        q_view, out_view = (Lq * n * d, d, 0, n * d), (n * Lq * d, Lq * d, 0, d)
        k_view, v_view = (Lk * 2 * n * d, d, 0, 2 * n * d), (Lk * 2 * n * d, d, 0, 2 * n * d, n * d)
        return cpu_attention.attention(q, kv, kv, None, (B, n, 1), [q_view, k_view, v_view, out_view], (B, n, Lq, d), d)
    kv = permute(kv, 2, 0, 3, 1, 4)  # (2, B, n, Lk, d)
    attn = nn.softmax(matmul(permute(q, 0, 2, 1, 3), kv[0], trans_b=True), dim=-1)  # (B, n, Lq, Lk)
    return matmul(attn, kv[1])
