"""The ONNX handlers of the DFormer / DFormerv2 / decode-head modules, and the `Exporter` that runs them.

`Exporter(model, graph)(module, *inputs)` runs the handler registered for `type(module)` (exact
type: a subclass with other behaviour must get its own) with the graph scope set to the module's
state_dict prefix, so initializers carry the parameter names (`backbone.stages.0.0.attn.q.weight.T`
...). Each handler writes the arithmetic of that module's `execute` with `GraphBuilder`; where the
Jittor module calls a CPU fast path (`models/layers.py`), the handler writes the plain maths that
the fast path computes. A module type without a handler raises `ExportError` naming it. The
registry (`HANDLERS`, `handles`) and the handlers of generic layers are in `utils/onnx_export/layers.py`.
"""
import numpy as np

from models.builder import EncoderDecoder
from models.decoders import MLPDecoder
from models.decoders.ham_head import NMF2D, Hamburger, LightHamHead
from models.encoders import DFormer as v1
from models.encoders import DFormerv2 as v2

from .graph import ExportError
from .layers import HANDLERS, handles


class Exporter:
    """Walks the model: `exporter(module, *inputs)` runs the handler of `type(module)` with the
    graph scope set to the module's state_dict prefix."""

    def __init__(self, model, graph, nmf_seed):
        """`nmf_seed`: seed of the fixed NMF bases (see `nmf_raw_bases`)."""
        self.g = graph
        self.nmf_seed = nmf_seed
        self.names = {id(module): name for name, module in model.named_modules()}

    def name(self, module):
        return self.names.get(id(module), type(module).__name__)

    def __call__(self, module, *inputs, **options):
        handler = HANDLERS.get(type(module))
        if handler is None:
            cls = type(module)
            raise ExportError(f"cannot export module {self.name(module) or 'model'} ({cls.__module__}."
                              f"{cls.__qualname__}): no ONNX handler for this module type "
                              "(register one with `handles`, see utils/onnx_export/layers.py)")
        outer, self.g.scope = self.g.scope, self.name(module)
        try:
            return handler(self, module, *inputs, **options)
        finally:
            self.g.scope = outer

    def param(self, module, attr):
        """Initializer `<module>.<attr>` holding that parameter or buffer."""
        return self.g.initializer(f"{self.name(module)}.{attr}", getattr(module, attr).numpy())

    def conv_bn(self, x, conv, bn=None):
        """NCHW `conv`, with the eval-mode BatchNorm `bn` that follows it folded into its weights."""
        weight = conv.weight.numpy().astype(np.float64)
        bias = conv.bias.numpy().astype(np.float64) if conv.bias is not None else None
        if bn is not None:
            scale = bn.weight.numpy() / np.sqrt(bn.running_var.numpy().astype(np.float64) + bn.eps)
            weight = weight * scale.reshape(-1, 1, 1, 1)
            bias = ((0 if bias is None else bias) - bn.running_mean.numpy()) * scale + bn.bias.numpy()
        return self.g.conv(x, weight, bias, self.name(conv), conv.stride, conv.padding, conv.dilation,
                           conv.groups)


def nmf_raw_bases(nmf, seed):
    """The fixed raw NMF bases (S, D, R) of the exported graph: uniform [0, 1) float32, as
    `torch.rand`, from `numpy.random.default_rng(seed)`."""
    return np.random.default_rng(seed).random((nmf.S, nmf.D, nmf.R), dtype=np.float32)


# ================================================================ DFormer
@handles(v1.DFormer)
def dformer(ex, m, rgb, depth):
    g = ex.g
    x, x_e = rgb, g.slice(depth, 1, 0, 1)  # first of the 3 identical depth channels
    outs = []
    for i in range(4):
        x = g.nchw_to_nhwc(ex(m.downsample_layers[i], x))  # (B, H, W, C)
        x_e = g.nchw_to_nhwc(ex(m.downsample_layers_e[i], x_e))  # (B, H, W, C/2)
        for block in m.stages[i]:
            x, x_e = ex(block, x, x_e)
        outs.append(g.nhwc_to_nchw(x))
        if i < 3:
            x, x_e = outs[-1], g.nhwc_to_nchw(x_e)
    return outs


@handles(v1.Block)
def block(ex, m, x, x_e):
    g = ex.g
    a_x, a_e = ex(m.attn, x, x_e)
    x = g.add(x, ex(m.dropout_layer, g.mul(ex.param(m, "layer_scale_1"), a_x)))
    x = g.add(x, ex(m.dropout_layer, g.mul(ex.param(m, "layer_scale_2"), ex(m.mlp, x))))
    if not m.drop_depth:
        x_e = g.add(x_e, ex(m.dropout_layer, g.mul(ex.param(m, "layer_scale_1_e"), a_e)))
        x_e = g.add(x_e, ex(m.dropout_layer, g.mul(ex.param(m, "layer_scale_2_e"), ex(m.mlp_e2, x_e))))
    return x, x_e


@handles(v1.MLP)
def mlp(ex, m, x):
    x = ex(m.fc1, ex(m.norm, x))
    return ex(m.fc2, ex(m.pos, x, residual_gelu=True))


@handles(v1.attention)
def attention(ex, m, x, x_e):
    g = ex.g
    x, x_e = ex(m.norm, x), ex(m.norm_e, x_e)
    q, cutted_x = ex(m.q, x), ex(m.q_cut, x)
    t = ex(m.act, ex(m.l, x))
    a = ex(m.a, ex(m.conv, t))
    e = ex(m.e_back, ex(m.e_conv, ex(m.e_fore, x_e)))
    parts = [g.mul(q, a)]
    if m.window != 0:
        parts.append(global_awareness(ex, m, t, g.concat([x, x_e], axis=3)))
    parts.append(g.mul(cutted_x, e))
    x = g.concat(parts, axis=3)  # (B, H, W, 2C) or (B, H, W, 3C/2)
    return ex(m.proj, x), None if m.drop_depth else ex(m.proj_e, x)


def global_awareness(ex, m, t, short_cut):
    """`attention.global_awareness`: 7x7 pooled queries attend over all H*W positions."""
    g = ex.g
    heads, window = m.num_head, m.window
    d = m.kv.weight.shape[0] // heads // 2
    kv = g.reshape(ex(m.kv, t), [0, -1, 2, heads, d])  # (B, HW, 2, heads, d)
    k_t = g.transpose(g.take(kv, 2, 0), (0, 2, 3, 1))  # (B, heads, d, HW)
    v = g.transpose(g.take(kv, 2, 1), (0, 2, 1, 3))  # (B, heads, HW, d)
    pooled = g.nchw_to_nhwc(g.adaptive_avg_pool(g.nhwc_to_nchw(short_cut), window))  # (B, 7, 7, 3C/2)
    query = g.reshape(ex(m.short_cut_linear, pooled), [0, -1, heads, d])
    query = g.transpose(query, (0, 2, 1, 3))  # (B, heads, 49, d)
    attn = g.softmax(g.matmul(g.scale(query, d ** -0.5), k_t), axis=-1)  # (B, heads, 49, HW)
    out = g.reshape(g.matmul(attn, v), [0, heads, window, window, d])
    out = g.reshape(g.transpose(out, (0, 1, 4, 2, 3)), [0, heads * d, window, window])  # (B, C/2, 7, 7)
    return g.nchw_to_nhwc(g.resize(out, g.dims(t, 1, 3)))  # (B, H, W, C/2)


# ================================================================ DFormerv2
@handles(v2.dformerv2)
def dformerv2(ex, m, rgb, depth):
    g = ex.g
    x = ex(m.patch_embed, rgb)  # (B, H/4, W/4, C)
    x_e = g.slice(depth, 1, 0, 1)  # (B, 1, H, W), full resolution
    outs = []
    for i, layer in enumerate(m.layers):
        x_out, x = ex(layer, x, x_e)
        if i > 0:
            x_out = ex(m.extra_norms[i - 1], x_out)
        outs.append(g.nhwc_to_nchw(x_out))
    return outs


@handles(v2.PatchEmbed)
def patch_embed(ex, m, x):
    return ex.g.nchw_to_nhwc(ex(m.proj, x))


@handles(v2.PatchMerging)
def patch_merging(ex, m, x):
    return ex.g.nchw_to_nhwc(ex.conv_bn(ex.g.nhwc_to_nchw(x), m.reduction, m.norm))


@handles(v2.BasicLayer)
def basic_layer(ex, m, x, x_e):
    for block in m.blocks:
        x = ex(block, x, x_e)
    return x, (ex(m.downsample, x) if m.downsample is not None else x)


@handles(v2.RGBD_Block)
def rgbd_block(ex, m, x, x_e):
    g = ex.g
    x = g.add(x, ex(m.cnn_pos_encode, x))
    geo_prior = ex(m.Geo, g.dims(x, 1, 3), x_e, m.split)
    attn = ex(m.Attention, ex(m.layer_norm1, x), geo_prior)
    x = g.add(x, ex(m.drop_path, g.mul(ex.param(m, "gamma_1"), attn) if m.layerscale else attn))
    ffn = ex(m.ffn, ex(m.layer_norm2, x))
    return g.add(x, ex(m.drop_path, g.mul(ex.param(m, "gamma_2"), ffn) if m.layerscale else ffn))


@handles(v2.DWConv2d)
def dwconv(ex, m, x):
    return ex(m.dwconv, x)


@handles(v2.FeedForwardNetwork)
def ffn(ex, m, x):
    x = ex.g.gelu(ex(m.fc1, x))
    return ex(m.fc2, ex.g.add(ex(m.dwconv, x), x))


@handles(v2.GeoPriorGen)
def geo_prior(ex, m, hw, depth, split):
    """`GeoPriorGen.execute` for the (H, W) in the int64 tensor `hw`, computed in the graph."""
    g = ex.g
    H, W = g.take(hw, 0, 0), g.take(hw, 0, 1)
    depth = g.resize(depth, hw)  # (B, 1, H, W)
    decay = ex.param(m, "decay")  # (heads,)
    weight = ex.param(m, "weight")  # (2, 1, 1, 1)
    w_pos, w_depth = g.take(weight, 0, 0), g.take(weight, 0, 1)
    phase = g.mul(g.unsqueeze(g.arange(g.mul(H, W)), [1]), ex.param(m, "angle"))  # (HW, key_dim)
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


def angle_transform(g, x, sin, cos, key_dim):
    """`angle_transform`: interleaved pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)."""
    pairs = g.reshape(x, [0, 0, 0, 0, key_dim // 2, 2])
    even, odd = g.slice(pairs, 5, 0, 1), g.slice(pairs, 5, 1, 2)
    rotated = g.reshape(g.concat([g.op("Neg", odd), even], axis=5), [0, 0, 0, 0, key_dim])
    return g.add(g.mul(x, cos), g.mul(rotated, sin))


def rotated_qkv(ex, m, x, sin, cos):
    """`_GSA.rotated_qkv`: q, k rotated (B, n, H, W, d); v (B, H, W, C); lepe (B, H, W, C)."""
    g = ex.g
    n, d = m.num_heads, m.key_dim
    q, k, v = ex(m.q_proj, x), g.scale(ex(m.k_proj, x), m.scaling), ex(m.v_proj, x)
    q, k = (g.transpose(g.reshape(t, [0, 0, 0, n, d]), (0, 3, 1, 2, 4)) for t in (q, k))
    return angle_transform(g, q, sin, cos, d), angle_transform(g, k, sin, cos, d), v, ex(m.lepe, v)


@handles(v2.Decomposed_GSA)
def decomposed_gsa(ex, m, x, rel_pos):
    """Axial attention, computed in the (B, n, rows, columns, d) layout that the masks have."""
    g = ex.g
    (sin, cos), (mask_h, mask_w) = rel_pos
    qr, kr, v, lepe = rotated_qkv(ex, m, x, sin, cos)
    v = g.transpose(g.reshape(v, [0, 0, 0, m.num_heads, m.key_dim]), (0, 3, 1, 2, 4))  # (B, n, H, W, d)
    attn_w = g.softmax(g.add(g.matmul(qr, g.transpose(kr, (0, 1, 2, 4, 3))), mask_w))  # (B, n, H, W, W)
    v = g.transpose(g.matmul(attn_w, v), (0, 1, 3, 2, 4))  # (B, n, W, H, d)
    attn_h = g.softmax(g.add(g.matmul(g.transpose(qr, (0, 1, 3, 2, 4)), g.transpose(kr, (0, 1, 3, 4, 2))),
                             mask_h))  # (B, n, W, H, H)
    out = g.transpose(g.matmul(attn_h, v), (0, 3, 2, 1, 4))  # (B, H, W, n, d)
    return ex(m.out_proj, g.add(g.reshape(out, [0, 0, 0, -1]), lepe))


@handles(v2.Full_GSA)
def full_gsa(ex, m, x, rel_pos):
    g = ex.g
    (sin, cos), mask = rel_pos
    qr, kr, v, lepe = rotated_qkv(ex, m, x, sin, cos)
    n, d = m.num_heads, m.key_dim
    qr, kr = g.reshape(qr, [0, 0, -1, d]), g.reshape(kr, [0, 0, -1, d])  # (B, n, HW, d)
    v = g.transpose(g.reshape(v, [0, -1, n, d]), (0, 2, 1, 3))  # (B, n, HW, d)
    attn = g.softmax(g.add(g.matmul(qr, g.transpose(kr, (0, 1, 3, 2))), mask))  # (B, n, HW, HW)
    out = g.transpose(g.matmul(attn, v), (0, 2, 1, 3))  # (B, HW, n, d)
    return ex(m.out_proj, g.add(g.reshape_to(out, g.op("Shape", x)), lepe))


# ================================================================ decode heads and segmentor
@handles(EncoderDecoder)
def encoder_decoder(ex, m, rgb, depth):
    logits = ex(m.decode_head, ex(m.backbone, rgb, depth))  # (B, K, H/8, W/8)
    return ex.g.resize(logits, ex.g.dims(rgb, 2, 4))


@handles(LightHamHead)
def light_ham_head(ex, m, inputs):
    g = ex.g
    first, *rest = inputs[1:]
    size = g.dims(first, 2, 4)
    x = g.concat([first] + [g.resize(level, size) for level in rest], axis=1)  # (B, sum(in), H/8, W/8)
    x = ex(m.align, ex(m.hamburger, ex(m.squeeze, x)))
    return ex(m.conv_seg, ex(m.dropout, x))


@handles(Hamburger)
def hamburger(ex, m, x):
    enjoy = ex(m.ham_out, ex(m.ham, ex.g.relu(ex(m.ham_in, x))))
    return ex.g.relu(ex.g.add(x, enjoy))


@handles(NMF2D)
def nmf2d(ex, m, x):
    """`NMF2D.execute` in evaluation mode with the fixed bases; (B, S, D, N) layout, so that the
    (1, S, D, R) bases broadcast over any batch."""
    g = ex.g
    raw = ex.g.initializer(f"{ex.name(m)}.raw_bases", nmf_raw_bases(m, ex.nmf_seed))  # (S, D, R)
    norm = g.op("Sqrt", g.op("ReduceSum", g.mul(raw, raw), g.ints([1]), keepdims=1))
    bases = g.unsqueeze(g.div(raw, g.op("Max", norm, g.const(1e-12))), [0])  # (1, S, D, R)
    x_in = x
    x = g.reshape(x, [0, m.S, m.D, -1])  # (B, S, D, N)
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
    coef = g.softmax(logits if m.inv_t == 1 else g.scale(logits, m.inv_t), axis=-1)  # (B, S, N, R)
    for _ in range(m.eval_steps):
        coef = update_coef(bases, coef)
        bases = update_bases(bases, coef)
    coef = update_coef(bases, coef)
    return g.reshape_to(g.matmul(bases, t(coef)), g.op("Shape", x_in))  # (B, C, H, W)


@handles(MLPDecoder.DecoderHead)
def mlp_decoder_head(ex, m, inputs):
    g = ex.g
    c1, c2, c3, c4 = inputs
    size = g.dims(c1, 2, 4)
    embedded = [g.resize(ex(m.linear_c4, c4), size), g.resize(ex(m.linear_c3, c3), size),
                g.resize(ex(m.linear_c2, c2), size), ex(m.linear_c1, c1)]
    return ex(m.linear_pred, ex(m.dropout, ex(m.linear_fuse, g.concat(embedded, axis=1))))


@handles(MLPDecoder.MLP)
def mlp_decoder_embed(ex, m, x):
    return ex.g.nhwc_to_nchw(ex(m.proj, ex.g.nchw_to_nhwc(x)))
