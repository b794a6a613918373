"""Read the files `torch.save` writes (zip and legacy formats) without torch, tensors as numpy arrays.

Also reads plain pickles (`save_checkpoint`'s, `jt.save`'s). Files are recognised by content, not name
(`jt.load` misreads the official `*.pth.tar`); unpickling resolves only the classes a checkpoint needs
and makes anything else an inert `Opaque`, so a file can never run code here.
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
import struct
import zipfile

import numpy as np

from utils.errors import UserError


# torch storage class -> numpy dtype of its elements (little-endian; bfloat16 read as raw bits)
_STORAGE_DTYPES = {"FloatStorage": "f4", "HalfStorage": "f2", "DoubleStorage": "f8",
                   "BFloat16Storage": "u2", "LongStorage": "i8", "IntStorage": "i4",
                   "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?"}


_StorageType = collections.namedtuple("_StorageType", "name dtype")  # torch.FloatStorage etc. and its dtype
# a torch storage: its _StorageType and raw elements (None while a legacy file's object is first read)
_Storage = collections.namedtuple("_Storage", "kind data", defaults=(None,))


def _rebuild_tensor(storage, offset, size, stride, *_):
    """A C-contiguous copy of the view (offset, size, stride) of `storage`, as torch defines it."""
    data, size, stride = storage.data, tuple(size), tuple(stride)
    if data is None:  # first pass over a legacy file: storages not read yet
        return None
    end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if 0 in size:
        array = np.empty(size, data.dtype)
    elif offset < 0 or end > data.size:
        raise ValueError(f"a tensor of size {size} reaches beyond its storage of {data.size} elements")
    else:  # a C-order copy; a 0-dim tensor stays a 0-dim array
        array = np.lib.stride_tricks.as_strided(data[offset:], shape=size,
                                                strides=[s * data.itemsize for s in stride]).copy()
    if storage.kind.name == "BFloat16Storage":  # bfloat16 = the high half of a float32
        array = np.asarray(array.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return array


def _rebuild_parameter(data, *_):
    return data


def _rebuild_from_type(func, _new_type, args, _state):  # tensor subclasses: keep the tensor
    return func(*args)


class Opaque:
    """Inert stand-in for a pickled object of a class a checkpoint does not need."""

    pickled_class = "object"

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


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
    """Unpickles checkpoints: torch tensors as numpy arrays, unknown classes as `Opaque`."""

    def __init__(self, file, storages=None):
        super().__init__(file, encoding="utf-8")
        self.storages = storages  # persistent id -> _Storage; None: the pickle holds no torch storage

    def find_class(self, module, name):
        # Python 2 names (protocol 2, as torch writes), mapped as pickle's own find_class does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        module = module.replace("numpy._core", "numpy.core")
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name, _STORAGE_DTYPES.get(name))
        found = _ALLOWED.get((module, name))
        return found if found is not None else type(name, (Opaque,), {"pickled_class": f"{module}.{name}"})

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
    big = f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() == b"big"
    order = ">" if big else "<"
    storages = {}

    def storage(saved_id):  # ('storage', storage type, key, location, numel)
        kind, key = _storage_kind(saved_id), saved_id[2]
        if key not in storages:
            raw = archive.read(f"{prefix}data/{key}")
            storages[key] = _Storage(kind, np.frombuffer(raw, dtype=order + kind.dtype))
        return storages[key]

    with archive.open(pickles[0]) as file:
        return _SafeUnpickler(file, storage).load()


# the first object of a legacy (non-zip) torch.save stream, a magic number, pickled as LONG1
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


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
    start = 11 if head[2:3] == b"\x95" else 2
    return head[:1] == b"\x80" and head[start:start + 12] == _LEGACY_MAGIC


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
