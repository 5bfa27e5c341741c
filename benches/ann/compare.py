#!/usr/bin/env python3
"""Build + search one ANN library (hnswlib or faiss HNSW) on given vectors.

Python half of the cross-library benchmark driven by benches/ann.rs.
Self-contained: needs only numpy, hnswlib, faiss (see setup_venv.sh).

    python compare.py --lib hnswlib|faiss --data DATA.npy --queries Q.npy \
        --truth TRUTH.npy --k 10 --M 24 --ef-construction 200 \
        --efs 10,16,24,32,48,64,96,128,192,256 --build-threads 2 --work DIR

DATA.npy  float32 N x D, rows L2-normalised (ids are row numbers 0..N-1)
Q.npy     float32 nq x D, rows L2-normalised
TRUTH.npy int64 nq x >=k, exact top-k ids by inner product

The build runs in this process (timed, `build_threads` threads) and the index
is saved under DIR.  The search measurements then run in a FRESH child process
(`--mode search`) that loads only the saved index, the queries and the truth,
uses ONE search thread, and for each ef (best of --repeats passes, default 3):
  * does the timed per-query loop (one 1 x D call per query, as a server would),
  * does one timed batched call over all queries (reference only, still 1 thread),
  * computes mean recall@k of the per-query results.
A warm-up pass (per-query loop at the largest ef) is run once before any timing.

stdout: JSON lines only, in this order
  {"lib","python_call_overhead_us","binding_call_overhead_us"}      (once)
  {"lib","ef","qps","qps_batched","recall"}            (one per ef, sweep order)
  {"lib","build_s","load_ms","rss_after_load_mb","peak_rss_mb","version",
   "rss_before_load_mb"}                               (once, last)
"mb" means MiB.  Extra fields beyond the brief:
  binding_call_overhead_us  the real search call on a 1-element index of the
                            same dim (arg conversion + result allocation);
                            python_call_overhead_us is only loop + a trivial call
  rss_before_load_mb        child RSS after importing numpy + the library and
                            before loading the index (after - before = index)
peak_rss_mb is the child's VmHWM (see peak_rss_kib for why not ru_maxrss).
Everything else (logs, native-library chatter) goes to stderr.
"""

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

# ---------------------------------------------------------------------------
# stdout hygiene: keep the real stdout for our JSON only, and point fd 1 at
# stderr so anything a native library prints cannot corrupt the JSON stream.
# ---------------------------------------------------------------------------
_JSON_OUT = os.fdopen(os.dup(1), "w", buffering=1)
sys.stdout.flush()
os.dup2(2, 1)
sys.stdout = sys.stderr


def emit(obj):
    _JSON_OUT.write(json.dumps(obj) + "\n")
    _JSON_OUT.flush()


def log(*a):
    print("[compare.py]", *a, file=sys.stderr, flush=True)


def vmrss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def peak_rss_kib():
    """Peak RSS of THIS process image, KiB.

    getrusage(RUSAGE_SELF).ru_maxrss is wrong for the search child: on exec
    Linux folds the pre-exec mm's high-water mark into signal->maxrss, and
    Python's subprocess uses vfork, so the child's ru_maxrss starts at the
    parent's peak (data + built index).  /proc/self/status VmHWM is per-mm and
    starts fresh at exec, so prefer it; ru_maxrss is the fallback.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def lib_version(lib):
    from importlib import metadata

    dist = "faiss-cpu" if lib == "faiss" else "hnswlib"
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        mod = __import__(lib)
        return getattr(mod, "__version__", "unknown")


def index_path(work, lib):
    return os.path.join(work, "index_hnswlib.bin" if lib == "hnswlib" else "index_faiss.index")


def parse_efs(s):
    efs = [int(x) for x in s.split(",") if x.strip()]
    if not efs or any(e <= 0 for e in efs):
        raise SystemExit("--efs must be a comma-separated list of positive ints")
    return efs


# ---------------------------------------------------------------------------
# build (parent process)
# ---------------------------------------------------------------------------
def build(args):
    import numpy as np

    data = np.load(args.data, mmap_mode=None)
    if data.ndim != 2:
        raise SystemExit(f"{args.data}: expected a 2-D array, got shape {data.shape}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    n, d = data.shape
    os.makedirs(args.work, exist_ok=True)
    path = index_path(args.work, args.lib)
    log(f"{args.lib}: building N={n} D={d} M={args.M} efC={args.ef_construction} "
        f"threads={args.build_threads}")

    if args.lib == "hnswlib":
        import hnswlib

        ids = np.arange(n, dtype=np.int64)
        t0 = time.perf_counter()
        index = hnswlib.Index(space="ip", dim=d)
        index.init_index(max_elements=n, M=args.M, ef_construction=args.ef_construction,
                         random_seed=100)
        index.set_num_threads(args.build_threads)
        index.add_items(data, ids)
        build_s = time.perf_counter() - t0
        index.save_index(path)
    else:
        import faiss

        faiss.omp_set_num_threads(args.build_threads)
        t0 = time.perf_counter()
        index = faiss.IndexHNSWFlat(d, args.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        index.add(data)
        build_s = time.perf_counter() - t0
        faiss.write_index(index, path)

    log(f"{args.lib}: build {build_s:.3f} s, index saved to {path} "
        f"({os.path.getsize(path) / 2**20:.1f} MiB)")
    del index, data
    gc.collect()
    return build_s, path, d


def run_child(args, path, dim):
    cmd = [
        sys.executable, os.path.abspath(__file__), "--mode", "search",
        "--lib", args.lib, "--index", path, "--dim", str(dim),
        "--queries", args.queries, "--truth", args.truth,
        "--k", str(args.k), "--efs", args.efs, "--repeats", str(args.repeats),
        "--M", str(args.M),
    ]
    env = dict(os.environ)
    # belt and braces on top of the API calls in the child
    env["OMP_NUM_THREADS"] = "1"
    env["OPENBLAS_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, env=env, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"search child failed with exit code {proc.returncode}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------------------
# search (fresh child process)
# ---------------------------------------------------------------------------
def recall_at_k(found, truth, k):
    # found: nq x k ids (may contain -1), truth: nq x k ids
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / k)


def search(args):
    import numpy as np

    lib = args.lib
    efs = parse_efs(args.efs)
    k = args.k
    if lib == "hnswlib":
        import hnswlib
    else:
        import faiss
    # baseline: interpreter + numpy + the library, before the index is loaded
    rss_before = vmrss_kib()

    if lib == "hnswlib":
        t0 = time.perf_counter()
        index = hnswlib.Index(space="ip", dim=args.dim)
        index.load_index(args.index)
        load_ms = (time.perf_counter() - t0) * 1e3
        index.set_num_threads(1)

        def set_ef(ef):
            index.set_ef(ef)

        def query_one(x):
            return index.knn_query(x, k=k)[0]

        def query_batch(q):
            return index.knn_query(q, k=k)[0]

        def trivial():
            return index.get_current_count()

        def make_tiny(x):  # 1-element index of the same dim: binding cost only
            t = hnswlib.Index(space="ip", dim=args.dim)
            t.init_index(max_elements=1, M=args.M, ef_construction=10)
            t.set_num_threads(1)
            t.add_items(x, np.zeros(1, dtype=np.int64))
            return lambda y: t.knn_query(y, k=1)[0]
    else:
        t0 = time.perf_counter()
        index = faiss.read_index(args.index)
        load_ms = (time.perf_counter() - t0) * 1e3
        faiss.omp_set_num_threads(1)

        def set_ef(ef):
            index.hnsw.efSearch = ef

        def query_one(x):
            return index.search(x, k)[1]

        def query_batch(q):
            return index.search(q, k)[1]

        def trivial():
            return index.ntotal

        def make_tiny(x):
            t = faiss.IndexHNSWFlat(args.dim, args.M, faiss.METRIC_INNER_PRODUCT)
            t.add(x)
            return lambda y: t.search(y, 1)[1]

    rss_after_load = vmrss_kib()
    log(f"{lib}: loaded {args.index} in {load_ms:.1f} ms, RSS {rss_before / 1024:.1f} -> "
        f"{rss_after_load / 1024:.1f} MiB")

    queries = np.ascontiguousarray(np.load(args.queries), dtype=np.float32)
    truth = np.load(args.truth)
    if queries.ndim != 2 or queries.shape[1] != args.dim:
        raise SystemExit(f"queries shape {queries.shape} does not match dim {args.dim}")
    if truth.ndim != 2 or truth.shape[0] != queries.shape[0] or truth.shape[1] < k:
        raise SystemExit(f"truth shape {truth.shape} does not fit {queries.shape[0]} queries x k={k}")
    truth = truth[:, :k].astype(np.int64)
    nq = queries.shape[0]
    # one contiguous 1 x D array per query, prepared outside the timed loop
    rows = [queries[i:i + 1].copy() for i in range(nq)]

    def timed_loop(fn):
        out = [None] * nq
        t = time.perf_counter()
        for i, x in enumerate(rows):
            out[i] = fn(x)
        return time.perf_counter() - t, out

    # warm-up: one full per-query pass at the largest ef (touches the most of the graph)
    set_ef(max(efs))
    timed_loop(query_one)

    # Python call overhead, best of 3 passes over the same loop shape:
    #  * python_call_overhead_us: a trivial method / attribute call on the index
    #    (loop + call dispatch; what the brief asked for)
    #  * binding_call_overhead_us (extra): the real search call on a 1-element
    #    index of the same dim, i.e. argument conversion, GIL release, result
    #    array allocation + one distance; the per-query cost that is not graph work
    tiny = make_tiny(rows[0])
    over = min(timed_loop(lambda x: trivial())[0] for _ in range(3))
    bind = min(timed_loop(tiny)[0] for _ in range(3))
    del tiny
    emit({"lib": lib, "python_call_overhead_us": round(over / nq * 1e6, 3),
          "binding_call_overhead_us": round(bind / nq * 1e6, 3)})

    for ef in efs:
        set_ef(ef)
        best_pq, best_b, found = float("inf"), float("inf"), None
        for _ in range(args.repeats):
            dt, out = timed_loop(query_one)
            if dt < best_pq:
                best_pq, found = dt, out
            t = time.perf_counter()
            batched = query_batch(queries)
            best_b = min(best_b, time.perf_counter() - t)
        found = np.vstack(found).astype(np.int64)
        rec = recall_at_k(found, truth, k)
        rec_b = recall_at_k(np.asarray(batched, dtype=np.int64), truth, k)
        if abs(rec - rec_b) > 1e-9:
            log(f"{lib}: note: ef={ef} batched recall {rec_b:.4f} != per-query {rec:.4f}")
        emit({"lib": lib, "ef": ef, "qps": round(nq / best_pq, 1),
              "qps_batched": round(nq / best_b, 1), "recall": round(rec, 5)})
        log(f"{lib}: ef={ef:4d} qps={nq / best_pq:9.1f} batched={nq / best_b:9.1f} recall={rec:.4f}")

    emit({"lib": lib, "load_ms": round(load_ms, 2),
          "rss_after_load_mb": round(rss_after_load / 1024, 1),
          "peak_rss_mb": round(peak_rss_kib() / 1024, 1),
          "version": lib_version(lib),
          "rss_before_load_mb": round(rss_before / 1024, 1)})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["run", "search"], default="run",
                    help="run = build, save, then search in a fresh child (default); "
                         "search = internal child mode")
    ap.add_argument("--lib", choices=["hnswlib", "faiss"], required=True)
    ap.add_argument("--data", help="DATA.npy (float32 N x D); run mode only")
    ap.add_argument("--queries", required=True)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--M", type=int, default=24)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--efs", default="10,16,24,32,48,64,96,128,192,256")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--work", help="directory for the saved index; run mode only")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed passes per ef, fastest kept (default 3)")
    ap.add_argument("--index", help=argparse.SUPPRESS)  # search mode
    ap.add_argument("--dim", type=int, help=argparse.SUPPRESS)  # search mode
    args = ap.parse_args()
    parse_efs(args.efs)
    if args.k <= 0 or args.repeats <= 0:
        ap.error("--k and --repeats must be positive")

    if args.mode == "search":
        if not args.index or not args.dim:
            ap.error("--mode search needs --index and --dim")
        search(args)
        return

    if not args.data or not args.work:
        ap.error("--data and --work are required")
    build_s, path, dim = build(args)
    lines = run_child(args, path, dim)
    for obj in lines:
        if "load_ms" in obj:
            obj = {"lib": obj["lib"], "build_s": round(build_s, 3), **{
                key: v for key, v in obj.items() if key != "lib"}}
        emit(obj)


if __name__ == "__main__":
    main()
