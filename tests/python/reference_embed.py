"""Reference embeddings the paper's way: PIL crop -> torchvision-style Resize(short side, bicubic)
-> CenterCrop -> ToTensor -> Normalize -> onnxruntime. The Rust tests compare partlens's
embeddings of the same crops against these.

    python reference_embed.py --model M.onnx --dataset ROOT --crops crops.json --out ref.npz

crops.json: [{"image": "img/val/x.jpg", "crop_box": [x0, y0, x1, y1]}, ...]
ref.npz: one float32 array [n, D] per feature the model has (mean, cls, projection).
"""

import argparse
import json
import os

import numpy as np
import onnxruntime as ort
from PIL import Image

# The same Resize and CenterCrop as the bit-exact preprocessing test (one reference, not two).
from reference_tensors import center_crop, resize_short as torchvision_resize_short


def to_tensor(img, mean, std):
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return x.transpose(2, 0, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--crops", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    spec = json.loads(sess.get_modelmeta().custom_metadata_map["partlens.spec"])
    th, tw = spec["input_size"]
    outs = spec["outputs"]

    crops = json.load(open(a.crops))
    batch = []
    for c in crops:
        img = Image.open(os.path.join(a.dataset, c["image"])).convert("RGB")
        img = img.crop(tuple(c["crop_box"]))  # black outside the image, like partlens
        img = torchvision_resize_short(img, min(th, tw))
        img = center_crop(img, th, tw)
        batch.append(to_tensor(img, spec["mean"], spec["std"]))
    x = np.stack(batch).astype(np.float32)

    names = [n for n in outs.values() if n]
    res = dict(zip(names, sess.run(names, {spec["input"]: x})))
    feats = {}
    if outs.get("pooled"):
        feats["mean"] = res[outs["pooled"]]
    elif outs.get("patch_tokens"):
        feats["mean"] = res[outs["patch_tokens"]].astype(np.float64).mean(axis=1)
    else:
        feats["mean"] = res[outs["feature_map"]].astype(np.float64).mean(axis=(2, 3))
    if outs.get("cls"):
        feats["cls"] = res[outs["cls"]]
    if outs.get("projection"):
        feats["projection"] = res[outs["projection"]]
    np.savez(a.out, **{k: np.asarray(v, dtype=np.float32) for k, v in feats.items()})
    print(json.dumps({k: list(v.shape) for k, v in feats.items()}))


if __name__ == "__main__":
    main()
