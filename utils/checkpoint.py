"""Read official PyTorch checkpoints without torch, load them strictly, save our own atomically.

Accepted files:
- official trained checkpoints (`.pth`, a dict with `model` or `state_dict`);
- official ImageNet-pretrained backbones: DFormer `.pth.tar` (`state_dict_ema`, else
  `state_dict`) and DFormerv2 `.pth` (`model`); these fill the backbone only;
- checkpoints written by `save_checkpoint` (pickle, `.pkl`).
PyTorch files are recognised by content (a zip holding `*/data.pkl`), not by name: the
official `*.pth.tar` names would send `jt.load` to the wrong reader.
"""
import os
import pickle
import re
import tempfile
import zipfile

import numpy as np

from models.registry import identify

from .errors import UserError

# Keys a checkpoint may carry that no model parameter receives (all documented upstream):
UNUSED_OK = [
    r"backbone\.norm[0-3]\.(weight|bias)",  # built but never applied by the 2023 DFormer release
    r"backbone\.pred\..*",  # ImageNet classifier of the pretrained files
    # the last block of DFormer's stage 3 has no depth branch in the segmentation model
    r"backbone\.stages\.3\.\d+\.(attn\.proj_e|layer_scale_1_e|layer_scale_2_e|mlp_e2)(\..*)?",
    r".*num_batches_tracked",  # BN step counters (Jittor's BN keeps none)
]
_UNUSED_OK = re.compile("|".join(f"(?:{p})" for p in UNUSED_OK))


class CheckpointMismatch(UserError):
    pass


# ---------------------------------------------------------------- reading PyTorch zip files
_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
           "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
           "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
           "BFloat16Storage": np.uint16}


class _StorageType:
    def __init__(self, name):
        self.dtype = _DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *_):
    if not size:
        return storage[offset].copy()
    byte_strides = [s * storage.itemsize for s in stride]
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=byte_strides)
    array = np.ascontiguousarray(view)
    if storage.dtype == np.uint16:  # bfloat16: the high half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _rebuild_parameter(data, *_):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles torch.save's data.pkl into numpy arrays; other classes resolve normally."""

    def __init__(self, file, archive, prefix):
        super().__init__(file, encoding="utf-8")
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module, name):
        if module.startswith("torch"):
            if name.endswith("Storage"):
                return _StorageType(name) if name in _DTYPES else _StorageType("FloatStorage")
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return _rebuild_tensor
            if name == "_rebuild_parameter":
                return _rebuild_parameter
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _Opaque  # e.g. training-script objects stored beside the weights

    def persistent_load(self, saved_id):
        _, storage_type, key, _location, _numel = saved_id
        if key not in self.storages:
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.float32
            raw = self.archive.read(f"{self.prefix}data/{key}")
            self.storages[key] = np.frombuffer(raw, dtype=dtype)
        return self.storages[key]


class _Opaque:
    """Stand-in for a pickled object whose class is not importable here."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


def _read_torch_zip(path):
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if not pickles:
            raise UserError(f"{path}: a zip file, but not a PyTorch checkpoint (no data.pkl inside)")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as file:
            return _TorchUnpickler(file, archive, prefix).load()


def read_checkpoint(path):
    """The object stored in `path` (PyTorch zip or our pickle), tensors as numpy arrays."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            return _read_torch_zip(path)
        with open(path, "rb") as file:
            data = file.read()
        if data.endswith(b"HCAJSLHD"):  # jt.save's checksum trailer
            data = data[:-28]
        return pickle.loads(data)
    except UserError:
        raise
    except Exception as error:  # truncated or corrupted files fail in many different ways
        raise UserError(f"cannot read checkpoint {path}: the file is truncated or not a checkpoint "
                        f"({type(error).__name__}: {error}). Download or copy it again.") from None


# ---------------------------------------------------------------- state dict extraction
def extract_state_dict(obj, path="checkpoint"):
    """The flat {key: array} inside any accepted checkpoint layout, `module.` prefixes removed."""
    for key in ("model", "state_dict_ema", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            if "state_dict" in obj and isinstance(obj["state_dict"], dict):
                obj = obj["state_dict"]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise UserError(f"{path}: no state dict found (expected a dict of tensors, or one under "
                        "'model', 'state_dict_ema' or 'state_dict')")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}


def as_model_keys(state_dict):
    """Backbone-level keys of pretrained files get the `backbone.` prefix of the segmentor."""
    if any(k.startswith(("backbone.", "decode_head.")) for k in state_dict):
        return state_dict, False
    return {f"backbone.{k}": v for k, v in state_dict.items()}, True


# ---------------------------------------------------------------- identification for errors
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


# ---------------------------------------------------------------- strict loading
def compare_keys(model_shapes, state_dict, backbone_only):
    """(missing, unexpected, mismatched) of `state_dict` against {key: shape} of the model."""
    required = {k for k in model_shapes if not backbone_only or k.startswith("backbone.")}
    missing = sorted(required - state_dict.keys())
    unexpected = sorted(k for k in state_dict if k not in model_shapes and not _UNUSED_OK.fullmatch(k))
    mismatched = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {model_shapes[k]}"
                        for k in required & state_dict.keys()
                        if tuple(state_dict[k].shape) != model_shapes[k])
    return missing, unexpected, mismatched


def _mismatch_message(path, model_name, state_dict, missing, unexpected, mismatched, limit=12):
    lines = [f"{path} does not fit the {model_name} model of this config; it looks like "
             f"{describe_checkpoint(state_dict)}. Pick the config that matches the file."]
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
            lines.append(f"  {title} ({len(keys)}): {shown}")
    return "\n".join(lines)


def load_checkpoint(model, path):
    """Fill `model` from `path`, strictly; returns the whole checkpoint object (for resuming).

    Every parameter and buffer must be filled (for pretrained backbone files: every backbone
    entry); only the upstream leftovers in `UNUSED_OK` may go unused. Anything else raises
    `CheckpointMismatch` listing missing, unexpected and shape-mismatched keys.
    """
    import jittor as jt

    obj = read_checkpoint(path)
    state_dict, backbone_only = as_model_keys(extract_state_dict(obj, path))
    targets = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in targets.items()}
    missing, unexpected, mismatched = compare_keys(shapes, state_dict, backbone_only)
    if missing or unexpected or mismatched:
        name = getattr(model, "backbone_name", type(model).__name__)
        raise CheckpointMismatch(_mismatch_message(path, name, state_dict, missing, unexpected, mismatched))
    for key, var in targets.items():
        if key in state_dict:
            var.update(jt.array(np.asarray(state_dict[key], dtype=np.float32)))
    return obj


def save_checkpoint(path, **content):
    """Pickle `content` (numpy arrays and Python values) to `path` atomically.

    The file is written beside its destination and renamed over it, so an interrupted run
    never leaves a half-written checkpoint.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pkl")
    try:
        with os.fdopen(handle, "wb") as file:
            pickle.dump(content, file, protocol=4)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def state_dict_numpy(model):
    """{key: float32 numpy array} of a Jittor module, for `save_checkpoint`."""
    return {k: v.numpy() for k, v in model.state_dict().items()}
