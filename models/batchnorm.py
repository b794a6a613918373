"""BatchNorm2d with PyTorch's training numerics (a drop-in for `jt.nn.BatchNorm2d`).

Same parameters and buffers (`weight`, `bias`, `running_mean`, `running_var`), same
`isinstance(m, nn.BatchNorm2d)`, same evaluation formula; what differs is training mode:
- Statistics: Jittor computes var = E[x^2] - E[x]^2 with sequential float32 sums (1.5e-3 off a
  float64 reference at 8x16x240x320; the subtraction cancels when the mean is large). Here the
  mean and then the centred variance (two passes) are summed in float64; float64 also costs no
  time here (the reduction is memory-bound). Output = (x - mean) * scale + bias in float32.
- `running_var` is updated with the unbiased variance (n / (n - 1)), as `torch.nn.BatchNorm2d`;
  Jittor uses the biased one.
- Under MPI the statistics are synchronised like Jittor's own BatchNorm (and upstream's
  SyncBatchNorm): the mean of the per-process means, then the mean of the per-process centred
  variances about that global mean, so equal per-process batches give the full-batch values;
  n counts the pixels of all processes.
On the CPU (float32) the same numbers come from multi-threaded kernels (`models/kernels/float64.py`).
"""
import jittor as jt
from jittor import nn

from . import kernels
from .kernels import float64 as cpu_float64


class BatchNorm2d(nn.BatchNorm):
    """`nn.BatchNorm2d(num_features, eps, momentum)` with float64 two-pass batch statistics."""

    def execute(self, x):
        if not self.is_train:
            return super().execute(x)
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


class SyncBatchNorm(BatchNorm2d):
    """Where upstream hard-codes `nn.SyncBatchNorm` (DFormerv2's stem and downsampling): the same
    layer and numerics, but its own type, because upstream's type decides what trains: its
    train.py passes `group_weight` the norm layer of its `--syncbn` flag; with `--syncbn` (its
    train.sh, and the default) these train like every BatchNorm, with `--no-syncbn` they are in
    no group, as an `nn.SyncBatchNorm` is no `nn.BatchNorm2d` (`utils/engine/optim.py`). Their statistics
    are synchronised over the processes whatever the flag.
    """
