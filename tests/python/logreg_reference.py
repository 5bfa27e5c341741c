"""scikit-learn's LogisticRegression (lbfgs) on the same standardised features as the
linear probe: reads train.npy, train_y.npy, test.npy, test_y.npy from DIR, standardises with
the training rows' mean and biased variance (eps 1e-6), fits, prints the test top-1 (%).
Run: python logreg_reference.py DIR
"""
import sys
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression

d = sys.argv[1]
tr, te = np.load(f"{d}/train.npy").astype(np.float64), np.load(f"{d}/test.npy").astype(np.float64)
ytr = np.load(f"{d}/train_y.npy").astype(np.int64).ravel()
yte = np.load(f"{d}/test_y.npy").astype(np.int64).ravel()
mean, inv = tr.mean(axis=0), 1.0 / np.sqrt(tr.var(axis=0) + 1e-6)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    clf = LogisticRegression(max_iter=5000).fit((tr - mean) * inv, ytr)
print(100.0 * float((clf.predict((te - mean) * inv) == yte).mean()))
