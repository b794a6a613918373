"""The one registry of ONNX handlers, and the handlers of the generic layers (Jittor's, `models/`).

A handler `handler(exporter, module, *inputs)` writes the evaluation-mode arithmetic of one module
type's `execute` with the exporter's `GraphBuilder` and returns the output name(s); `handles(*classes)`
registers it in `HANDLERS`. The DFormer / DFormerv2 / decode-head handlers and the `Exporter` that
walks a model are in `utils/onnx_export/handlers.py`.
"""
from jittor import nn

from models.batchnorm import BatchNorm2d, SyncBatchNorm
from models.encoders.DFormer import FrozenLayerNorm
from models.layers import (GELU, ChannelsLastConv2d, Conv2d, ConvModule, LayerNorm, Linear, PointwiseConv2d,
                           TapSumConv2d)


HANDLERS = {}  # module class -> handler(exporter, module, *inputs) -> output name(s)


def handles(*classes):
    def register(handler):
        for cls in classes:
            HANDLERS[cls] = handler
        return handler
    return register



@handles(nn.Identity, nn.DropPath, nn.Dropout, nn.Dropout2d)
def identity(ex, m, x):  # evaluation mode
    return x


@handles(nn.ReLU)
def relu(ex, m, x):
    return ex.g.relu(x)


@handles(nn.GELU, GELU)
def gelu(ex, m, x):
    return ex.g.gelu(x)


@handles(nn.Linear, Linear)
def linear(ex, m, x):
    return ex.g.linear(x, m.weight.numpy(), None if m.bias is None else m.bias.numpy(), ex.name(m))


@handles(LayerNorm, FrozenLayerNorm)
def layer_norm(ex, m, x):
    return ex.g.layer_norm(x, ex.param(m, "weight"), ex.param(m, "bias"), m.eps)


@handles(nn.Conv2d, Conv2d, PointwiseConv2d, TapSumConv2d)
def conv2d(ex, m, x):
    return ex.conv_bn(x, m)


@handles(ChannelsLastConv2d)
def channels_last_conv2d(ex, m, x, residual_gelu=False):
    y = ex.g.nchw_to_nhwc(ex.conv_bn(ex.g.nhwc_to_nchw(x), m))
    return ex.g.gelu(ex.g.add(y, x)) if residual_gelu else y


@handles(nn.BatchNorm2d, BatchNorm2d, SyncBatchNorm)
def batch_norm(ex, m, x):  # only where no convolution precedes it (else folded)
    return ex.g.op("BatchNormalization", x, ex.param(m, "weight"), ex.param(m, "bias"),
                   ex.param(m, "running_mean"), ex.param(m, "running_var"), epsilon=m.eps)


@handles(nn.Sequential)
def sequential(ex, m, x):
    layers = list(m)
    i = 0
    while i < len(layers):
        if (type(layers[i]) in (nn.Conv2d, Conv2d, TapSumConv2d) and i + 1 < len(layers)
                and type(layers[i + 1]) in (nn.BatchNorm2d, BatchNorm2d, SyncBatchNorm)):
            x = ex.conv_bn(x, layers[i], layers[i + 1])
            i += 2
        else:
            x = ex(layers[i], x)
            i += 1
    return x


@handles(ConvModule)
def conv_module(ex, m, x):
    x = ex.conv_bn(x, m.conv, m.bn)
    return x if m.activate is None else ex(m.activate, x)
