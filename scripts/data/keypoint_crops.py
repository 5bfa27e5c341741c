#!/usr/bin/env python3
"""Reference implementation of the paper's keypoint part-crop rule.

Developer tool (standard library only; --cross-check also uses numpy and scipy).
It shares no code with partlens. It reads the keypoint samples in
data/samples/keypoints/ and writes data/samples/keypoints/EXPECTED.json. The Rust
keypoint reader is tested against that file.

The rule (Zhu et al., TMLR 2023, part retrieval; as the seed code does it)
-----------------------------------------------------------------------------
COCO-style JSON (`categories[0].keypoints` names the keypoints):

1. Images are visited in ascending image id. Within an image, annotations are
   visited in the order they appear in the JSON's `annotations` list.
   Within an annotation, keypoints are visited in ascending keypoint index
   (the order of `categories[0].keypoints`), NOT in the order the chosen
   classes were given.
2. For each annotation (person), keep its keypoints whose class is chosen and
   whose visibility v == 2. A person with fewer than two kept keypoints is
   skipped: its keypoints take no part in anything below.
3. For each kept keypoint p, d = min over the OTHER kept keypoints q of the
   same image (all kept persons together; "other" means another entry, so a
   duplicate point at the same place gives d = 0) of the Euclidean distance:
     * variant "quirk" (default; reproduces the seed code): the points are
       3-D (x, y, annotation id), so
       d^2 = (xp-xq)^2 + (yp-yq)^2 + (idp-idq)^2;
     * variant "plain": (x, y) only.
   Computed in IEEE double precision exactly as
   sqrt(dx*dx + dy*dy + dz*dz) (left to right; dz = 0 for "plain").
4. The keypoint gives a crop when 20 < d/2 < 1000 (both strict).
5. Half side r = round(d/4), Python round (ties to even).
   Box = (x - r, y - r, x + r, y + r), each coordinate then rounded to an
   integer with Python round (ties to even), as PIL's Image.crop does.
   The box is NOT clipped to the image (PIL pads with black). Label = the
   keypoint's name.

Object regions: every annotation with iscrowd == 0 (a missing iscrowd counts as
0) and a non-empty bbox (w > 0 and h > 0), whether or not its person was
skipped. Their bboxes are reported as they are in the JSON ([x, y, w, h]).

CUB-200-2011 (parts/parts.txt, parts/part_locs.txt, bounding_boxes.txt): the
same rule, with each image as one "person" whose annotation id is the image id,
visibility == 1 instead of v == 2, and only the "plain" variant (with one
person per image the quirk changes nothing). Parts are visited in ascending
part id. images.txt (image id -> path) is missing from the sample; the script
reports the missing files and still computes the crops from part_locs.txt.
Object regions: one per bounding_boxes.txt line with w > 0 and h > 0.

Usage:
  python scripts/data/keypoint_crops.py [--samples data/samples/keypoints]
         [--out data/samples/keypoints/EXPECTED.json] [--cross-check] [--check]
  python scripts/data/keypoint_crops.py --json FILE [--classes a,b,c]
         [--variant quirk|plain]          # print the crops of any COCO-style file
"""
import argparse
import json
import math
import os
import sys
from collections import Counter

PEOPLE_CLASSES = ("nose", "right_wrist", "left_ankle")
CUB_PARTS = ("right eye", "right leg", "left wing", "tail")
# AP-10K: the first three names of categories[0].keypoints.
AP10K_CLASSES = ("left_eye", "right_eye", "nose")
MIN_HALF_D = 20.0  # keep when MIN_HALF_D < d/2 < MAX_HALF_D
MAX_HALF_D = 1000.0
VARIANTS = ("quirk", "plain")
CUB_SUBSET_NOTE = ("image ids 1..200 only (the first 200 lines of bounding_boxes.txt and "
                   "image_class_labels.txt, the first 3000 of parts/part_locs.txt)")


# ----------------------------------------------------------------------------
# The rule
# ----------------------------------------------------------------------------

def nearest_other(points):
    """d for every point: distance to the nearest OTHER point (by index).

    points: list of (x, y, z) floats. Plain O(n^2) loop, in float64, as
    sqrt(dx*dx + dy*dy + dz*dz). Returns None for a lone point.
    """
    out = []
    for i, (xi, yi, zi) in enumerate(points):
        best = None
        for j, (xj, yj, zj) in enumerate(points):
            if i == j:
                continue
            dx = xi - xj
            dy = yi - yj
            dz = zi - zj
            d = math.sqrt(dx * dx + dy * dy + dz * dz)
            if best is None or d < best:
                best = d
        out.append(best)
    return out


def is_tie(v):
    """True when Python round(v) had to break a .5 tie."""
    return v - math.floor(v) == 0.5


def crops_for_image(persons, variant):
    """persons: list of (ann_id, [(kp_index, name, x, y), ...]) of KEPT persons
    (each with >= 2 kept keypoints), in visiting order.

    Returns (crops, rejected) where crops is a list of dicts in visiting order.
    """
    flat = []
    for ann_id, kps in persons:
        for k, name, x, y in kps:
            flat.append((ann_id, k, name, x, y))
    if variant == "quirk":
        pts = [(x, y, float(ann_id)) for ann_id, _, _, x, y in flat]
    elif variant == "plain":
        pts = [(x, y, 0.0) for _, _, _, x, y in flat]
    else:
        raise ValueError(variant)
    ds = nearest_other(pts)
    crops = []
    rejected = Counter()
    for (ann_id, k, name, x, y), d in zip(flat, ds):
        half = d / 2
        if not half > MIN_HALF_D:
            rejected["half_d_le_20"] += 1
            continue
        if not half < MAX_HALF_D:
            rejected["half_d_ge_1000"] += 1
            continue
        q = d / 4
        r = round(q)
        raw = (x - r, y - r, x + r, y + r)
        box = [round(v) for v in raw]  # what PIL's Image.crop does
        crops.append({
            "ann_id": ann_id,
            "keypoint_index": k,
            "label": name,
            "x": x,
            "y": y,
            "d": d,
            "r": r,
            "box": box,
            "r_tie": is_tie(q),
            "box_ties": sum(is_tie(v) for v in raw),
        })
    return crops, rejected


def _kp(**pts):
    """Keypoint list for names a, b, c from a=(x, y, v) etc.; absent = (0, 0, 0)."""
    out = []
    for n in "abc":
        out.extend(pts.get(n, (0, 0, 0)))
    return out


SYNTHETIC = {
    "categories": [{"id": 1, "name": "thing", "keypoints": ["a", "b", "c"]}],
    "images": [{"id": 3, "file_name": "3.jpg", "width": 1000, "height": 1000},
               {"id": 1, "file_name": "1.jpg", "width": 1000, "height": 1000},
               {"id": 2, "file_name": "2.jpg", "width": 3000, "height": 1000}],
    "annotations": [
        # image 1: ann 10 a-b are 42 apart: r = round(10.5) = 10 (half-up would give 11);
        # box x: round(90.5) = 90, round(110.5) = 110, round(132.5) = 132, round(152.5) = 152.
        {"id": 10, "image_id": 1, "iscrowd": 0, "bbox": [90, 40, 70, 20],
         "keypoints": _kp(a=(100.5, 50, 2), b=(142.5, 50, 2))},
        # ann 11: a-b exactly 40 apart (d/2 == 20, rejected); c is v == 1 and ignored.
        {"id": 11, "image_id": 1, "iscrowd": 0, "bbox": [390, 90, 20, 60],
         "keypoints": _kp(a=(400, 100, 2), b=(400, 140, 2), c=(400, 141, 1))},
        # ann 5000: its a is 18 from ann 10's b (plain: both rejected; quirk: dz = 4990).
        {"id": 5000, "image_id": 1, "iscrowd": 0, "bbox": [150, 40, 20, 120],
         "keypoints": _kp(a=(160.5, 50, 2), c=(160.5, 150, 2))},
        # ann 12: one kept keypoint -> person skipped (its point is ignored); bbox empty.
        {"id": 12, "image_id": 1, "iscrowd": 0, "bbox": [600, 600, 0, 10],
         "keypoints": _kp(a=(600, 600, 2), b=(610, 600, 1))},
        # ann 13: crowd region, no keypoints -> skipped, not an object region.
        {"id": 13, "image_id": 1, "iscrowd": 1, "bbox": [700, 700, 50, 50],
         "keypoints": _kp()},
        # image 2: d = 2000 exactly (d/2 == 1000, rejected).
        {"id": 20, "image_id": 2, "bbox": [10, 10, 2000, 1],
         "keypoints": _kp(a=(10, 10, 2), b=(2010, 10, 2))},
        # image 3: two keypoints at the same place: d = 0 (nearest OTHER entry), rejected.
        {"id": 30, "image_id": 3, "iscrowd": 0, "bbox": [490, 490, 20, 20],
         "keypoints": _kp(a=(500, 500, 2), c=(500, 500, 2))},
    ],
}


# ----------------------------------------------------------------------------
# Readers (each "image" is a dict: id, file_name, persons[(ann_id, [(k, x, y, v)])])
# ----------------------------------------------------------------------------

def read_coco(path):
    with open(path, encoding="utf-8") as f:
        return parse_coco(json.load(f), path)


def parse_coco(data, path):
    names = list(data["categories"][0]["keypoints"])
    by_image = {}
    images = sorted(data["images"], key=lambda im: im["id"])
    for im in images:
        by_image[im["id"]] = []
    objects = []
    for a in data["annotations"]:
        kp = a.get("keypoints") or []
        if len(kp) != 3 * len(names):
            raise ValueError(f"{path}: annotation {a['id']} has {len(kp)} keypoint values, "
                             f"expected {3 * len(names)}")
        pts = [(k, float(kp[3 * k]), float(kp[3 * k + 1]), kp[3 * k + 2]) for k in range(len(names))]
        if a["image_id"] not in by_image:
            raise ValueError(f"{path}: annotation {a['id']} refers to unknown image {a['image_id']}")
        by_image[a["image_id"]].append((a["id"], pts))
    for im in images:
        for a in data["annotations"]:
            if a["image_id"] != im["id"]:
                continue
            bbox = a.get("bbox") or []
            if a.get("iscrowd", 0) == 0 and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0:
                objects.append({"image_id": im["id"], "ann_id": a["id"],
                                "category_id": a.get("category_id"), "bbox": bbox})
    out = [{"id": im["id"], "file_name": im["file_name"], "persons": by_image[im["id"]]}
           for im in images]
    return names, out, objects, len(data["annotations"])


def read_cub(root):
    names = {}
    with open(os.path.join(root, "parts", "parts.txt"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                pid, name = line.strip().split(" ", 1)
                names[int(pid)] = name
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError("parts.txt: part ids are not 1..N")
    locs = {}
    with open(os.path.join(root, "parts", "part_locs.txt"), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            iid, pid, x, y, vis = line.split()
            locs.setdefault(int(iid), []).append((int(pid) - 1, float(x), float(y), int(vis)))
    for iid, pts in locs.items():
        if [p[0] for p in pts] != list(range(len(names))):
            raise ValueError(f"part_locs.txt: image {iid} does not list parts 1..{len(names)} in order")
    objects = []
    with open(os.path.join(root, "bounding_boxes.txt"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                iid, x, y, w, h = line.split()
                bbox = [float(x), float(y), float(w), float(h)]
                if bbox[2] > 0 and bbox[3] > 0:
                    objects.append({"image_id": int(iid), "ann_id": int(iid), "bbox": bbox})
    objects.sort(key=lambda o: o["image_id"])
    images = [{"id": iid, "file_name": None, "persons": [(iid, locs[iid])]} for iid in sorted(locs)]
    name_list = [names[i] for i in range(1, len(names) + 1)]
    missing = [p for p in ("images.txt", "images") if not os.path.exists(os.path.join(root, p))]
    return name_list, images, objects, missing


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------

def run_dataset(names, images, classes, visible, variants):
    """Apply the rule to one dataset. Returns the JSON-ready summary."""
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise ValueError(f"classes {unknown} not among the keypoint names {names}")
    chosen = {names.index(c) for c in classes}
    kept_persons = {}  # image id -> [(ann_id, [(k, name, x, y)])]
    skipped = []
    n_kept_kp = 0
    for im in images:
        kept = []
        for ann_id, pts in im["persons"]:
            kps = [(k, names[k], x, y) for k, x, y, v in pts if k in chosen and v == visible]
            if len(kps) < 2:
                skipped.append({"image_id": im["id"], "ann_id": ann_id, "kept_keypoints": len(kps)})
                continue
            kept.append((ann_id, kps))
            n_kept_kp += len(kps)
        kept_persons[im["id"]] = kept
    out = {
        "classes": list(classes),
        "class_indices": sorted(chosen),
        "visiting_order": [names[k] for k in sorted(chosen)],
        "images": len(images),
        "persons": sum(len(im["persons"]) for im in images),
        "persons_kept": sum(len(v) for v in kept_persons.values()),
        "persons_skipped": skipped,
        "keypoints_kept": n_kept_kp,
        "variants": {},
    }
    for variant in variants:
        all_crops = []
        rejected = Counter()
        for im in images:
            crops, rej = crops_for_image(kept_persons[im["id"]], variant)
            rejected.update(rej)
            for c in crops:
                c["image_id"] = im["id"]
                c["file_name"] = im["file_name"]
            all_crops.extend(crops)
        per_label = Counter(c["label"] for c in all_crops)
        out["variants"][variant] = {
            "part_crops": len(all_crops),
            "per_label": {c: per_label.get(c, 0) for c in classes},
            "rejected": {"half_d_le_20": rejected["half_d_le_20"],
                         "half_d_ge_1000": rejected["half_d_ge_1000"]},
            "r_ties": sum(c["r_tie"] for c in all_crops),
            "box_coordinate_ties": sum(c["box_ties"] for c in all_crops),
            "first_5": [{"image_id": c["image_id"], "file_name": c["file_name"],
                         "ann_id": c["ann_id"], "label": c["label"],
                         "keypoint_index": c["keypoint_index"], "x": c["x"], "y": c["y"],
                         "d": c["d"], "r": c["r"], "box": c["box"]} for c in all_crops[:5]],
            # One row per crop, in visiting order: [image_id, ann_id, label, [x0, y0, x1, y1], d]
            "crops": [[c["image_id"], c["ann_id"], c["label"], c["box"], c["d"]] for c in all_crops],
        }
    return out, kept_persons


def cross_check(kept_persons, result):
    """Recompute every variant with scipy's cKDTree (k=2 query, the seed code's way)
    and with a numpy distance matrix; fail on any difference in crops or boxes."""
    import numpy as np
    from scipy.spatial import cKDTree

    for variant, res in result["variants"].items():
        for method in ("kdtree", "numpy"):
            rows = []
            for iid, persons in kept_persons.items():
                flat = [(a, k, n, x, y) for a, kps in persons for k, n, x, y in kps]
                if not flat:
                    continue
                z = [float(a) if variant == "quirk" else 0.0 for a, *_ in flat]
                P = np.array([[x, y, zz] for (_, _, _, x, y), zz in zip(flat, z)], dtype=np.float64)
                if method == "kdtree":
                    dist, _ = cKDTree(P).query(P, k=2)
                    ds = dist[:, 1]
                else:
                    diff = P[:, None, :] - P[None, :, :]
                    D = np.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2 + diff[..., 2] ** 2)
                    np.fill_diagonal(D, np.inf)
                    ds = D.min(axis=1)
                for (a, k, n, x, y), d in zip(flat, ds):
                    d = float(d)
                    if 20 < d / 2 < 1000:
                        r = round(d / 4)
                        rows.append([iid, a, n, [round(x - r), round(y - r), round(x + r), round(y + r)]])
            rows.sort(key=lambda r: r[0])  # stable: keeps per-image order
            mine = [r[:4] for r in res["crops"]]
            if rows != mine:
                raise SystemExit(f"cross-check FAILED ({variant}, {method}): "
                                 f"{len(rows)} vs {len(mine)} crops")
            print(f"  [ok] {variant}: {method} gives the same {len(rows)} crops")


def dump(obj):
    """json.dumps(indent=1, sort_keys=True), but each crop row on one line."""
    rows = {}

    def walk(o):
        if isinstance(o, dict):
            return {k: (["@@%d@@" % _store(r) for r in v] if k == "crops" else walk(v))
                    for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    def _store(r):
        rows[len(rows)] = json.dumps(r)
        return len(rows) - 1

    text = json.dumps(walk(obj), indent=1, sort_keys=True, ensure_ascii=False)
    for i, r in rows.items():
        text = text.replace('"@@%d@@"' % i, r, 1)
    return text + "\n"


def build(samples, do_cross_check):
    result = {
        "_about": {
            "generated_by": "scripts/data/keypoint_crops.py",
            "rule": ("per image (ascending id), per annotation (JSON order), per chosen keypoint "
                     "(ascending keypoint index) with v == 2 (CUB: visible == 1); persons with < 2 "
                     "such keypoints are skipped; d = distance to the nearest other kept keypoint "
                     "of the image, float64 sqrt(dx*dx+dy*dy+dz*dz) with dz = annotation id "
                     "difference ('quirk') or 0 ('plain'); crop when 20 < d/2 < 1000; "
                     "r = round(d/4); box = [round(x-r), round(y-r), round(x+r), round(y+r)]; "
                     "round = Python round, ties to even; boxes are not clipped"),
            "object_regions": ("COCO-style: every annotation with iscrowd == 0 (missing = 0) and "
                               "bbox w > 0 and h > 0, person skipped or not; CUB: every "
                               "bounding_boxes.txt line with w > 0 and h > 0"),
            "crops_row": "[image_id, ann_id, label, [x0, y0, x1, y1], d]",
            "box": "integer [x0, y0, x1, y1], half-open like PIL crop: width = x1 - x0 = 2r",
            "ties": ("r_ties = crops whose d/4 was exactly k + 0.5; box_coordinate_ties = box "
                     "coordinates whose x-r etc. was exactly k + 0.5 (both rounded to even)"),
        }
    }
    for key, rel, classes in (("coco", "coco/test_coco.json", PEOPLE_CLASSES),
                              ("ap10k", "ap10k/test_ap10k.json", AP10K_CLASSES)):
        names, images, objects, n_ann = read_coco(os.path.join(samples, rel))
        if key == "ap10k" and tuple(names[:3]) != AP10K_CLASSES:
            raise SystemExit(f"ap10k: first three keypoint names are {names[:3]}")
        for im in images:
            p = os.path.join(samples, os.path.dirname(rel), im["file_name"])
            if not os.path.isfile(p):
                raise SystemExit(f"{key}: image file missing: {p}")
        res, kept = run_dataset(names, images, classes, 2, VARIANTS)
        res = {"json": rel, "image_dir": os.path.dirname(rel), "annotations": n_ann,
               "keypoint_names": names, **res,
               "object_regions": {"count": len(objects), "regions": objects}}
        if key == "ap10k":
            res["classes_note"] = "the first three names of categories[0].keypoints"
        result[key] = res
        print(f"{key}: " + ", ".join(f"{v} {res['variants'][v]['part_crops']} crops"
                                     for v in VARIANTS)
              + f", {len(objects)} objects, {len(res['persons_skipped'])} persons skipped")
        if do_cross_check:
            cross_check(kept, res)

    syn_names, syn_images, syn_objects, syn_n = parse_coco(SYNTHETIC, "synthetic")
    res, kept = run_dataset(syn_names, syn_images, ["a", "b", "c"], 2, VARIANTS)
    result["synthetic"] = {
        "note": ("hand-made input (not a file) that exercises what the real samples do not: "
                 "ties to even in round(d/4) and in the box, the strict 20 < d/2 and "
                 "d/2 < 1000 bounds, v == 1 ignored, duplicate points (d = 0), a one-keypoint "
                 "person, the quirk, iscrowd and empty-bbox objects"),
        "input": SYNTHETIC, "annotations": syn_n, **res,
        "object_regions": {"count": len(syn_objects), "regions": syn_objects}}
    print("synthetic: " + ", ".join(f"{v} {res['variants'][v]['part_crops']} crops"
                                      for v in VARIANTS))
    if do_cross_check:
        cross_check(kept, result["synthetic"])

    root = os.path.join(samples, "cub_meta")
    names, images, objects, missing = read_cub(root)
    res, kept = run_dataset(names, images, CUB_PARTS, 1, ("plain",))
    res = {"dir": "cub_meta", "subset": CUB_SUBSET_NOTE, "missing_files": missing,
           "part_names": names, **res,
           "object_regions": {"count": len(objects)},
           "note": ("each image is one 'person' whose ann_id is the image id; file_name is null "
                    "because images.txt is missing; only 'plain' (the quirk is a no-op with one "
                    "person per image)")}
    result["cub"] = res
    print(f"cub: plain {res['variants']['plain']['part_crops']} crops over {len(images)} images, "
          f"{len(objects)} objects, {len(res['persons_skipped'])} images skipped, "
          f"missing {missing}")
    if do_cross_check:
        cross_check(kept, res)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    default_samples = os.path.normpath(os.path.join(here, "..", "..", "data", "samples", "keypoints"))
    ap.add_argument("--samples", default=default_samples)
    ap.add_argument("--out", default=None, help="default: <samples>/EXPECTED.json")
    ap.add_argument("--cross-check", action="store_true",
                    help="recompute with scipy cKDTree and a numpy distance matrix")
    ap.add_argument("--check", action="store_true",
                    help="do not write; fail if the existing file differs")
    ap.add_argument("--json", help="print the crops of one COCO-style file instead")
    ap.add_argument("--classes", default=",".join(PEOPLE_CLASSES))
    ap.add_argument("--variant", choices=VARIANTS, default="quirk")
    args = ap.parse_args()

    if args.json:
        names, images, objects, _ = read_coco(args.json)
        res, _ = run_dataset(names, images, [c for c in args.classes.split(",") if c],
                             2, (args.variant,))
        v = res["variants"][args.variant]
        for row in v["crops"]:
            print(*row[:3], *row[3], f"d={row[4]:.3f}")
        print(f"{v['part_crops']} crops {v['per_label']}; {len(objects)} objects; "
              f"skipped {res['persons_skipped']}", file=sys.stderr)
        return

    out = args.out or os.path.join(args.samples, "EXPECTED.json")
    text = dump(build(args.samples, args.cross_check))
    if args.check:
        with open(out, encoding="utf-8") as f:
            if f.read() != text:
                raise SystemExit(f"{out} is out of date")
        print(f"{out} is up to date")
        return
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
