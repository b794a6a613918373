"""Multi-threaded CPU kernels (OpenMP, written with `jt.code`) with their backward passes.

Why: on the CPU Jittor compiles every element-wise and reduction op into a single-threaded loop,
and oneDNN's depthwise-convolution gradients are slow. Here: channels-last convolutions (oneDNN in
NHWC, OpenMP depthwise kernels), GELU, LayerNorm and the AdamW update (the attention is in
`attention.py`). Each computes the same maths as the stock Jittor ops it replaces (tested to
~1e-5, values and gradients); each is a `jt.Function`, so autograd uses the kernel's own backward.
CPU and float32 only: callers run them where `models.kernels.applies` holds; the GPU takes the
stock ops.
"""
import jittor as jt
import numpy as np

from ..library import library_conv, library_conv_grads, library_conv_ops

# ----------------------------------------------------------------------------- channels-last convolution

# The taps of output pixel (b, oh, ow) that fall inside the input, `xi` pointing at the tap's C
# channels of x (in0, (B, H, W, C)); `body` runs once per tap. Shared by both depthwise kernels.
_FOR_EACH_TAP = """
for (int kh = 0; kh < @KH; kh++) {
    const int64 ih = oh - @PH + kh;
    if (ih < 0 || ih >= H) continue;
    for (int kw = 0; kw < @KW; kw++) {
        const int64 iw = ow - @PW + kw;
        if (iw < 0 || iw >= W) continue;
        const float32 *xi = in0_p + ((b * H + ih) * W + iw) * C;
        @BODY
    }
}"""


def _for_each_tap(body):
    return _FOR_EACH_TAP.replace("@BODY", body)


_DEPTHWISE_SRC = """
// Depthwise KHxKW conv, stride 1, zero padding PH/PW, of an NHWC tensor, bias included, then
// the epilogue (nothing, or gelu(conv(x) + x), fused for inference).
// in0: x (B, H, W, C); in1: weight (KH*KW, C); in2: bias (C); out0: (B, OH, OW, C).
const int64 H = in0_shape1, W = in0_shape2, C = in0_shape3, OH = out0_shape1, OW = out0_shape2;
#pragma omp parallel for collapse(2) schedule(static)
for (int64 b = 0; b < in0_shape0; b++)
for (int64 oh = 0; oh < OH; oh++)
for (int64 ow = 0; ow < OW; ow++) {
    float32 *o = out0_p + ((b * OH + oh) * OW + ow) * C;
    for (int64 c = 0; c < C; c++) o[c] = in2_p[c];
    @FOR_EACH_TAP
    @EPILOGUE
}
""".replace("@FOR_EACH_TAP", _for_each_tap(
    "const float32 *wk = in1_p + (kh * @KW + kw) * C; for (int64 c = 0; c < C; c++) o[c] += wk[c] * xi[c];"))
# Optional epilogue: gelu(conv(x) + x), with Jittor's gelu formula (erf(v / sqrt 2) + 1) * v * 0.5.
_RESIDUAL_GELU = """{
        const float32 *xc = in0_p + ((b * H + oh) * W + ow) * C;
        for (int64 c = 0; c < C; c++) {
            const float32 v = o[c] + xc[c];
            o[c] = (std::erf(v / 1.4142135623730951f) + 1) * v * 0.5f;
        }
    }"""

_DEPTHWISE_WEIGHT_GRAD_SRC = """
// Weight gradient of the depthwise conv above, as partial sums over chunks of output rows:
// out0 (chunks, KH*KW, C) += dy[b, oh, ow, c] * x[b, oh - PH + kh, ow - PW + kw, c].
// in0: x (B, H, W, C); in1: dy (B, OH, OW, C).
const int64 H = in0_shape1, W = in0_shape2, C = in0_shape3, OH = in1_shape1, OW = in1_shape2;
const int64 R = in0_shape0 * OH, K = out0_shape0;
#pragma omp parallel for schedule(static)
for (int64 k = 0; k < K; k++) {
    float32 *acc = out0_p + k * @KH * @KW * C;
    for (int64 t = 0; t < @KH * @KW * C; t++) acc[t] = 0;
    for (int64 r = k * R / K; r < (k + 1) * R / K; r++) {
        const int64 b = r / OH, oh = r % OH;
        for (int64 ow = 0; ow < OW; ow++) {
            const float32 *d = in1_p + (r * OW + ow) * C;
            @FOR_EACH_TAP
        }
    }
}
""".replace("@FOR_EACH_TAP", _for_each_tap(
    "float32 *a = acc + (kh * @KW + kw) * C; for (int64 c = 0; c < C; c++) a[c] += d[c] * xi[c];"))
_DEPTHWISE_CHUNKS = 16  # row chunks of the weight-gradient sums (enough to balance the threads)

# The forward kernel beats oneDNN for 3x3 depthwise convs over >= 2M elements (the wide,
# memory-bound MLP/FFN convs of the first stages); oneDNN wins on smaller maps and on 5x5/7x7
# kernels, where arithmetic dominates. oneDNN's depthwise backward passes are slow in every
# layout, so every stride-1 depthwise conv takes the kernels below for its gradients.
DEPTHWISE_KERNEL_MIN_ELEMENTS = 2 ** 21


def _is_depthwise_same(conv):
    """Stride 1, odd square kernel, 'same' padding, one channel per group."""
    k = conv.kernel_size[0]
    return (tuple(conv.kernel_size) == (k, k) and k % 2 == 1 and tuple(conv.padding) == (k // 2, k // 2)
            and conv.groups == conv.in_channels == conv.out_channels
            and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1))


def _depthwise_kernel_applies(x, conv):
    return (_is_depthwise_same(conv) and conv.kernel_size[0] == 3
            and int(np.prod(x.shape)) >= DEPTHWISE_KERNEL_MIN_ELEMENTS)


def _kernel_src(src, k):
    for name in ("@KH", "@KW"):
        src = src.replace(name, str(k))
    for name in ("@PH", "@PW"):
        src = src.replace(name, str(k // 2))
    return src


def _depthwise_nhwc(x, weight, bias, residual_gelu=False):
    """Stride-1 'same' depthwise conv of an NHWC tensor in one parallel CPU kernel.

    Why not oneDNN here: it computes depthwise convolutions in a blocked layout, so each call
    reorders the input and the output; wide 3x3 depthwise convolutions are memory-bound, and one
    pass over the NHWC tensor (vectorised over channels, one OpenMP thread per output row) is
    faster.
    """
    C, k = x.shape[3], weight.shape[-1]
    weight = weight.reshape(C, k * k).transpose(1, 0)  # (k*k, C): channels contiguous
    bias = bias if bias is not None else jt.zeros((C,))
    src = _kernel_src(_DEPTHWISE_SRC, k).replace("@EPILOGUE", _RESIDUAL_GELU if residual_gelu else "")
    return jt.code(x.shape, "float32", [x, weight, bias], cpu_header="#include <cmath>", cpu_src=src)


def _depthwise_weight_grad(x, dy, k):
    """(C, 1, k, k) weight gradient of a stride-1 'same' depthwise conv, NHWC x and dy."""
    B, H, W, C = x.shape
    chunks = min(_DEPTHWISE_CHUNKS, B * H)
    partial = jt.code((chunks, k * k, C), "float32", [x, dy], cpu_src=_kernel_src(_DEPTHWISE_WEIGHT_GRAD_SRC, k))
    return partial.sum(0).transpose(1, 0).reshape(C, 1, k, k)


class _ConvNHWC(jt.Function):
    """`conv` of an NHWC tensor, NHWC out: oneDNN (or the depthwise kernel) forward and backward,
    no layout transposes."""

    def execute(self, x, weight, bias, conv, residual_gelu):
        self.saved = (x, weight, bias is not None, conv)
        if _depthwise_kernel_applies(x, conv):
            return _depthwise_nhwc(x, weight, bias, residual_gelu)
        y = library_conv(library_conv_ops(x), x, weight, conv)  # oneDNN
        y = y if bias is None else y + bias
        return gelu(y, x) if residual_gelu else y

    def grad(self, dy):
        x, weight, has_bias, conv = self.saved
        dbias = dy.sum((0, 1, 2)) if has_bias else None
        if _is_depthwise_same(conv):  # dx: the same conv with the kernel flipped
            k = conv.kernel_size[0]
            flipped = weight.reindex(weight.shape, ["i0", "i1", f"{k - 1}-i2", f"{k - 1}-i3"])
            dx = _depthwise_nhwc(dy, flipped, None)
            return dx, _depthwise_weight_grad(x, dy, k), dbias, None, None
        dx, dweight = library_conv_grads(library_conv_ops(x), x, weight, dy, conv)  # oneDNN
        return dx, dweight, dbias, None, None


def conv_nhwc(x, conv, residual_gelu=False):
    """`conv` (an `nn.Conv2d`'s parameters) of an NHWC float32 tensor on the CPU, NHWC out; with
    `residual_gelu`, gelu(conv(x) + x). Needs oneDNN (`onednn_available`)."""
    if residual_gelu and not jt.flags.no_grad:  # the fused epilogue has no backward
        return gelu(_ConvNHWC.apply(x, conv.weight, conv.bias, conv, False), x)
    return _ConvNHWC.apply(x, conv.weight, conv.bias, conv, residual_gelu)


# ----------------------------------------------------------------------------- batched matrix products

# oneDNN's sgemm (row-major), declared here: Jittor's oneDNN ops load the library with RTLD_GLOBAL,
# so the symbol resolves when this kernel is loaded (`onednn_available` must hold).
_SGEMM_HEADER = """#include <algorithm>
extern "C" int dnnl_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
    const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);"""
_BATCHED_SGEMM = """
// out0[g] = op_a(in0[g]) @ op_b(in1[g]), op = transpose for 'T'; one multi-threaded oneDNN sgemm
// per g. An operand with batch 1 is shared by every g; an output with batch 1 gets the sum over g.
const char TA = '@TA', TB = '@TB';
const int64 A1 = in0_shape1, A2 = in0_shape2, B1 = in1_shape1, B2 = in1_shape2;
const int64 M = TA == 'N' ? A1 : A2, K = TA == 'N' ? A2 : A1, N = TB == 'N' ? B2 : B1;
const int64 G = std::max(in0_shape0, in1_shape0);
const int64 sa = in0_shape0 == 1 ? 0 : A1 * A2, sb = in1_shape0 == 1 ? 0 : B1 * B2;
const int64 sc = out0_shape0 == 1 ? 0 : M * N;
for (int64 g = 0; g < G; g++)
    dnnl_sgemm(TA, TB, M, N, K, 1.f, in0_p + g * sa, A2, in1_p + g * sb, B2,
               sc == 0 && g > 0 ? 1.f : 0.f, out0_p + g * sc, N);
"""


def _sgemm(a, b, trans_a, trans_b, sum_batch=False):
    """op_a(a) @ op_b(b) for 3-D a, b (batch 1 = shared); with `sum_batch`, summed over the batch."""
    M = a.shape[2] if trans_a else a.shape[1]
    N = b.shape[1] if trans_b else b.shape[2]
    batch = 1 if sum_batch else max(a.shape[0], b.shape[0])
    src = _BATCHED_SGEMM.replace("@TA", "T" if trans_a else "N").replace("@TB", "T" if trans_b else "N")
    return jt.code((batch, M, N), "float32", [a, b], cpu_header=_SGEMM_HEADER, cpu_src=src)


class _BatchedMatmul(jt.Function):
    """op_a(a) @ op_b(b) per batch entry; the backward products are batched the same way."""

    def execute(self, a, b, trans_a, trans_b):
        self.saved = (a, b, trans_a, trans_b)
        return _sgemm(a, b, trans_a, trans_b)

    def grad(self, dc):
        a, b, ta, tb = self.saved
        sum_a = a.shape[0] == 1 and dc.shape[0] > 1  # a shared operand gets the summed gradient
        sum_b = b.shape[0] == 1 and dc.shape[0] > 1
        da = _sgemm(b, dc, tb, True, sum_a) if ta else _sgemm(dc, b, False, not tb, sum_a)
        db = _sgemm(dc, a, True, ta, sum_b) if tb else _sgemm(a, dc, not ta, False, sum_b)
        return da, db, None, None


def batched_matmul(a, b, trans_a=False, trans_b=False):
    """op_a(a[i]) @ op_b(b[i]) for 3-D float32 a, b (a batch of 1 is shared), op = transpose when
    asked, (batch, M, N) out: one oneDNN sgemm per entry, all in one op (and one op per gradient).

    Why: Jittor's CPU batched product is a single-threaded broadcast-multiply-sum loop, and a
    Python loop of 2-D products costs a getitem per entry and, in the backward pass, a zero-filled
    full-size tensor and a setitem per entry. Transposed operands are read in place. Needs
    oneDNN (`onednn_available`).
    """
    return _BatchedMatmul.apply(a, b, bool(trans_a), bool(trans_b))


# ----------------------------------------------------------------------------- GELU

_GELU_FORWARD = """
// out0 = gelu(in0 (+ in1)), Jittor's formula (erf(v / sqrt 2) + 1) * v * 0.5
const int64 n = in0->num;
#pragma omp parallel for schedule(static)
for (int64 i = 0; i < n; i++) {
    const float32 v = in0_p[i] @PLUS_RESIDUAL;
    out0_p[i] = (std::erf(v * 0.7071067811865476f) + 1) * v * 0.5f;
}
"""
_GELU_BACKWARD = """
// out0 = dout * gelu'(v), v = in0 (+ in1); in2: dout
const int64 n = in0->num;
#pragma omp parallel for schedule(static)
for (int64 i = 0; i < n; i++) {
    const float32 v = in0_p[i] @PLUS_RESIDUAL;
    const float32 cdf = (std::erf(v * 0.7071067811865476f) + 1) * 0.5f;
    out0_p[i] = in2_p[i] * (cdf + v * 0.3989422804014327f * std::exp(-0.5f * v * v));
}
"""


class _Gelu(jt.Function):
    def execute(self, x, residual):
        self.saved = (x, residual)
        inputs = [x] if residual is None else [x, residual]
        plus = "" if residual is None else "+ in1_p[i]"
        return jt.code(x.shape, "float32", inputs, cpu_header="#include <cmath>",
                       cpu_src=_GELU_FORWARD.replace("@PLUS_RESIDUAL", plus))

    def grad(self, dout):
        x, residual = self.saved
        inputs = [x, x if residual is None else residual, dout]
        plus = "" if residual is None else "+ in1_p[i]"
        dv = jt.code(x.shape, "float32", inputs, cpu_header="#include <cmath>",
                     cpu_src=_GELU_BACKWARD.replace("@PLUS_RESIDUAL", plus))
        return dv, (None if residual is None else dv)


def gelu(x, residual=None):
    """gelu(x), or gelu(x + residual), in one multi-threaded pass (and one for its gradient)."""
    return _Gelu.apply(x, residual)


# ----------------------------------------------------------------------------- LayerNorm

_LN_CHUNKS = 32  # rows are split into this many chunks for the weight/bias gradient sums

_LN_FORWARD = """
// Two-pass LayerNorm over the last axis: out0 = y (N, C), out1 = mean (N), out2 = 1/sqrt(var + eps) (N).
// in0: x (N, C); in1: weight (C); in2: bias (C).
const int64 N = out1_shape0, C = in1_shape0;
#pragma omp parallel for schedule(static)
for (int64 r = 0; r < N; r++) {
    const float32 *x = in0_p + r * C;
    float32 *y = out0_p + r * C, sum = 0, sq = 0;
    for (int64 c = 0; c < C; c++) sum += x[c];
    const float32 mean = sum / C;
    for (int64 c = 0; c < C; c++) { const float32 d = x[c] - mean; sq += d * d; }
    const float32 rstd = 1.0f / std::sqrt(sq / C + @EPS);
    for (int64 c = 0; c < C; c++) y[c] = (x[c] - mean) * rstd * in1_p[c] + in2_p[c];
    out1_p[r] = mean; out2_p[r] = rstd;
}
"""
_LN_BACKWARD_X = """
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight, xhat = (x - mean) * rstd.
// in0: x; in1: weight; in2: mean; in3: rstd; in4: dy; out0: dx.
const int64 N = in2_shape0, C = in1_shape0;
#pragma omp parallel for schedule(static)
for (int64 r = 0; r < N; r++) {
    const float32 *x = in0_p + r * C, *dy = in4_p + r * C, mean = in2_p[r], rstd = in3_p[r];
    float32 sg = 0, sgx = 0;
    for (int64 c = 0; c < C; c++) {
        const float32 g = dy[c] * in1_p[c];
        sg += g; sgx += g * (x[c] - mean) * rstd;
    }
    sg /= C; sgx /= C;
    float32 *dx = out0_p + r * C;
    for (int64 c = 0; c < C; c++) dx[c] = rstd * (dy[c] * in1_p[c] - sg - (x[c] - mean) * rstd * sgx);
}
"""
_LN_BACKWARD_PARAMS = """
// Partial sums per chunk of rows: out0[k] = sum dy * xhat, out1[k] = sum dy (chunks, C).
// in0: x; in1: mean; in2: rstd; in3: dy.
const int64 N = in1_shape0, C = in0_shape1, K = out0_shape0;
#pragma omp parallel for schedule(static)
for (int64 k = 0; k < K; k++) {
    float32 *dw = out0_p + k * C, *db = out1_p + k * C;
    for (int64 c = 0; c < C; c++) { dw[c] = 0; db[c] = 0; }
    for (int64 r = k * N / K; r < (k + 1) * N / K; r++) {
        const float32 *x = in0_p + r * C, *dy = in3_p + r * C, mean = in1_p[r], rstd = in2_p[r];
        for (int64 c = 0; c < C; c++) { dw[c] += dy[c] * (x[c] - mean) * rstd; db[c] += dy[c]; }
    }
}
"""


class _LayerNorm(jt.Function):
    def execute(self, x, weight, bias, eps):
        C = x.shape[-1]
        rows = x.reshape(-1, C)
        N = rows.shape[0]
        src = _LN_FORWARD.replace("@EPS", repr(float(eps)) + "f")
        y, mean, rstd = jt.code([rows.shape, (N,), (N,)], ["float32"] * 3, [rows, weight, bias],
                                cpu_header="#include <cmath>", cpu_src=src)
        self.saved = (rows, weight, mean, rstd, x.shape)
        return y.reshape(x.shape)

    def grad(self, dy):
        rows, weight, mean, rstd, shape = self.saved
        dy = dy.reshape(rows.shape)
        dx = jt.code(rows.shape, "float32", [rows, weight, mean, rstd, dy], cpu_src=_LN_BACKWARD_X)
        # a separate kernel, so that it only runs where the parameters need gradients (lazy graph)
        chunks = (min(_LN_CHUNKS, rows.shape[0]), rows.shape[1])
        dw, db = jt.code([chunks, chunks], ["float32"] * 2, [rows, mean, rstd, dy], cpu_src=_LN_BACKWARD_PARAMS)
        return dx.reshape(shape), dw.sum(0), db.sum(0), None


def layer_norm(x, weight, bias, eps):
    """LayerNorm over the last axis (two-pass variance), one multi-threaded pass each way."""
    return _LayerNorm.apply(x, weight, bias, eps)


# ----------------------------------------------------------------------------- AdamW

_ADAMW_SRC = """
// One AdamW step of one parameter, as Jittor's AdamW (and torch.optim.AdamW) computes it.
// in0..in3: p, g, m (exp_avg), v (exp_avg_sq); in4: float32[8] scalars (see `adamw_update`);
// out0..out2: new p, m, v.
const float32 d = in4_p[0], b0 = in4_p[1], c0 = in4_p[2], b1 = in4_p[3], c1 = in4_p[4];
const float32 sqrt_bc2 = in4_p[5], step = in4_p[6], eps = in4_p[7];
const int64 n = in0->num;
float32 *__restrict__ po = out0_p, *__restrict__ mo = out1_p, *__restrict__ vo = out2_p;
#pragma omp parallel for schedule(static) if (n > 16384)
for (int64 i = 0; i < n; i++) {
    const float32 g = in1_p[i];
    const float32 m = b0 * in2_p[i] + c0 * g, v = b1 * in3_p[i] + c1 * g * g;
    mo[i] = m;
    vo[i] = v;
    po[i] = in0_p[i] * d - step * m / (std::sqrt(v) / sqrt_bc2 + eps);
}
"""


def adamw_update(p, g, m, v, scalars):
    """(new p, new m, new v) of one AdamW step in one multi-threaded pass (Jittor's stock update is
    one single-threaded fused loop per parameter, ~170 ms of a DFormerv2-B step at 8x120x160).

    scalars: float32[8] = 1 - lr*wd, b0, 1 - b0, b1, 1 - b1, sqrt(1 - b1^n), lr / (1 - b0^n), eps.
    """
    return jt.code([p.shape] * 3, ["float32"] * 3, [p, g, m, v, scalars], cpu_header="#include <cmath>",
                   cpu_src=_ADAMW_SRC)
