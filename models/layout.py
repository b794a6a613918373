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

# Tensor formats of the library convolutions: (B, H, W, C) or (B, C, H, W) in and out, (out, in, kh, kw) weight.
_FORMATS = {"nhwc": dict(xformat="acdb", wformat="oihw", yformat="acdb"),
            "nchw": dict(xformat="abcd", wformat="oihw", yformat="abcd")}


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


def library_matmul_op(x):
    """The library's 2-D product op (a, b, trans_a, trans_b) for `x`'s type: cuBLAS on the GPU,
    oneDNN on the CPU (float32); None without one."""
    if jt.flags.use_cuda:
        ops = getattr(jt.compile_extern, "cublas_ops", None)
        return None if ops is None else ops.cublas_matmul
    ops = getattr(jt.compile_extern, "mkl_ops", None) if x.dtype == "float32" else None
    return None if ops is None else ops.mkl_matmul


class _LibraryMatmul(jt.Function):
    """a @ op(b) of 2-D operands by the library's product op, and its gradients by the same op."""

    def execute(self, a, b, trans_b, op):
        self.saved = (a, b, trans_b, op)
        return op(a, b, False, trans_b)

    def grad(self, dc):
        a, b, trans_b, op = self.saved
        if trans_b:  # c = a @ b^T
            return op(dc, b, False, False), op(dc, a, True, False), None, None
        return op(dc, b, False, True), op(a, dc, True, False), None, None


def matmul_2d(a, b, trans_b=False):
    """a @ op_b(b) of 2-D operands, op = transpose when asked: one library product (cuBLAS, or
    oneDNN on the CPU), where Jittor's own 2-D product builds a broadcast, a multiply and a sum
    that its tuner turns into that product: three graph ops fewer."""
    a, b = precision.product_operands(a, b)
    op = library_matmul_op(a)
    if op is not None:
        return precision.product_result(_LibraryMatmul.apply(a, b, bool(trans_b), op))
    return precision.product_result(jt.nn.matmul_transpose(a, b) if trans_b else jt.matmul(a, b))


def linear(x, weight, bias=None):
    """`nn.Linear` over the last axis (`matmul_2d`)."""
    y = matmul_2d(x.reshape(-1, x.shape[-1]), weight, trans_b=True).reshape((*x.shape[:-1], weight.shape[0]))
    return y if bias is None else y + precision.like(bias, y)


def library_conv_ops(x):
    """(forward, input-gradient, weight-gradient) ops of the library that convolves here: cuDNN on
    the GPU, oneDNN on the CPU (float32); None without one."""
    if jt.flags.use_cuda:
        ops, prefix = getattr(jt.compile_extern, "cudnn_ops", None), "cudnn"
    else:
        ops, prefix = getattr(jt.compile_extern, "mkl_ops", None) if x.dtype == "float32" else None, "mkl"
    if ops is None:
        return None
    return tuple(getattr(ops, f"{prefix}_conv{suffix}") for suffix in ("", "_backward_x", "_backward_w"))


def library_conv(ops, x, weight, conv, layout="nhwc"):
    """`conv` (no bias) of `x` in `layout` ("nhwc" or "nchw"), same layout out, by the forward op of
    `library_conv_ops`."""
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    return ops[0](x, weight, sh, sw, ph, pw, dh, dw, conv.groups, **_FORMATS[layout])


def library_conv_grads(ops, x, weight, dy, conv, layout="nhwc"):
    """(dx, dweight) of `library_conv` for the output gradient `dy`, by the library's gradient ops."""
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    (kh, kw) = conv.kernel_size
    H, W = x.shape[1:3] if layout == "nhwc" else x.shape[2:4]
    dx = ops[1](weight, dy, H, W, sh, sw, ph, pw, dh, dw, conv.groups, **_FORMATS[layout])
    return dx, ops[2](x, dy, kh, kw, sh, sw, ph, pw, dh, dw, conv.groups, **_FORMATS[layout])


class _LibraryConv(jt.Function):
    """A convolution and its gradients by the library's own ops, in the layout given."""

    def execute(self, x, weight, conv, ops, layout):
        self.saved = (x, weight, conv, ops, layout)
        return library_conv(ops, x, weight, conv, layout)

    def grad(self, dy):
        x, weight, conv, ops, layout = self.saved
        return (*library_conv_grads(ops, x, weight, dy, conv, layout), None, None, None)


def _convolve(x, conv, layout):
    x, weight = precision.product_operands(x, conv.weight)
    ops = library_conv_ops(x)
    if ops is None:
        return None
    y = precision.product_result(_LibraryConv.apply(x, weight, conv, ops, layout))
    if conv.bias is None:
        return y
    bias = precision.like(conv.bias, y)
    return y + (bias if layout == "nhwc" else bias.broadcast(y, [0, 2, 3]))


def conv_nhwc(x, conv):
    """`conv` (an `nn.Conv2d`'s parameters) of an NHWC tensor, NHWC out, bias included, by cuDNN on
    the GPU (oneDNN on the CPU), in `precision`'s dtypes; None where no library is loaded for it."""
    return _convolve(x, conv, "nhwc")


def conv_nchw(x, conv):
    """`conv` of an NCHW tensor (groups 1), bias included, by the library op that Jittor's tuner
    would turn its stock reindex, broadcast, multiply and sum into: three graph ops fewer, in
    `precision`'s dtypes. None where no library is loaded for it."""
    return _convolve(x, conv, "nchw") if conv.groups == 1 else None


def argmax(x, dim):
    """Index (int32) of the first maximum along `dim`, as `jt.argmax(x, dim)[0]`."""
    if kernels.enabled():
        return jt.argmax(x, dim)[0]
    first = jt.index(x.shape, dim) + (x != x.max(dim, keepdims=True)).int32() * x.shape[dim]
    return first.min(dim)
