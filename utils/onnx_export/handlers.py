"""The `Exporter` that walks a model into an ONNX graph, and the rules of Jittor's own layers.

`Exporter(model, graph, nmf_seed)(module, *inputs)` runs the module's ONNX rule with the graph scope
set to the module's state_dict prefix, so initializers carry the parameter names
(`backbone.stages.0.0.attn.q.weight.T` ...). The rule of a class of `models/` is its `onnx(ex,
*inputs)` method, beside its `execute`: it writes the evaluation-mode arithmetic of `execute` with
the exporter's `GraphBuilder` (`ex.g`) and calls `ex(child, ...)` for its children; where `execute`
calls a CPU fast path, the rule writes the plain maths that the fast path computes. Jittor's own
layers (which we cannot give a method) have theirs in `JITTOR_RULES` below. A module with neither
stops the export with an `ExportError` naming it.
"""
import numpy as np
from jittor import nn

from models.batchnorm import BatchNorm2d, SyncBatchNorm
from models.layers import Conv2d, TapSumConv2d

from .graph import ExportError


class Exporter:
    """Walks the model: `exporter(module, *inputs)` runs the ONNX rule of `module` with the graph
    scope set to the module's state_dict prefix."""

    def __init__(self, model, graph, nmf_seed):
        """`nmf_seed`: seed of the fixed NMF bases (see `nmf_raw_bases`)."""
        self.g = graph
        self.nmf_seed = nmf_seed
        self.names = {id(module): name for name, module in model.named_modules()}

    def name(self, module):
        return self.names.get(id(module), type(module).__name__)

    def __call__(self, module, *inputs, **options):
        rule = onnx_rule(type(module))
        if rule is None:
            cls = type(module)
            raise ExportError(f"cannot export module {self.name(module) or 'model'} ({cls.__module__}."
                              f"{cls.__qualname__}): no ONNX rule for this module type (a class of models/ "
                              "needs an `onnx` method, a Jittor layer an entry in JITTOR_RULES; see "
                              "docs/contributing.md)")
        outer, self.g.scope = self.g.scope, self.name(module)
        try:
            return rule(module, self, *inputs, **options)
        finally:
            self.g.scope = outer

    def param(self, module, attr):
        """Initializer `<module>.<attr>` holding that parameter or buffer."""
        return self.g.initializer(f"{self.name(module)}.{attr}", getattr(module, attr).numpy())

    def nmf_bases(self, nmf):
        """Initializer `<nmf>.raw_bases` (S, D, R) holding `nmf_raw_bases` of the exporter's seed."""
        return self.g.initializer(f"{self.name(nmf)}.raw_bases", nmf_raw_bases(nmf, self.nmf_seed))

    def conv_bn(self, x, conv, bn=None):
        """NCHW `conv`, with the eval-mode BatchNorm `bn` that follows it folded into its weights."""
        weight = conv.weight.numpy().astype(np.float64)
        bias = conv.bias.numpy().astype(np.float64) if conv.bias is not None else None
        if bn is not None:
            scale = bn.weight.numpy() / np.sqrt(bn.running_var.numpy().astype(np.float64) + bn.eps)
            weight = weight * scale.reshape(-1, 1, 1, 1)
            bias = ((0 if bias is None else bias) - bn.running_mean.numpy()) * scale + bn.bias.numpy()
        return self.g.conv(x, weight, bias, self.name(conv), conv.stride, conv.padding, conv.dilation,
                           conv.groups)


def nmf_raw_bases(nmf, seed):
    """The fixed raw NMF bases (S, D, R) of the exported graph: uniform [0, 1) float32, as
    `torch.rand`, from `numpy.random.default_rng(seed)`."""
    return np.random.default_rng(seed).random((nmf.S, nmf.D, nmf.R), dtype=np.float32)


def onnx_rule(cls):
    """`rule(module, exporter, *inputs)` for a module class: its `onnx` method, else Jittor's entry."""
    return getattr(cls, "onnx", None) or JITTOR_RULES.get(cls)


def identity(m, ex, x):  # evaluation mode
    return x


def sequential(m, ex, x):
    """The layers in order, a BatchNorm that follows a plain convolution folded into it."""
    layers = list(m)
    i = 0
    while i < len(layers):
        if (type(layers[i]) in (Conv2d, TapSumConv2d) and i + 1 < len(layers)
                and type(layers[i + 1]) in (BatchNorm2d, SyncBatchNorm)):
            x = ex.conv_bn(x, layers[i], layers[i + 1])
            i += 2
        else:
            x = ex(layers[i], x)
            i += 1
    return x


JITTOR_RULES = {nn.Identity: identity, nn.DropPath: identity, nn.Dropout: identity, nn.Dropout2d: identity,
                nn.ReLU: lambda m, ex, x: ex.g.relu(x), nn.Sequential: sequential}
