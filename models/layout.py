"""Layout changes, transposed products and channels-last convolutions that stay on the GPU.

Jittor turns a permute that moves the last axis into a `TransposeOp`, which has no CUDA kernel
unless the optional cutt library loaded, so it runs on the host with a sync and a copy each way.
The models change layouts only through this file; off the CPU fast path (a GPU, or
DFORMER_CPU_KERNELS=0) `permute` is a fusable `fuse_transpose`, `matmul` uses cuBLAS's transpose
flags, `conv_nhwc` convolves channels-last tensors in place (cuDNN) and `argmax` is a max, a
compare and a min (Jittor's is CPU-only without CUB). On the CPU fast path each is the stock op.
"""
import jittor as jt

from . import kernels, precision

_NHWC = dict(xformat="acdb", wformat="oihw", yformat="acdb")  # (B, H, W, C) in and out, (out, in, kh, kw) weight


def permute(x, *axes):
    """`x.permute(*axes)` that never becomes a CPU-only `TransposeOp` off the CPU fast path."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return x.permute(*axes) if kernels.enabled() else x.fuse_transpose(axes)


def _swap_last_two(x):
    return permute(x, *range(x.ndim - 2), x.ndim - 1, x.ndim - 2)


def matmul(a, b, trans_a=False, trans_b=False):
    """op_a(a) @ op_b(b) over the last two axes, the leading axes equal; op = transpose when asked
    (on the GPU one cuBLAS product reading the transposed operands in place, gradients too), in
    `precision`'s dtypes."""
    a, b = precision.product_operands(a, b)
    cublas = getattr(jt.compile_extern, "cublas_ops", None) if jt.flags.use_cuda else None
    if cublas is not None:
        y = cublas.cublas_batched_matmul(a, b, bool(trans_a), bool(trans_b))
    else:
        y = jt.matmul(_swap_last_two(a) if trans_a else a, _swap_last_two(b) if trans_b else b)
    return precision.product_result(y)


def library_conv_ops(x):
    """(forward, input-gradient, weight-gradient) ops of the library that convolves NHWC tensors
    here: cuDNN on the GPU, oneDNN on the CPU (float32); None without one."""
    if jt.flags.use_cuda:
        ops, prefix = getattr(jt.compile_extern, "cudnn_ops", None), "cudnn"
    else:
        ops, prefix = getattr(jt.compile_extern, "mkl_ops", None) if x.dtype == "float32" else None, "mkl"
    if ops is None:
        return None
    return tuple(getattr(ops, f"{prefix}_conv{suffix}") for suffix in ("", "_backward_x", "_backward_w"))


def library_conv(ops, x, weight, conv):
    """`conv` (no bias) of NHWC `x`, NHWC out, by the forward op of `library_conv_ops`."""
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    return ops[0](x, weight, sh, sw, ph, pw, dh, dw, conv.groups, **_NHWC)


def library_conv_grads(ops, x, weight, dy, conv):
    """(dx, dweight) of `library_conv` for the output gradient `dy`, by the library's gradient ops."""
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    (kh, kw), (_, H, W, _) = conv.kernel_size, x.shape
    dx = ops[1](weight, dy, H, W, sh, sw, ph, pw, dh, dw, conv.groups, **_NHWC)
    return dx, ops[2](x, dy, kh, kw, sh, sw, ph, pw, dh, dw, conv.groups, **_NHWC)


class _LibraryConvNHWC(jt.Function):
    """A convolution of an NHWC tensor, NHWC out, and its gradients, by the library's own ops."""

    def execute(self, x, weight, conv, ops):
        self.saved = (x, weight, conv, ops)
        return library_conv(ops, x, weight, conv)

    def grad(self, dy):
        x, weight, conv, ops = self.saved
        return (*library_conv_grads(ops, x, weight, dy, conv), None, None)


def conv_nhwc(x, conv):
    """`conv` (an `nn.Conv2d`'s parameters) of an NHWC tensor, NHWC out, bias included, by cuDNN on
    the GPU (oneDNN on the CPU), in `precision`'s dtypes; None where no library is loaded for it."""
    x, weight = precision.product_operands(x, conv.weight)
    ops = library_conv_ops(x)
    if ops is None:
        return None
    y = precision.product_result(_LibraryConvNHWC.apply(x, weight, conv, ops))
    return y if conv.bias is None else y + precision.like(conv.bias, y)


def argmax(x, dim):
    """Index (int32) of the first maximum along `dim`, as `jt.argmax(x, dim)[0]`."""
    if kernels.enabled():
        return jt.argmax(x, dim)[0]
    first = jt.index(x.shape, dim) + (x != x.max(dim, keepdims=True)).int32() * x.shape[dim]
    return first.min(dim)
