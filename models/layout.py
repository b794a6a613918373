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
from .kernels import ops as cpu_ops
from .library import LibraryConv, LibraryMatmul, library_batched_matmul_op, library_conv_ops, library_matmul_op


def permute(x, *axes):
    """`x.permute(*axes)` that never becomes a CPU-only `TransposeOp` off the CPU fast path."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return x.permute(*axes) if kernels.enabled() else x.fuse_transpose(axes)


def concat(parts, dim):
    """`jt.concat(parts, dim)` with the same ops (an empty tensor, one slice assignment per part)
    without its argument checks, which cost twice the Python time of the ops (parts of one dtype)."""
    dim, dtype = dim % parts[0].ndim, str(parts[0].dtype)
    if any(str(part.dtype) != dtype for part in parts[1:]):
        return jt.concat(parts, dim)  # its dtype promotion
    shape = list(parts[0].shape)
    shape[dim] = sum(part.shape[dim] for part in parts)
    out, index, start = jt.empty(shape, dtype), [slice(None)] * len(shape), 0
    for part in parts:
        index[dim] = slice(start, start + part.shape[dim])
        start += part.shape[dim]
        out = out.setitem(tuple(index), part)
    return out


def _swap_last_two(x):
    return permute(x, *range(x.ndim - 2), x.ndim - 1, x.ndim - 2)


def matmul(a, b, trans_a=False, trans_b=False):
    """op_a(a) @ op_b(b) over the last two axes, the leading axes equal; op = transpose when asked,
    read in place: on the CPU fast path one oneDNN sgemm per entry of 3-D operands, on the GPU one
    cuBLAS product (gradients too), in `precision`'s dtypes."""
    if a.ndim == 3 and b.ndim == 3 and kernels.applies_with_onednn(a):
        return cpu_ops.batched_matmul(a, b, trans_a, trans_b)
    a, b = precision.product_operands(a, b)
    batched = library_batched_matmul_op(a)
    if batched is not None:
        y = batched(a, b, bool(trans_a), bool(trans_b))
    else:
        y = _broadcast_product(_swap_last_two(a) if trans_a else a, _swap_last_two(b) if trans_b else b)
    return precision.product_result(y)


def _broadcast_product(a, b):
    """`jt.matmul(a, b)` without a GPU library: for float32 operands of one rank its own graph (each
    operand broadcast to (..., n, m, k), a product, a sum over m) built without its flag scope (which
    matters for float16 sums only) and checks, a third of its Python time; else `jt.matmul`."""
    if a.ndim != b.ndim or str(a.dtype) != "float32" or str(b.dtype) != "float32":
        return jt.matmul(a, b)
    *leading_a, n, m = a.shape
    *leading_b, _, k = b.shape
    shape = [max(p, q) for p, q in zip(leading_a, leading_b)] + [n, m, k]
    return (a.broadcast(shape, [-1]) * b.broadcast(shape, [-3])).sum(-2)


def matmul_2d(a, b, trans_b=False):
    """a @ op_b(b) of 2-D operands, op = transpose when asked: one library product (cuBLAS, or
    oneDNN on the CPU), where Jittor's own 2-D product builds a broadcast, a multiply and a sum
    that its tuner turns into that product: three graph ops fewer."""
    a, b = precision.product_operands(a, b)
    op = library_matmul_op(a)
    if op is not None:
        return precision.product_result(LibraryMatmul.apply(a, b, bool(trans_b), op))
    return precision.product_result(jt.nn.matmul_transpose(a, b) if trans_b else jt.matmul(a, b))


def linear(x, weight, bias=None):
    """`nn.Linear` over the last axis (`matmul_2d`), the bias added before the shape goes back
    (an explicit 2-D broadcast costs less Python time than a binary op's rank-changing one)."""
    *leading, channels = x.shape
    y = matmul_2d(x.reshape(-1, channels), weight, trans_b=True)  # (N, out)
    if bias is not None:
        y = y + precision.like(bias, y)
    return y.reshape(*leading, weight.shape[0])


def _convolve(x, conv, layout):
    x, weight = precision.product_operands(x, conv.weight)
    ops = library_conv_ops(x)
    if ops is None:
        return None
    y = precision.product_result(LibraryConv.apply(x, weight, conv, ops, layout))
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
