#!/usr/bin/env python3
"""One-off converter: Pascal-Part (.jpg + .mat) -> partlens "mmseg layout".

Developer tool only (needs numpy, scipy, pillow); the Rust crate never runs it.

Input: a folder of ``X.jpg`` + ``X.mat`` pairs as distributed with Pascal-Part
(MATLAB v5 struct ``anno`` {imname, objects[1xN] {class, class_ind, mask,
parts[1xM] {part_name, mask}}}).

Output (under --out):
  img/<split>/<stem>.jpg   the source JPEG, copied byte-for-byte
  ann/<split>/<stem>.png   uint8 mode-L PART label map (0 = background)
  obj/<split>/<stem>.png   uint8 mode-L OBJECT label map (VOC class_ind 1..20, 0 = background)
  classes.txt              part class names; line k+1 = id k; line 1 = "background"
  object_classes.txt       "background" + the 20 VOC classes in VOC order

Rules:
  * part class name = "<VOC object class>/<part_name without a trailing _N>"
    (e.g. wheel_3 of an aeroplane -> "aeroplane/wheel");
  * part class ids = 1 + position in the sorted list of all part class names
    found in the whole input folder (deterministic, independent of the split);
  * objects are painted in annotation order and, inside each object, parts in
    annotation order; a later mask overwrites an earlier one (for parts and for
    objects alike; this is the order used by Pascal-Part's own mat2map);
  * object pixels not covered by any part stay 0 in the part map;
  * split: stems sorted; index % 3 == 2 -> "val", otherwise "train".

Usage:
  python scripts/data/pascal_part_to_mmseg.py --src /work/shared/data/pascal_part \
      --out data/samples/pascal_part
"""
import argparse
import os
import re
import shutil
import sys

import numpy as np
from PIL import Image
from scipy.io import loadmat

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
# Pascal-Part spells VOC's "diningtable" as "table" in objects[].class.
CLASS_ALIASES = {"table": "diningtable"}
INSTANCE_SUFFIX = re.compile(r"_\d+$")


def split_of(index):
    return "val" if index % 3 == 2 else "train"


def load_annotation(mat_path):
    """Return (imname, [(voc_class_name, class_ind, mask, [(part_name, mask), ...]), ...])."""
    anno = loadmat(mat_path)["anno"][0, 0]
    imname = str(anno["imname"][0])
    objects = []
    objs = anno["objects"]
    for obj in (objs[0] if objs.size else []):
        raw_class = str(obj["class"][0])
        class_ind = int(obj["class_ind"][0, 0])
        if not 1 <= class_ind <= 20:
            raise ValueError(f"{mat_path}: class_ind {class_ind} out of range")
        voc_name = VOC_CLASSES[class_ind - 1]
        if CLASS_ALIASES.get(raw_class, raw_class) != voc_name:
            raise ValueError(f"{mat_path}: class {raw_class!r} does not match class_ind {class_ind} ({voc_name})")
        mask = np.asarray(obj["mask"])
        parts = []
        pa = obj["parts"]
        for part in (pa[0] if pa.size else []):
            parts.append((str(part["part_name"][0]), np.asarray(part["mask"])))
        objects.append((voc_name, class_ind, mask, parts))
    return imname, objects


def part_class_name(voc_name, part_name):
    return voc_name + "/" + INSTANCE_SUFFIX.sub("", part_name)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="folder with X.jpg + X.mat")
    ap.add_argument("--out", required=True, help="dataset root to write (mmseg layout)")
    args = ap.parse_args(argv)

    stems = sorted(f[:-4] for f in os.listdir(args.src) if f.endswith(".mat"))
    if not stems:
        sys.exit(f"no .mat files in {args.src}")

    annos = {}
    names = set()
    for stem in stems:
        if not os.path.isfile(os.path.join(args.src, stem + ".jpg")):
            sys.exit(f"{stem}.mat has no {stem}.jpg")
        imname, objects = load_annotation(os.path.join(args.src, stem + ".mat"))
        if imname != stem:
            print(f"warning: {stem}.mat has imname {imname!r}", file=sys.stderr)
        annos[stem] = objects
        for voc_name, _, _, parts in objects:
            for part_name, _ in parts:
                names.add(part_class_name(voc_name, part_name))

    part_classes = sorted(names)
    if len(part_classes) > 254:
        sys.exit(f"{len(part_classes)} part classes do not fit in uint8 (0 and 255 reserved)")
    part_id = {n: i + 1 for i, n in enumerate(part_classes)}

    for sub in ("img", "ann", "obj"):
        shutil.rmtree(os.path.join(args.out, sub), ignore_errors=True)

    for index, stem in enumerate(stems):
        split = split_of(index)
        src_jpg = os.path.join(args.src, stem + ".jpg")
        with Image.open(src_jpg) as im:
            width, height = im.size
        part_map = np.zeros((height, width), np.uint8)
        obj_map = np.zeros((height, width), np.uint8)
        for voc_name, class_ind, mask, parts in annos[stem]:
            if mask.shape != (height, width):
                sys.exit(f"{stem}: object mask {mask.shape} != image {(height, width)}")
            obj_map[mask > 0] = class_ind
            for part_name, pmask in parts:
                if pmask.shape != (height, width):
                    sys.exit(f"{stem}: part mask {pmask.shape} != image {(height, width)}")
                part_map[pmask > 0] = part_id[part_class_name(voc_name, part_name)]

        for sub in ("img", "ann", "obj"):
            os.makedirs(os.path.join(args.out, sub, split), exist_ok=True)
        shutil.copyfile(src_jpg, os.path.join(args.out, "img", split, stem + ".jpg"))
        for sub, label_map in (("ann", part_map), ("obj", obj_map)):
            png = Image.fromarray(label_map)  # 2-D uint8 -> mode "L"
            assert png.mode == "L", png.mode
            png.save(os.path.join(args.out, sub, split, stem + ".png"), optimize=True)
        print(f"{split}/{stem}: {len(annos[stem])} objects, "
              f"{sum(len(o[3]) for o in annos[stem])} part masks")

    with open(os.path.join(args.out, "classes.txt"), "w", newline="\n") as f:
        f.write("\n".join(["background"] + part_classes) + "\n")
    with open(os.path.join(args.out, "object_classes.txt"), "w", newline="\n") as f:
        f.write("\n".join(["background"] + VOC_CLASSES) + "\n")
    print(f"{len(stems)} images, {len(part_classes)} part classes -> {args.out}")


if __name__ == "__main__":
    main()
