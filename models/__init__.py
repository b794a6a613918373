"""DFormer / DFormerv2 models in Jittor.

`MODELS` (models/registry.py) lists the official models and their facts; `build_model(C)` builds
the segmentor of a config. Jittor is imported by `build_model`, not by this package, so configs
and tools can read the registry without loading Jittor.
"""
import utils  # noqa: F401  (Jittor environment defaults, before Jittor is imported)

from .registry import MODELS, ModelSpec, find_model


def build_model(C):
    """The EncoderDecoder of config `C`, on the GPU when Jittor has one.

    `use_cuda` is set before construction because Jittor picks its depthwise-conv kernel in
    `Conv2d.__init__` from the current flag.
    """
    import jittor as jt

    from .builder import EncoderDecoder

    jt.flags.use_cuda = int(jt.has_cuda)
    return EncoderDecoder(C)


__all__ = ["MODELS", "ModelSpec", "build_model", "find_model"]
