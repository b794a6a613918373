"""DFormer / DFormerv2 models in Jittor.

`MODELS` (models/registry.py) lists the official models and their facts; `build_model(C)` builds
the segmentor of a config. Importing this package imports no Jittor and changes no environment
variable, so configs and tools can read the registry freely; `build_model` applies Jittor's
environment defaults (`jittor_env.py`) before it imports Jittor.
"""
from .registry import MODELS, ModelSpec, find_model


def build_model(C):
    """The EncoderDecoder of config `C`, on the GPU when Jittor has one, its weights computed.

    `use_cuda` is set before construction because Jittor picks its depthwise-conv kernel in
    `Conv2d.__init__` from the current flag. Jittor's initialisers are lazy: a random draw runs
    when its value is first needed, from the random generator's state at that moment, so the
    parameters and buffers are computed here, right after construction: the seed set before
    `build_model` alone then fixes them, whatever runs next (re-seeding, data loading, a
    broadcast to other processes).
    """
    from .jittor_env import apply_defaults

    apply_defaults()
    import jittor as jt

    from .builder import EncoderDecoder

    jt.flags.use_cuda = int(jt.has_cuda)
    model = EncoderDecoder(C)
    jt.sync(list(model.state_dict().values()))
    return model


__all__ = ["MODELS", "ModelSpec", "build_model", "find_model"]
