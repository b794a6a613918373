"""Load checkpoints strictly into a model, name the model a mismatched file belongs to, save atomically.

Reads (without torch, via `torch_reader.py`) the official trained and ImageNet-pretrained files, whose
layouts docs/checkpoints.md lists, and the `.pkl` files `save_checkpoint` writes.
"""
import pickle
import re

import numpy as np

from models.registry import identify
from utils.errors import UserError
from utils.files import atomic_open

from .torch_reader import Opaque, read_checkpoint

# Keys a trained (full segmentor) checkpoint may carry that no model entry receives:
TRAINED_LEFTOVERS = [
    r"backbone\.norm[0-3]\.(weight|bias)",  # built but never applied by the 2023 DFormer release
    r".*num_batches_tracked",  # BN step counters (Jittor's BN keeps none)
]
# ... and what an ImageNet-pretrained file may carry beyond the segmentation backbone:
PRETRAINED_LEFTOVERS = TRAINED_LEFTOVERS + [
    r"backbone\.pred\.(weight|bias)",  # DFormer's ImageNet classifier (RGBD-Pretrain)
    # DFormer's last stage-3 block keeps its depth branch only in pretraining (VCIP-RGBD/DFormer issue #36)
    r"backbone\.stages\.3\.\d+\.(attn\.proj_e|layer_scale_1_e|layer_scale_2_e|mlp_e2)(\..*)?",
    # DFormerv2's ImageNet classifier (proj, norm, head) as in RMT (qhfan/RMT), which it builds on
    r"backbone\.(proj|head)\.(weight|bias)",
    r"backbone\.norm\.(weight|bias|running_mean|running_var)",
]
_TRAINED_LEFTOVERS, _PRETRAINED_LEFTOVERS = (re.compile("|".join(f"(?:{p})" for p in patterns))
                                             for patterns in (TRAINED_LEFTOVERS, PRETRAINED_LEFTOVERS))
# Backbone entries a pretrained file may lack, filled as upstream's `init_weights` leaves them:
# DFormerv2's segmentation-only per-stage norms at LayerNorm identity.
_ABSENT_IN_PRETRAINED = [(re.compile(r"backbone\.extra_norms\.\d+\.weight"), np.ones),
                         (re.compile(r"backbone\.extra_norms\.\d+\.bias"), np.zeros)]


class CheckpointMismatch(UserError):
    """A checkpoint whose keys or shapes do not fit the model."""


_CONTAINERS = ("model", "state_dict_ema", "state_dict", "module")  # upstream's order of preference


def _what(value):
    if isinstance(value, Opaque):
        return f"a pickled {value.pickled_class} object"
    return f"a {type(value).__name__}"


def extract_state_dict(obj, path="checkpoint"):
    """The flat {key: array} inside any accepted checkpoint layout, `module.` prefixes removed."""
    expected = ("expected a state dict (a dict of tensors), or one under 'model', 'state_dict_ema' "
                "or 'state_dict'")
    for key in _CONTAINERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and obj[key]:
            obj = obj[key]
            if isinstance(obj.get("state_dict"), dict):
                obj = obj["state_dict"]
            break
    if isinstance(obj, Opaque):
        raise UserError(f"{path}: holds {_what(obj)} (a whole model saved with torch.save(model)?), "
                        f"not a state dict; {expected}")
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{path}: holds {_what(obj) if obj != {} else 'an empty dict'}; {expected}")
    others = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if others:
        shown = ", ".join(f"{k!r} ({_what(obj[k])})" for k in others[:3])
        raise UserError(f"{path}: not a state dict: {shown}{' ...' if len(others) > 3 else ''} "
                        f"{'is' if len(others) == 1 else 'are'} not tensors; {expected}")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}


def as_model_keys(state_dict):
    """(state dict with segmentor keys, whether it holds a backbone only): a pretrained file's
    backbone-level keys get the segmentor's `backbone.` prefix."""
    if any(k.startswith("decode_head.") for k in state_dict):
        return state_dict, False
    return {k if k.startswith("backbone.") else f"backbone.{k}": v for k, v in state_dict.items()}, True


def describe_checkpoint(state_dict):
    """Best guess of the official model a state dict belongs to, e.g. 'DFormer-Base (...)'."""
    def count(pattern):
        found = {int(m.group(1)) for k in state_dict for m in [re.match(pattern, k)] if m}
        return max(found) + 1 if found else 0

    stem = state_dict.get("backbone.downsample_layers.0.0.weight")
    embed = state_dict.get("backbone.patch_embed.proj.0.weight")
    if stem is not None:
        family, width, depth = "DFormer", 2 * stem.shape[0], count(r"backbone\.stages\.2\.(\d+)\.")
    elif embed is not None:
        family, width, depth = "DFormerv2", 2 * embed.shape[0], count(r"backbone\.layers\.2\.blocks\.(\d+)\.")
    else:
        return "an unknown model (neither a DFormer nor a DFormerv2 state dict)"
    spec = identify(family, width, depth)
    name = spec.name if spec else f"{family} of unknown size (width {width}, {depth} blocks in stage 3)"
    seg = state_dict.get("decode_head.conv_seg.weight")
    if seg is not None:
        name += f" with a {seg.shape[1]}-wide decode head and {seg.shape[0]} classes"
    return name


def _absent_fill(key):
    """How upstream fills backbone entry `key` when a pretrained file lacks it (None: it must not)."""
    return next((fill for pattern, fill in _ABSENT_IN_PRETRAINED if pattern.fullmatch(key)), None)


def compare_keys(model_shapes, state_dict, backbone_only):
    """(missing, unexpected, mismatched) of `state_dict` against the model's {key: shape};
    `backbone_only` requires no decoder entries and allows the pretraining leftovers and absences."""
    leftovers = _PRETRAINED_LEFTOVERS if backbone_only else _TRAINED_LEFTOVERS
    wanted = {k for k in model_shapes if not backbone_only or k.startswith("backbone.")}
    missing = sorted(k for k in wanted - state_dict.keys() if not (backbone_only and _absent_fill(k)))
    unexpected = sorted(k for k in state_dict if k not in model_shapes and not leftovers.fullmatch(k))
    mismatched = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {model_shapes[k]}"
                        for k in wanted & state_dict.keys()
                        if tuple(state_dict[k].shape) != model_shapes[k])
    return missing, unexpected, mismatched


def _mismatch_message(path, model_name, state_dict, problems, whole_segmentor_as_backbone, limit=12):
    if whole_segmentor_as_backbone:
        lines = [f"{path} holds a whole segmentor, {describe_checkpoint(state_dict)}, not a pretrained "
                 f"backbone, and its backbone does not fit the {model_name} backbone of this config. "
                 "Pick the config (or the pretrained file) that matches."]
    else:
        lines = [f"{path} does not fit the {model_name} model of this config; it looks like "
                 f"{describe_checkpoint(state_dict)}. Pick the config that matches the file."]
    for title, keys in zip(("missing", "unexpected", "shape mismatch"), problems):
        if keys:
            shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
            lines.append(f"  {title} ({len(keys)}): {shown}")
    return "\n".join(lines)


def load_checkpoint(model, path, backbone_only=False):
    """Fill every entry of `model` from `path` (only the leftovers above may go unused, else
    `CheckpointMismatch`); returns the whole checkpoint object. A backbone-only file fills the
    backbone; `backbone_only=True` takes just the backbone of a whole-segmentor file."""
    import jittor as jt

    obj = read_checkpoint(path)
    state_dict = extract_state_dict(obj, path)
    targets = model.state_dict()
    backbone_file = False
    if any(k.startswith("backbone.") for k in targets):  # a segmentor (else any module, as is)
        state_dict, backbone_file = as_model_keys(state_dict)
    backbone_only = backbone_only or backbone_file
    used = {k: v for k, v in state_dict.items() if k.startswith("backbone.")} if backbone_only else state_dict
    problems = compare_keys({k: tuple(v.shape) for k, v in targets.items()}, used, backbone_only)
    if any(problems):
        name = getattr(model, "backbone_name", type(model).__name__)
        raise CheckpointMismatch(_mismatch_message(path, name, state_dict, problems,
                                                   backbone_only and not backbone_file))
    for key, var in targets.items():
        if key in used:
            var.update(jt.array(np.asarray(used[key], dtype=np.float32)))
        elif backbone_only and key.startswith("backbone."):
            var.update(jt.array(_absent_fill(key)(tuple(var.shape), np.float32)))
    return obj


def save_checkpoint(path, **content):
    """Pickle `content` (numpy arrays and Python values) to `path` atomically."""
    with atomic_open(path) as file:
        pickle.dump(content, file, protocol=4)


def state_dict_numpy(model):
    """{key: float32 numpy array} of a Jittor module, for `save_checkpoint`."""
    return {k: v.numpy() for k, v in model.state_dict().items()}
