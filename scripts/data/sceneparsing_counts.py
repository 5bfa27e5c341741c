#!/usr/bin/env python3
"""Expected object regions of the ADEChallengeData2016 (SceneParsing) sample, for tests.

Developer tool (numpy, scipy, pillow); no partlens code. Reads `annotations/*.png` (uint8,
0 = other, dropped like mmseg's reduce_zero_label) and names classes from `objectInfo150.csv`
(first synonym of its Name column). A region is a 4-connected component of one class, as in
count_regions.py, whose component counter it reuses.

    python scripts/data/sceneparsing_counts.py data/samples/ade20k_challenge \
        > data/samples/ade20k_challenge/EXPECTED.json
"""
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from count_regions import read_label_map, region_areas_scipy, thresholds  # noqa: E402


def main():
    root = sys.argv[1]
    with open(os.path.join(root, "objectInfo150.csv")) as f:
        names = {int(r["Idx"]): r["Name"].split(";")[0] for r in csv.DictReader(f)}
    out = {"rule": __doc__.split("\n\n")[1], "images": {}, "by_class_area256": {}}
    every = []
    for fname in sorted(os.listdir(os.path.join(root, "annotations"))):
        areas = region_areas_scipy(read_label_map(os.path.join(root, "annotations", fname)))
        every += areas
        out["images"][fname[:-4]] = thresholds(areas)
        for k, a in areas:
            if a >= 256:
                out["by_class_area256"][names[k]] = out["by_class_area256"].get(names[k], 0) + 1
    out["object"] = thresholds(every)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
