"""Decodes images with Pillow (`Image.open(p).convert("RGB")`, what the paper's pipeline does)
and writes the raw RGB bytes, so the Rust tests can check partlens decodes the same pixels.
Also writes CMYK JPEGs (baseline and progressive, Pillow's Adobe-style inverted CMYK) made from
the first input, and decodes those too.

    python pil_decode.py WORKDIR IMAGE... → JSON list of {"path", "raw"}
"""

import json
import os
import sys

from PIL import Image


def main():
    work, inputs = sys.argv[1], sys.argv[2:]
    cmyk = Image.open(inputs[0]).convert("RGB").convert("CMYK")
    for name, opts in (("cmyk.jpg", {"quality": 90}), ("cmyk_prog.jpg", {"quality": 60, "progressive": True})):
        p = os.path.join(work, name)
        cmyk.save(p, **opts)
        inputs.append(p)
    out = []
    for i, p in enumerate(inputs):
        raw = os.path.join(work, f"{i}.rgb")
        with open(raw, "wb") as f:
            f.write(Image.open(p).convert("RGB").tobytes())
        out.append({"path": p, "raw": raw})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
