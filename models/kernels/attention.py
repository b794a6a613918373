"""Fused attention for the CPU: one OpenMP kernel forward, one backward.

Used by DFormerv2's masked axial and full attention and by DFormer's global awareness (49 pooled
queries over all positions, no mask). Why: on the CPU Jittor runs batched products as
single-threaded broadcast-multiply-sum loops and a softmax as three more passes over the logits.
Same maths as the stock ops (tested to ~1e-5, values and gradients); `layers.py` here
(`axial_attention`, `full_attention`, `pooled_attention`) calls it where `models.kernels.applies` holds.
"""
import jittor as jt
import numpy as np

_HEADERS = "#include <vector>\n#include <cmath>\n#include <algorithm>"
_VIEW_FIELDS = 5  # offset, strides of g0, g1, g2, stride of a position


# Shared prologue: group g = (g0, g1, g2) and the base pointers of its q, k, v and output rows.
# in0..in2: q, k, v; in3: int64 layout (see `attention`); @MASK_P: the mask, (G, LQ, LK), if @HAS_MASK.
_ATTENTION_PROLOGUE = """
#define HEAD_DIM @HEAD_DIM
int64 cfg[25];
for (int t = 0; t < 25; t++) cfg[t] = in3_p[t];
const int64 G1 = cfg[1], G2 = cfg[2], LQ = cfg[3], LK = cfg[4], G = cfg[0] * G1 * G2;
const int64 sq = cfg[9], sk = cfg[14], sv = cfg[19], so = cfg[24];  // position strides
#pragma omp parallel for schedule(static)
for (int64 g = 0; g < G; g++) {
    const int64 g0 = g / (G1 * G2), g1 = (g / G2) % G1, g2 = g % G2;
    int64 base[4];  // q, k, v, output
    for (int t = 0; t < 4; t++)
        base[t] = cfg[5 + 5 * t] + g0 * cfg[6 + 5 * t] + g1 * cfg[7 + 5 * t] + g2 * cfg[8 + 5 * t];
    const int64 oq = base[0], ok = base[1], ov = base[2], oo = base[3];
    const float32 *qg = in0_p + oq, *kg = in1_p + ok, *vg = in2_p + ov;
    std::vector<float32> kt(HEAD_DIM * LK), p(LK);
    for (int64 j = 0; j < LK; j++)  // k transposed, so that the logits loop runs over contiguous j
        for (int c = 0; c < HEAD_DIM; c++) kt[c * LK + j] = kg[j * sk + c];
"""
# Row i's attention weights p = softmax(q_i k^T (+ mask_i)), unnormalised, and their sum.
_ATTENTION_ROW = """
        const float32 *qi = qg + i * sq;
        for (int64 j = 0; j < LK; j++) p[j] = @HAS_MASK ? @MASK_P[(g * LQ + i) * LK + j] : 0;
        for (int c = 0; c < HEAD_DIM; c++) {
            const float32 qc = qi[c], *ktc = kt.data() + c * LK;
            for (int64 j = 0; j < LK; j++) p[j] += qc * ktc[j];
        }
        float32 top = p[0], sum = 0;
        for (int64 j = 1; j < LK; j++) top = std::max(top, p[j]);
        for (int64 j = 0; j < LK; j++) { p[j] = std::exp(p[j] - top); sum += p[j]; }
"""
_ATTENTION_FORWARD = _ATTENTION_PROLOGUE + """
    float32 *og = out0_p + oo;
    for (int64 i = 0; i < LQ; i++) {""" + _ATTENTION_ROW + """
        float32 acc[HEAD_DIM] = {0};
        for (int64 j = 0; j < LK; j++) {
            const float32 pj = p[j], *vj = vg + j * sv;
            for (int c = 0; c < HEAD_DIM; c++) acc[c] += pj * vj[c];
        }
        float32 *oi = og + i * so;
        for (int c = 0; c < HEAD_DIM; c++) oi[c] = acc[c] / sum;
    }
}
"""
# Backward, softmax recomputed (nothing (G, LQ, LK)-sized is kept from the forward):
# dP = dO v^T, dS = P * (dP - rowsum(P * dP)); dq = dS k, dk = dS^T q, dv = P^T dO, dmask = dS.
# in4: dO (the output's layout). MASK_GRAD 0: out0 = dq in q's layout, dk and dv in the layouts
# of k and v, in out1 and out2, or both in out1 when k and v share one tensor (@DV = out1);
# MASK_GRAD 1: out0 = dmask (G, LQ, LK).
_ATTENTION_BACKWARD = _ATTENTION_PROLOGUE + """
    const float32 *dog = in4_p + oo;
    std::vector<float32> vt(HEAD_DIM * LK), dp(LK);
    for (int64 j = 0; j < LK; j++)
        for (int c = 0; c < HEAD_DIM; c++) vt[c * LK + j] = vg[j * sv + c];
#if !@MASK_GRAD
    std::vector<float32> dk(LK * HEAD_DIM, 0), dv(LK * HEAD_DIM, 0);
#endif
    for (int64 i = 0; i < LQ; i++) {""" + _ATTENTION_ROW + """
        const float32 *doi = dog + i * so;
        for (int64 j = 0; j < LK; j++) { p[j] /= sum; dp[j] = 0; }
        for (int c = 0; c < HEAD_DIM; c++) {
            const float32 dc = doi[c], *vtc = vt.data() + c * LK;
            for (int64 j = 0; j < LK; j++) dp[j] += dc * vtc[j];
        }
        float32 dot = 0;
        for (int64 j = 0; j < LK; j++) dot += p[j] * dp[j];
        for (int64 j = 0; j < LK; j++) dp[j] = p[j] * (dp[j] - dot);  // dS row i
#if @MASK_GRAD
        for (int64 j = 0; j < LK; j++) out0_p[(g * LQ + i) * LK + j] = dp[j];
#else
        float32 acc[HEAD_DIM] = {0};
        for (int64 j = 0; j < LK; j++) {
            const float32 ds = dp[j], pj = p[j], *kj = kg + j * sk;
            float32 *dkj = dk.data() + j * HEAD_DIM, *dvj = dv.data() + j * HEAD_DIM;
            for (int c = 0; c < HEAD_DIM; c++) {
                acc[c] += ds * kj[c];
                dkj[c] += ds * qi[c];
                dvj[c] += pj * doi[c];
            }
        }
        float32 *dqi = out0_p + oq + i * sq;
        for (int c = 0; c < HEAD_DIM; c++) dqi[c] = acc[c];
#endif
    }
#if !@MASK_GRAD
    for (int64 j = 0; j < LK; j++)
        for (int c = 0; c < HEAD_DIM; c++) {
            out1_p[ok + j * sk + c] = dk[j * HEAD_DIM + c];
            @DV[ov + j * sv + c] = dv[j * HEAD_DIM + c];
        }
#endif
}
"""


def _source(src, head_dim, mask_input):
    """The kernel source for `head_dim`, with the mask read from input `mask_input` (None: no mask)."""
    has_mask = mask_input is not None
    return (src.replace("@HEAD_DIM", str(head_dim)).replace("@HAS_MASK", str(int(has_mask)))
            .replace("@MASK_P", f"in{mask_input}_p" if has_mask else "in0_p"))


class _Attention(jt.Function):
    """softmax(q k^T (+ mask)) v over strided groups; see `attention`. v None: v is in k's tensor."""

    def execute(self, q, k, v, mask, layout, out_shape, head_dim):
        self.saved = (q, k, v, mask, layout, head_dim)
        inputs = [q, k, k if v is None else v, layout] + ([] if mask is None else [mask])
        return jt.code(out_shape, "float32", inputs, cpu_header=_HEADERS,
                       cpu_src=_source(_ATTENTION_FORWARD, head_dim, None if mask is None else 4))

    def grad(self, dout):
        q, k, v, mask, layout, head_dim = self.saved
        inputs = [q, k, k if v is None else v, layout, dout] + ([] if mask is None else [mask])
        src = _source(_ATTENTION_BACKWARD, head_dim, None if mask is None else 5)
        src = src.replace("@DV", "out1_p" if v is None else "out2_p")
        kv_src = src.replace("@MASK_GRAD", "0")
        if v is None:
            dq, dk = jt.code([q.shape, k.shape], ["float32"] * 2, inputs, cpu_header=_HEADERS, cpu_src=kv_src)
            dv = None
        else:
            dq, dk, dv = jt.code([q.shape, k.shape, v.shape], ["float32"] * 3, inputs, cpu_header=_HEADERS,
                                 cpu_src=kv_src)
        # a separate kernel, so that it only runs where the mask needs a gradient (lazy graph)
        dmask = None if mask is None else jt.code(mask.shape, "float32", inputs, cpu_header=_HEADERS,
                                                  cpu_src=src.replace("@MASK_GRAD", "1"))
        return dq, dk, dv, dmask, None, None, None


def attention(q, k, v, mask, groups, views, out_shape, head_dim):
    """softmax(q k^T (+ mask)) v for many small attention problems, fused in one parallel CPU kernel.

    Why: on the CPU Jittor runs batched products as single-threaded broadcast-multiply-sum loops
    and the softmax as three more passes over the (groups, Lq, Lk) logits; this computes each
    group's logits, softmax and product in one go, one OpenMP thread per group, and reads q, k, v
    and writes the output through strides, so the head splits and axis swaps cost no copies. The
    backward recomputes the softmax per group instead of keeping it (flash-attention style).

    Args:
        q, k, v: float32 tensors holding, for group g = (g0, g1, g2) and position p, `head_dim`
            contiguous channels (q or k already scaled). v may be k itself (one tensor holding
            both, e.g. a kv projection, told apart by the views' offsets).
        mask: None, or an additive mask, contiguous, (Lq, Lk) per group in group order, e.g.
            (G0, G1, G2, Lq, Lk).
        groups: (G0, G1, G2).
        views: for q, k, v and the output, in that order: element strides (s0, s1, s2, s_position)
            and optionally a fifth entry, the offset of element 0; together the views of a tensor
            must cover each of its elements exactly once (k and v together when they share one).
        out_shape: shape of the output tensor the output view writes into.
        head_dim: channels per head (a compile-time constant of the kernel).
    Returns: the output tensor (out_shape), every element written.
    """
    G = int(np.prod(groups))
    Lq, Lk = int(q.numel() // (G * head_dim)), int(k.numel() // (G * head_dim) // (2 if v is k else 1))
    fields = [[*(view[4:5] or (0,)), *view[:4]] for view in views]  # (offset, s0, s1, s2, s_position)
    layout = jt.array(np.array([*groups, Lq, Lk, *sum(fields, [])], dtype=np.int64)).stop_grad()
    return _Attention.apply(q, k, None if v is k else v, mask, layout, tuple(out_shape), int(head_dim))
