"""DFormer / DFormerv2 models in Jittor.

`MODELS` (models/registry.py) lists the official models and their facts; `build_model(C)` builds
the segmentor of a config. Importing this package imports no Jittor and changes no environment
variable, so configs and tools can read the registry freely; `build_model` applies Jittor's
environment defaults (`jittor_env.py`) before it imports Jittor.
"""
from .registry import MODELS, ModelSpec, find_model


def build_model(C):
    """The EncoderDecoder of config `C`, on the GPU when Jittor has one.

    `use_cuda` is set before construction because Jittor picks its depthwise-conv kernel in
    `Conv2d.__init__` from the current flag.
    """
    from .jittor_env import apply_defaults

    apply_defaults()
    import jittor as jt

    from .builder import EncoderDecoder

    jt.flags.use_cuda = int(jt.has_cuda)
    return EncoderDecoder(C)


__all__ = ["MODELS", "ModelSpec", "build_model", "find_model"]
