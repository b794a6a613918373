"""BatchNorm2d with PyTorch's training numerics, a drop-in for `jt.nn.BatchNorm2d` (same
parameters, buffers, isinstance and evaluation formula). In training mode:
- the mean, then the centred variance, are summed in float64 (Jittor's float32 E[x^2] - E[x]^2
  cancels when the mean is large; numbers in docs/parity.md);
- `running_var` takes the unbiased variance, as PyTorch's (Jittor's the biased one);
- under MPI the statistics are the mean over processes of the per-process means, then of the
  centred variances about that global mean: equal per-process batches give the full-batch values.
On the CPU the same numbers come from multi-threaded kernels (`kernels/float64.py`).
A float16 input is normalised in float32 (`precision.py`), the result in float16.
"""
import math

import jittor as jt
from jittor import nn

from . import constants, kernels, precision
from .kernels import float64 as cpu_float64


class BatchNorm2d(nn.BatchNorm):
    """`nn.BatchNorm2d(num_features, eps, momentum)` with float64 two-pass batch statistics."""

    keeps_float32 = True  # parameters and statistics, in float16 inference (`precision.to_float16`)

    def execute(self, x):
        if x.dtype == "float16":
            return precision.like(self.execute(precision.widened(x)), x)
        if not self.is_train:  # `nn.BatchNorm`'s evaluation formula, its eps built once
            w = self.weight / jt.sqrt(self.running_var + constants.filled(self.eps, self.running_var.shape,
                                                                          self.running_var.dtype))
            b = self.bias - self.running_mean * w
            return x * w.broadcast(x, [0, 2, 3]) + b.broadcast(x, [0, 2, 3])
        sync = self.sync and jt.in_mpi
        if kernels.applies(x):  # multi-threaded kernels, same numbers
            y, mean, var = cpu_float64.batch_norm_train(x, self.weight, self.bias, self.eps, sync)
        else:
            y, mean, var = self.stock_forward(x, sync)
        count = x.numel() // x.shape[1] * (jt.world_size if sync else 1)  # pixels per channel
        self.running_mean.update(self.running_mean + (mean.float32() - self.running_mean) * self.momentum)
        unbiased = (var * (count / max(count - 1, 1))).float32()
        self.running_var.update(self.running_var + (unbiased - self.running_var) * self.momentum)
        return y

    def stock_forward(self, x, sync):
        """(output, batch mean, biased batch variance) with Jittor's own ops (the GPU's path)."""
        dims = [0, 2, 3]
        count = x.numel() // x.shape[1]  # pixels per channel in this process
        mean = x.float64().sum(dims) / count  # (C,)
        if sync:
            mean = mean.mpi_all_reduce("mean")
        centred = x - mean.float32().reshape(1, -1, 1, 1)
        var = (centred.float64() * centred.float64()).sum(dims) / count  # biased, (C,)
        if sync:
            var = var.mpi_all_reduce("mean")
        scale = (self.weight / jt.sqrt(var + self.eps)).float32()
        return centred * scale.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1), mean, var

    def onnx(self, ex, x):  # where no convolution precedes it (the exporter folds it into one)
        return ex.g.op("BatchNormalization", x, ex.param(self, "weight"), ex.param(self, "bias"),
                       ex.param(self, "running_mean"), ex.param(self, "running_var"), epsilon=self.eps)

    def macs(self, inputs, output):
        """thop: 2 x input elements, doubled for the affine weight and bias."""
        return math.prod(inputs[0].shape) * (4 if self.affine else 2), 0


class SyncBatchNorm(BatchNorm2d):
    """Where upstream hard-codes `nn.SyncBatchNorm` (DFormerv2's stem and downsampling): same
    numerics, but its own type, because upstream's parameter groups go by type: these train only
    with `--syncbn` (`utils/engine/optim.py`). Their statistics are synchronised whatever the flag.
    """
