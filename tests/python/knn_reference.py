"""An independent numpy implementation of DINO's weighted k-NN classifier (eval_knn.py).

Reads train.npy, train_y.npy, test.npy from DIR; k and T from argv. Features are
L2-normalised; each test row takes its k most similar training rows (cosine; ties to the
smaller index), votes exp(sim / T) for their classes; classes are ranked by vote (ties to the
smaller class). Prints the top-5 ranked classes per test row as JSON.
Run: python knn_reference.py DIR K T NCLASS
"""
import json
import sys

import numpy as np

d, k, T, nclass = sys.argv[1], int(sys.argv[2]), np.float32(sys.argv[3]), int(sys.argv[4])
train = np.load(f"{d}/train.npy")
train_y = np.load(f"{d}/train_y.npy").astype(np.int64).ravel()
test = np.load(f"{d}/test.npy")
norm = lambda a: a / np.linalg.norm(a.astype(np.float64), axis=1, keepdims=True).astype(np.float32)
sim = norm(test) @ norm(train).T
out = []
for row in sim:
    nn = np.lexsort((np.arange(len(row)), -row))[:k]
    votes = np.zeros(nclass, dtype=np.float32)
    for i in nn:
        votes[train_y[i]] += np.exp(row[i] / T)
    ranked = np.lexsort((np.arange(nclass), -votes))
    out.append([int(c) for c in ranked[:5]])
print(json.dumps(out))
