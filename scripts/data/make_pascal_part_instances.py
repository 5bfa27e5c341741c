#!/usr/bin/env python3
"""Writes data/samples/pascal_part_instances/: one synthetic Pascal-Part image
(instances.jpg, 16 x 8, grey) with its annotation (instances.mat), laid out like
the released files (anno.imname, anno.objects[1xN].{class, class_ind, mask,
parts[1xM].{part_name, mask}}; masks uint8 H x W of 0/1; a zlib-compressed
MAT v5 file, as scipy.io.savemat writes it).

The case that separates annotated instances from connected components
(x = columns, y = rows, half-open):

  objects(1) person  mask x 0..6,  y 0..8
      torso   two pieces: x 0..2, y 0..2 and x 3..6, y 5..8 (4 + 9 px)
      head    x 0..3, y 3..5 (6 px)
  objects(2) person  mask x 6..12, y 0..8 (touches objects(1) along x = 5 | 6)
      torso   x 6..9, y 5..8 (9 px; touches objects(1)'s lower torso piece)
      lfoot   no pixels
  objects(3) car     mask x 12..16, y 4..8
      wheel_1 x 12..13, y 7..8 (1 px)
      wheel_2 x 15..16, y 7..8 (1 px)
  objects(4) boat    mask without pixels, no parts (0x0 struct, as in the release)

Usage: python scripts/data/make_pascal_part_instances.py [--out DIR]
"""
import argparse
import os

import numpy as np
from PIL import Image
from scipy.io import savemat

H, W = 8, 16
PART = [("part_name", "O"), ("mask", "O")]
OBJECT = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]


def mask(*boxes):
    m = np.zeros((H, W), np.uint8)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = 1
    return m


def parts(*named):
    a = np.zeros((1, len(named)) if named else (0, 0), dtype=PART)
    for j, (name, m) in enumerate(named):
        a[0, j] = (name, m)
    return a


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="data/samples/pascal_part_instances")
    args = ap.parse_args()
    objects = [
        ("person", 15, mask((0, 0, 6, 8)),
         parts(("torso", mask((0, 0, 2, 2), (3, 5, 6, 8))), ("head", mask((0, 3, 3, 5))))),
        ("person", 15, mask((6, 0, 12, 8)),
         parts(("torso", mask((6, 5, 9, 8))), ("lfoot", mask()))),
        ("car", 7, mask((12, 4, 16, 8)),
         parts(("wheel_1", mask((12, 7, 13, 8))), ("wheel_2", mask((15, 7, 16, 8))))),
        ("boat", 4, mask(), parts()),
    ]
    objs = np.zeros((1, len(objects)), dtype=OBJECT)
    for i, (cls, ind, m, ps) in enumerate(objects):
        objs[0, i] = (cls, np.array([[ind]], np.uint8), m, ps)
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = ("instances", objs)
    os.makedirs(args.out, exist_ok=True)
    savemat(os.path.join(args.out, "instances.mat"), {"anno": anno}, do_compression=True)
    Image.new("RGB", (W, H), (128, 128, 128)).save(os.path.join(args.out, "instances.jpg"), quality=95)


if __name__ == "__main__":
    main()
