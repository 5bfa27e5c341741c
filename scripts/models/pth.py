"""Torch-free readers for model checkpoints.

Reads PyTorch checkpoints (``torch.save`` output) into plain numpy arrays
without importing torch, plus ``.npz`` and ``.safetensors`` files.

PyTorch formats supported
-------------------------
* **zip** (torch >= 1.6 default): a zip archive holding ``<top>/data.pkl``
  (the pickled object, storages referenced by persistent id) and one raw file
  per storage at ``<top>/data/<key>``. ``<top>`` varies (``archive``, the file
  stem, ...), so it is discovered rather than assumed.
* **legacy** (``_use_new_zipfile_serialization=False``, and everything before
  torch 1.6): a stream of pickles - magic number, protocol version, sys info,
  the object itself, a list of storage keys - followed, for each key, by an
  int64 little-endian element count and the raw little-endian bytes.

Unpickling never imports torch or executes arbitrary callables: only an
allow-list of globals is resolved (tensor rebuild helpers, storage types,
``OrderedDict``, a few numpy reconstructors); anything else becomes an inert
:class:`UnknownObject` that records its arguments.

Public API
----------
* :func:`load_checkpoint` - the whole unpickled object, tensors as numpy.
* :func:`pick_state_dict` - choose the flat ``{name: array}`` dict inside it.
* :func:`load_state_dict` - the two above combined.
* :func:`load_any` - dispatch on the extension (.pth/.pt/.bin/.ckpt, .npz,
  .safetensors).
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

__all__ = [
    "UnknownObject",
    "load_checkpoint",
    "pick_state_dict",
    "load_state_dict",
    "load_npz",
    "load_safetensors",
    "load_any",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype of one element ("bfloat16" is
# special: stored as uint16 and widened to float32 after reading).
STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}

# torch dtype names (as pickled for _rebuild_tensor_v3) -> storage names.
TORCH_DTYPES: dict[str, str] = {
    "float64": "DoubleStorage",
    "double": "DoubleStorage",
    "float32": "FloatStorage",
    "float": "FloatStorage",
    "float16": "HalfStorage",
    "half": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "int64": "LongStorage",
    "long": "LongStorage",
    "int32": "IntStorage",
    "int": "IntStorage",
    "int16": "ShortStorage",
    "short": "ShortStorage",
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
}

NESTED_KEYS = ("model", "state_dict", "teacher", "student", "model_ema", "module", "params")


# --------------------------------------------------------------------------
# Inert stand-ins used while unpickling
# --------------------------------------------------------------------------


class UnknownObject:
    """Inert stand-in for a pickled global that is not on the allow-list.

    Keeps the qualified name, constructor arguments and pickled state so the
    caller can inspect it (e.g. DINO's ``argparse.Namespace`` ``args``).
    """

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<unknown {self.qualname}>"


def _unknown_class(module: str, name: str) -> type:
    return type(name, (UnknownObject,), {"qualname": f"{module}.{name}"})


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends."""

    def __init__(self, name: str):
        if name not in STORAGE_DTYPES:
            raise KeyError(name)
        self.name = name

    @property
    def dtype(self):
        return STORAGE_DTYPES[self.name]


class _DType:
    """Stand-in for a pickled ``torch.<dtype>`` object."""

    def __init__(self, name: str):
        self.name = name


class _StorageRef:
    """A storage named by a persistent id; data is attached later."""

    def __init__(self, key: str, storage_type: _StorageType, numel: int):
        self.key = key
        self.storage_type = storage_type
        self.numel = numel
        self.data: np.ndarray | None = None  # 1-D array of elements


class _StorageView:
    """Legacy storage view (pre-0.4 torch): a slice of a root storage."""

    def __init__(self, root: _StorageRef, offset: int, size: int):
        self.root = root
        self.offset = offset
        self.size = size


class _LazyTensor:
    """A tensor whose storage bytes may not have been read yet."""

    def __init__(self, storage, offset, size, stride, dtype_name=None):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)
        self.dtype_name = dtype_name  # from _rebuild_tensor_v3, else None


# --------------------------------------------------------------------------
# Rebuild functions referenced from pickles
# --------------------------------------------------------------------------


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype=None, metadata=None):
    name = dtype.name if isinstance(dtype, _DType) else None
    return _LazyTensor(storage, storage_offset, size, stride, dtype_name=name)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


def _identity_type(*args, **kwargs):
    """``torch.nn.parameter.Parameter`` etc.: the data is the first argument."""
    return args[0] if args else None


_TORCH_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): _identity_type,
    ("torch", "Size"): tuple,
}

def _numpy_global(module: str, name: str):
    """Resolve the few numpy reconstructors that checkpoints commonly hold."""
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct", "scalar"):
        try:
            from numpy._core import multiarray  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray
        return getattr(multiarray, name)
    if module == "numpy" and name in ("dtype", "ndarray"):
        return getattr(np, name)
    return None


class _CheckpointUnpickler(pickle.Unpickler):
    """Unpickler that maps torch globals to numpy-friendly stand-ins.

    ``storages`` collects every storage seen by key; ``storage_loader`` (zip
    format) is called to fetch a storage's bytes immediately, otherwise they
    are attached later (legacy format).
    """

    def __init__(self, file, storages: dict, storage_loader=None):
        super().__init__(file, encoding="latin1")
        self.storages = storages
        self.storage_loader = storage_loader

    def find_class(self, module, name):
        key = (module, name)
        if key in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[key]
        if module in ("torch", "torch.storage") and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in TORCH_DTYPES:
            return _DType(name)
        if key in (("collections", "OrderedDict"),):
            return collections.OrderedDict
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset", "slice",
                                                               "complex", "bytearray"):
            return getattr(__import__("builtins"), name)
        if key == ("_codecs", "encode"):
            return _codecs_encode
        found = _numpy_global(module, name)
        if found is not None:
            return found
        return _unknown_class(module, name)

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, *rest = pid
        if isinstance(storage_type, _DType):  # torch >= 2 may pickle a dtype here
            if storage_type.name not in TORCH_DTYPES:
                raise pickle.UnpicklingError(f"unsupported dtype torch.{storage_type.name}")
            storage_type = _StorageType(TORCH_DTYPES[storage_type.name])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        key = str(key)
        ref = self.storages.get(key)
        if ref is None:
            ref = _StorageRef(key, storage_type, int(numel))
            if self.storage_loader is not None:
                ref.data = self.storage_loader(ref)
            self.storages[key] = ref
        view_metadata = rest[0] if rest else None
        if view_metadata is not None:
            view_key, offset, view_size = view_metadata
            return _StorageView(ref, int(offset), int(view_size))
        return ref


class _PlainUnpickler(pickle.Unpickler):
    """For the legacy header pickles and key list: plain data, no globals."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")


def _codecs_encode(s, encoding="latin1"):
    return s.encode(encoding)


# --------------------------------------------------------------------------
# Storage bytes -> numpy
# --------------------------------------------------------------------------


def _decode_storage(raw: bytes, storage_type: _StorageType, numel: int, byteorder="little",
                    where="") -> np.ndarray:
    """Turn a storage's raw bytes into a 1-D numpy array of its elements."""
    dtype = storage_type.dtype
    base = np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)
    need = numel * base.itemsize
    if len(raw) < need:
        raise ValueError(f"{where}: storage holds {len(raw)} bytes, expected {need} "
                         f"({numel} x {storage_type.name}); file truncated?")
    if byteorder == "big":
        base = base.newbyteorder(">")
    arr = np.frombuffer(raw, dtype=base, count=numel)
    if dtype == "bfloat16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(base.newbyteorder("="), copy=False)


def _materialize(t: _LazyTensor, where: str) -> np.ndarray:
    """Build an owned, contiguous numpy array for a tensor (honours strides)."""
    storage, base_offset = t.storage, 0
    if isinstance(storage, _StorageView):
        storage, base_offset = storage.root, storage.offset
    if storage.data is None:
        raise ValueError(f"{where}: storage {storage.key!r} was never read")
    data = storage.data
    if t.dtype_name is not None:  # _rebuild_tensor_v3: dtype given separately
        if t.dtype_name not in TORCH_DTYPES:
            raise ValueError(f"{where}: unsupported dtype torch.{t.dtype_name}")
        want = _StorageType(TORCH_DTYPES[t.dtype_name])
        if want.name != storage.storage_type.name:
            if data.dtype != np.uint8:
                raise ValueError(f"{where}: dtype torch.{t.dtype_name} over a "
                                 f"{storage.storage_type.name}")
            data = _decode_storage(data.tobytes(), want, data.nbytes // _itemsize(want),
                                   where=where)
    offset = base_offset + t.offset
    numel = int(np.prod(t.size, dtype=np.int64)) if t.size else 1
    if numel == 0:
        return np.zeros(t.size, dtype=data.dtype)
    if len(t.size) != len(t.stride):
        raise ValueError(f"{where}: size {t.size} and stride {t.stride} differ in rank")
    if any(s < 0 for s in t.stride):
        raise ValueError(f"{where}: negative stride {t.stride}")
    last = offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if offset < 0 or last >= data.size:
        raise ValueError(f"{where}: tensor (offset {offset}, size {t.size}, stride {t.stride})"
                         f" overruns its storage of {data.size} elements")
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=t.size, strides=[s * data.itemsize for s in t.stride],
        writeable=False)
    return np.array(view, copy=True, order="C")


def _itemsize(st: _StorageType) -> int:
    return 2 if st.dtype == "bfloat16" else np.dtype(st.dtype).itemsize


def _resolve(obj, where: str, path: str = ""):
    """Replace every _LazyTensor in a nested structure by a numpy array."""
    if isinstance(obj, _LazyTensor):
        return _materialize(obj, f"{where}: tensor {path or '<root>'}")
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _resolve(v, where, f"{path}.{k}" if path else str(k))
        if hasattr(obj, "__dict__") and obj.__dict__:
            out.__dict__.update(obj.__dict__)  # e.g. state_dict._metadata
        return out
    if isinstance(obj, list):
        return [_resolve(v, where, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, where, f"{path}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, UnknownObject):
        obj.args = _resolve(obj.args, where, path)
        obj.state = _resolve(obj.state, where, path)
    return obj


# --------------------------------------------------------------------------
# The two torch container formats
# --------------------------------------------------------------------------


def _load_zip(path: str) -> Any:
    name = os.path.basename(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{name}: looks like a torch zip checkpoint but is not a valid zip "
                         f"archive ({e}); file truncated?") from e
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ValueError(f"{name}: zip archive has {len(pkls)} top-level */data.pkl "
                             f"entries (expected 1); not a torch checkpoint")
        top = pkls[0].split("/")[0]
        names = set(zf.namelist())
        byteorder = "little"
        if f"{top}/byteorder" in names:
            byteorder = zf.read(f"{top}/byteorder").decode().strip()

        def load_storage(ref: _StorageRef) -> np.ndarray:
            entry = f"{top}/data/{ref.key}"
            if entry not in names:
                raise ValueError(f"{name}: storage {entry!r} missing from archive")
            try:
                raw = zf.read(entry)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise ValueError(f"{name}: cannot read {entry!r}: {e}") from e
            return _decode_storage(raw, ref.storage_type, ref.numel, byteorder,
                                   where=f"{name}: {entry}")

        try:
            data = zf.read(pkls[0])
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ValueError(f"{name}: cannot read {pkls[0]!r}: {e}") from e
        storages: dict[str, _StorageRef] = {}
        try:
            obj = _CheckpointUnpickler(io.BytesIO(data), storages, load_storage).load()
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{name}: cannot unpickle {pkls[0]!r}: {e!r}") from e
    return _resolve(obj, name)


def _load_legacy(path: str) -> Any:
    name = os.path.basename(path)
    with open(path, "rb") as fh:
        buf = io.BytesIO(fh.read())

    def plain_load(what: str):
        try:
            return _PlainUnpickler(buf, encoding="latin1").load()
        except Exception as e:  # noqa: BLE001 - any failure means "not this format"
            raise ValueError(f"{name}: cannot read the {what} pickle at byte {buf.tell()} "
                             f"({e!r}); not a torch checkpoint, or truncated") from e

    magic = plain_load("magic-number")
    if magic != LEGACY_MAGIC:
        raise ValueError(f"{name}: unknown format (not a zip archive and no torch legacy "
                         f"magic number; first pickle is {type(magic).__name__})")
    protocol = plain_load("protocol-version")
    if protocol != LEGACY_PROTOCOL:
        raise ValueError(f"{name}: unsupported legacy protocol version {protocol!r}")
    sys_info = plain_load("sys-info")
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise ValueError(f"{name}: big-endian legacy checkpoints are not supported")

    storages: dict[str, _StorageRef] = {}
    try:
        obj = _CheckpointUnpickler(buf, storages).load()
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{name}: cannot unpickle the checkpoint object: {e!r}; "
                         f"file truncated?") from e
    keys = plain_load("storage-keys")
    if not isinstance(keys, list):
        raise ValueError(f"{name}: storage key list is a {type(keys).__name__}")

    for key in keys:
        ref = storages.get(str(key))
        if ref is None:
            raise ValueError(f"{name}: storage key {key!r} was not referenced by the object")
        head = buf.read(8)
        if len(head) != 8:
            raise ValueError(f"{name}: file ends before storage {key!r}; truncated")
        (count,) = struct.unpack("<q", head)
        if count != ref.numel:
            raise ValueError(f"{name}: storage {key!r} has {count} elements on disk but "
                             f"{ref.numel} in the pickle")
        nbytes = count * _itemsize(ref.storage_type)
        raw = buf.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"{name}: storage {key!r} needs {nbytes} bytes, only {len(raw)} "
                             f"left; file truncated")
        ref.data = _decode_storage(raw, ref.storage_type, count, where=f"{name}: {key}")
    return _resolve(obj, name)


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Unpickle a ``torch.save`` file (zip or legacy) without torch.

    Returns the saved object with every tensor replaced by an owned,
    C-contiguous numpy array (bfloat16 widened to float32). Raises
    ``ValueError`` naming the file for unknown, corrupt or truncated input.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) < 2:
        raise ValueError(f"{name}: file is empty or too short ({len(head)} bytes)")
    if head == b"PK\x03\x04":
        return _load_zip(path)
    if head[:1] == b"\x80":  # pickle protocol >= 2 opcode
        return _load_legacy(path)
    raise ValueError(f"{name}: unknown format (starts with {head!r}; expected a zip archive "
                     f"or a pickle stream)")


# --------------------------------------------------------------------------
# Choosing the state dict
# --------------------------------------------------------------------------


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def pick_state_dict(obj: Any, key: str | None = None) -> dict[str, np.ndarray]:
    """Return the flat ``{name: array}`` mapping inside a loaded checkpoint.

    * ``key`` given: return ``obj[key]`` (``"a/b"`` descends into nested dicts).
    * ``key`` None: ``obj`` itself must already be a flat state dict; if it is
      a wrapper (DINO/MAE/iBOT style, e.g. ``{"teacher": ..., "student": ...}``)
      a ``ValueError`` lists the candidate keys so the caller chooses - we never
      guess between teacher and student.

    Parameter names are returned unchanged (no ``module.``/``backbone.``
    stripping).
    """
    if key is not None:
        cur = obj
        for part in key.split("/"):
            if not isinstance(cur, dict) or part not in cur:
                have = list(cur.keys()) if isinstance(cur, dict) else type(cur).__name__
                raise ValueError(f"checkpoint has no key {part!r} (of {key!r}); has {have}")
            cur = cur[part]
        obj = cur
    if _is_state_dict(obj):
        return dict(obj)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict of tensors, got {type(obj).__name__}")
    candidates = [k for k, v in obj.items() if isinstance(v, dict) and any(
        isinstance(x, np.ndarray) for x in v.values())]
    non_tensor = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if candidates:
        preferred = [k for k in NESTED_KEYS if k in candidates]
        raise ValueError(f"checkpoint is a wrapper, not a flat state dict; pass key= one of "
                         f"{candidates} (commonly {preferred or candidates[0]!r})")
    raise ValueError(f"dict is not a state dict: non-tensor entries {non_tensor[:10]}")


def load_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """``pick_state_dict(load_checkpoint(path), key)`` with the file name in errors."""
    obj = load_checkpoint(path)
    try:
        return pick_state_dict(obj, key)
    except ValueError as e:
        raise ValueError(f"{os.path.basename(os.fspath(path))}: {e}") from e


# --------------------------------------------------------------------------
# Other formats
# --------------------------------------------------------------------------

SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16",
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a numpy ``.npz`` archive (no pickled objects allowed)."""
    name = os.path.basename(os.fspath(path))
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{name}: not a readable .npz archive ({e})") from e


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse a ``.safetensors`` file by hand: u64 header length, JSON, bytes."""
    name = os.path.basename(os.fspath(path))
    with open(path, "rb") as fh:
        blob = fh.read()
    if len(blob) < 8:
        raise ValueError(f"{name}: {len(blob)} bytes is too short for a safetensors header")
    (hlen,) = struct.unpack("<Q", blob[:8])
    if hlen > len(blob) - 8:
        raise ValueError(f"{name}: header length {hlen} exceeds file size {len(blob)}; "
                         f"truncated or not safetensors")
    try:
        header = json.loads(blob[8:8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{name}: safetensors header is not valid JSON ({e})") from e
    data = memoryview(blob)[8 + hlen:]
    out: dict[str, np.ndarray] = {}
    for tname, info in header.items():
        if tname == "__metadata__":
            continue
        dt = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dt is None:
            raise ValueError(f"{name}: tensor {tname!r} has unsupported dtype {info.get('dtype')!r}")
        shape = tuple(int(s) for s in info["shape"])
        start, end = (int(x) for x in info["data_offsets"])
        base = np.dtype(np.uint16) if dt == "bfloat16" else np.dtype(dt)
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - start != numel * base.itemsize or end > len(data) or start < 0:
            raise ValueError(f"{name}: tensor {tname!r} byte range [{start}, {end}) does not fit "
                             f"shape {shape} x {info['dtype']} in {len(data)} data bytes; "
                             f"truncated?")
        arr = np.frombuffer(data[start:end], dtype=base.newbyteorder("<"), count=numel)
        if dt == "bfloat16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[tname] = arr.astype(arr.dtype.newbyteorder("="), copy=True).reshape(shape)
    return out


def load_any(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """Load a flat ``{name: array}`` dict, dispatching on the file extension.

    ``.pth``/``.pt``/``.bin``/``.ckpt``: torch checkpoint (``key`` as in
    :func:`pick_state_dict`); ``.npz``: numpy; ``.safetensors``: safetensors.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pth", ".pt", ".bin", ".ckpt"):
        return load_state_dict(path, key)
    if key is not None:
        raise ValueError(f"{os.path.basename(path)}: key= only applies to torch checkpoints")
    if ext == ".npz":
        return load_npz(path)
    if ext == ".safetensors":
        return load_safetensors(path)
    raise ValueError(f"{os.path.basename(path)}: unknown extension {ext!r} "
                     f"(expected .pth, .pt, .bin, .ckpt, .npz or .safetensors)")


if __name__ == "__main__":  # tiny inspector: python pth.py FILE [KEY]
    import sys

    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python pth.py CHECKPOINT [KEY]")
    sd = load_any(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
    total = 0
    for k, v in sd.items():
        total += v.size
        print(f"{k:60s} {str(v.dtype):8s} {tuple(v.shape)}")
    print(f"{len(sd)} tensors, {total:,} elements")
