"""Multi-threaded CPU kernels with float64 sums: the training loss and train-mode BatchNorm
(OpenMP, `jt.code`).

Why: on the CPU Jittor's element-wise ops and reductions are single-threaded loops; the
cross-entropy's log-softmax over every pixel (8x40x120x160 logits per step) and BatchNorm's
float64 statistics are among the larger ones. Same numbers as the stock ops: the same float32
arithmetic per element, summed in float64 (the loss in fixed blocks, BatchNorm per channel in the
stock order, so neither depends on the thread count); tested against the stock ops to ~1e-5,
values and gradients. Each is a `jt.Function` with its own backward; CPU and float32 only,
`utils/engine/loss.py` and `models/batchnorm.py` call them where `models.kernels.applies` holds.
"""
import jittor as jt

_BLOCK = 64  # pixels per block: the unit of work and of the float64 partial sums

# Per block of pixels of (B, K, H, W) logits: m = max over the K classes, s = sum exp(x - m).
# in0: logits; in1: labels (B, H, W); block `blk` of image b covers pixels p0 .. p0 + n.
_SOFTMAX_BLOCK = """
#include <cmath>
#include <algorithm>
#define BLOCK @BLOCK
#define SOFTMAX_BLOCK \\
    const int64 b = blk / NB, p0 = (blk % NB) * BLOCK, n = std::min<int64>(BLOCK, HW - p0); \\
    const float32 *x = in0_p + b * K * HW + p0; \\
    const auto *t = in1_p + b * HW + p0; \\
    float32 m[BLOCK], s[BLOCK]; \\
    for (int64 p = 0; p < n; p++) { m[p] = x[p]; s[p] = 0; } \\
    for (int64 k = 1; k < K; k++) \\
        for (int64 p = 0; p < n; p++) m[p] = std::max(m[p], x[k * HW + p]); \\
    for (int64 k = 0; k < K; k++) \\
        for (int64 p = 0; p < n; p++) s[p] += std::exp(x[k * HW + p] - m[p]);
"""
_CROSS_ENTROPY_FORWARD = """
// out0[blk] = sum of the pixels' losses log(s) - (x_label - m) (float32 each, summed in float64);
// out1[blk] = labelled pixels (label != IGNORE). As jt.nn.cross_entropy_loss, a label outside
// [0, K) other than IGNORE adds no loss.
const int64 K = in0_shape1, HW = in0_shape2 * in0_shape3, NB = (HW + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static)
for (int64 blk = 0; blk < in0_shape0 * NB; blk++) {
    SOFTMAX_BLOCK
    float64 total = 0, count = 0;
    for (int64 p = 0; p < n; p++) {
        const int64 label = t[p];
        if (label == @IGNORE) continue;
        count += 1;
        if (label < 0 || label >= K) continue;
        total += (float64)(std::log(s[p]) - (x[label * HW + p] - m[p]));
    }
    out0_p[blk] = total;
    out1_p[blk] = count;
}
"""
_CROSS_ENTROPY_BACKWARD = """
// out0 = d(total)/d(logits) = g * (softmax - onehot(label)) at pixels with a loss, 0 elsewhere.
// in2: g, the gradient of the total (float64).
const int64 K = in0_shape1, HW = in0_shape2 * in0_shape3, NB = (HW + BLOCK - 1) / BLOCK;
const float32 g = in2_p[0];
#pragma omp parallel for schedule(static)
for (int64 blk = 0; blk < in0_shape0 * NB; blk++) {
    SOFTMAX_BLOCK
    float32 *dx = out0_p + b * K * HW + p0;
    for (int64 k = 0; k < K; k++)
        for (int64 p = 0; p < n; p++) {
            const int64 label = t[p];
            const bool counted = label != @IGNORE && label >= 0 && label < K;
            dx[k * HW + p] = counted ? g * (std::exp(x[k * HW + p] - m[p]) / s[p] - (k == label)) : 0;
        }
}
"""


def _source(src, ignore_index):
    return src.replace("@BLOCK", str(_BLOCK)).replace("@IGNORE", str(int(ignore_index)))


class _CrossEntropySum(jt.Function):
    def execute(self, logits, label, ignore_index):
        self.saved = (logits, label, ignore_index)
        B, _, H, W = logits.shape
        blocks = (B * -(-H * W // _BLOCK),)
        total, count = jt.code([blocks, blocks], ["float64"] * 2, [logits, label],
                               cpu_header=_source(_SOFTMAX_BLOCK, ignore_index),
                               cpu_src=_source(_CROSS_ENTROPY_FORWARD, ignore_index))
        return total.sum(), count.sum()

    def grad(self, dtotal, dcount):
        logits, label, ignore_index = self.saved
        if dtotal is None:
            return None, None, None
        dlogits = jt.code(logits.shape, "float32", [logits, label, dtotal.float64()],
                          cpu_header=_source(_SOFTMAX_BLOCK, ignore_index),
                          cpu_src=_source(_CROSS_ENTROPY_BACKWARD, ignore_index))
        return dlogits, None, None


def cross_entropy_sum(logits, label, ignore_index):
    """(sum of the per-pixel cross-entropies over labelled pixels, number of labelled pixels),
    float64 scalars, for (B, K, H, W) float32 logits and (B, H, W) integer labels."""
    return _CrossEntropySum.apply(logits, label.detach(), int(ignore_index))


# ----------------------------------------------------------------------------- train-mode BatchNorm

# Per-channel float64 sums over (B, H, W) of an NCHW tensor, one OpenMP thread per channel, in
# the order of Jittor's reduction. in0: x; in1: the float32 channel means; in2: dy.
_CHANNEL_SUMS = """
const int64 B = in0_shape0, C = in0_shape1, HW = in0_shape2 * in0_shape3;
#pragma omp parallel for schedule(static)
for (int64 c = 0; c < C; c++) {
    float64 acc0 = 0, acc1 = 0;
    for (int64 b = 0; b < B; b++) {
        const float32 *x = in0_p + (b * C + c) * HW;
        for (int64 p = 0; p < HW; p++) { @TERMS }
    }
    @STORE
}
"""
_SUM_TERMS = {  # name: (terms, store)
    "x": ("acc0 += x[p];", "out0_p[c] = acc0;"),
    "centred_squares": ("const float64 d = x[p] - in1_p[c]; acc0 += d * d;", "out0_p[c] = acc0;"),
    "dy_and_dy_centred": ("const float32 dy = in2_p[(b * C + c) * HW + p]; "
                          "acc0 += dy; acc1 += (float64)dy * (x[p] - in1_p[c]);",
                          "out0_p[c] = acc0; out1_p[c] = acc1;"),
}
# out0 = (x - mean) * scale + bias (float32, as the stock ops). in0: x; in1: mean; in2: scale; in3: bias.
_BN_APPLY = """
const int64 B = in0_shape0, C = in0_shape1, HW = in0_shape2 * in0_shape3;
#pragma omp parallel for collapse(2) schedule(static)
for (int64 b = 0; b < B; b++)
for (int64 c = 0; c < C; c++) {
    const float32 *x = in0_p + (b * C + c) * HW, m = in1_p[c], s = in2_p[c], t = in3_p[c];
    float32 *y = out0_p + (b * C + c) * HW;
    for (int64 p = 0; p < HW; p++) y[p] = (x[p] - m) * s + t;
}
"""
# dx = scale * (dy - mean(dy) - (x - mean) * mean(dy (x - mean)) / (var + eps)).
# in0: x; in1: mean; in2: scale; in3: mean(dy); in4: mean(dy (x - mean)) / (var + eps); in5: dy.
_BN_BACKWARD_X = """
const int64 B = in0_shape0, C = in0_shape1, HW = in0_shape2 * in0_shape3;
#pragma omp parallel for collapse(2) schedule(static)
for (int64 b = 0; b < B; b++)
for (int64 c = 0; c < C; c++) {
    const int64 o = (b * C + c) * HW;
    const float32 *x = in0_p + o, *dy = in5_p + o, m = in1_p[c], s = in2_p[c], a = in3_p[c], k = in4_p[c];
    float32 *dx = out0_p + o;
    for (int64 p = 0; p < HW; p++) dx[p] = s * (dy[p] - a - (x[p] - m) * k);
}
"""


def _channel_sums(kind, inputs):
    terms, store = _SUM_TERMS[kind]
    C = inputs[0].shape[1]
    outputs = 2 if kind == "dy_and_dy_centred" else 1
    sums = jt.code([(C,)] * outputs, ["float64"] * outputs, inputs,
                   cpu_src=_CHANNEL_SUMS.replace("@TERMS", terms).replace("@STORE", store))
    return sums if outputs > 1 else sums[0]


def _all_processes_mean(v, sync):
    return v.mpi_all_reduce("mean") if sync else v


class _BatchNormTrain(jt.Function):
    """Train-mode BatchNorm of an NCHW tensor; see `batch_norm_train`."""

    def execute(self, x, weight, bias, eps, sync):
        count = x.numel() // x.shape[1]
        mean = _all_processes_mean(_channel_sums("x", [x]) / count, sync)  # (C,) float64
        mean32 = mean.float32()
        var = _all_processes_mean(_channel_sums("centred_squares", [x, mean32]) / count, sync)  # biased
        scale = (weight / jt.sqrt(var + eps)).float32()
        self.saved = (x, mean32, var, scale, eps, sync, count)
        y = jt.code(x.shape, "float32", [x, mean32, scale, bias], cpu_src=_BN_APPLY)
        return y, mean.detach(), var.detach()

    def grad(self, dy, dmean, dvar):
        x, mean32, var, scale, eps, sync, count = self.saved
        sum_dy, sum_dy_centred = _channel_sums("dy_and_dy_centred", [x, mean32, dy])
        rstd = 1 / jt.sqrt(var + eps)
        dweight, dbias = (sum_dy_centred * rstd).float32(), sum_dy.float32()
        mean_dy = _all_processes_mean(sum_dy / count, sync)
        mean_dy_centred = _all_processes_mean(sum_dy_centred / count, sync)
        k = (mean_dy_centred * rstd * rstd).float32()
        dx = jt.code(x.shape, "float32", [x, mean32, scale, mean_dy.float32(), k, dy], cpu_src=_BN_BACKWARD_X)
        return dx, dweight, dbias, None, None


def batch_norm_train(x, weight, bias, eps, sync):
    """Train-mode BatchNorm of a float32 NCHW tensor: (output, batch mean, biased batch variance),
    the statistics float64 (C,), summed in two passes (mean, then centred squares), averaged over
    the MPI processes with `sync`; output = (x - mean) * scale + bias in float32."""
    return _BatchNormTrain.apply(x, weight, bias, float(eps), bool(sync))
