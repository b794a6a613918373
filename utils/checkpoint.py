"""Read PyTorch checkpoints without torch, load them strictly, save our own atomically.

Accepted files:
- official trained checkpoints: `{'model', 'optimizer', 'epoch', 'iteration'}` as the official
  `Engine.save_checkpoint` writes them (a plain state dict, or one under `state_dict`, also works);
- official ImageNet-pretrained backbones: DFormer `.pth.tar` (timm's train script: `state_dict_ema`,
  preferred as upstream does, else `state_dict`; `args`, `optimizer`, ... beside them) and DFormerv2
  `*_pretrained.pth` (`{'model': backbone}`); these fill the backbone only;
- checkpoints written by `save_checkpoint` (pickle, `.pkl`).
PyTorch files are read in both formats torch writes: the zip archive (torch >= 1.6) and the legacy
pickle stream (`_use_new_zipfile_serialization=False`). They are recognised by content, not by
name: the official `*.pth.tar` names would send `jt.load` to the wrong reader. Unpickling resolves
only the classes a checkpoint needs (tensors, containers, argparse.Namespace, numpy scalars);
anything else becomes an inert stand-in, so a file can never run code here.
"""
import _compat_pickle
import argparse
import builtins
import codecs
import collections
import copyreg
import io
import os
import pickle
import re
import struct
import tempfile
import zipfile

import numpy as np

from models.registry import identify

from .errors import UserError

# Keys a trained (full segmentor) checkpoint may carry that no model entry receives:
TRAINED_LEFTOVERS = [
    r"backbone\.norm[0-3]\.(weight|bias)",  # built but never applied by the 2023 DFormer release
    r".*num_batches_tracked",  # BN step counters (Jittor's BN keeps none)
]
# ... and what an ImageNet-pretrained file may carry beyond the segmentation backbone:
PRETRAINED_LEFTOVERS = TRAINED_LEFTOVERS + [
    # DFormer (RGBD-Pretrain's classifier): `pred` = Linear(3/2 * dims[3], 1000) on the pooled RGB-D
    r"backbone\.pred\.(weight|bias)",
    # the last block of DFormer's stage 3 keeps its depth branch in pretraining; the segmentation
    # model drops it (maintainer, VCIP-RGBD/DFormer issue #36)
    r"backbone\.stages\.3\.\d+\.(attn\.proj_e|layer_scale_1_e|layer_scale_2_e|mlp_e2)(\..*)?",
    # DFormerv2's ImageNet classifier (its pretraining code is unreleased), as in RMT, the code it
    # builds on (VisRetNet in qhfan/RMT): proj = Linear(dims[3], 1024), norm = BatchNorm(1024),
    # head = Linear(1024, 1000); Lorenzo-Mazza/VersatIL, which loads the released HuggingFace
    # files, skips the same keys and leaves the missing extra_norms (below) at identity
    r"backbone\.(proj|head)\.(weight|bias)",
    r"backbone\.norm\.(weight|bias|running_mean|running_var)",
]
# Backbone entries an ImageNet-pretrained file may lack, with the value upstream leaves them at:
# DFormerv2's per-stage output norms exist only in the segmentation backbone; the official
# `init_weights` resets every LayerNorm to weight 1 / bias 0 and then loads non-strictly.
ABSENT_IN_PRETRAINED = {
    r"backbone\.extra_norms\.\d+\.weight": np.ones,
    r"backbone\.extra_norms\.\d+\.bias": np.zeros,
}


def _any_of(patterns):
    return re.compile("|".join(f"(?:{p})" for p in patterns))


_TRAINED_LEFTOVERS, _PRETRAINED_LEFTOVERS = _any_of(TRAINED_LEFTOVERS), _any_of(PRETRAINED_LEFTOVERS)
_ABSENT_IN_PRETRAINED = [(re.compile(p), fill) for p, fill in ABSENT_IN_PRETRAINED.items()]


class CheckpointMismatch(UserError):
    pass


# ---------------------------------------------------------------- unpickling without torch
# torch storage class -> numpy dtype of its elements (little-endian; bfloat16 read as raw bits)
_STORAGE_DTYPES = {"FloatStorage": "f4", "HalfStorage": "f2", "DoubleStorage": "f8",
                   "BFloat16Storage": "u2", "LongStorage": "i8", "IntStorage": "i4",
                   "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?"}


class _StorageType:
    def __init__(self, name):
        self.name, self.dtype = name, _STORAGE_DTYPES.get(name)


class _Storage:
    """A torch storage: its type and raw elements (None while a legacy file's object is first read)."""

    def __init__(self, kind, data=None):
        self.kind, self.data = kind, data


def _rebuild_tensor(storage, offset, size, stride, *_):
    """A C-contiguous copy of the view (offset, size, stride) of `storage`, as torch defines it."""
    size, stride = tuple(size), tuple(stride)
    if storage.data is None:  # first pass over a legacy file: storages not read yet
        return None
    data = storage.data
    end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if 0 in size:
        array = np.empty(size, data.dtype)
    elif offset < 0 or end > data.size:
        raise ValueError(f"a tensor of size {size} reaches beyond its storage of {data.size} elements")
    else:
        view = np.lib.stride_tricks.as_strided(data[offset:], shape=size,
                                               strides=[s * data.itemsize for s in stride])
        array = view.copy()  # C order; a 0-dim tensor stays a 0-dim array
    if storage.kind.name == "BFloat16Storage":  # bfloat16 = the high half of a float32
        array = np.asarray(array.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return array


def _rebuild_parameter(data, *_):
    return data


def _rebuild_from_type(func, _new_type, args, _state):  # tensor subclasses: keep the tensor
    return func(*args)


class _Opaque:
    """Inert stand-in for a pickled object of a class a checkpoint does not need."""

    pickled_class = "object"

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


def _opaque(module, name):
    return type(name, (_Opaque,), {"pickled_class": f"{module}.{name}"})


_ALLOWED = {  # (module, name) -> object; numpy 2 writes `numpy._core`, numpy 1 reads `numpy.core`
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("_codecs", "encode"): codecs.encode,  # bytes under pickle protocol 2
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar,
    ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
}
_ALLOWED.update({("builtins", n): getattr(builtins, n)
                 for n in ("set", "frozenset", "slice", "complex", "bytearray", "range")})


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles checkpoints: torch tensors as numpy arrays, unknown classes as `_Opaque`."""

    def __init__(self, file, storages=None):
        super().__init__(file, encoding="utf-8")
        self.storages = storages  # persistent id -> _Storage; None: the pickle holds no torch storage

    def find_class(self, module, name):
        # Python 2 names (protocol 2, as torch writes), mapped as pickle's own find_class does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        module = module.replace("numpy._core", "numpy.core")
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        found = _ALLOWED.get((module, name))
        return found if found is not None else _opaque(module, name)

    def persistent_load(self, saved_id):
        if self.storages is None:
            raise pickle.UnpicklingError("a persistent reference outside a PyTorch file")
        return self.storages(saved_id)


def _storage_kind(saved_id):
    kind = saved_id[1]
    if not isinstance(kind, _StorageType) or kind.dtype is None:
        name = getattr(kind, "name", None) or getattr(kind, "pickled_class", repr(kind))
        raise UserError(f"tensors of storage type {name} are not supported (supported: "
                        f"{', '.join(_STORAGE_DTYPES)})")
    return kind


def _read_torch_zip(path, archive):
    names = archive.namelist()
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        raise UserError(f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint; save the "
                        "weights with torch.save(model.state_dict(), path) and load that")
    pickles = sorted((n for n in names if n.endswith("data.pkl")), key=len)
    if not pickles:
        raise UserError(f"{path}: a zip file, but not a PyTorch checkpoint (no data.pkl inside)")
    prefix = pickles[0][: -len("data.pkl")]
    order = "<"
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() == b"big":
        order = ">"
    storages = {}

    def storage(saved_id):  # ('storage', storage type, key, location, numel)
        kind, key = _storage_kind(saved_id), saved_id[2]
        if key not in storages:
            raw = archive.read(f"{prefix}data/{key}")
            storages[key] = _Storage(kind, np.frombuffer(raw, dtype=order + kind.dtype))
        return storages[key]

    with archive.open(pickles[0]) as file:
        return _SafeUnpickler(file, storage).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a legacy (non-zip) torch.save stream


def _read_torch_legacy(file):
    """The legacy stream: magic, protocol, sys_info, the object (storages by reference), the
    storage keys, then each storage as an int64 element count and its raw elements."""
    for _ in range(3):
        _SafeUnpickler(file).load()
    start = file.tell()
    kinds = {}

    def sized(saved_id):  # ('storage', type, key, location, numel, view_metadata)
        kinds[saved_id[2]] = _storage_kind(saved_id)
        return _Storage(kinds[saved_id[2]])

    _SafeUnpickler(file, sized).load()  # first pass: learn each storage's type, build nothing
    storages = {}
    for key in _SafeUnpickler(file).load():
        (count,) = struct.unpack("<q", file.read(8))
        dtype = np.dtype("<" + kinds[key].dtype)
        raw = file.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise EOFError("the file ends inside a tensor")
        storages[key] = _Storage(kinds[key], np.frombuffer(raw, dtype=dtype))

    def stored(saved_id):
        root = storages[saved_id[2]]
        view = saved_id[5] if len(saved_id) > 5 else None  # (view key, offset, size), torch < 0.4
        if view is None:
            return root
        return _Storage(root.kind, root.data[view[1]: view[1] + view[2]])

    file.seek(start)
    return _SafeUnpickler(file, stored).load()


def _is_legacy_torch(head):
    """Whether the pickle starts with the magic number (PROTO, an optional FRAME, LONG1)."""
    if head[:1] != b"\x80":
        return False
    start = 11 if head[2:3] == b"\x95" else 2
    return head[start:start + 2] == b"\x8a\x0a" and \
        int.from_bytes(head[start + 2:start + 12], "little") == _LEGACY_MAGIC


def _is_safetensors(head, size):
    if len(head) < 9:
        return False
    (header_size,) = struct.unpack("<Q", head[:8])
    return 0 < header_size <= size - 8 and head[8:9] == b"{"


def read_checkpoint(path):
    """The object stored in `path` (a PyTorch file or our pickle), tensors as numpy arrays."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise UserError(f"{path}: an empty file (0 bytes), not a checkpoint. Download or copy it again.")
    with open(path, "rb") as file:
        head = file.read(32)
    if _is_safetensors(head, size):
        raise UserError(f"{path}: a safetensors file; this loader reads PyTorch checkpoints "
                        "(torch.save, .pth/.pth.tar) and the .pkl files this repository writes")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _read_torch_zip(path, archive)
        with open(path, "rb") as file:
            if _is_legacy_torch(head):
                return _read_torch_legacy(file)
            data = file.read()
        if data.endswith(b"HCAJSLHD"):  # jt.save's checksum trailer
            data = data[:-28]
        return _SafeUnpickler(io.BytesIO(data)).load()
    except UserError:
        raise
    except Exception as error:  # truncated or corrupted files fail in many different ways
        raise UserError(f"cannot read checkpoint {path}: the file is truncated or not a checkpoint "
                        f"({type(error).__name__}: {error}). Download or copy it again.") from None


# ---------------------------------------------------------------- state dict extraction
_CONTAINERS = ("model", "state_dict_ema", "state_dict", "module")  # upstream's order of preference


def _what(value):
    if isinstance(value, _Opaque):
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
    if isinstance(obj, _Opaque):
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
    """(state dict with segmentor keys, whether the file holds a backbone only).

    Pretrained files hold backbone-level keys (upstream strips a `backbone.` prefix if present);
    they get the `backbone.` prefix of the segmentor here.
    """
    if any(k.startswith("decode_head.") for k in state_dict):
        return state_dict, False
    return {k if k.startswith("backbone.") else f"backbone.{k}": v for k, v in state_dict.items()}, True


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
def _absent_fill(key):
    """How upstream fills backbone entry `key` when a pretrained file lacks it (None: it must not)."""
    return next((fill for pattern, fill in _ABSENT_IN_PRETRAINED if pattern.fullmatch(key)), None)


def compare_keys(model_shapes, state_dict, backbone_only):
    """(missing, unexpected, mismatched) of `state_dict` against {key: shape} of the model.

    backbone_only: the file fills the backbone only (a pretrained file): decoder entries are not
    required, and the pretraining leftovers and absences listed above are allowed.
    """
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
        first = (f"{path} holds a whole segmentor, {describe_checkpoint(state_dict)}, not a pretrained "
                 f"backbone, and its backbone does not fit the {model_name} backbone of this config. "
                 "Pick the config (or the pretrained file) that matches.")
    else:
        first = (f"{path} does not fit the {model_name} model of this config; it looks like "
                 f"{describe_checkpoint(state_dict)}. Pick the config that matches the file.")
    lines = [first]
    for title, keys in zip(("missing", "unexpected", "shape mismatch"), problems):
        if keys:
            shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
            lines.append(f"  {title} ({len(keys)}): {shown}")
    return "\n".join(lines)


def load_checkpoint(model, path, backbone_only=False):
    """Fill `model` from `path`, strictly; returns the whole checkpoint object (for resuming).

    Every parameter and buffer must be filled, and only the leftovers listed above may go unused;
    anything else raises `CheckpointMismatch` listing missing, unexpected and shape-mismatched
    keys and naming the model the file belongs to. A file holding a backbone only (the official
    pretrained files) fills the backbone; `backbone_only=True` (initialising from a pretrained
    file) takes only the backbone of a file that holds a whole segmentor.
    """
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
