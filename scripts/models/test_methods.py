"""End-to-end test of ``vit.py --method`` against the independent reference.

For each method of ``official.py``: build its published checkpoint layout
(tiny, random), write it as a real torch zip file (``test_pth.save_zip``, no
torch needed), convert it with the converter CLI, run the ONNX with
onnxruntime and compare ``cls`` / ``patch_tokens`` / ``projection`` with
``official.reference_forward`` (max abs diff <= 1e-4); check the
``partlens.spec`` metadata; then check that broken or foreign layouts are
refused with the offending key named on stderr.

Run: ``python scripts/models/test_methods.py [--only METHOD ...] [--no-variants]``.
Prints one line per check, then "N passed, M failed"; exits 1 on failure.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import official  # noqa: E402
from test_pth import FakeStorage, FakeTensor, save_zip  # noqa: E402

VIT = os.path.join(HERE, "vit.py")
HEADS, IMG, BATCH, TOL = 2, 48, 2, 1e-4

# (c) foreign layouts: a checkpoint of method A converted with --method B. The
# pairs differ in wrapper key or in encoder/attention parameters, so no
# correct converter can accept them (DINO vs iBOT full checkpoints and an MAE
# encoder file read as DeiT are deliberately not used: their encoders are
# the same architecture).
FOREIGN = {"deit": "beit", "mocov3": "dino", "dino": "mocov3", "beit": "mae",
           "mae": "cae", "cae": "beit", "ibot": "deit"}

# Extra published layouts converted like the main one: (method, variant, with_head).
EXTRA = [("dino", "backbone", True), ("ibot", "teacher_backbone", True),
         ("mae", "pretrain", True), ("cae", "atten4vis", True),
         ("mocov3", "full", False), ("deit", "model", False)]


# --------------------------------------------------------------------------
# Writing checkpoints
# --------------------------------------------------------------------------


def to_fake(obj, memo=None):
    """Replace numpy arrays by test_pth fake tensors (one storage per array;
    an array object used twice - iBOT's shared last_layer2 - shares it)."""
    memo = {} if memo is None else memo
    if isinstance(obj, np.ndarray):
        if id(obj) not in memo:
            arr = np.array(obj, order="C", copy=True)   # (ascontiguousarray makes 0-d 1-d)
            stride, acc = [], 1
            for s in reversed(arr.shape):
                stride.insert(0, acc)
                acc *= s
            memo[id(obj)] = FakeTensor(FakeStorage(str(len(memo)), arr.reshape(-1)), 0,
                                       arr.shape, stride)
        return memo[id(obj)]
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, to_fake(v, memo)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: to_fake(v, memo) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_fake(v, memo) for v in obj]
    return obj


def write(ckpt, path):
    save_zip(to_fake(ckpt), path)


def convert(method, weights, out):
    cmd = [sys.executable, VIT, "--method", method, "--weights", weights,
           "--heads", str(HEADS), "--img-size", str(IMG), "--out", out]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def state_dict(method, ckpt):
    loc = official.locate(method, ckpt)
    return (ckpt[loc["wrapper"]] if loc["wrapper"] else ckpt), loc


def names_key(text, key):
    """``key`` appears in ``text`` as a whole name (not inside a longer one,
    e.g. 'backbone.x' must not match 'module.backbone.x')."""
    return re.search(r"(?<![\w.])" + re.escape(key) + r"(?![\w.])", text) is not None


def _tail(text, n=300):
    text = text.strip().replace("\n", " | ")
    return text[-n:]


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


class Results:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"PASS {name}" + (f" ({detail})" if detail else ""))
        else:
            self.failed += 1
            print(f"FAIL {name}: {detail}")
        sys.stdout.flush()


def check_conversion(res, tmp, method, variant=None, with_head=True):
    """Convert one layout and compare the ONNX outputs with the reference."""
    import onnx
    import onnxruntime as ort

    label = method + (f"/{variant}" if variant else "") + ("" if with_head else "/no-head")
    ckpt = official.random_checkpoint(method, variant=variant, with_head=with_head)
    path = os.path.join(tmp, label.replace("/", "_") + ".pth")
    out = path[:-4] + ".onnx"
    write(ckpt, path)
    p = convert(method, path, out)
    res.check(f"{label}: converts", p.returncode == 0,
              "" if p.returncode == 0 else f"exit {p.returncode}: {_tail(p.stderr)}")
    if p.returncode != 0:
        return
    pixels = np.random.default_rng(7).standard_normal((BATCH, 3, IMG, IMG)).astype(np.float32)
    want = official.reference_forward(method, ckpt, pixels, heads=HEADS)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: pixels})))
    expect = ["cls", "patch_tokens"] + (["projection"] if "projection" in want else [])
    for name in expect:
        if name not in got:
            res.check(f"{label}: {name}", False, f"no output {name!r}; outputs {names}")
            continue
        g, w = got[name], want[name]
        if g.shape != w.shape:
            res.check(f"{label}: {name}", False, f"shape {g.shape}, want {w.shape}")
            continue
        err = float(np.abs(g.astype(np.float64) - w).max())
        res.check(f"{label}: {name}", err <= TOL, f"max abs diff {err:.2e}")
    if "projection" not in want:
        why = ("method has no projection head" if "projection" not in official.FEATURES[method]
               else "checkpoint has no head")
        res.check(f"{label}: no projection output", "projection" not in names,
                  f"{why}, outputs {names}")
    props = {q.key: q.value for q in onnx.load(out).metadata_props}
    try:
        spec = json.loads(props["partlens.spec"])
    except (KeyError, ValueError) as e:
        res.check(f"{label}: spec metadata", False, f"partlens.spec unreadable: {e!r}")
        return
    mean, std = official.NORMALIZATION[method]
    ok = (spec.get("method") == method
          and np.allclose(spec.get("mean", [0] * 3), mean, atol=1e-9)
          and np.allclose(spec.get("std", [0] * 3), std, atol=1e-9))
    res.check(f"{label}: spec metadata", ok,
              f"method={spec.get('method')!r} mean={spec.get('mean')} std={spec.get('std')}")


def expect_refusal(res, tmp, label, method, ckpt, keys):
    """Converting ``ckpt`` with ``--method method`` must fail naming one of ``keys``."""
    path = os.path.join(tmp, re.sub(r"\W+", "_", label) + ".pth")
    write(ckpt, path)
    p = convert(method, path, path[:-4] + ".onnx")
    named = [k for k in keys if names_key(p.stderr, k)]
    if p.returncode == 0:
        res.check(label, False, "converter accepted it (exit 0)")
    else:
        shown = keys if len(keys) <= 4 else keys[:4] + ["..."]
        res.check(label, bool(named),
                  f"names {named[0]!r}" if named else
                  f"exit {p.returncode} but stderr names none of {shown}: {_tail(p.stderr)}")


def check_refusals(res, tmp, method):
    base = official.random_checkpoint(method)
    sd, loc = state_dict(method, base)
    pre, depth = loc["prefix"], 2

    # (a) a required encoder key deleted
    ck = copy.copy(base)
    key = f"{pre}blocks.{depth - 1}.norm2.weight"
    sub = collections.OrderedDict((k, v) for k, v in sd.items() if k != key)
    if loc["wrapper"]:
        ck[loc["wrapper"]] = sub
    else:
        ck = sub
    expect_refusal(res, tmp, f"{method}: missing {key} refused", method, ck, [key])

    # (b) a required tensor with a wrong shape
    ck = copy.copy(base)
    key = pre + ("blocks.0.attn.q_bias" if method in ("beit", "cae") else "blocks.0.attn.qkv.bias")
    sub = collections.OrderedDict(sd)
    sub[key] = np.zeros(sd[key].shape[0] + 1, np.float32)
    if loc["wrapper"]:
        ck[loc["wrapper"]] = sub
    else:
        ck = sub
    expect_refusal(res, tmp, f"{method}: wrong-shaped {key} refused", method, ck, [key])

    # (c) another method's checkpoint
    other = FOREIGN[method]
    theirs = official.random_checkpoint(other)
    _, oloc = state_dict(other, theirs)
    if oloc["wrapper"] and oloc["wrapper"] not in base:
        keys = [oloc["wrapper"]]
    else:
        mine = base[oloc["wrapper"]] if oloc["wrapper"] else base
        want = theirs[oloc["wrapper"]] if oloc["wrapper"] else theirs
        keys = sorted(set(want) ^ set(mine)) + sorted(
            k for k in set(want) & set(mine) if want[k].shape != mine[k].shape)
    expect_refusal(res, tmp, f"{method} checkpoint with --method {other} refused", other,
                   base, keys)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", choices=official.METHODS, metavar="METHOD",
                    help="run only these methods")
    ap.add_argument("--no-variants", action="store_true",
                    help="skip the extra published layouts (backbone-only files, ...)")
    args = ap.parse_args(argv)
    methods = args.only or list(official.METHODS)
    res = Results()
    with tempfile.TemporaryDirectory(prefix="partlens-methods-") as tmp:
        for m in methods:
            check_conversion(res, tmp, m)
            check_refusals(res, tmp, m)
        if not args.no_variants:
            for m, variant, with_head in EXTRA:
                if m in methods:
                    check_conversion(res, tmp, m, variant, with_head)
    print(f"{res.passed} passed, {res.failed} failed")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
