"""An independent ADE20K full-release → mmseg conversion (PIL + numpy, no partlens code), for
checking `partlens convert --from ade20k` pixel by pixel.

Object maps come from X_seg.png, part maps from X_parts_1.png; an ADE class id is
R // 10 * 256 + G. Object classes are the first synonyms ("car, auto" → "car") of the level-0
instances, sorted; part classes are "object/part" for each level-1 instance, the object being
the top of its `ispartof` chain. A part pixel takes the class of (object class under it in
X_seg.png, its part class); pairs and ids not chosen become 0.

    python ade20k_to_mmseg.py DATASET OUT [MAP_FROM_ADE OBJECT_INFO_CSV [PART_INFO]]

With MAP_FROM_ADE (lines `target ade_id`), objects are those targets, named from the CSV; with
PART_INFO (`partInfo36.txt`: `-- 13 person --` sections of `1 head` lines), parts are those
"person/head" names.
"""

import csv
import glob
import json
import os
import sys

import numpy as np
from PIL import Image


def short(name):
    return name.split(",")[0].strip()


def class_ids(path):
    a = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return (a[:, :, 0] // 10) * 256 + a[:, :, 1]


def main():
    root, out = sys.argv[1], sys.argv[2]
    images = []
    object_ids = {}  # name -> set of ADE ids
    pairs = {}  # "object/part" -> set of (object id, part id)
    names = {}
    for js in sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True)):
        stem = js[: -len(".json")]
        if not os.path.exists(stem + ".jpg"):
            continue
        objs = json.load(open(js))["annotation"]["object"]
        by_id = {o["id"]: o for o in objs}
        for o in objs:
            names.setdefault(o["name_ndx"], short(o["name"]))
            level = o["parts"]["part_level"]
            if level == 0:
                object_ids.setdefault(short(o["name"]), set()).add(o["name_ndx"])
            elif level == 1:
                parent = o
                while parent["parts"]["part_level"] != 0:
                    parent = by_id[parent["parts"]["ispartof"]]
                key = short(parent["name"]) + "/" + short(o["name"])
                pairs.setdefault(key, set()).add((parent["name_ndx"], o["name_ndx"]))
        split = "training" if "/training/" in stem else "validation" if "/validation/" in stem else "all"
        images.append((stem, split))

    if len(sys.argv) > 3:
        rows = [l.split() for l in open(sys.argv[3]) if l.strip()]
        with open(sys.argv[4]) as f:
            info = {int(r["Idx"]): r["Name"].split(";")[0] for r in csv.DictReader(f)}
        n = max(int(t) for t, _ in rows)
        obj_names = ["background"] + [info[k] for k in range(1, n + 1)]
        obj_lut = {int(a): int(t) for t, a in rows}
    else:
        obj_names = ["background"] + sorted(object_ids)
        obj_lut = {i: k for k, name in enumerate(obj_names) if k for i in object_ids[name]}
    part_names = ["background"] + sorted(pairs)
    if len(sys.argv) > 5:
        part_names = ["background"]
        for line in open(sys.argv[5]):
            line = line.strip()
            if line.startswith("--"):
                obj = line.strip("- ").split(None, 1)[1]
            elif line:
                part_names.append(obj + "/" + line.split(None, 1)[1].strip())
    part_lut = {p: k for k, name in enumerate(part_names) if k for p in pairs.get(name, ())}

    os.makedirs(out)
    for fname, lines in (("classes.txt", part_names), ("object_classes.txt", obj_names)):
        with open(os.path.join(out, fname), "w") as f:
            f.write("\n".join(lines) + "\n")
    for stem, split in images:
        seg = class_ids(stem + "_seg.png")
        obj = np.zeros(seg.shape, np.uint8)
        for ade, k in obj_lut.items():
            obj[seg == ade] = k
        part = np.zeros(seg.shape, np.uint8)
        if os.path.exists(stem + "_parts_1.png"):
            p = class_ids(stem + "_parts_1.png")
            for (o, q), k in part_lut.items():
                part[(seg == o) & (p == q)] = k
        for sub, arr in (("ann", part), ("obj", obj)):
            d = os.path.join(out, sub, split)
            os.makedirs(d, exist_ok=True)
            Image.fromarray(arr).save(os.path.join(d, os.path.basename(stem) + ".png"))


if __name__ == "__main__":
    main()
