"""The libraries' own products and convolutions as differentiable Jittor functions: cuBLAS and cuDNN
on the GPU, oneDNN on the CPU (float32). `layout.py` and the CPU kernels (`kernels/ops.py`) call them.
"""
import functools

import jittor as jt

# Tensor formats of the library convolutions: (B, H, W, C) or (B, C, H, W) in and out, (out, in, kh, kw) weight.
_FORMATS = {"nhwc": dict(xformat="acdb", wformat="oihw", yformat="acdb"),
            "nchw": dict(xformat="abcd", wformat="oihw", yformat="abcd")}


def library_matmul_op(x):
    """The library's 2-D product op (a, b, trans_a, trans_b) for `x`'s type: cuBLAS on the GPU,
    oneDNN on the CPU (float32); None without one."""
    return _library_ops(bool(jt.flags.use_cuda), str(x.dtype))[0]


def library_batched_matmul_op(x):
    """cuBLAS's batched product op (a, b, trans_a, trans_b) of 3-D or more operands on the GPU; None
    on the CPU or without cuBLAS."""
    return _library_ops(bool(jt.flags.use_cuda), str(x.dtype))[1]


def library_conv_ops(x):
    """(forward, input-gradient, weight-gradient) ops of the library that convolves here: cuDNN on
    the GPU, oneDNN on the CPU (float32); None without one."""
    return _library_ops(bool(jt.flags.use_cuda), str(x.dtype))[2]


@functools.lru_cache(maxsize=None)
def _library_ops(use_cuda, dtype):
    """(matmul op, batched matmul op, conv ops) for a device and dtype, looked up once (hundreds of
    calls a forward)."""
    if use_cuda:
        matmul_ops, conv_ops, prefix = (getattr(jt.compile_extern, "cublas_ops", None),
                                        getattr(jt.compile_extern, "cudnn_ops", None), "cudnn")
    else:
        mkl = getattr(jt.compile_extern, "mkl_ops", None) if dtype == "float32" else None
        matmul_ops, conv_ops, prefix = mkl, mkl, "mkl"
    matmul = None if matmul_ops is None else getattr(matmul_ops, "cublas_matmul" if use_cuda else "mkl_matmul")
    batched = getattr(matmul_ops, "cublas_batched_matmul", None) if use_cuda else None
    conv = None if conv_ops is None else tuple(getattr(conv_ops, f"{prefix}_conv{suffix}")
                                               for suffix in ("", "_backward_x", "_backward_w"))
    return matmul, batched, conv


class ForwardWithoutGrad(jt.Function):
    """A `jt.Function` whose `apply` inside `jt.no_grad()` runs `forward` alone: no tape op around
    each input and output and no bookkeeping for a gradient that cannot be asked for (inference)."""

    @staticmethod
    def forward(*args):
        raise NotImplementedError

    def execute(self, *args):
        self.saved = args
        return self.forward(*args)

    @classmethod
    def apply(cls, *args):
        return cls.forward(*args) if jt.flags.no_grad else super().apply(*args)


class LibraryMatmul(ForwardWithoutGrad):
    """a @ op(b) of 2-D operands by the library's product op, and its gradients by the same op."""

    @staticmethod
    def forward(a, b, trans_b, op):
        return op(a, b, False, trans_b)

    def grad(self, dc):
        a, b, trans_b, op = self.saved
        if trans_b:  # c = a @ b^T
            return op(dc, b, False, False), op(dc, a, True, False), None, None
        return op(dc, b, False, True), op(a, dc, True, False), None, None


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


class LibraryConv(ForwardWithoutGrad):
    """A convolution and its gradients by the library's own ops, in the layout given."""

    @staticmethod
    def forward(x, weight, conv, ops, layout):
        return library_conv(ops, x, weight, conv, layout)

    def grad(self, dy):
        x, weight, conv, ops, layout = self.saved
        return (*library_conv_grads(ops, x, weight, dy, conv, layout), None, None, None)
