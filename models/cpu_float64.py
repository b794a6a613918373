"""Multi-threaded CPU kernels with float64 sums: the training loss (OpenMP, `jt.code`).

Why: on the CPU Jittor's element-wise ops and reductions are single-threaded loops; the
cross-entropy's log-softmax over every pixel is one of the larger ones (8x40x120x160 logits per
step). Same numbers as the stock ops: the same float32 per-pixel arithmetic, summed in float64
(in fixed blocks, so the result does not depend on the thread count); tested against the stock
ops to ~1e-5, values and gradients. Each is a `jt.Function` with its own backward; CPU and float32
only, `utils/loss.py` decides where it runs.
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
