"""The one place that decides which dtype each op computes in: float32, mixed precision, float16.

- float32: every op (the default; the parity tests' path).
- Mixed precision (`with autocast():`, `--amp` and `--precision amp`; upstream's
  `torch.autocast("cuda", torch.float16)`): weights, optimiser state and BatchNorm statistics stay
  float32. Convolutions and matrix products (autocast's float16 list) cast their operands to float16
  and their result back to float32, so BatchNorm, LayerNorm, softmax, reductions, element-wise ops
  and the loss compute in float32. (PyTorch keeps a product's float16 result and runs the
  element-wise ops after it in float16; here they run in float32: more memory traffic, never less
  range.) The gradients of the float16 products need a loss scale: `utils/engine/amp.py`.
- float16 inference (`to_float16(model)` and float16 inputs, `--precision fp16`): weights and
  activations float16, except what would overflow there: LayerNorm and BatchNorm compute in float32
  from a float32 copy of their input (|x - mean| > 256 squares past 65504) and keep their own
  parameters and statistics float32 (`keeps_float32`), attention scores and softmax are float32,
  DFormerv2's rotary phase (position x angle, up to H*W) and decay masks are formed in float32.
"""
import contextlib

import jittor as jt

# Inference precisions (`--precision` of eval, infer, latency): float32; autocast (upstream's
# --val_amp); float16 weights and activations.
PRECISIONS = ("fp32", "amp", "fp16")
_autocast = [False]


@contextlib.contextmanager
def autocast(enabled=True):
    """Mixed precision for the ops built inside (forward passes; gradients follow the forward)."""
    previous = _autocast[0]
    _autocast[0] = bool(enabled)
    try:
        yield
    finally:
        _autocast[0] = previous


def autocast_enabled():
    return _autocast[0]


def product_operands(a, b):
    """A convolution's or matrix product's operands in the one type it computes in (cuBLAS and
    cuDNN take one): float16 under autocast or when either is float16 (float16 inference), else
    the wider (a float64 statistic times a float32 weight in float64)."""
    a_type, b_type = str(a.dtype), str(b.dtype)
    if _autocast[0] or a_type == "float16" or b_type == "float16":
        return (a if a_type == "float16" else a.float16()), (b if b_type == "float16" else b.float16())
    if a_type != b_type:
        wide = "float64" if "float64" in (a_type, b_type) else "float32"
        return (a if a_type == wide else a.cast(wide)), (b if b_type == wide else b.cast(wide))
    return a, b


def product_result(y):
    """A product's result in the type the network goes on in: float32 under autocast."""
    return y.float32() if _autocast[0] else y


def widened(x):
    """`x` for a statistic (mean, variance, softmax): float32 when it is float16."""
    return x.float32() if x.dtype == "float16" else x


def like(y, x):
    """`y` in the type of the activation `x` (a float32 statistic's result back in float16)."""
    return y if y.dtype == x.dtype else y.cast(x.dtype)


def softmax(x, dim):
    """Softmax computed in float32 whatever the input type (float32 result)."""
    return jt.nn.softmax(widened(x), dim=dim)


def to_float16(model):
    """`model` for float16 inference: float16 weights, except the Vars of modules that set
    `keeps_float32` (norm layers, rotary and decay tables), which stay float32."""
    kept = {id(var) for module in model.modules() if getattr(module, "keeps_float32", False)
            for var in module.parameters(recurse=False)}
    for var in model.parameters():
        if var.dtype == "float32" and id(var) not in kept:
            var.assign(var.float16())
    return model
