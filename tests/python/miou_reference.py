"""An independent numpy implementation of mmseg's segmentation metrics and of the logits
upsampling before them, for checking `partlens::eval::miou`.

Metrics (mmseg `intersect_and_union` / `total_area_to_metrics`, 1.x `IoUMetric`): per image,
pixels whose label is 255 are dropped (prediction included); intersection, prediction and label
areas are class histograms (np.bincount here, torch.histc there); union = pred + label -
intersection; all four are summed over the images. IoU = I / U and Acc = I / label area per
class (NaN where the divisor is 0), aAcc = sum I / sum label; mIoU and mAcc are np.nanmean of
the per-class values. Reported in percent, unrounded (mmseg prints them rounded to 2 decimals);
NaN is printed as null. Counts are exact integers here (mmseg 1.x sums float32 histograms).
reduce_zero_label is mmseg's LoadAnnotations: label 0 becomes 255 (ignored), others minus 1.
Unlike mmseg, a label that is neither 255 nor below nclass after reduction, or a prediction
not below nclass, is an error (mmseg's histc silently drops them).

Upsampling: PyTorch's F.interpolate(mode="bilinear", align_corners=False) with an output
size (no scale factor), float32, in the order of its generic CPU kernel
(upsample_generic_Nd_kernel_impl / Interpolate<2>): per axis scale = float32(in) / out (0 when
out == 1), src = float32(float64(scale) * (dst + 0.5) - 0.5), negative src clamped to 0,
i0 = min(floor(src), in - 1), i1 = i0 + 1 unless i0 is the last, l1 = clamp(src - i0, 0, 1),
l0 = 1 - l1 (identity when in == out); value = (v[y0,x0] * wx0 + v[y0,x1] * wx1) * wy0 +
(v[y1,x0] * wx0 + v[y1,x1] * wx1) * wy1, every operation rounded to float32. Then argmax over
classes, first maximum winning (NaN counts as the maximum, as in torch.argmax).

CLI:
    python miou_reference.py --pred DIR --gt DIR --nclass C [--reduce-zero-label]
        Reads the same-named 8-bit PNGs (mode L or P, raw indices) of both folders (the two
        must hold the same names) and prints JSON {miou, aacc, macc, iou: [...], acc: [...]}.
        Prediction PNGs hold the dataset's numbering, as mmseg writes them: with
        --reduce-zero-label a pixel of class k (0-based, reduced) is stored as k + 1, so 1 is
        subtracted on reading (a 0 there is an error); without it they are stored as is.
    python miou_reference.py --cases
        Prints the numbers the Rust unit tests embed (metrics case, upsampled class maps and
        float32 bits).
"""

import argparse
import json
import os
import sys

import numpy as np

IGNORE = 255


def reduce_zero_label(label):
    """mmseg's reduce_zero_label on a uint8 map: 0 -> 255, 255 stays, others - 1."""
    out = label.astype(np.int64) - 1
    out[label == 0] = IGNORE
    out[label == IGNORE] = IGNORE
    return out


def intersect_and_union(pred, label, nclass, reduce):
    """(intersect, union, pred_area, label_area) int64 arrays of one image; raises ValueError
    on values mmseg would drop silently."""
    pred = np.asarray(pred).astype(np.int64).ravel()
    label = np.asarray(label).ravel()
    if pred.shape != label.shape:
        raise ValueError(f"prediction has {pred.size} pixels, label map {label.size}")
    label = reduce_zero_label(label) if reduce else label.astype(np.int64)
    bad = (label != IGNORE) & (label >= nclass)
    if bad.any():
        raise ValueError(f"label value {label[bad][0]} (reduced) is not one of {nclass} classes")
    wrong = (pred >= nclass) | (pred < 0)
    if wrong.any():
        raise ValueError(f"prediction value {pred[wrong][0]} (reduced) is not one of {nclass} classes")
    keep = label != IGNORE
    pred, label = pred[keep], label[keep]
    area_i = np.bincount(pred[pred == label], minlength=nclass)
    area_p = np.bincount(pred, minlength=nclass)
    area_l = np.bincount(label, minlength=nclass)
    return area_i, area_p + area_l - area_i, area_p, area_l


def total_area_to_metrics(area_i, area_u, area_l):
    """Percentages as mmseg computes them (nanmean of the per-class fractions, times 100)."""
    area_i, area_u, area_l = (np.asarray(a, dtype=np.float64) for a in (area_i, area_u, area_l))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = area_i / area_u
        acc = area_i / area_l
        aacc = area_i.sum() / area_l.sum()

    def nanmean(a):
        return float(np.mean(a[~np.isnan(a)])) if (~np.isnan(a)).any() else float("nan")

    return {
        "miou": nanmean(iou) * 100,
        "aacc": float(aacc) * 100,
        "macc": nanmean(acc) * 100,
        "iou": [float(x) * 100 for x in iou],
        "acc": [float(x) * 100 for x in acc],
    }


def evaluate(pairs, nclass, reduce):
    """Metrics and summed areas of (name, pred, label) triples; ValueError names the image."""
    total = [np.zeros(nclass, dtype=np.int64) for _ in range(4)]
    for name, pred, label in pairs:
        try:
            areas = intersect_and_union(pred, label, nclass, reduce)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        for t, a in zip(total, areas):
            t += a
    out = total_area_to_metrics(total[0], total[1], total[3])
    out["intersect"], out["union"], out["pred"], out["label"] = (t.tolist() for t in total)
    return out


def axis_weights(n_in, n_out):
    """Per output index: i0, i1 (int64) and l0, l1 (float32), as PyTorch computes them."""
    d = np.arange(n_out)
    if n_in == n_out:
        return d, d, np.ones(n_out, np.float32), np.zeros(n_out, np.float32)
    scale = np.float32(n_in) / np.float32(n_out) if n_out > 1 else np.float32(0)
    src = (np.float64(scale) * (d + 0.5) - 0.5).astype(np.float32)
    src = np.where(src < 0, np.float32(0), src).astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, (np.float32(1) - l1).astype(np.float32), l1


def upsample_bilinear(logits, out_h, out_w):
    """logits: (gh, gw, c) float32 -> (out_h, out_w, c) float32, generic-kernel order."""
    v = np.asarray(logits, dtype=np.float32)
    gh, gw, _ = v.shape
    y0, y1, wy0, wy1 = axis_weights(gh, out_h)
    x0, x1, wx0, wx1 = axis_weights(gw, out_w)

    def horizontal(rows):
        r = v[rows]  # (out_h, gw, c)
        return r[:, x0, :] * wx0[None, :, None] + r[:, x1, :] * wx1[None, :, None]

    return horizontal(y0) * wy0[:, None, None] + horizontal(y1) * wy1[:, None, None]


def upsample_argmax(logits, out_h, out_w):
    return np.argmax(upsample_bilinear(logits, out_h, out_w), axis=2).astype(np.uint8)


def read_png(path):
    from PIL import Image

    im = Image.open(path)
    if im.mode not in ("L", "P"):
        raise ValueError(f"{path}: mode {im.mode}, not an 8-bit label map")
    return np.asarray(im)


def cli_dirs(args):
    names = sorted(n for n in os.listdir(args.gt) if n.endswith(".png"))
    preds = sorted(n for n in os.listdir(args.pred) if n.endswith(".png"))
    if names != preds:
        sys.exit(f"the folders hold different PNGs: {sorted(set(names) ^ set(preds))[:5]}")
    pairs = []
    for n in names:
        pred = read_png(os.path.join(args.pred, n)).astype(np.int64)
        if args.reduce_zero_label:
            if (pred == 0).any():
                sys.exit(f"{n}: prediction value 0 with --reduce-zero-label (classes are 1..)")
            pred = pred - 1
        pairs.append((n, pred, read_png(os.path.join(args.gt, n))))
    try:
        res = evaluate(pairs, args.nclass, args.reduce_zero_label)
    except ValueError as e:
        sys.exit(str(e))
    print(to_json({k: res[k] for k in ("miou", "aacc", "macc", "iou", "acc")}))


def to_json(obj):
    """JSON with NaN as null."""

    def clean(v):
        if isinstance(v, float) and np.isnan(v):
            return None
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return json.dumps(clean(obj))


# The unit tests' cases (src/eval/miou.rs), in (rows, cols) order.
METRIC_CASE = [
    (  # image A: labels 1, 2 -> classes 0, 1; 0 and 255 ignored; pred 3 only where ignored
        [[0, 0, 1, 1, 1], [0, 4, 1, 1, 1], [3, 3, 1, 0, 2], [1, 2, 0, 0, 3]],
        [[1, 1, 1, 2, 2], [1, 1, 2, 2, 2], [0, 0, 2, 2, 255], [0, 0, 1, 1, 255]],
    ),
    (  # image B
        [[2, 2, 0, 3, 3], [2, 4, 1, 2, 3], [0, 1, 1, 1, 4], [0, 0, 0, 2, 3]],
        [[3, 3, 3, 255, 255], [3, 3, 2, 2, 0], [1, 1, 2, 2, 0], [1, 1, 1, 0, 0]],
    ),
    ([[4, 4, 1], [0, 3, 2]], [[0, 255, 0], [0, 0, 255]]),  # image C: all ignored
]


def generated_logits(gh, gw, c):
    """The deterministic logits the Rust test builds: ((i * 7919) % 1000) / 1000 - 0.5."""
    i = np.arange(gh * gw * c, dtype=np.int64)
    return (((i * 7919) % 1000).astype(np.float32) / np.float32(1000) - np.float32(0.5)).reshape(
        gh, gw, c
    )


def cases():
    res = evaluate(
        [(f"image {i}", np.array(p, np.uint8), np.array(l, np.uint8))
         for i, (p, l) in enumerate(METRIC_CASE)],
        5,
        True,
    )
    print("metrics:", to_json(res))
    small = np.array(
        [
            [[0.9, 0.1, -0.5], [0.1, 0.8, 0.3], [-0.3, 0.2, 0.9]],
            [[0.2, 0.7, 0.6], [0.5, 0.4, 0.45], [1.1, -0.2, 0.3]],
        ],
        np.float32,
    )
    up = upsample_bilinear(small, 5, 7)
    print("small 2x3x3 -> 5x7 classes:", upsample_argmax(small, 5, 7).tolist())
    print("small bits:", [hex(b) for b in up.view(np.uint32).ravel().tolist()])
    # Classes 0 and 1 equal (ties: 0 wins), class 2 the transpose of class 0: equal to it in
    # exact arithmetic on the diagonal, so float32 rounding order decides there (the maps of
    # the y-first order, of the channels-last kernel's weight products, and of float64 differ).
    tie = np.array(
        [[[0.02, 0.02, 0.02], [0.9, 0.9, -0.71]], [[-0.71, -0.71, 0.9], [0.9, 0.9, 0.9]]],
        np.float32,
    )
    print("tie 2x2x3 -> 6x6 classes:", upsample_argmax(tie, 6, 6).tolist())
    one = np.array([[[0.25, 0.75, 0.75, -1.0]]], np.float32)
    print("1x1 -> 3x4 classes:", upsample_argmax(one, 3, 4).tolist())
    down = generated_logits(4, 5, 3)
    print("down 4x5x3 -> 2x3 classes:", upsample_argmax(down, 2, 3).tolist())
    print("down 4x5x3 -> 1x1 classes:", upsample_argmax(down, 1, 1).tolist())
    print("down 4x5x3 -> 3x1 classes:", upsample_argmax(down, 3, 1).tolist())
    big = upsample_argmax(generated_logits(7, 9, 6), 50, 37).astype(np.int64)
    pos = np.arange(big.size, dtype=np.int64)
    print(
        "gen 7x9x6 -> 50x37: histogram",
        np.bincount(big.ravel(), minlength=6).tolist(),
        "checksum",
        int(((pos + 1) * big.ravel()).sum()),
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pred")
    p.add_argument("--gt")
    p.add_argument("--nclass", type=int)
    p.add_argument("--reduce-zero-label", action="store_true")
    p.add_argument("--cases", action="store_true")
    args = p.parse_args()
    if args.cases:
        cases()
    elif args.pred and args.gt and args.nclass:
        cli_dirs(args)
    else:
        p.error("give --pred, --gt and --nclass, or --cases")


if __name__ == "__main__":
    main()
