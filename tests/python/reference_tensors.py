"""Preprocessing the paper's way, written independently of partlens: PIL crop (black outside
the image) -> torchvision Resize(short side, bicubic) -> CenterCrop -> ToTensor -> Normalize,
and plain PIL crop + resize for arbitrary output sizes.

    python reference_tensors.py --cases cases.json --root DIR --out out.bin

cases.json: a list of
  {"image": "x.jpg", "box": [x0, y0, x1, y1], "tensor": [H, W], "mean": [...], "std": [...]}
      -> float32 CHW tensor, H x W
  {"image": "x.jpg", "box": [x0, y0, x1, y1], "resize": [w, h]}
      -> uint8 RGB pixels of img.crop(box).resize((w, h), Image.BICUBIC), h x w x 3
out.bin: every case's bytes, in order (the Rust test knows each one's length).
"""

import argparse
import json
import os

import numpy as np
from PIL import Image


def resize_short(img, size):
    """torchvision.transforms.Resize(size), int size, on a PIL image."""
    w, h = img.size
    if w <= h:
        ow, oh = size, int(size * h / w)
    else:
        ow, oh = int(size * w / h), size
    if (ow, oh) == (w, h):
        return img
    return img.resize((ow, oh), Image.BICUBIC)


def center_crop(img, th, tw):
    """torchvision.transforms.CenterCrop((th, tw)), padding with black when too small."""
    w, h = img.size
    if w < tw or h < th:
        pad_l, pad_t = (tw - w) // 2 if w < tw else 0, (th - h) // 2 if h < th else 0
        pad_r, pad_b = (tw - w + 1) // 2 if w < tw else 0, (th - h + 1) // 2 if h < th else 0
        canvas = Image.new("RGB", (w + pad_l + pad_r, h + pad_t + pad_b))
        canvas.paste(img, (pad_l, pad_t))
        img = canvas
        w, h = img.size
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    images = {}
    with open(a.out, "wb") as out:
        for c in json.load(open(a.cases)):
            if c["image"] not in images:
                images[c["image"]] = Image.open(os.path.join(a.root, c["image"])).convert("RGB")
            img = images[c["image"]].crop(tuple(c["box"]))
            if "resize" in c:
                out.write(img.resize(tuple(c["resize"]), Image.BICUBIC).tobytes())
                continue
            th, tw = c["tensor"]
            img = center_crop(resize_short(img, min(th, tw)), th, tw)
            x = np.asarray(img, dtype=np.float32) / 255.0
            x = (x - np.array(c["mean"], dtype=np.float32)) / np.array(c["std"], dtype=np.float32)
            out.write(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32).tobytes())


if __name__ == "__main__":
    main()
