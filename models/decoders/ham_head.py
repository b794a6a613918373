"""LightHamHead with NMF2D: "Is Attention Better Than Matrix Decomposition?", Geng et al., ICLR 2021,
as used by every DFormer/DFormerv2 config.

Mirrors the official `models/decoders/ham_head.py` + `decode_head.py` (VCIP-RGBD/DFormer, from
mmseg/SegNeXt) with identical parameter names. The BNs' eps and momentum are `C.bn_eps` and
`C.bn_momentum`, set by `init_decode_head` as upstream's `init_weight`. Difference:
`NMF2D.fixed_raw_bases` can pin the random bases for exact comparisons (see below). Beside
`execute`, each class has its ONNX rule (`onnx`) and NMF2D its FLOPs rule (`macs`): docs/contributing.md.
"""
import jittor as jt
import numpy as np
from jittor import nn

from .. import constants, precision
from ..layers import ConvModule, PointwiseConv2d, relu, resize
from ..layout import concat, matmul


class NMF2D(nn.Module):
    """Non-negative matrix factorisation of a (B, C, H, W) map into R=64 bases, multiplicative updates.

    Upstream draws fresh uniform bases for every forward, in training and evaluation alike, then
    L2-normalises them over D; 6 steps in training, 7 in evaluation, inv_t = 1. The updates run in
    float32 in float16 inference too (their ratios divide by sums with a 1e-6 floor, which float16
    cannot hold), the products in `precision`'s dtypes.
    Set `fixed_raw_bases` to a (B*S, D, R) numpy array (the values upstream draws with
    `torch.rand`, before normalising) to use them instead of a draw; `None` draws again.
    """

    def __init__(self, D=512, S=1, R=64, train_steps=6, eval_steps=7, inv_t=1):
        super().__init__()
        self.D, self.S, self.R = D, S, R
        self.train_steps, self.eval_steps, self.inv_t = train_steps, eval_steps, inv_t
        self.fixed_raw_bases = None

    def build_bases(self, batch, D):
        if self.fixed_raw_bases is not None:
            raw = jt.array(np.asarray(self.fixed_raw_bases, dtype=np.float32))
            if tuple(raw.shape) != (batch * self.S, D, self.R):
                raise ValueError(f"fixed_raw_bases has shape {tuple(raw.shape)}, "
                                 f"this forward needs {(batch * self.S, D, self.R)}")
        else:
            raw = jt.rand((batch * self.S, D, self.R))
        norm = jt.sqrt((raw * raw).sum(1, keepdims=True))
        return raw / jt.maximum(norm, constants.scalar_like(1e-12, norm))  # F.normalize(dim=1)

    @staticmethod
    def update_coef(x, bases, coef):
        """coef * (x^T bases) / (coef (bases^T bases))."""
        numerator = matmul(x, bases, trans_a=True)  # (BS, N, R)
        denominator = matmul(coef, matmul(bases, bases, trans_a=True))  # (BS, N, R) @ (BS, R, R)
        return coef * numerator / (denominator + constants.filled(1e-6, denominator.shape, denominator.dtype))

    @staticmethod
    def update_bases(x, bases, coef):
        """bases * (x coef) / (bases (coef^T coef))."""
        numerator = matmul(x, coef)  # (BS, D, R)
        denominator = matmul(bases, matmul(coef, coef, trans_a=True))  # (BS, D, R) @ (BS, R, R)
        return bases * numerator / (denominator + constants.filled(1e-6, denominator.shape, denominator.dtype))

    def execute(self, inputs):
        B, C, H, W = inputs.shape
        D, N = C // self.S, H * W
        x = precision.widened(inputs).reshape(B * self.S, D, N)
        bases = self.build_bases(B, D)  # (BS, D, R)
        logits = matmul(x, bases, trans_a=True)  # (BS, N, R)
        coef = precision.softmax(logits if self.inv_t == 1 else self.inv_t * logits, dim=-1)
        for _ in range(self.train_steps if self.is_train else self.eval_steps):
            coef = self.update_coef(x, bases, coef)
            bases = self.update_bases(x, bases, coef)
        coef = self.update_coef(x, bases, coef)
        x = matmul(bases, coef, trans_b=True)  # (BS, D, R) @ (BS, R, N)
        return precision.like(x.reshape(B, C, H, W), inputs)

    def macs(self, inputs, output):
        """Products thop misses: the initial logits, each step's coefficient and bases updates, the
        last coefficient update and the reconstruction."""
        B, C, H, W = inputs[0].shape
        D, N, R = C // self.S, H * W, self.R
        coef_step = N * D * R + R * D * R + N * R * R  # x^T bases, bases^T bases, coef (.)
        bases_step = D * N * R + R * N * R + D * R * R  # x coef, coef^T coef, bases (.)
        steps = self.train_steps if self.is_train else self.eval_steps
        return 0, B * self.S * (N * D * R + steps * (coef_step + bases_step) + coef_step + D * R * N)

    def onnx(self, ex, x):
        """`NMF2D.execute` in evaluation mode with the fixed bases; (B, S, D, N) layout, so that the
        (1, S, D, R) bases broadcast over any batch."""
        g = ex.g
        raw = ex.nmf_bases(self)  # (S, D, R)
        norm = g.op("Sqrt", g.op("ReduceSum", g.mul(raw, raw), g.ints([1]), keepdims=1))
        bases = g.unsqueeze(g.div(raw, g.op("Max", norm, g.const(1e-12))), [0])  # (1, S, D, R)
        x_in = x
        x = g.reshape(x, [0, self.S, self.D, -1])  # (B, S, D, N)
        x_t = g.transpose(x, (0, 1, 3, 2))  # (B, S, N, D)
        eps = g.const(1e-6)

        def t(a):  # swap the last two axes
            return g.transpose(a, (0, 1, 3, 2))

        def update_coef(bases, coef):
            denominator = g.matmul(coef, g.matmul(t(bases), bases))  # (B, S, N, R)
            return g.div(g.mul(coef, g.matmul(x_t, bases)), g.add(denominator, eps))

        def update_bases(bases, coef):
            denominator = g.matmul(bases, g.matmul(t(coef), coef))  # (B, S, D, R)
            return g.div(g.mul(bases, g.matmul(x, coef)), g.add(denominator, eps))

        logits = g.matmul(x_t, bases)
        coef = g.softmax(logits if self.inv_t == 1 else g.scale(logits, self.inv_t), axis=-1)  # (B, S, N, R)
        for _ in range(self.eval_steps):
            coef = update_coef(bases, coef)
            bases = update_bases(bases, coef)
        coef = update_coef(bases, coef)
        return g.reshape_to(g.matmul(bases, t(coef)), g.op("Shape", x_in))  # (B, C, H, W)


class Hamburger(nn.Module):
    """ReLU(x + ham_out(NMF(ReLU(ham_in(x))))): ham_in has a bias and no norm, ham_out BN only."""

    def __init__(self, ham_channels=512):
        super().__init__()
        self.ham_in = ConvModule(ham_channels, ham_channels, norm=False, act=False)
        self.ham = NMF2D(D=ham_channels)
        self.ham_out = ConvModule(ham_channels, ham_channels, act=False)

    def execute(self, x):
        enjoy = self.ham_out(self.ham(relu(self.ham_in(x))))
        return relu(x + enjoy)

    def onnx(self, ex, x):
        enjoy = ex(self.ham_out, ex(self.ham, ex.g.relu(ex(self.ham_in, x))))
        return ex.g.relu(ex.g.add(x, enjoy))


class LightHamHead(nn.Module):
    """Stride-8 head over stages 1-3: resize, concat, squeeze, Hamburger, align, classify.

    Args:
        in_channels: widths of stages 1, 2, 3 (taken from `inputs[1:]`).
        num_classes: output classes.
        channels: `decoder_embed_dim` (512, or 1024 for some configs).
        ham_channels: always 512 upstream.
    """

    def __init__(self, in_channels, num_classes, channels=512, ham_channels=512, dropout_ratio=0.1):
        super().__init__()
        self.squeeze = ConvModule(sum(in_channels), ham_channels)
        self.hamburger = Hamburger(ham_channels)
        self.align = ConvModule(ham_channels, channels)
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_seg = PointwiseConv2d(channels, num_classes)

    def execute(self, inputs):
        inputs = inputs[1:]
        size = inputs[0].shape[2:]
        x = concat([resize(level, size) for level in inputs], 1)  # (B, sum(in), H/8, W/8)
        x = self.align(self.hamburger(self.squeeze(x)))
        return self.conv_seg(self.dropout(x))

    def onnx(self, ex, inputs):
        g = ex.g
        first, *rest = inputs[1:]
        size = g.dims(first, 2, 4)
        x = g.concat([first] + [g.resize(level, size) for level in rest], axis=1)  # (B, sum(in), H/8, W/8)
        x = ex(self.align, ex(self.hamburger, ex(self.squeeze, x)))
        return ex(self.conv_seg, ex(self.dropout, x))
