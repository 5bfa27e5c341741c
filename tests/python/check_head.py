"""Reads a head written by `partlens probe classify --save` with numpy alone and applies it to
the index's feature matrix: logits = ((x - mean) * inv_std) @ weight.T + bias.
Run: python check_head.py HEAD.npz FEATURES.npy
"""
import json
import sys

import numpy as np

z = np.load(sys.argv[1])
x = np.load(sys.argv[2], mmap_mode="r")
w, b, mean, inv = z["weight"], z["bias"], z["mean"], z["inv_std"]
meta = json.loads(str(z["meta"][0]))
logits = ((np.asarray(x) - mean) * inv) @ w.T + b
assert np.isfinite(logits).all()
print(f"weight {w.shape}, {len(z['classes'])} classes, feature {meta['feature']}, lr {meta['lr']}")
