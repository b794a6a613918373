"""DFormer / DFormerv2 models in Jittor.

`MODELS` (models/registry.py) lists the official models and their facts; `build_model(C)` builds
the segmentor of a config. Importing this package imports no Jittor and changes no environment
variable, so configs and tools can read the registry freely; `build_model` applies Jittor's
environment defaults (`jittor_env.py`) before it imports Jittor.
"""
from .registry import MODELS, ModelSpec, find_model


def build_model(C):
    """The EncoderDecoder of config `C`, on the GPU when Jittor has one, its weights computed.

    `use_cuda` is set first: Jittor picks its depthwise-conv kernel in `Conv2d.__init__`. The
    weights are computed right away because Jittor draws lazily, from the generator's state at first
    use: so the seed set before `build_model` alone fixes them, whatever runs next.
    """
    from .jittor_env import apply_defaults, size_cudnn_algorithm_cache

    apply_defaults()
    import jittor as jt

    from .builder import EncoderDecoder

    jt.flags.use_cuda = int(jt.has_cuda)
    size_cudnn_algorithm_cache()
    model = EncoderDecoder(C)
    jt.sync(list(model.state_dict().values()))
    return model


__all__ = ["MODELS", "ModelSpec", "build_model", "find_model"]
