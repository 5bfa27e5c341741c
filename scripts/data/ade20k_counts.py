"""Independent region counts for the ADE20K full-format sample, for tests.

Reads each image's JSON and its instance masks with PIL + numpy (no partlens code): a region is
one annotated instance; its pixels are the mask's 255 values (128 marks occluded, amodal pixels,
which are not visible and not counted). Level 0 = objects, 1 = parts, 2 = parts of parts.
Also checks each instance's visible pixels against the class decoded from the RGB maps
(class = R/10*256 + G of X_seg.png for objects, X_parts_N.png for parts).

    python scripts/data/ade20k_counts.py data/samples/ade20k_full > data/samples/ade20k_full/EXPECTED.json
"""

import glob
import json
import os
import sys

import numpy as np
from PIL import Image


def classes(path):
    a = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return (a[:, :, 0] // 10) * 256 + a[:, :, 1]


def main():
    root = sys.argv[1]
    out = {"rule": __doc__.split("\n\n")[1], "images": {}, "total": {}}
    for js in sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True)):
        stem = js[: -len(".json")]
        if not os.path.exists(stem + ".jpg"):
            continue
        objs = json.load(open(js))["annotation"]["object"]
        folder = os.path.dirname(js)
        counts = {}
        mismatched = 0
        maps = {0: classes(stem + "_seg.png")}
        for o in objs:
            level = o["parts"]["part_level"]
            if level not in maps and os.path.exists(f"{stem}_parts_{level}.png"):
                maps[level] = classes(f"{stem}_parts_{level}.png")
            m = np.asarray(Image.open(os.path.join(folder, o["instance_mask"])))
            vis = m == 255
            area = int(vis.sum())
            if level in maps and area and (maps[level][vis] != o["name_ndx"]).any():
                mismatched += 1
            for a in (1, 64, 256):
                if area >= a:
                    key = f"level{level}_area{a}"
                    counts[key] = counts.get(key, 0) + 1
        rel = os.path.relpath(stem + ".jpg", root)
        out["images"][rel] = {"counts": counts, "instances": len(objs), "class_mismatches": mismatched}
        for k, v in counts.items():
            out["total"][k] = out["total"].get(k, 0) + v
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
