"""The fused masked attention of DFormerv2 for the CPU: one OpenMP kernel forward, one backward.

Why: on the CPU Jittor runs batched products as single-threaded broadcast-multiply-sum loops and a
softmax as three more passes over the logits. Same maths as the stock ops (tested to ~1e-5,
values and gradients); `models/layers.py` (`axial_attention`, `full_attention`) decides where it
runs and keeps the stock ops for the GPU.
"""
import jittor as jt
import numpy as np

_HEADERS = "#include <vector>\n#include <cmath>\n#include <algorithm>"


# Shared prologue: group g = (g0, g1, g2) and the base pointers of its q, k, v and output rows.
# in0..in2: q, k, v; in3: mask (G, L, L); in4: int32 layout (see `masked_attention`).
_ATTENTION_PROLOGUE = """
#define HEAD_DIM @HEAD_DIM
int64 cfg[20];
for (int t = 0; t < 20; t++) cfg[t] = in4_p[t];
const int64 G1 = cfg[1], G2 = cfg[2], L = cfg[3], G = cfg[0] * G1 * G2;
#pragma omp parallel for schedule(static)
for (int64 g = 0; g < G; g++) {
    const int64 g0 = g / (G1 * G2), g1 = (g / G2) % G1, g2 = g % G2;
    const int64 oq = g0 * cfg[4] + g1 * cfg[5] + g2 * cfg[6], ok = g0 * cfg[8] + g1 * cfg[9] + g2 * cfg[10];
    const int64 ov = g0 * cfg[12] + g1 * cfg[13] + g2 * cfg[14], oo = g0 * cfg[16] + g1 * cfg[17] + g2 * cfg[18];
    const float32 *qg = in0_p + oq, *kg = in1_p + ok, *vg = in2_p + ov, *mg = in3_p + g * L * L;
    std::vector<float32> kt(HEAD_DIM * L), p(L);
    for (int64 j = 0; j < L; j++)  // k transposed, so that the logits loop runs over contiguous j
        for (int c = 0; c < HEAD_DIM; c++) kt[c * L + j] = kg[j * cfg[11] + c];
"""
# Row i's attention weights p = softmax(q_i k^T + mask_i), unnormalised, and their sum.
_ATTENTION_ROW = """
        const float32 *qi = qg + i * cfg[7];
        for (int64 j = 0; j < L; j++) p[j] = mg[i * L + j];
        for (int c = 0; c < HEAD_DIM; c++) {
            const float32 qc = qi[c], *ktc = kt.data() + c * L;
            for (int64 j = 0; j < L; j++) p[j] += qc * ktc[j];
        }
        float32 top = p[0], sum = 0;
        for (int64 j = 1; j < L; j++) top = std::max(top, p[j]);
        for (int64 j = 0; j < L; j++) { p[j] = std::exp(p[j] - top); sum += p[j]; }
"""
_ATTENTION_FORWARD = _ATTENTION_PROLOGUE + """
    float32 *og = out0_p + oo;
    for (int64 i = 0; i < L; i++) {""" + _ATTENTION_ROW + """
        float32 acc[HEAD_DIM] = {0};
        for (int64 j = 0; j < L; j++) {
            const float32 pj = p[j], *vj = vg + j * cfg[15];
            for (int c = 0; c < HEAD_DIM; c++) acc[c] += pj * vj[c];
        }
        float32 *oi = og + i * cfg[19];
        for (int c = 0; c < HEAD_DIM; c++) oi[c] = acc[c] / sum;
    }
}
"""
# Backward, softmax recomputed (nothing (G, L, L)-sized is kept from the forward):
# dP = dO v^T, dS = P * (dP - rowsum(P * dP)); dq = dS k, dk = dS^T q, dv = P^T dO, dmask = dS.
# in5: dO (the output's layout). MASK_GRAD 0: out0..out2 = dq, dk, dv in the layouts of q, k, v;
# MASK_GRAD 1: out0 = dmask (G, L, L).
_ATTENTION_BACKWARD = _ATTENTION_PROLOGUE + """
    const float32 *dog = in5_p + oo;
    std::vector<float32> vt(HEAD_DIM * L), dp(L);
    for (int64 j = 0; j < L; j++)
        for (int c = 0; c < HEAD_DIM; c++) vt[c * L + j] = vg[j * cfg[15] + c];
#if !@MASK_GRAD
    std::vector<float32> dk(L * HEAD_DIM, 0), dv(L * HEAD_DIM, 0);
#endif
    for (int64 i = 0; i < L; i++) {""" + _ATTENTION_ROW + """
        const float32 *doi = dog + i * cfg[19];
        for (int64 j = 0; j < L; j++) { p[j] /= sum; dp[j] = 0; }
        for (int c = 0; c < HEAD_DIM; c++) {
            const float32 dc = doi[c], *vtc = vt.data() + c * L;
            for (int64 j = 0; j < L; j++) dp[j] += dc * vtc[j];
        }
        float32 dot = 0;
        for (int64 j = 0; j < L; j++) dot += p[j] * dp[j];
        for (int64 j = 0; j < L; j++) dp[j] = p[j] * (dp[j] - dot);  // dS row i
#if @MASK_GRAD
        for (int64 j = 0; j < L; j++) out0_p[(g * L + i) * L + j] = dp[j];
#else
        float32 acc[HEAD_DIM] = {0};
        for (int64 j = 0; j < L; j++) {
            const float32 ds = dp[j], pj = p[j], *kj = kg + j * cfg[11];
            float32 *dkj = dk.data() + j * HEAD_DIM, *dvj = dv.data() + j * HEAD_DIM;
            for (int c = 0; c < HEAD_DIM; c++) {
                acc[c] += ds * kj[c];
                dkj[c] += ds * qi[c];
                dvj[c] += pj * doi[c];
            }
        }
        float32 *dqi = out0_p + oq + i * cfg[7];
        for (int c = 0; c < HEAD_DIM; c++) dqi[c] = acc[c];
#endif
    }
#if !@MASK_GRAD
    for (int64 j = 0; j < L; j++)
        for (int c = 0; c < HEAD_DIM; c++) {
            out1_p[ok + j * cfg[11] + c] = dk[j * HEAD_DIM + c];
            out2_p[ov + j * cfg[15] + c] = dv[j * HEAD_DIM + c];
        }
#endif
}
"""


class _MaskedAttention(jt.Function):
    """softmax(q k^T + mask) v over strided groups; see `masked_attention`."""

    def execute(self, q, k, v, mask, layout, out_shape, head_dim):
        self.saved = (q, k, v, mask, layout, head_dim)
        return jt.code(out_shape, "float32", [q, k, v, mask, layout], cpu_header=_HEADERS,
                       cpu_src=_ATTENTION_FORWARD.replace("@HEAD_DIM", str(head_dim)))

    def grad(self, dout):
        q, k, v, mask, layout, head_dim = self.saved
        inputs = [q, k, v, mask, layout, dout]
        src = _ATTENTION_BACKWARD.replace("@HEAD_DIM", str(head_dim))
        dq, dk, dv = jt.code([q.shape, k.shape, v.shape], ["float32"] * 3, inputs, cpu_header=_HEADERS,
                             cpu_src=src.replace("@MASK_GRAD", "0"))
        # a separate kernel, so that it only runs where the mask needs a gradient (lazy graph)
        dmask = jt.code(mask.shape, "float32", inputs, cpu_header=_HEADERS, cpu_src=src.replace("@MASK_GRAD", "1"))
        return dq, dk, dv, dmask, None, None, None


def masked_attention(q, k, v, mask, groups, views, out_shape, head_dim):
    """softmax(q k^T + mask) v for many small attention problems, fused in one parallel CPU kernel.

    Why: on the CPU Jittor runs batched products as single-threaded broadcast-multiply-sum loops
    and the softmax as three more passes over the (groups, L, L) logits; this computes each
    group's logits, softmax and product in one go, one OpenMP thread per group, and reads q, k, v
    and writes the output through strides, so the head splits and axis swaps cost no copies. The
    backward recomputes the softmax per group instead of keeping it (flash-attention style).

    Args:
        q, k, v: float32 tensors holding, for group g = (g0, g1, g2) and position p, `head_dim`
            contiguous channels (k already scaled).
        mask: additive mask, contiguous, (L, L) per group in group order, e.g. (G0, G1, G2, L, L).
        groups: (G0, G1, G2).
        views: element strides (s0, s1, s2, s_position) of q, k, v and the output, in that order;
            each view must cover every element of its tensor exactly once.
        out_shape: shape of the output tensor the output view writes into.
        head_dim: channels per head (a compile-time constant of the kernel).
    Returns: the output tensor (out_shape), every element written.
    """
    L = int(mask.shape[-1])
    layout = jt.array(np.array([*groups, L, *[s for view in views for s in view]], dtype=np.int32)).stop_grad()
    return _MaskedAttention.apply(q, k, v, mask, layout, tuple(out_shape), int(head_dim))
