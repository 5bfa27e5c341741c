#!/usr/bin/env python3
"""Ingest a dataset as N shards in parallel on a Ray cluster, then merge them into one index.

Each shard is one Ray task that runs ``partlens ingest --shard i/N`` (a deterministic share of
the images: SHA-256 of the image's relative path, mod N) into its own folder; the driver then
runs ``partlens merge`` on the shard indexes in shard order. The result is the index a single
``partlens ingest`` of the whole dataset gives, region for region and vector for vector (region
ids follow shard order instead of dataset order). Needs Python 3 and ``pip install ray``; nothing
else (the embedding happens in the ``partlens`` binary).

Run it on one machine (a local Ray instance with 4 CPUs)::

    python3 examples/ray_ingest.py --partlens target/release/partlens \\
        --dataset data/samples/pascal_part --out indexes/pascal --shards 4 --num-cpus 4

On a cluster: the ``partlens`` binary, the dataset and the output folders must be on storage every
node sees under the same path (NFS, Lustre, a shared volume), and every node needs the partlens
setup (``partlens setup`` once per node and user, or ``--extra-args "--model /shared/m.onnx
--ort-lib /shared/libonnxruntime.so"``). Start the driver on a cluster node and connect with
``--address auto`` (or set ``RAY_ADDRESS``; ``ray job submit -- python3 examples/ray_ingest.py
…`` works too). Each task reserves ``--cpus-per-task`` CPUs; pass ``--extra-args "--threads K"``
to match. Every shard runs with ``--resume``: a task whose ``partlens`` process dies (out of
memory, node lost) is retried ``--max-retries`` times and continues after the last segment it
committed (``--extra-args "--segment-size 20000"`` commits more often). After a failure the
shard folders are kept: run the same command again and finished shards are only checked, not
redone. A shard that gets no region (possible with tiny datasets: ingest exits nonzero saying
"no region was indexed" and writes nothing) is reported and left out of the merge.

The same from Spark, one shard per partition and the merge on the driver::

    def run_shard(i):
        out = f"/shared/idx.shards/shard-{i:04d}-of-{N:04d}"
        p = subprocess.run(["/shared/partlens", "ingest", "--dataset", "/shared/data",
                            "--shard", f"{i}/{N}", "--out", out, "--resume"],
                           capture_output=True, text=True)
        if p.returncode and "no region was indexed" not in p.stderr:
            raise RuntimeError(f"shard {i}: {p.stderr[-2000:]}")   # Spark retries the task
        return out if p.returncode == 0 else None
    outs = [o for o in sc.parallelize(range(N), N).map(run_shard).collect() if o]
    subprocess.run(["/shared/partlens", "merge", "--out", "/shared/idx", *outs], check=True)

(``mapInPandas`` over a DataFrame of shard numbers does the same.) From Slurm, a job array runs
the shards and a job that depends on it merges them::

    #!/bin/bash
    #SBATCH --array=0-7 --cpus-per-task=4 --requeue       # ingest.sbatch, N = 8
    N=8; i=$SLURM_ARRAY_TASK_ID
    partlens ingest --dataset /shared/data --shard $i/$N --resume --threads 4 \
        --out /shared/idx.shards/shard-$(printf %04d $i)-of-$(printf %04d $N) 2> err.$i \
      || grep -q "no region was indexed" err.$i           # an empty shard is no failure

    jid=$(sbatch --parsable ingest.sbatch)
    sbatch --dependency=afterok:$jid --wrap \
        "partlens merge --out /shared/idx /shared/idx.shards/shard-*-of-0008"
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import ray

# What `partlens ingest` says when its share of the dataset holds no region.
EMPTY_SHARD = "no region was indexed"


class ShardFailed(RuntimeError):
    """A shard's `partlens ingest` exited nonzero (Ray retries the task on it)."""


def tail(text, lines=20):
    return "\n".join(text.rstrip().splitlines()[-lines:])


def shard_dir(work, i, n):
    return os.path.join(work, f"shard-{i:04d}-of-{n:04d}")


@ray.remote
def run_shard(binary, ingest_args, i, n, out):
    """One shard's ingest, as a Ray task; runs on whichever node Ray picks."""
    # --resume: a retry continues after the last segment a killed attempt committed, a rerun of
    # this script only checks a finished shard, and a fresh start is a plain ingest.
    cmd = [binary, "ingest", *ingest_args, "--shard", f"{i}/{n}", "--out", out,
           "--resume", "--json"]
    start = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = {
        "shard": i,
        "out": out,
        "seconds": round(time.monotonic() - start, 2),
        "host": os.uname().nodename,
    }
    if p.returncode == 0:
        try:
            counts = json.loads(p.stdout)["manifest"]["counts"]
            result["regions"] = counts["regions"]
            result["images"] = counts.get("images")
        except (ValueError, KeyError, TypeError):
            result["regions"] = None  # ingest succeeded; its report is only informative here
        result["status"] = "ok"
        return result
    if EMPTY_SHARD in p.stderr:
        result["status"] = "empty"
        return result
    if p.returncode < 0:
        how = f"was killed by {signal.Signals(-p.returncode).name}"
    else:
        how = f"exited with code {p.returncode}"
    raise ShardFailed(
        f"shard {i}/{n} on {result['host']}: partlens ingest {how}\n"
        f"  command: {shlex.join(cmd)}\n"
        f"  stderr (last lines):\n{tail(p.stderr)}"
    )


def describe(err):
    """The message of a task's failure, without Ray's wrapping traceback when possible."""
    cause = getattr(err, "cause", None)  # RayTaskError wraps what the task raised
    if cause is not None:
        return str(cause)
    return f"{type(err).__name__}: {err}"


def absolute(path):
    return os.path.abspath(os.path.expanduser(path))


def main():
    ap = argparse.ArgumentParser(
        description="Run `partlens ingest --shard i/N` for i in 0..N as Ray tasks, then merge."
    )
    ap.add_argument("--partlens", required=True,
                    help="the partlens binary (the same path on every node)")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", required=True, help="the merged index")
    ap.add_argument("--shards", type=int, required=True, help="N, the number of shards")
    ap.add_argument("--work", help="folder for the shard indexes (default: OUT.shards)")
    ap.add_argument("--address", default=None,
                    help="for ray.init: 'auto', 'ray://host:10001', 'local' (a new local "
                         "instance); default: $RAY_ADDRESS, else a cluster started on this "
                         "machine, else a new local instance")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local Ray instance")
    ap.add_argument("--cpus-per-task", type=float, default=1, help="CPUs Ray reserves per shard")
    ap.add_argument("--max-retries", type=int, default=2, help="retries of a failed shard task")
    ap.add_argument("--format", help="passed to ingest as --format")
    ap.add_argument("--extra-args", default="",
                    help='more ingest flags, one shell-quoted string: "--device cpu --threads 2"')
    ap.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    ap.add_argument("--keep-shards", action="store_true",
                    help="keep the shard indexes after the merge")
    args = ap.parse_args()
    if args.shards < 1:
        ap.error("--shards must be at least 1")

    binary = absolute(args.partlens) if os.sep in args.partlens else args.partlens
    out = absolute(args.out)
    work = absolute(args.work) if args.work else out + ".shards"
    if os.path.exists(out) and not args.overwrite:
        sys.exit(f"ray_ingest: {out} exists (pass --overwrite to replace it)")
    ingest_args = ["--dataset", absolute(args.dataset)]
    if args.format:
        ingest_args += ["--format", args.format]
    ingest_args += shlex.split(args.extra_args)
    os.makedirs(work, exist_ok=True)
    n = args.shards
    outs = [shard_dir(work, i, n) for i in range(n)]

    started = time.monotonic()
    init = {"address": args.address}
    if args.num_cpus is not None:
        init["num_cpus"] = args.num_cpus
    ray.init(**init)
    task = run_shard.options(
        num_cpus=args.cpus_per_task,
        max_retries=args.max_retries,        # the worker process or its node died
        retry_exceptions=[ShardFailed],      # partlens exited nonzero (killed, out of memory, …)
    )
    pending = {task.remote(binary, ingest_args, i, n, outs[i]): i for i in range(n)}
    results, failures = {}, {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done[0])
        try:
            r = ray.get(done[0])
        except Exception as e:  # noqa: BLE001 - any task failure is reported the same way
            failures[i] = describe(e)
            print(f"ray_ingest: shard {i}/{n} FAILED", file=sys.stderr)
            continue
        results[i] = r
        what = f"{r['regions']} regions" if r["status"] == "ok" else "no region (empty shard)"
        print(f"ray_ingest: shard {i}/{n} done on {r['host']} in {r['seconds']} s: {what}",
              file=sys.stderr)
    ingest_seconds = time.monotonic() - started
    ray.shutdown()

    if failures:
        for i in sorted(failures):
            print(f"ray_ingest: {failures[i]}\n", file=sys.stderr)
        sys.exit(f"ray_ingest: {len(failures)} of {n} shards failed; nothing merged. The shard "
                 f"folders in {work} are kept: run the same command again to resume.")

    full = [i for i in range(n) if results[i]["status"] == "ok"]
    empty = [i for i in range(n) if results[i]["status"] == "empty"]
    if not full:
        sys.exit(f"ray_ingest: no region was indexed in any of the {n} shards")
    if empty:
        print(f"ray_ingest: shards {empty} hold no region; merging the other {len(full)}",
              file=sys.stderr)

    merge = [binary, "merge", "--out", out, *(outs[i] for i in full), "--json"]
    if args.overwrite:
        merge.append("--overwrite")
    t = time.monotonic()
    p = subprocess.run(merge, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"ray_ingest: partlens merge exited with code {p.returncode}\n"
                 f"  command: {shlex.join(merge)}\n  stderr (last lines):\n{tail(p.stderr)}")
    merge_seconds = time.monotonic() - t
    p = subprocess.run([binary, "info", out, "--json"], stdout=subprocess.PIPE, text=True,
                       check=True)
    regions = json.loads(p.stdout)["manifest"]["counts"]["regions"]

    if not args.keep_shards:
        for d in outs:
            shutil.rmtree(d, ignore_errors=True)
        try:
            os.rmdir(work)
        except OSError:
            pass  # not empty: something else lives there

    print(json.dumps({
        "out": out,
        "regions": regions,
        "shards": n,
        "empty_shards": empty,
        "shard_regions": [results[i].get("regions", 0) for i in range(n)],
        "shards_kept": work if args.keep_shards else None,
        "ingest_seconds": round(ingest_seconds, 2),
        "merge_seconds": round(merge_seconds, 2),
    }))


if __name__ == "__main__":
    main()
