#!/usr/bin/env python3
"""Count the expected part / object regions of the bundled sample datasets.

Developer tool (numpy, scipy, pillow). It deliberately shares no code with the
converters or with partlens: it reads the files partlens reads and writes
data/samples/EXPECTED.json, against which the Rust region extractors are tested.

Label maps (mmseg layout: ann/<split>/*.png for parts, obj/<split>/*.png for
objects; datasets `lip`, `pascal_part`): a region is a 4-connected component
(pixels sharing an edge; diagonal neighbours are NOT connected) of pixels
carrying the same label k, with k != 0 (background) and k != 255 (ignore),
counted separately per image. Components are computed with scipy.ndimage.label;
--cross-check recomputes every count with a plain-Python flood fill and fails on
any difference.

Pascal-Part as released (X.jpg + X.mat; `pascal_part_raw`, `pascal_part_instances`):
a region is one annotated instance, read with scipy.io.loadmat. Each
anno.objects(i) is one object region (its mask; class = the VOC class of
class_ind) and each of its parts(j) one part region (its mask, however many
pieces it has; class = "<objects(i).class>/<part_name without a trailing _N>"),
whatever other masks cover. Its instance number is i - 1 (0-based, file order)
for the object and its parts alike. A mask without pixels is no region. The
per-image list `regions` (area >= 1) is in the order partlens emits them: all
part regions (objects in file order, parts in file order), then all object
regions.

Either way a region counts for threshold A when its pixel area is >= A;
A in {1, 64, 256}.

Usage:
  python scripts/data/count_regions.py [--samples data/samples] [--cross-check]
"""
import argparse
import json
import os
import sys
from collections import deque

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.io import loadmat

MIN_AREAS = (1, 64, 256)
IGNORE = 255
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)  # cross-shaped 3x3
KINDS = (("part", "ann"), ("object", "obj"))
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def read_label_map(path):
    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{path}: mode {im.mode}, expected L or P")
        arr = np.array(im)  # for mode P these are the palette indices
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"{path}: {arr.dtype} {arr.shape}")
    return arr


def region_areas_scipy(label_map):
    """Areas of all regions, as a list of (class, area)."""
    out = []
    for k in np.unique(label_map):
        k = int(k)
        if k in (0, IGNORE):
            continue
        comp, n = ndimage.label(label_map == k, structure=FOUR_CONNECTED)
        areas = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        out.extend((k, int(a)) for a in areas)
    return out


def region_areas_floodfill(label_map):
    """Same as region_areas_scipy, by a plain breadth-first flood fill."""
    h, w = label_map.shape
    lab = label_map.tolist()
    seen = [[False] * w for _ in range(h)]
    out = []
    for y0 in range(h):
        for x0 in range(w):
            k = lab[y0][x0]
            if seen[y0][x0] or k == 0 or k == IGNORE:
                continue
            seen[y0][x0] = True
            queue = deque([(y0, x0)])
            area = 0
            while queue:
                y, x = queue.popleft()
                area += 1
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny][nx] and lab[ny][nx] == k:
                        seen[ny][nx] = True
                        queue.append((ny, nx))
            out.append((k, area))
    return out


def thresholds(areas):
    return {str(a): sum(1 for _, s in areas if s >= a) for a in MIN_AREAS}


def read_names(path):
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def count_dataset(root, cross_check):
    result = {"images": 0, "splits": {}, "per_image": {}}
    totals = {}
    present_all = {}
    for kind, sub in KINDS:
        if not os.path.isdir(os.path.join(root, sub)):
            continue
        names_file = "classes.txt" if kind == "part" else "object_classes.txt"
        n_names = len(read_names(os.path.join(root, names_file)))
        totals[kind] = []
        present_all[kind] = set()
        for split in sorted(os.listdir(os.path.join(root, sub))):
            split_areas = []
            split_present = set()
            files = sorted(f for f in os.listdir(os.path.join(root, sub, split)) if f.endswith(".png"))
            for fname in files:
                stem = fname[:-4]
                label_map = read_label_map(os.path.join(root, sub, split, fname))
                with Image.open(os.path.join(root, "img", split, stem + ".jpg")) as im:
                    if im.size != (label_map.shape[1], label_map.shape[0]):
                        raise ValueError(f"{root}/{sub}/{split}/{fname}: size differs from its image")
                bad = [int(v) for v in np.unique(label_map) if v != IGNORE and v >= n_names]
                if bad:
                    raise ValueError(f"{root}/{sub}/{split}/{fname}: labels {bad} have no name in {names_file}")
                areas = region_areas_scipy(label_map)
                if cross_check:
                    slow = region_areas_floodfill(label_map)
                    if sorted(slow) != sorted(areas):
                        raise AssertionError(f"{root}/{sub}/{split}/{fname}: scipy and flood fill disagree")
                split_areas += areas
                present = {k for k, _ in areas}
                split_present |= present
                per = result["per_image"].setdefault(f"{split}/{stem}", {})
                per[kind] = thresholds(areas)
                per[kind + "_classes_present"] = len(present)
            s = result["splits"].setdefault(split, {})
            s["images"] = len(files)
            s[kind] = thresholds(split_areas)
            s[kind + "_classes_present"] = len(split_present)
            totals[kind] += split_areas
            present_all[kind] |= split_present
        result[kind] = thresholds(totals[kind])
        result[kind + "_classes_present"] = len(present_all[kind])
        result[kind + "_classes_listed"] = n_names - 1  # without background
    result["images"] = len(result["per_image"])
    return result


def mat_text(v):
    """A MATLAB char array as loadmat returns it (array(['head'])) -> 'head'."""
    v = np.asarray(v)
    return str(v.reshape(-1)[0]) if v.size else ""


def mat_structs(v):
    """The elements of a 1xN (or empty) struct array, in file order."""
    v = np.asarray(v)
    return list(v.reshape(-1, order="F")) if v.size else []


def drop_suffix(name):
    """'wheel_3' -> 'wheel'; a name without a numeric _N suffix is unchanged."""
    base, sep, n = name.rpartition("_")
    return base if sep and n.isdigit() else name


def mask_region(mask, size, what):
    """(area, [x0, y0, x1, y1]) of the non-zero pixels of an H x W mask; None when empty."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or (mask.shape[1], mask.shape[0]) != size:
        raise ValueError(f"{what}: mask {mask.shape} does not match the image {size}")
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return int(len(ys)), [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def count_pascal_part_mat(root):
    """Instance regions of a folder of Pascal-Part X.jpg + X.mat (see the module doc)."""
    result = {"images": 0, "per_image": {}}
    all_parts, all_objects = [], []
    part_names, object_names = set(), set()
    stems = sorted(f[:-4] for f in os.listdir(root) if f.endswith(".mat"))
    for stem in stems:
        with Image.open(os.path.join(root, stem + ".jpg")) as im:
            size = im.size
        anno = loadmat(os.path.join(root, stem + ".mat"))["anno"][0, 0]
        parts, objects = [], []
        annotated = {"objects": 0, "objects_with_pixels": 0, "part_masks": 0, "part_masks_with_pixels": 0}
        for i, obj in enumerate(mat_structs(anno["objects"])):
            class_ind = int(np.asarray(obj["class_ind"]).reshape(-1)[0])
            voc = VOC_CLASSES[class_ind - 1]
            annotated["objects"] += 1
            r = mask_region(obj["mask"], size, f"{stem} objects({i + 1})")
            if r:
                annotated["objects_with_pixels"] += 1
                objects.append(("object", voc, voc, i) + r)
            for j, part in enumerate(mat_structs(obj["parts"])):
                name = mat_text(obj["class"]) + "/" + drop_suffix(mat_text(part["part_name"]))
                annotated["part_masks"] += 1
                r = mask_region(part["mask"], size, f"{stem} objects({i + 1}).parts({j + 1})")
                if r:
                    annotated["part_masks_with_pixels"] += 1
                    parts.append(("part", name, voc, i) + r)
        regions = parts + objects
        result["per_image"][stem] = {
            "annotated": annotated,
            "part": thresholds([(r[1], r[4]) for r in parts]),
            "object": thresholds([(r[1], r[4]) for r in objects]),
            # "kind class object instance area x0,y0,x1,y1" (class names hold no spaces)
            "regions": [f"{k} {c} {o} {i} {a} {b[0]},{b[1]},{b[2]},{b[3]}" for k, c, o, i, a, b in regions],
        }
        all_parts += [(r[1], r[4]) for r in parts]
        all_objects += [(r[1], r[4]) for r in objects]
        part_names |= {r[1] for r in parts}
        object_names |= {r[1] for r in objects}
    result["images"] = len(stems)
    result["part"] = thresholds(all_parts)
    result["object"] = thresholds(all_objects)
    result["part_classes_present"] = len(part_names)
    result["object_classes_present"] = len(object_names)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", default="data/samples")
    ap.add_argument("--datasets", nargs="+", default=["lip", "pascal_part", "pascal_part_raw", "pascal_part_instances"])
    ap.add_argument("--cross-check", action="store_true", help="verify every count with a plain flood fill")
    ap.add_argument("--output", default=None, help="default: <samples>/EXPECTED.json")
    args = ap.parse_args(argv)

    expected = {
        "_about": {
            "generated_by": "scripts/data/count_regions.py",
            "region": "4-connected component of equal label k per image, k != 0 and k != 255",
            "region_pascal_part_raw": "one annotated instance: an object's mask, or one part mask of it",
            "connectivity": 4,
            "min_areas": list(MIN_AREAS),
            "counts": "number of regions with area >= A, keyed by A",
        }
    }
    for name in args.datasets:
        root = os.path.join(args.samples, name)
        if any(f.endswith(".mat") for f in os.listdir(root)):
            expected[name] = count_pascal_part_mat(root)
        else:
            expected[name] = count_dataset(root, args.cross_check)
    out = args.output or os.path.join(args.samples, "EXPECTED.json")
    with open(out, "w", newline="\n") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    for name in args.datasets:
        e = expected[name]
        print(name, {k: e[k] for k in ("part", "object") if k in e})
    print("wrote", out, "(cross-checked)" if args.cross_check else "", file=sys.stderr)


if __name__ == "__main__":
    main()
