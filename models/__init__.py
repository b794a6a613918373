"""DFormer / DFormerv2 models in Jittor: `build_model(C)` builds the segmentor of a config."""
import utils  # noqa: F401  (Jittor environment defaults, before Jittor is imported)

import jittor as jt

from .builder import BACKBONES, EncoderDecoder


def build_model(C):
    """The EncoderDecoder of config `C`, on the GPU when Jittor has one.

    `use_cuda` is set before construction because Jittor picks its depthwise-conv kernel in
    `Conv2d.__init__` from the current flag.
    """
    jt.flags.use_cuda = int(jt.has_cuda)
    return EncoderDecoder(C)


__all__ = ["BACKBONES", "EncoderDecoder", "build_model"]
