"""DFormerv2 backbone: "DFormerv2: Geometry Self-Attention for RGBD Semantic Segmentation",
Yin et al., CVPR 2025.

Mirrors the official `models/encoders/DFormerv2.py` (VCIP-RGBD/DFormer) with identical parameter
names (`gamma_1`, `Geo.angle`, ...), so official checkpoints load unchanged. Differences:
- `execute` instead of `forward`; `Geo.angle`/`Geo.decay` are PyTorch buffers, here Vars marked
  stop_grad (Jittor would otherwise train them) that still appear in the state_dict.
- `norm_eval` is not ported: upstream it never takes effect (its BNs are SyncBatchNorm).
- The stem and downsampling 3x3 convs are `TapSumConv2d` (same parameters; in CPU training one
  product per kernel tap, for float32 rounding that does not grow with the input width).
- Gradient checkpointing (`use_checkpoint`, off in every config) is not ported.
- The depth map's resize and its pairwise distances, the same for every block of a stage, are
  computed once per stage (`depth_distances`), not in each block's `GeoPriorGen`: same values.
- Beside `execute`, each class has its ONNX rule (`onnx`) and, where it runs products, its FLOPs
  rule (`macs`): docs/contributing.md.
"""
import jittor as jt
import numpy as np
from jittor import nn

from .. import constants, precision
from ..batchnorm import SyncBatchNorm
from ..layout import permute
from ..layers import (GELU, ChannelsLastConv2d, LayerNorm, Linear, TapSumConv2d, axial_attention, full_attention,
                      gelu, resize, rotate_pairs)


class DWConv2d(nn.Module):
    """Depthwise conv on an NHWC tensor."""

    def __init__(self, dim, kernel_size, stride, padding):
        super().__init__()
        self.dwconv = ChannelsLastConv2d(dim, dim, kernel_size, stride, padding, groups=dim)

    def execute(self, x):
        return self.dwconv(x)

    def onnx(self, ex, x):
        return ex(self.dwconv, x)


def _conv_bn(in_dim, out_dim, stride):
    return [TapSumConv2d(in_dim, out_dim, 3, stride, 1), SyncBatchNorm(out_dim)]


class PatchEmbed(nn.Module):
    """Stride-4 stem of four 3x3 convs (s2, s1, s2, s1) with BN, GELU after the first three.
    (B, 3, H, W) -> (B, H/4, W/4, D)."""

    def __init__(self, in_chans=3, embed_dim=96):
        super().__init__()
        half = embed_dim // 2
        self.proj = nn.Sequential(
            *_conv_bn(in_chans, half, 2), GELU(),
            *_conv_bn(half, half, 1), GELU(),
            *_conv_bn(half, embed_dim, 2), GELU(),
            *_conv_bn(embed_dim, embed_dim, 1),
        )

    def execute(self, x):
        return permute(self.proj(x), 0, 2, 3, 1)

    def onnx(self, ex, x):
        return ex.g.nchw_to_nhwc(ex(self.proj, x))


class PatchMerging(nn.Module):
    """Stride-2 3x3 conv then BN, NHWC in and out."""

    def __init__(self, dim, out_dim):
        super().__init__()
        self.reduction = TapSumConv2d(dim, out_dim, 3, 2, 1)
        self.norm = SyncBatchNorm(out_dim)

    def execute(self, x):
        return permute(self.norm(self.reduction(permute(x, 0, 3, 1, 2))), 0, 2, 3, 1)

    def onnx(self, ex, x):
        return ex.g.nchw_to_nhwc(ex.conv_bn(ex.g.nhwc_to_nchw(x), self.reduction, self.norm))


def angle_transform(x, sin, cos):
    """Rotary embedding with interleaved pairs: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin); the
    float32 tables in the type of `x`."""
    return x * precision.like(cos, x) + rotate_pairs(x) * precision.like(sin, x)


def _onnx_angle_transform(g, x, sin, cos, key_dim):
    """`angle_transform`: interleaved pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)."""
    pairs = g.reshape(x, [0, 0, 0, 0, key_dim // 2, 2])
    even, odd = g.slice(pairs, 5, 0, 1), g.slice(pairs, 5, 1, 2)
    rotated = g.reshape(g.concat([g.op("Neg", odd), even], axis=5), [0, 0, 0, 0, key_dim])
    return g.add(g.mul(x, cos), g.mul(rotated, sin))


class GeoPriorGen(nn.Module):
    """Geometry prior of one block: rotary tables and log-decay masks from position and depth.

    Args:
        embed_dim, num_heads: key_dim = embed_dim / num_heads.
        initial_value, heads_range: per-head decay ln(1 - 2^(-initial - range * h / heads)).
    Everything here is float32, in float16 inference too: the phase reaches H*W radians, and the
    masks are added to float32 attention scores.
    """

    keeps_float32 = True  # `weight`, `angle`, `decay` (`precision.to_float16`)

    def __init__(self, embed_dim, num_heads, initial_value, heads_range):
        super().__init__()
        half = embed_dim // num_heads // 2
        angle = 1.0 / 10000 ** np.linspace(0, 1, half, dtype=np.float32)
        heads = np.arange(num_heads, dtype=np.float32)
        decay = np.log(1 - np.power(2, -initial_value - heads_range * heads / num_heads, dtype=np.float32))
        self.weight = jt.ones((2, 1, 1, 1))
        # PyTorch buffers: in the state_dict, never trained
        self.angle = jt.array(np.repeat(angle, 2).astype(np.float32)).stop_grad()  # [a0, a0, a1, a1, ...]
        self.decay = jt.array(decay.astype(np.float32)).stop_grad()

    def rotary_tables(self, H, W):
        """sin/cos (H, W, key_dim) of the flattened position r*W + c (1-D RoPE on the 2-D grid)."""
        phase = constants.positions(H * W, "float32") * self.angle.unsqueeze(0)  # formed in fp32, as upstream
        return jt.sin(phase).reshape(H, W, -1), jt.cos(phase).reshape(H, W, -1)

    def decay_1d(self, length):
        """(heads, L, L): |i - j| * decay_h."""
        return constants.line_distances(length, "float32").unsqueeze(0) * self.decay.reshape(-1, 1, 1)

    def execute(self, HW, depth_distances, split):
        """Returns ((sin, cos), (mask_h, mask_w)) when `split`, else ((sin, cos), mask).

        `depth_distances`: those of `depth_distances` below, shared by all blocks of a stage.
        """
        H, W = HW
        tables = self.rotary_tables(H, W)
        w_pos, w_depth = self.weight[0], self.weight[1]
        if split:
            along_columns, along_rows = depth_distances  # (B, 1, W, H, H), (B, 1, H, W, W)
            decay = self.decay.reshape(-1, 1, 1, 1)
            mask_h = w_pos * self.decay_1d(H).unsqueeze(0).unsqueeze(2) + w_depth * (along_columns * decay)
            mask_w = w_pos * self.decay_1d(W).unsqueeze(0).unsqueeze(2) + w_depth * (along_rows * decay)
            return tables, (mask_h, mask_w)  # (B, heads, W, H, H), (B, heads, H, W, W)
        pos = constants.grid_distances(H, W, "float32").unsqueeze(0) * self.decay.reshape(-1, 1, 1)  # (heads, HW, HW)
        depth_mask = depth_distances * self.decay.reshape(1, -1, 1, 1)
        return tables, w_pos * pos + w_depth * depth_mask  # (B, heads, HW, HW)

    def onnx(self, ex, hw, depth, split):
        """`GeoPriorGen.execute` for the (H, W) in the int64 tensor `hw`, computed in the graph."""
        g = ex.g
        H, W = g.take(hw, 0, 0), g.take(hw, 0, 1)
        depth = g.resize(depth, hw)  # (B, 1, H, W)
        decay = ex.param(self, "decay")  # (heads,)
        weight = ex.param(self, "weight")  # (2, 1, 1, 1)
        w_pos, w_depth = g.take(weight, 0, 0), g.take(weight, 0, 1)
        phase = g.mul(g.unsqueeze(g.arange(g.mul(H, W)), [1]), ex.param(self, "angle"))  # (HW, key_dim)
        shape = g.concat([hw, g.ints([-1])], axis=0)
        tables = g.reshape_to(g.op("Sin", phase), shape), g.reshape_to(g.op("Cos", phase), shape)
        decay_hll = g.reshape(decay, [-1, 1, 1])

        def distance(a, b_axis_a, b_axis_b):  # |a_i - a_j| over two new axes
            return g.abs_diff(g.unsqueeze(a, [b_axis_a]), g.unsqueeze(a, [b_axis_b]))

        if split:
            def decay_1d(length):  # (heads, L, L)
                index = g.arange(length)
                return g.mul(distance(index, 1, 0), decay_hll)

            def depth_decay_1d(lines):  # (B, 1, n, L) -> (B, heads, n, L, L)
                return g.mul(distance(lines, -1, -2), g.reshape(decay, [-1, 1, 1, 1]))

            mask_h = g.add(g.mul(w_pos, g.unsqueeze(decay_1d(H), [0, 2])),
                           g.mul(w_depth, depth_decay_1d(g.transpose(depth, (0, 1, 3, 2)))))  # (B, n, W, H, H)
            mask_w = g.add(g.mul(w_pos, g.unsqueeze(decay_1d(W), [0, 2])),
                           g.mul(w_depth, depth_decay_1d(depth)))  # (B, n, H, W, W)
            return tables, (mask_h, mask_w)
        index = g.op("Range", g.const(0, np.int64), g.mul(H, W), g.const(1, np.int64))
        rows = g.op("Div", index, W)  # row-major grid, integer division
        cols = g.sub(index, g.mul(rows, W))
        rows, cols = (g.op("Cast", v, to=g.float_type) for v in (rows, cols))
        manhattan = g.add(distance(rows, 1, 0), distance(cols, 1, 0))  # (HW, HW)
        pos = g.mul(g.unsqueeze(manhattan, [0]), decay_hll)  # (heads, HW, HW)
        d = g.reshape(depth, [0, -1])  # (B, HW)
        depth_mask = g.mul(g.unsqueeze(distance(d, 2, 1), [1]), g.reshape(decay, [1, -1, 1, 1]))
        return tables, g.add(g.mul(w_pos, pos), g.mul(w_depth, depth_mask))  # (B, heads, HW, HW)


def depth_distances(depth, size, split):
    """The depth part of the geometry prior before each block's decay: |d_i - d_j| of the depth
    map resized to `size` (downsampled without antialias like upstream), along each column and
    each row when `split` ((B, 1, W, H, H), (B, 1, H, W, W)), else between all positions
    ((B, 1, HW, HW)). Upstream's GeoPriorGen computes it in every block; it depends on the stage only.
    """
    with precision.autocast(False):  # float32 distances, float16 inference and autocast alike
        depth = resize(precision.widened(depth), size)  # (B, 1, H, W)
    if split:
        def along_last(lines):  # (B, 1, n, L) -> (B, 1, n, L, L)
            return (lines.unsqueeze(-1) - lines.unsqueeze(-2)).abs()
        return along_last(permute(depth, 0, 1, 3, 2)), along_last(depth)
    d = depth.reshape(depth.shape[0], size[0] * size[1])
    return (d.unsqueeze(2) - d.unsqueeze(1)).abs().unsqueeze(1)


class _GSA(nn.Module):
    """Projections shared by both geometry self-attentions; `lepe` is a 5x5 DW conv on v."""

    def __init__(self, embed_dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = embed_dim // num_heads
        self.scaling = self.key_dim**-0.5
        self.q_proj = Linear(embed_dim, embed_dim)
        self.k_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.lepe = DWConv2d(embed_dim, 5, 1, 2)
        self.out_proj = Linear(embed_dim, embed_dim)

    def rotated_qkv(self, x, sin, cos):
        """q, k rotated and split into heads (B, n, H, W, d); v (B, H, W, C); lepe (B, H, W, C)."""
        B, H, W, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        k = k * constants.scalar_like(self.scaling, k)
        q = permute(q.reshape(B, H, W, self.num_heads, self.key_dim), 0, 3, 1, 2, 4)  # (B, n, H, W, d)
        k = permute(k.reshape(B, H, W, self.num_heads, self.key_dim), 0, 3, 1, 2, 4)
        return angle_transform(q, sin, cos), angle_transform(k, sin, cos), v, self.lepe(v)

    def onnx_rotated_qkv(self, ex, x, sin, cos):
        """`_GSA.rotated_qkv`: q, k rotated (B, n, H, W, d); v (B, H, W, C); lepe (B, H, W, C)."""
        g = ex.g
        n, d = self.num_heads, self.key_dim
        q, k, v = ex(self.q_proj, x), g.scale(ex(self.k_proj, x), self.scaling), ex(self.v_proj, x)
        q, k = (g.transpose(g.reshape(t, [0, 0, 0, n, d]), (0, 3, 1, 2, 4)) for t in (q, k))
        return _onnx_angle_transform(g, q, sin, cos, d), _onnx_angle_transform(g, k, sin, cos, d), v, ex(self.lepe, v)


class Decomposed_GSA(_GSA):
    """Axial geometry self-attention: along each row (W) first, then each column (H)."""

    def execute(self, x, rel_pos):
        (sin, cos), (mask_h, mask_w) = rel_pos
        qr, kr, v, lepe = self.rotated_qkv(x, sin, cos)  # qr, kr (B, n, H, W, d); v, lepe (B, H, W, C)
        return self.out_proj(axial_attention(qr, kr, v, mask_w, mask_h) + lepe)

    def onnx(self, ex, x, rel_pos):
        """Axial attention, computed in the (B, n, rows, columns, d) layout that the masks have."""
        g = ex.g
        (sin, cos), (mask_h, mask_w) = rel_pos
        qr, kr, v, lepe = self.onnx_rotated_qkv(ex, x, sin, cos)
        v = g.transpose(g.reshape(v, [0, 0, 0, self.num_heads, self.key_dim]), (0, 3, 1, 2, 4))  # (B, n, H, W, d)
        attn_w = g.softmax(g.add(g.matmul(qr, g.transpose(kr, (0, 1, 2, 4, 3))), mask_w))  # (B, n, H, W, W)
        v = g.transpose(g.matmul(attn_w, v), (0, 1, 3, 2, 4))  # (B, n, W, H, d)
        attn_h = g.softmax(g.add(g.matmul(g.transpose(qr, (0, 1, 3, 2, 4)), g.transpose(kr, (0, 1, 3, 4, 2))),
                                 mask_h))  # (B, n, W, H, H)
        out = g.transpose(g.matmul(attn_h, v), (0, 3, 2, 1, 4))  # (B, H, W, n, d)
        return ex(self.out_proj, g.add(g.reshape(out, [0, 0, 0, -1]), lepe))

    def macs(self, inputs, output):
        """Products thop misses: along rows (length W), then columns (length H), each q k^T and attn v."""
        B, H, W, C = inputs[0].shape
        return 0, 2 * B * C * H * W * (W + H)


class Full_GSA(_GSA):
    """Geometry self-attention over all H*W positions (last stage)."""

    def execute(self, x, rel_pos):
        (sin, cos), mask = rel_pos
        qr, kr, v, lepe = self.rotated_qkv(x, sin, cos)
        return self.out_proj(full_attention(qr, kr, v, mask) + lepe)

    def onnx(self, ex, x, rel_pos):
        g = ex.g
        (sin, cos), mask = rel_pos
        qr, kr, v, lepe = self.onnx_rotated_qkv(ex, x, sin, cos)
        n, d = self.num_heads, self.key_dim
        qr, kr = g.reshape(qr, [0, 0, -1, d]), g.reshape(kr, [0, 0, -1, d])  # (B, n, HW, d)
        v = g.transpose(g.reshape(v, [0, -1, n, d]), (0, 2, 1, 3))  # (B, n, HW, d)
        attn = g.softmax(g.add(g.matmul(qr, g.transpose(kr, (0, 1, 3, 2))), mask))  # (B, n, HW, HW)
        out = g.transpose(g.matmul(attn, v), (0, 2, 1, 3))  # (B, HW, n, d)
        return ex(self.out_proj, g.add(g.reshape_to(out, g.op("Shape", x)), lepe))

    def macs(self, inputs, output):
        """Products thop misses: q k^T and attn v over all H*W positions."""
        B, H, W, C = inputs[0].shape
        return 0, 2 * B * C * (H * W) ** 2


class FeedForwardNetwork(nn.Module):
    """fc1, GELU, residual 3x3 DW conv, fc2 (upstream: subconv=True, subln=False, dropout 0)."""

    def __init__(self, embed_dim, ffn_dim):
        super().__init__()
        self.fc1 = Linear(embed_dim, ffn_dim)
        self.fc2 = Linear(ffn_dim, embed_dim)
        self.dwconv = DWConv2d(ffn_dim, 3, 1, 1)

    def execute(self, x):
        x = gelu(self.fc1(x))
        return self.fc2(self.dwconv(x) + x)

    def onnx(self, ex, x):
        x = ex.g.gelu(ex(self.fc1, x))
        return ex(self.fc2, ex.g.add(ex(self.dwconv, x), x))


class RGBD_Block(nn.Module):
    """Conv position encoding, geometry self-attention and FFN, with optional layer scale."""

    def __init__(self, split, embed_dim, num_heads, ffn_dim, drop_path=0.0, layerscale=False,
                 layer_init_values=1e-6, init_value=2, heads_range=4):
        super().__init__()
        self.split = split
        self.layerscale = layerscale
        self.layer_norm1 = LayerNorm(embed_dim, eps=1e-6)
        self.layer_norm2 = LayerNorm(embed_dim, eps=1e-6)
        self.Attention = (Decomposed_GSA if split else Full_GSA)(embed_dim, num_heads)
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.ffn = FeedForwardNetwork(embed_dim, ffn_dim)
        self.cnn_pos_encode = DWConv2d(embed_dim, 3, 1, 1)
        self.Geo = GeoPriorGen(embed_dim, num_heads, init_value, heads_range)
        if layerscale:
            self.gamma_1 = jt.full((1, 1, 1, embed_dim), layer_init_values)
            self.gamma_2 = jt.full((1, 1, 1, embed_dim), layer_init_values)

    def execute(self, x, distances):
        """`distances`: `depth_distances` of the stage's depth map."""
        x = x + self.cnn_pos_encode(x)
        geo_prior = self.Geo((x.shape[1], x.shape[2]), distances, self.split)
        attn = self.Attention(self.layer_norm1(x), geo_prior)
        x = x + self.drop_path(self.gamma_1 * attn if self.layerscale else attn)
        ffn = self.ffn(self.layer_norm2(x))
        return x + self.drop_path(self.gamma_2 * ffn if self.layerscale else ffn)

    def onnx(self, ex, x, x_e):
        g = ex.g
        x = g.add(x, ex(self.cnn_pos_encode, x))
        geo_prior = ex(self.Geo, g.dims(x, 1, 3), x_e, self.split)
        attn = ex(self.Attention, ex(self.layer_norm1, x), geo_prior)
        x = g.add(x, ex(self.drop_path, g.mul(ex.param(self, "gamma_1"), attn) if self.layerscale else attn))
        ffn = ex(self.ffn, ex(self.layer_norm2, x))
        return g.add(x, ex(self.drop_path, g.mul(ex.param(self, "gamma_2"), ffn) if self.layerscale else ffn))


class BasicLayer(nn.Module):
    """One stage: blocks, then (except the last stage) PatchMerging. Returns (before, after)."""

    def __init__(self, embed_dim, out_dim, depth, num_heads, init_value, heads_range, ffn_dim,
                 drop_path, split, layerscale, layer_init_values):
        super().__init__()
        self.blocks = nn.ModuleList([
            RGBD_Block(split, embed_dim, num_heads, ffn_dim, drop_path[i], layerscale,
                       layer_init_values, init_value=init_value, heads_range=heads_range)
            for i in range(depth)
        ])
        self.downsample = PatchMerging(embed_dim, out_dim) if out_dim is not None else None

    def execute(self, x, x_e):
        distances = depth_distances(x_e, (x.shape[1], x.shape[2]), self.blocks[0].split)  # once for all blocks
        for block in self.blocks:
            x = block(x, distances)
        return x, (self.downsample(x) if self.downsample is not None else x)

    def onnx(self, ex, x, x_e):
        for block in self.blocks:
            x = ex(block, x, x_e)
        return x, (ex(self.downsample, x) if self.downsample is not None else x)


class dformerv2(nn.Module):
    """RGB encoder whose attention is biased by a depth geometry prior; returns 4 NCHW features.

    Args:
        embed_dims, depths, num_heads, heads_ranges, mlp_ratios: per-stage sizes.
        layerscales: which stages use gamma layer scale (init `layer_init_values`).
        drop_path_rate: stochastic depth, linear from 0 over all blocks.
    """

    def __init__(self, embed_dims, depths, num_heads, heads_ranges, init_values=(2, 2, 2, 2),
                 mlp_ratios=(4, 4, 3, 3), layerscales=(False, False, False, False),
                 layer_init_values=1e-6, drop_path_rate=0.1):
        super().__init__()
        self.out_channels = list(embed_dims)
        self.patch_embed = PatchEmbed(3, embed_dims[0])
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        self.layers = nn.ModuleList()
        for i in range(4):
            self.layers.append(BasicLayer(
                embed_dims[i], embed_dims[i + 1] if i < 3 else None, depths[i], num_heads[i],
                init_values[i], heads_ranges[i], int(mlp_ratios[i] * embed_dims[i]),
                rates[sum(depths[:i]):sum(depths[:i + 1])], split=(i != 3),
                layerscale=layerscales[i], layer_init_values=layer_init_values,
            ))
        # stages 1-3 are normalised before output, with nn.LayerNorm's default eps 1e-5
        self.extra_norms = nn.ModuleList([LayerNorm(embed_dims[i]) for i in range(1, 4)])
        self.apply(_init_weights)

    def execute(self, x, x_e):
        x = self.patch_embed(x)
        x_e = x_e[:, 0:1]  # normalised depth, first of 3 identical channels, full resolution
        outs = []
        for i, layer in enumerate(self.layers):
            x_out, x = layer(x, x_e)
            if i > 0:
                x_out = self.extra_norms[i - 1](x_out)
            outs.append(permute(x_out, 0, 3, 1, 2))
        return outs

    def onnx(self, ex, rgb, depth):
        g = ex.g
        x = ex(self.patch_embed, rgb)  # (B, H/4, W/4, C)
        x_e = g.slice(depth, 1, 0, 1)  # (B, 1, H, W), full resolution
        outs = []
        for i, layer in enumerate(self.layers):
            x_out, x = ex(layer, x, x_e)
            if i > 0:
                x_out = ex(self.extra_norms[i - 1], x_out)
            outs.append(g.nhwc_to_nchw(x_out))
        return outs


def _init_weights(module):
    """Upstream init: trunc-normal(0.02) Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        jt.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            jt.init.zero_(module.bias)


def DFormerv2_S(**kwargs):
    return dformerv2(embed_dims=[64, 128, 256, 512], depths=[3, 4, 18, 4], num_heads=[4, 4, 8, 16],
                     heads_ranges=[4, 4, 6, 6], **kwargs)


def DFormerv2_B(**kwargs):
    return dformerv2(embed_dims=[80, 160, 320, 512], depths=[4, 8, 25, 8], num_heads=[5, 5, 10, 16],
                     heads_ranges=[5, 5, 6, 6], layerscales=[False, False, True, True], **kwargs)


def DFormerv2_L(**kwargs):
    return dformerv2(embed_dims=[112, 224, 448, 640], depths=[4, 8, 25, 8], num_heads=[7, 7, 14, 20],
                     heads_ranges=[6, 6, 6, 6], layerscales=[False, False, True, True], **kwargs)
