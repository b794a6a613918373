"""The CPU side of `models/layers.py`: each function here computes the block of the same name
there, with the same maths, where that block's `models.kernels` predicate holds.

Why: on the CPU Jittor's own kernels are single-threaded and only 2-D products and convolutions
reach oneDNN. So resizes, the rotary pair swap and adaptive pooling become 2-D oneDNN products;
1x1 and training 3x3 convolutions become batched oneDNN products (`ops.batched_matmul`); the
attentions call the fused kernel of `attention.py`, which reads every layout through strides.
Values and gradients match the stock ops to rounding (`tests/test_cpu_kernels.py`).
"""
import functools

import jittor as jt
import numpy as np
from jittor import nn

from .. import constants
from . import attention, ops


def resize(x, size):
    """Bilinear NCHW resize, align_corners=False, as two products with PyTorch's interpolation
    weights (`constants.bilinear_matrix`), rows then columns: Jittor's `interpolate` is a
    single-threaded gather, the products run in oneDNN. Same result to rounding; differentiable."""
    (h, w), (H, W) = x.shape[-2:], size
    rows = constants.matrix("bilinear", int(h), int(H), x.dtype)  # (H, h)
    cols = constants.matrix("bilinear", int(w), int(W), x.dtype)  # (W, w)
    x = nn.matmul_transpose(x.transpose(0, 1, 3, 2), rows)  # (B, C, w, H)
    return nn.matmul_transpose(x.transpose(0, 1, 3, 2), cols)  # (B, C, H, W)


def rotate_pairs(x):
    """One product with a fixed signed permutation matrix (exact: each output is one input times
    +-1). The stock strided slices and `stack` are single-threaded copies, with full-size zero
    tensors and `setitem`s in their backward."""
    d = int(x.shape[-1])
    return x @ constants.constant(("pair_rotation", d), x.dtype, lambda: _pair_rotation_matrix(d))


@functools.lru_cache(maxsize=None)
def _pair_rotation_matrix(d):
    """(d, d) matrix R with (x @ R)[2i] = -x[2i+1] and (x @ R)[2i+1] = x[2i]."""
    matrix = np.zeros((d, d), dtype=np.float32)
    matrix[1::2, 0::2] = -np.eye(d // 2, dtype=np.float32)
    matrix[0::2, 1::2] = np.eye(d // 2, dtype=np.float32)
    return matrix


def adaptive_avg_pool_nhwc(x, pool_h, pool_w):
    """NHWC `x` pooled with the block's (out, H) and (out, W) averaging matrices, as 2-D products:
    (B, out, out, C)."""
    B, H, W, C = x.shape
    out = pool_h.shape[0]
    x = x.permute(0, 2, 3, 1).reshape(B * W * C, H)  # (B*W*C, H)
    x = nn.matmul_transpose(x, pool_h).reshape(B, W, C * out)  # pool rows: (B, W, C*out)
    x = x.permute(0, 2, 1).reshape(B * C * out, W)  # (B*C*out_h, W)
    x = nn.matmul_transpose(x, pool_w).reshape(B, C, out, out)  # pool cols: (B, C, out_h, out_w)
    return x.permute(0, 2, 3, 1)  # (B, out_h, out_w, C)


def tap_sum_conv(x, conv):
    """`conv(x)` (groups 1, NCHW) as one (B*OH*OW, in) @ (in, out) product per kernel tap, summed.

    oneDNN's direct convolution accumulates all in x kh x kw products of an output in one float32
    chain, so its rounding error grows with the input channels, unlike PyTorch's; per-tap chains
    keep training steps as close to a float64 run as the official code's. The taps are one
    `reindex` (nine strided slices trip Jittor's parallel kernel compiler).
    """
    B, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    taps = x.reindex([kh * kw, B, OH, OW, C], [  # (kh*kw, B, OH, OW, C), zero in the padding
        "i1", "i4", f"i2*{sh}+i0/{kw}-{ph}", f"i3*{sw}+i0%{kw}-{pw}"]).reshape(kh * kw, B * OH * OW, C)
    weight = conv.weight.permute(2, 3, 1, 0).reshape(kh * kw, C, conv.out_channels)  # (kh*kw, C, out)
    y = ops.batched_matmul(taps, weight).sum(0)  # (B*OH*OW, out)
    if conv.bias is not None:
        y = y + conv.bias
    return y.reshape(B, OH, OW, conv.out_channels).permute(0, 3, 1, 2)


def pointwise_conv(x, conv):
    """A 1x1 `conv(x)` (NCHW) as one (out, in) @ (in, H*W) product per image: Jittor's CPU
    convolution wraps oneDNN's in layout reorders, which a plain GEMM avoids."""
    B, C, H, W = x.shape
    weight = conv.weight.reshape(1, conv.out_channels, C)
    y = ops.batched_matmul(weight, x.reshape(B, C, H * W))  # (B, out, H*W)
    if conv.bias is not None:
        y = y + conv.bias.reshape(1, -1, 1)
    return y.reshape(B, conv.out_channels, H, W)


def axial_attention(q, k, v, mask_w, mask_h):
    """Rows, then columns, each one fused kernel call reading its layout through strides."""
    B, n, H, W, d = q.shape
    C = n * d
    qk_rows = (n * H * W * d, H * W * d, W * d, d)  # groups (b, head, row), position = column
    qk_cols = (n * H * W * d, H * W * d, d, W * d)  # groups (b, head, column), position = row
    v_rows = (H * W * C, d, W * C, C)  # v (B, H, W, n*d) seen as groups (b, head, row)
    out_cols = (H * W * C, d, C, W * C)  # output (B, H, W, n*d) as groups (b, head, column)
    rows = attention.attention(q, k, v, mask_w, (B, n, H), [qk_rows, qk_rows, v_rows, qk_rows], (B, n, H, W, d), d)
    return attention.attention(q, k, rows, mask_h, (B, n, W), [qk_cols, qk_cols, qk_cols, out_cols], (B, H, W, C), d)


def full_attention(q, k, v, mask):
    """One group per (b, head); v and the output read as (B, HW, n, d)."""
    B, n, H, W, d = q.shape
    C = n * d
    qk, vo = (n * H * W * d, H * W * d, 0, d), (H * W * C, d, 0, C)
    return attention.attention(q, k, v, mask, (B, n, 1), [qk, qk, vo, vo], (B, H, W, C), d)


def pooled_attention(q, kv):
    """One group per (b, head); the keys and values read inside kv through strides."""
    B, Lq, n, d = q.shape
    Lk = kv.shape[1]
    q_view, out_view = (Lq * n * d, d, 0, n * d), (n * Lq * d, Lq * d, 0, d)
    k_view, v_view = (Lk * 2 * n * d, d, 0, 2 * n * d), (Lk * 2 * n * d, d, 0, 2 * n * d, n * d)
    return attention.attention(q, kv, kv, None, (B, n, 1), [q_view, k_view, v_view, out_view], (B, n, Lq, d), d)
