"""An independent numpy implementation of partlens's linear-probe update rule (float64).

Reads X.npy (N x D float32), y.npy (N, float32 holding integers), init.npy (D x C: the initial weights, the same
for every head) and order.npy (epochs x N, float32 integers: the positions visited, epoch by epoch) from DIR,
and the settings from argv: lrs (comma-separated), weight decays, batch size, momentum.
Standardises with the training rows' mean and biased variance (eps 1e-6), then per step t of
T, per head: g = grad of mean softmax cross-entropy + wd * W (bias not decayed),
v = momentum * v + g, W -= lr * 0.5 * (1 + cos(pi * t / T)) * v. Prints the losses as JSON
(steps x heads).
Run: python linear_reference.py DIR LRS WDS BATCH MOMENTUM
"""
import json
import math
import sys

import numpy as np

d, lrs, wds, batch, momentum = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
X = np.load(f"{d}/X.npy").astype(np.float64)
y = np.load(f"{d}/y.npy").astype(np.int64).ravel()
init = np.load(f"{d}/init.npy").astype(np.float64)
order = np.load(f"{d}/order.npy").astype(np.int64)
heads = [(float(lr), float(wd)) for lr in lrs.split(",") for wd in wds.split(",")]
mean = X.mean(axis=0)
inv_std = 1.0 / np.sqrt(X.var(axis=0) + 1e-6)
Xs = (X - mean) * inv_std
n, c = X.shape[0], init.shape[1]
steps_per_epoch = -(-n // batch)
total = order.shape[0] * steps_per_epoch
W = [init.copy() for _ in heads]
b = [np.zeros(c) for _ in heads]
V = [np.zeros_like(init) for _ in heads]
Vb = [np.zeros(c) for _ in heads]
losses = []
t = 0
for epoch in range(order.shape[0]):
    for s in range(0, n, batch):
        idx = order[epoch, s:s + batch]
        xb, yb = Xs[idx], y[idx]
        row = []
        scale = 0.5 * (1 + math.cos(math.pi * t / total))
        for h, (lr, wd) in enumerate(heads):
            z = xb @ W[h] + b[h]
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            row.append(float(-np.log(p[np.arange(len(yb)), yb]).mean()))
            g = p
            g[np.arange(len(yb)), yb] -= 1
            g /= len(yb)
            gw = xb.T @ g + wd * W[h]
            gb = g.sum(axis=0)
            V[h] = momentum * V[h] + gw
            Vb[h] = momentum * Vb[h] + gb
            W[h] = W[h] - lr * scale * V[h]
            b[h] = b[h] - lr * scale * Vb[h]
        losses.append(row)
        t += 1
print(json.dumps(losses))
