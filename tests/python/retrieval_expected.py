"""Expected retrieval numbers for tests/probe.rs, computed with scikit-learn.

The rows are copies of a few prototypes (so many scores tie exactly, across classes too),
class "c" has one member, and a second case has every row equal (all scores tie). For each
query: cosine scores against all rows (itself included), AP by
sklearn.metrics.average_precision_score; per-class mean AP, mAP over classes, mean AP over
queries; recall@k over the k nearest others (ties by smaller row id). Prints JSON.
Run: python tests/python/retrieval_expected.py
"""
import json
import warnings

import numpy as np
from sklearn.metrics import average_precision_score

PROTOS = np.array(
    [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0], [0.2, 0.9, 0.1, 0.3]],
    dtype=np.float32,
)
# (prototype, label) per row.
ROWS = [(0, 0), (0, 0), (2, 0), (1, 1), (1, 0), (2, 1), (3, 2), (4, 3), (4, 3), (5, 3),
        (0, 1), (3, 4), (3, 4), (5, 1), (2, 4), (1, 3)]


def evaluate(x, labels, min_members):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(labels)
    sizes = np.bincount(labels)
    per_class = {}
    aps = []
    hits = {1: 0, 5: 0, 10: 0}
    recall_queries = 0
    for q in range(n):
        if sizes[labels[q]] < min_members:
            continue
        s = (xn @ xn[q]).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ap = average_precision_score(labels == labels[q], s)
        aps.append(ap)
        per_class.setdefault(int(labels[q]), []).append(ap)
        if sizes[labels[q]] > 1:
            recall_queries += 1
            others = [i for i in range(n) if i != q]
            others.sort(key=lambda i: (-s[i], i))
            for k in hits:
                hits[k] += any(labels[i] == labels[q] for i in others[:k])
    class_ap = {c: float(np.mean(v)) for c, v in sorted(per_class.items())}
    return {
        "mean_ap": 100 * float(np.mean(aps)),
        "map": 100 * float(np.mean(list(class_ap.values()))),
        "per_class": {str(c): 100 * v for c, v in class_ap.items()},
        "recall": {str(k): 100 * h / recall_queries for k, h in hits.items()},
        "queries": len(aps),
    }


x = PROTOS[[p for p, _ in ROWS]]
labels = np.array([l for _, l in ROWS])
equal = np.ones((6, 4), dtype=np.float32)
equal_labels = np.array([0, 0, 1, 1, 1, 2])
print(json.dumps({
    "ties_min1": evaluate(x, labels, 1),
    "ties_min2": evaluate(x, labels, 2),
    "all_equal_min1": evaluate(equal, equal_labels, 1),
}, indent=1))
