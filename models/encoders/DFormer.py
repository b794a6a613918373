"""DFormer (v1) backbone: "DFormer: Rethinking RGBD Representation Learning for Semantic
Segmentation", Yin et al., ICLR 2024.

Mirrors the official `models/encoders/DFormer.py` (VCIP-RGBD/DFormer) module for module, with
identical parameter names so official checkpoints load unchanged. Differences:
- `execute` instead of `forward`; upstream's own `LayerNorm` class is named `FrozenLayerNorm`
  (it is never optimised; same keys); tensors are NHWC inside the stages exactly as upstream.
- The 7x7 adaptive pool of the global-awareness attention uses PyTorch's bins (`layers.py`).
- The stem and downsampling 3x3 convs are `TapSumConv2d` (same parameters; in CPU training one
  product per kernel tap, for float32 rounding that does not grow with the input width).
- The dead `block_index > last_block_index` branch and the unused `norm0..3` of the 2023 release
  are not built (old checkpoints' `backbone.norm0..3.*` are skipped by the loader).
- Beside `execute`, each class has its ONNX rule (`onnx`) and, where it runs products, its FLOPs
  rule (`macs`): docs/contributing.md.
"""
import jittor as jt
from jittor import nn

from .. import constants
from ..batchnorm import BatchNorm2d
from ..layout import concat, permute
from ..layers import (GELU, ChannelsLastConv2d, LayerNorm, Linear, TapSumConv2d, adaptive_avg_pool_nhwc,
                      layer_norm, pooled_attention, upsample_nhwc)


class FrozenLayerNorm(nn.Module):
    """Upstream's own channels-last `LayerNorm` class (eps 1e-6; same keys). Not an `nn.LayerNorm`,
    so upstream's parameter grouping never collects it: it keeps its pretrained values in training."""

    keeps_float32 = True  # its parameters, in float16 inference (`precision.to_float16`)

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = jt.ones(dim)
        self.bias = jt.zeros(dim)
        self.eps = eps

    def execute(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)

    onnx = LayerNorm.onnx  # the same normalisation (no FLOPs rule: thop counts 0 for this class)


class MLP(nn.Module):
    """Pre-norm MLP, NHWC in and out; a residual depthwise 3x3 conv sits before the GELU."""

    def __init__(self, dim, mlp_ratio=4):
        super().__init__()
        hidden = dim * mlp_ratio
        self.norm = FrozenLayerNorm(dim)
        self.fc1 = Linear(dim, hidden)
        self.pos = ChannelsLastConv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = Linear(hidden, dim)

    def execute(self, x):
        x = self.fc1(self.norm(x))  # (B, H, W, hidden)
        return self.fc2(self.pos(x, residual_gelu=True))  # GELU(pos(x) + x)

    def onnx(self, ex, x):
        x = ex(self.fc1, ex(self.norm, x))
        return ex(self.fc2, ex(self.pos, x, residual_gelu=True))


class attention(nn.Module):
    """RGB-D attention: local conv modulation, global awareness (window != 0) and depth enhancement.

    Args:
        dim: RGB width C (the depth stream has C/2).
        num_head: heads of the global-awareness attention, per-head width C/heads/2.
        window: 7 for stages 1-3 (pooled 7x7 queries), 0 for stage 0 (no global branch).
        drop_depth: the very last block has no depth output projection.
    """

    def __init__(self, dim, num_head=8, window=7, drop_depth=False):
        super().__init__()
        self.num_head = num_head
        self.window = window
        self.drop_depth = drop_depth
        self.q = Linear(dim, dim)
        self.q_cut = Linear(dim, dim // 2)
        self.a = Linear(dim, dim)
        self.l = Linear(dim, dim)
        self.conv = ChannelsLastConv2d(dim, dim, 7, padding=3, groups=dim)
        self.e_conv = ChannelsLastConv2d(dim // 2, dim // 2, 7, padding=3, groups=dim // 2)
        self.e_fore = Linear(dim // 2, dim // 2)
        self.e_back = Linear(dim // 2, dim // 2)
        concat_dim = dim * 2 if window != 0 else dim // 2 * 3
        self.proj = Linear(concat_dim, dim)
        if not drop_depth:
            self.proj_e = Linear(concat_dim, dim // 2)
        if window != 0:
            self.short_cut_linear = Linear(dim // 2 * 3, dim // 2)
            self.kv = Linear(dim, dim)
        self.act = GELU()
        self.norm = FrozenLayerNorm(dim)
        self.norm_e = FrozenLayerNorm(dim // 2)

    def global_awareness(self, t, short_cut):
        """Attention of 7x7 pooled RGB-D queries over all positions, upsampled back to (H, W)."""
        B, H, W, C = t.shape
        heads, d = self.num_head, C // self.num_head // 2
        kv = self.kv(t).reshape(B, H * W, 2, heads, d)  # keys and values
        query = self.short_cut_linear(adaptive_avg_pool_nhwc(short_cut, self.window))  # (B, 7, 7, C/2)
        query = query.reshape(B, -1, heads, d)
        query = query * constants.scalar_like(d**-0.5, query)  # (B, 49, heads, d)
        out = pooled_attention(query, kv).reshape(B, heads, self.window, self.window, d)  # (B, heads, 7, 7, d)
        out = permute(out, 0, 2, 3, 1, 4).reshape(B, self.window, self.window, C // 2)  # (B, 7, 7, C/2)
        return upsample_nhwc(out, (H, W))  # (B, H, W, C/2)

    def execute(self, x, x_e):
        x = self.norm(x)
        x_e = self.norm_e(x_e)
        q = self.q(x)
        cutted_x = self.q_cut(x)
        t = self.act(self.l(x))  # GELU(l(x)) feeds both the 7x7 conv and the kv projection
        a = self.a(self.conv(t))
        e = self.e_back(self.e_conv(self.e_fore(x_e)))  # (B, H, W, C/2)
        parts = [q * a]
        if self.window != 0:
            parts.append(self.global_awareness(t, concat([x, x_e], 3)))
        parts.append(cutted_x * e)
        x = concat(parts, 3)  # (B, H, W, 2C) or (B, H, W, 3C/2)
        x_e = None if self.drop_depth else self.proj_e(x)
        return self.proj(x), x_e

    def onnx(self, ex, x, x_e):
        g = ex.g
        x, x_e = ex(self.norm, x), ex(self.norm_e, x_e)
        q, cutted_x = ex(self.q, x), ex(self.q_cut, x)
        t = ex(self.act, ex(self.l, x))
        a = ex(self.a, ex(self.conv, t))
        e = ex(self.e_back, ex(self.e_conv, ex(self.e_fore, x_e)))
        parts = [g.mul(q, a)]
        if self.window != 0:
            parts.append(self.onnx_global_awareness(ex, t, g.concat([x, x_e], axis=3)))
        parts.append(g.mul(cutted_x, e))
        x = g.concat(parts, axis=3)  # (B, H, W, 2C) or (B, H, W, 3C/2)
        return ex(self.proj, x), None if self.drop_depth else ex(self.proj_e, x)

    def macs(self, inputs, output):
        """thop counts the 7x7 adaptive pool (an nn.AdaptiveAvgPool2d upstream) as int((H/7 x W/7 + 1)
        x output elements); the q k^T and attn v products are beyond it."""
        if not self.window:
            return 0, 0
        B, H, W, C = inputs[0].shape  # pooled: concat(x, x_e), C + C/2 channels; heads x head width = C/2
        kernel = (H / self.window) * (W / self.window)  # thop divides the input size by the output size
        pool = int((kernel + 1) * (B * (C + C // 2) * self.window ** 2))  # in thop's float order
        return pool, 2 * B * self.window ** 2 * H * W * (C // 2)

    def onnx_global_awareness(self, ex, t, short_cut):
        """`attention.global_awareness`: 7x7 pooled queries attend over all H*W positions."""
        g = ex.g
        heads, window = self.num_head, self.window
        d = self.kv.weight.shape[0] // heads // 2
        kv = g.reshape(ex(self.kv, t), [0, -1, 2, heads, d])  # (B, HW, 2, heads, d)
        k_t = g.transpose(g.take(kv, 2, 0), (0, 2, 3, 1))  # (B, heads, d, HW)
        v = g.transpose(g.take(kv, 2, 1), (0, 2, 1, 3))  # (B, heads, HW, d)
        pooled = g.nchw_to_nhwc(g.adaptive_avg_pool(g.nhwc_to_nchw(short_cut), window))  # (B, 7, 7, 3C/2)
        query = g.reshape(ex(self.short_cut_linear, pooled), [0, -1, heads, d])
        query = g.transpose(query, (0, 2, 1, 3))  # (B, heads, 49, d)
        attn = g.softmax(g.matmul(g.scale(query, d ** -0.5), k_t), axis=-1)  # (B, heads, 49, HW)
        out = g.reshape(g.matmul(attn, v), [0, heads, window, window, d])
        out = g.reshape(g.transpose(out, (0, 1, 4, 2, 3)), [0, heads * d, window, window])  # (B, C/2, 7, 7)
        return g.nchw_to_nhwc(g.resize(out, g.dims(t, 1, 3)))  # (B, H, W, C/2)


class Block(nn.Module):
    """Attention + MLP with layer scale on the RGB stream and, unless `drop_depth`, the depth stream."""

    def __init__(self, dim, num_head, mlp_ratio=4, window=7, drop_path=0.0, drop_depth=False):
        super().__init__()
        self.attn = attention(dim, num_head, window=window, drop_depth=drop_depth)
        self.mlp = MLP(dim, mlp_ratio)
        # upstream applies one DropPath instance to all four residual branches
        self.dropout_layer = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale_1 = jt.full((dim,), 1e-6)
        self.layer_scale_2 = jt.full((dim,), 1e-6)
        self.drop_depth = drop_depth
        if not drop_depth:
            self.layer_scale_1_e = jt.full((dim // 2,), 1e-6)
            self.layer_scale_2_e = jt.full((dim // 2,), 1e-6)
            self.mlp_e2 = MLP(dim // 2, mlp_ratio)

    def execute(self, x, x_e):
        a_x, a_e = self.attn(x, x_e)
        x = x + self.dropout_layer(self.layer_scale_1 * a_x)
        x = x + self.dropout_layer(self.layer_scale_2 * self.mlp(x))
        if not self.drop_depth:
            x_e = x_e + self.dropout_layer(self.layer_scale_1_e * a_e)
            x_e = x_e + self.dropout_layer(self.layer_scale_2_e * self.mlp_e2(x_e))
        return x, x_e

    def onnx(self, ex, x, x_e):
        g = ex.g
        a_x, a_e = ex(self.attn, x, x_e)
        x = g.add(x, ex(self.dropout_layer, g.mul(ex.param(self, "layer_scale_1"), a_x)))
        x = g.add(x, ex(self.dropout_layer, g.mul(ex.param(self, "layer_scale_2"), ex(self.mlp, x))))
        if not self.drop_depth:
            x_e = g.add(x_e, ex(self.dropout_layer, g.mul(ex.param(self, "layer_scale_1_e"), a_e)))
            x_e = g.add(x_e, ex(self.dropout_layer, g.mul(ex.param(self, "layer_scale_2_e"), ex(self.mlp_e2, x_e))))
        return x, x_e


def _stem(in_channels, dim):
    """Two stride-2 3x3 convs with BN, GELU between them: (B, in, H, W) -> (B, dim, H/4, W/4)."""
    return nn.Sequential(
        TapSumConv2d(in_channels, dim // 2, 3, stride=2, padding=1),
        BatchNorm2d(dim // 2),
        GELU(),
        TapSumConv2d(dim // 2, dim, 3, stride=2, padding=1),
        BatchNorm2d(dim),
    )


def _downsample(in_dim, out_dim):
    """BN then a stride-2 3x3 conv (upstream order: norm before conv, none after)."""
    return nn.Sequential(BatchNorm2d(in_dim), TapSumConv2d(in_dim, out_dim, 3, stride=2, padding=1))


class DFormer(nn.Module):
    """Two-stream RGB (width dims[i]) / depth (dims[i]/2) encoder; returns the 4 RGB stage outputs.

    Args:
        dims, depths, num_heads, mlp_ratios, windows: per-stage sizes (see the factories below).
        drop_path_rate: stochastic depth, linear from 0 over all blocks.
    """

    def __init__(self, dims, depths, num_heads, mlp_ratios=(8, 8, 4, 4), windows=(0, 7, 7, 7),
                 drop_path_rate=0.1):
        super().__init__()
        self.out_channels = list(dims)
        self.downsample_layers = nn.ModuleList([_stem(3, dims[0])])
        self.downsample_layers_e = nn.ModuleList([_stem(1, dims[0] // 2)])
        for i in range(3):
            self.downsample_layers.append(_downsample(dims[i], dims[i + 1]))
            self.downsample_layers_e.append(_downsample(dims[i] // 2, dims[i + 1] // 2))
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            self.stages.append(nn.Sequential(*[
                Block(dims[i], num_heads[i], mlp_ratios[i], windows[i], rates[first + j],
                      drop_depth=(i == 3 and j == depth - 1))
                for j in range(depth)
            ]))

    def execute(self, x, x_e):
        x_e = x_e[:, 0:1]  # only the first of the 3 identical depth channels is used
        outs = []
        for i in range(4):
            x = permute(self.downsample_layers[i](x), 0, 2, 3, 1)  # (B, H, W, C)
            x_e = permute(self.downsample_layers_e[i](x_e), 0, 2, 3, 1)  # (B, H, W, C/2)
            for block in self.stages[i]:
                x, x_e = block(x, x_e)
            x = permute(x, 0, 3, 1, 2)
            x_e = permute(x_e, 0, 3, 1, 2)
            outs.append(x)
        return outs

    def onnx(self, ex, rgb, depth):
        g = ex.g
        x, x_e = rgb, g.slice(depth, 1, 0, 1)  # first of the 3 identical depth channels
        outs = []
        for i in range(4):
            x = g.nchw_to_nhwc(ex(self.downsample_layers[i], x))  # (B, H, W, C)
            x_e = g.nchw_to_nhwc(ex(self.downsample_layers_e[i], x_e))  # (B, H, W, C/2)
            for block in self.stages[i]:
                x, x_e = ex(block, x, x_e)
            outs.append(g.nhwc_to_nchw(x))
            if i < 3:
                x, x_e = outs[-1], g.nhwc_to_nchw(x_e)
        return outs


def DFormer_Tiny(**kwargs):
    return DFormer(dims=[32, 64, 128, 256], depths=[3, 3, 5, 2], num_heads=[1, 2, 4, 8], **kwargs)


def DFormer_Small(**kwargs):
    return DFormer(dims=[64, 128, 256, 512], depths=[2, 2, 4, 2], num_heads=[1, 2, 4, 8], **kwargs)


def DFormer_Base(**kwargs):
    return DFormer(dims=[64, 128, 256, 512], depths=[3, 3, 12, 2], num_heads=[1, 2, 4, 8], **kwargs)


def DFormer_Large(**kwargs):
    return DFormer(dims=[96, 192, 288, 576], depths=[3, 3, 12, 2], num_heads=[1, 2, 4, 8], **kwargs)
