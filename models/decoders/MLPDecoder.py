"""SegFormer-style all-MLP decoder (`C.decoder = "MLPDecoder"`), no shipped config uses it.

Mirrors the official `models/decoders/MLPDecoder.py` (VCIP-RGBD/DFormer) with identical parameter
names. Its BN's eps and momentum are `C.bn_eps` and `C.bn_momentum`, set by `init_decode_head`.
"""
from jittor import nn

from ..batchnorm import BatchNorm2d
from ..layout import concat, permute
from ..layers import Conv2d, Linear, resize


class MLP(nn.Module):
    """Per-pixel linear embedding: (B, C, H, W) -> (B, E, H, W), through (B, HW, C) as upstream."""

    def __init__(self, input_dim, embed_dim):
        super().__init__()
        self.proj = Linear(input_dim, embed_dim)

    def execute(self, x):
        B, C, H, W = x.shape
        return permute(self.proj(permute(x.reshape(B, C, H * W), 0, 2, 1)), 0, 2, 1).reshape(B, -1, H, W)

    def onnx(self, ex, x):
        return ex.g.nhwc_to_nchw(ex(self.proj, ex.g.nchw_to_nhwc(x)))


class DecoderHead(nn.Module):
    """Embed all 4 stages, upsample to stride 4, fuse [c4, c3, c2, c1], classify."""

    def __init__(self, in_channels, num_classes, embed_dim=768, dropout_ratio=0.1):
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.linear_c4 = MLP(c4, embed_dim)
        self.linear_c3 = MLP(c3, embed_dim)
        self.linear_c2 = MLP(c2, embed_dim)
        self.linear_c1 = MLP(c1, embed_dim)
        self.linear_fuse = nn.Sequential(
            Conv2d(embed_dim * 4, embed_dim, 1), BatchNorm2d(embed_dim), nn.ReLU())
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.linear_pred = Conv2d(embed_dim, num_classes, 1)

    def execute(self, inputs):
        c1, c2, c3, c4 = inputs
        size = c1.shape[2:]
        embedded = [resize(self.linear_c4(c4), size), resize(self.linear_c3(c3), size),
                    resize(self.linear_c2(c2), size), self.linear_c1(c1)]
        return self.linear_pred(self.dropout(self.linear_fuse(concat(embedded, 1))))

    def onnx(self, ex, inputs):
        g = ex.g
        c1, c2, c3, c4 = inputs
        size = g.dims(c1, 2, 4)
        embedded = [g.resize(ex(self.linear_c4, c4), size), g.resize(ex(self.linear_c3, c3), size),
                    g.resize(ex(self.linear_c2, c2), size), ex(self.linear_c1, c1)]
        return ex(self.linear_pred, ex(self.dropout, ex(self.linear_fuse, g.concat(embedded, axis=1))))
