"""Small building blocks shared by the DFormer/DFormerv2 encoders and the decode heads.

Each mirrors a PyTorch/mmcv behaviour that Jittor lacks or computes differently:
`LayerNorm` (two-pass variance), `ConvModule` (mmcv parameter names, `bias='auto'`) and
`adaptive_avg_pool_nhwc` (PyTorch's overlapping adaptive-pool bins).
"""
import math

import jittor as jt
import numpy as np
from jittor import nn


def layer_norm(x, weight, bias, eps):
    """LayerNorm over the last axis with PyTorch's two-pass variance.

    Why not `jt.nn.LayerNorm`: it computes E[x^2] - E[x]^2, which loses digits on the large
    residual-stream activations of deep stages and breaks 1e-4 parity.
    """
    xc = x - x.mean(-1, keepdims=True)
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / jt.sqrt(var + eps) * weight + bias


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` (same parameters and isinstance) computed with `layer_norm` above."""

    def execute(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


def resize(x, size):
    """Bilinear resize of an NCHW tensor with align_corners=False, as the official models do."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return nn.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvModule(nn.Module):
    """mmcv's ConvModule: conv, optional BN, optional ReLU, with mmcv's parameter names.

    mmcv's `bias='auto'` means no conv bias when a norm follows; a port that keeps the bias there
    gets three decode-head biases that no checkpoint fills.
    """

    def __init__(self, in_channels, out_channels, norm=True, act=True, bn_eps=1e-5):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps) if norm else None
        self.activate = nn.ReLU() if act else None

    def execute(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


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
    x = x.permute(0, 2, 3, 1).reshape(B * W * C, H)  # (B*W*C, H)
    x = nn.matmul_transpose(x, pool_h).reshape(B, W, C * out)  # pool rows: (B, W, C*out)
    x = x.permute(0, 2, 1).reshape(B * C * out, W)  # (B*C*out_h, W)
    x = nn.matmul_transpose(x, pool_w).reshape(B, C, out, out)  # pool cols: (B, C, out_h, out_w)
    return x.permute(0, 2, 3, 1)  # (B, out_h, out_w, C)
