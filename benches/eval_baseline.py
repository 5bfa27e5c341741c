"""scikit-learn baselines for `cargo bench --bench eval` (benches/eval.rs runs this with setup's
Python; it needs numpy and scikit-learn, which `partlens setup --test-tools` installs).

Every command reads the matrix the bench wrote (float32 .npy, memory-mapped) and prints one
JSON object as the last line of stdout.

  retrieval X.npy LABELS.npy --sample K
      The paper's protocol as a per-query scikit-learn loop: Xn = L2-normalised float32 rows;
      for each query q: s = Xn @ Xn[q], average_precision_score(labels == labels[q], s) (the
      query itself included in the ranking). Timed on K evenly spaced queries; the per-query
      APs are returned so that the bench can compare them with its own.
  retrieval-full X.npy LABELS.npy
      The same loop over every row: mean AP over queries and mAP (mean over classes of the
      class's mean AP), in percent.
  linear X.npy LABELS.npy SETS.npy [--C C] [--max-iter M] [--target-acc A] [--budget S]
         [--grid C1,C2,...]
      LogisticRegression(lbfgs) trained on the rows where SETS == 0, evaluated on SETS == 2
      (SETS == 1: the rows partlens's probe holds out to choose its learning rate; with
      --grid, one fit per C, the C with the best top-1 on those rows is chosen, as partlens
      chooses its head, and every fit's time counts). Features standardised with the
      training rows' statistics as partlens's probe does: (x - mean) / sqrt(var + 1e-6),
      biased variance, statistics in float64, features float32. Only `fit` is timed. When the
      fit stops at max_iter (ConvergenceWarning) and --target-acc is given, max_iter is
      doubled until the accuracy is within 0.5 point of it or the fit converges, while the
      fits so far took under --budget seconds.
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np


def thread_info():
    try:
        from threadpoolctl import threadpool_info

        return [
            {
                "api": p.get("user_api"),
                "lib": p.get("internal_api"),
                "threads": p.get("num_threads"),
            }
            for p in threadpool_info()
        ]
    except Exception as e:  # threadpoolctl ships with scikit-learn; report rather than fail
        return [{"error": str(e)}]


def load(x_path, labels_path):
    x = np.load(x_path, mmap_mode="r")
    labels = np.load(labels_path).astype(np.int64)
    assert x.dtype == np.float32 and x.ndim == 2 and len(labels) == len(x)
    return x, labels


def normalised(x):
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1
    return (x / n).astype(np.float32)


def retrieval(args):
    from sklearn.metrics import average_precision_score

    x, labels = load(args.x, args.labels)
    n = len(x)
    t0 = time.perf_counter()
    xn = normalised(x)
    t_norm = time.perf_counter() - t0
    k = min(args.sample, n)
    queries = [int(i * n // k) for i in range(k)]
    aps = []
    t0 = time.perf_counter()
    for q in queries:
        s = xn @ xn[q]
        aps.append(float(average_precision_score(labels == labels[q], s)))
    t_loop = time.perf_counter() - t0
    return {
        "rows": n,
        "queries": queries,
        "aps": aps,
        "mean_ap": 100.0 * float(np.mean(aps)),
        "normalise_seconds": t_norm,
        "loop_seconds": t_loop,
        "seconds_per_query": t_loop / k,
        "threads": thread_info(),
    }


def retrieval_full(args):
    from sklearn.metrics import average_precision_score

    x, labels = load(args.x, args.labels)
    xn = normalised(x)
    t0 = time.perf_counter()
    aps = np.array(
        [average_precision_score(labels == labels[q], xn @ xn[q]) for q in range(len(xn))]
    )
    seconds = time.perf_counter() - t0
    per_class = [aps[labels == c].mean() for c in np.unique(labels)]
    return {
        "rows": len(xn),
        "mean_ap": 100.0 * float(aps.mean()),
        "map": 100.0 * float(np.mean(per_class)),
        "seconds": seconds,
    }


def linear(args):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x, labels = load(args.x, args.labels)
    sets = np.load(args.sets)
    fit_rows, val_rows = np.flatnonzero(sets == 0), np.flatnonzero(sets == 2)
    held_rows = np.flatnonzero(sets == 1)
    xf = np.asarray(x[fit_rows], dtype=np.float64)
    mean = xf.mean(axis=0)
    inv_std = 1.0 / np.sqrt(xf.var(axis=0) + 1e-6)
    del xf
    z_fit = ((np.asarray(x[fit_rows]) - mean.astype(np.float32)) * inv_std.astype(np.float32))
    z_val = ((np.asarray(x[val_rows]) - mean.astype(np.float32)) * inv_std.astype(np.float32))
    z_held = ((np.asarray(x[held_rows]) - mean.astype(np.float32)) * inv_std.astype(np.float32))
    z_fit, z_val = z_fit.astype(np.float32), z_val.astype(np.float32)
    z_held = z_held.astype(np.float32)
    y_fit, y_val, y_held = labels[fit_rows], labels[val_rows], labels[held_rows]

    def run(max_iter, c=args.C):
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            t0 = time.perf_counter()
            clf.fit(z_fit, y_fit)
            seconds = time.perf_counter() - t0
        stopped = any(issubclass(w.category, ConvergenceWarning) for w in caught)
        acc = 100.0 * float((clf.predict(z_val) == y_val).mean())
        held = 100.0 * float((clf.predict(z_held) == y_held).mean()) if len(y_held) else None
        return {
            "C": c,
            "held_top1": held,
            "max_iter": max_iter,
            "n_iter": int(np.max(clf.n_iter_)),
            "convergence_warning": stopped,
            "seconds": seconds,
            "top1": acc,
            "coef_dtype": str(clf.coef_.dtype),
        }

    if args.grid:
        fits = [run(args.max_iter, float(c)) for c in args.grid.split(",")]
        best = max(fits, key=lambda f: (f["held_top1"] or 0.0, -f["C"]))
        return {
            "fit_rows": int(len(fit_rows)),
            "held_rows": int(len(held_rows)),
            "val_rows": int(len(val_rows)),
            "solver": "lbfgs",
            "feature_dtype": str(z_fit.dtype),
            "grid": fits,
            "seconds": float(sum(f["seconds"] for f in fits)),
            "chosen": best,
            "threads": thread_info(),
        }
    first = run(args.max_iter)
    more = []
    spent = first["seconds"]
    last = first
    if args.target_acc is not None:
        while (
            last["convergence_warning"]
            and abs(last["top1"] - args.target_acc) > 0.5
            and spent < args.budget
        ):
            last = run(2 * last["max_iter"])
            spent += last["seconds"]
            more.append(last)
    return {
        "fit_rows": int(len(fit_rows)),
        "val_rows": int(len(val_rows)),
        "C": args.C,
        "solver": "lbfgs",
        "feature_dtype": str(z_fit.dtype),
        "default": first,
        "longer": more,
        "cpu_count": os.cpu_count(),
        "threads": thread_info(),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("retrieval")
    r.add_argument("x")
    r.add_argument("labels")
    r.add_argument("--sample", type=int, default=300)
    f = sub.add_parser("retrieval-full")
    f.add_argument("x")
    f.add_argument("labels")
    lin = sub.add_parser("linear")
    lin.add_argument("x")
    lin.add_argument("labels")
    lin.add_argument("sets")
    lin.add_argument("--C", type=float, default=1.0)
    lin.add_argument("--max-iter", type=int, default=100)
    lin.add_argument("--target-acc", type=float)
    lin.add_argument("--budget", type=float, default=120.0)
    lin.add_argument("--grid", help="comma-separated C values, chosen on the SETS == 1 rows")
    args = p.parse_args()
    out = {"retrieval": retrieval, "retrieval-full": retrieval_full, "linear": linear}[args.cmd](
        args
    )
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
