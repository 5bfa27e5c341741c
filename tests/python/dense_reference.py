"""Independent check of an index's dense grids (`ingest --dense`), written from the rule in
src/dense.rs's module doc, not from its code: Pillow's bicubic resize (short side = size, long
side = its proportional length to the nearest multiple of the cell, halves up), mmseg's
slide_inference window placement, ONNX Runtime on every window, tokens averaged per cell.

    dense_reference.py INDEX_DIR MODEL.onnx [N_IMAGES]

Reads the index with numpy/pyarrow only (grids.npy as float16, images.parquet, the label PNGs)
and prints JSON: per checked image the largest absolute difference and the grid's largest
magnitude, and whether every stored label map equals the dataset's own annotation."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
from PIL import Image


def starts(length, win, stride):
    n = max(length - win + stride - 1, 0) // stride + 1
    return [min(i * stride, length - win) for i in range(n)]


def main():
    index = Path(sys.argv[1])
    model = sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    manifest = json.loads((index / "manifest.json").read_text())
    d = manifest["dense"]
    spec = manifest["encoder"]["spec"]
    root = Path(manifest["dataset"]["path"])
    size, stride, cell = d["size"], d["stride"], d["cell"]
    wh, ww = d["window"]
    out_name = spec["outputs"]["patch_tokens"] if d["source"] == "patch_tokens" else spec["outputs"]["feature_map"]
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    # Schema 3: the files live in the segment (the tests' indexes have one).
    if manifest.get("segments"):
        assert len(manifest["segments"]) == 1, "one segment expected"
        index = index / "segments" / manifest["segments"][0]["name"]
    grids = np.load(index / "dense/grids.npy", mmap_mode="r")
    assert grids.dtype == np.float16 and grids.shape[1] == d["dim"], (grids.dtype, grids.shape)
    rows = pq.read_table(index / "dense/images.parquet").to_pylist()
    mean = np.array(spec["mean"], np.float32)[:, None, None]
    std = np.array(spec["std"], np.float32)[:, None, None]
    report = {"images": [], "labels_equal": True, "rows": len(rows), "cells": int(grids.shape[0])}
    for r in rows:
        # Label maps: the index's copy equals the dataset's annotation (sizes agree here).
        for key, ann in (("part_labels", "part_annotation"), ("object_labels", "object_annotation")):
            if r[key] is not None and r[ann] is not None and r[ann].endswith(".png"):
                mine = np.array(Image.open(index / r[key]))
                theirs = np.array(Image.open(root / r[ann]))
                if mine.shape != theirs.shape or (mine != theirs).any():
                    report["labels_equal"] = False
    for r in rows[:count]:
        img = Image.open(root / r["image"]).convert("RGB")
        w, h = img.size
        assert (w, h) == (r["width"], r["height"])
        def long(l, s):
            return max(int(math.floor(size * l / s / cell + 0.5)) * cell, size)
        rw, rh = (size, long(h, w)) if w <= h else (long(w, h), size)
        assert (rh // cell, rw // cell) == (r["grid_rows"], r["grid_cols"]), (rw, rh, r)
        arr = np.asarray(img.resize((rw, rh), Image.BICUBIC), np.float32) / 255.0
        chw = (arr.transpose(2, 0, 1) - mean) / std
        acc = np.zeros((rh // cell, rw // cell, d["dim"]), np.float64)
        cnt = np.zeros((rh // cell, rw // cell, 1))
        for y in starts(rh, wh, stride):
            for x in starts(rw, ww, stride):
                win = chw[None, :, y:y + wh, x:x + ww].astype(np.float32)
                t = sess.run([out_name], {spec["input"]: win})[0][0]
                if d["source"] == "feature_map":
                    t = t.transpose(1, 2, 0)
                else:
                    t = t.reshape(wh // cell, ww // cell, -1)
                acc[y // cell:(y + wh) // cell, x // cell:(x + ww) // cell] += t
                cnt[y // cell:(y + wh) // cell, x // cell:(x + ww) // cell] += 1
        ref = acc / cnt
        off = r["row_offset"]
        got = np.asarray(grids[off:off + ref.shape[0] * ref.shape[1]], np.float64).reshape(ref.shape)
        report["images"].append({
            "image": r["image"],
            "max_abs_diff": float(np.abs(got - ref).max()),
            "max_abs": float(np.abs(ref).max()),
        })
    print(json.dumps(report))


if __name__ == "__main__":
    main()
