"""Reads a partlens index directory with pyarrow and numpy only (no partlens code) and prints
what it finds as JSON, so the Rust tests can check that other tools see the same data.

    python read_index.py INDEX_DIR
"""

import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main():
    index = sys.argv[1]
    manifest = json.load(open(os.path.join(index, "manifest.json")))
    # Schema 3: segments/<name>/ each laid out as a schema-2 index, rows in segment order.
    if manifest["schema_version"] >= 3:
        segs = [os.path.join(index, "segments", s["name"]) for s in manifest["segments"]]
        parquet = [os.path.join(d, "regions", "part-00000.parquet") for d in segs]
    else:
        segs = [index]
        parquet = [os.path.join(index, s) for s in manifest["shards"]]
    table = pa.concat_tables([pq.read_table(p) for p in parquet])
    root = segs[0]
    out = {
        "rows": table.num_rows,
        "columns": table.column_names,
        "types": {f.name: str(f.type) for f in table.schema},
        "ids": table.column("id").to_pylist(),
        "label_names": table.column("label_name").to_pylist(),
        "kinds": table.column("kind").to_pylist(),
        "boxes": table.column("box").to_pylist(),
        "object_names": table.column("object_name").to_pylist(),
        "features": {},
    }
    for f in manifest["features"]:
        maps = [np.load(os.path.join(d, "features", f + ".npy"), mmap_mode="r") for d in segs]
        is_memmap = all(isinstance(m, np.memmap) for m in maps)
        mm = maps[0] if len(maps) == 1 else np.concatenate(maps)
        col = np.asarray(table.column(f).to_pylist(), dtype=np.float32)
        out["features"][f] = {
            "npy_shape": list(mm.shape),
            "npy_dtype": str(mm.dtype),
            "is_memmap": is_memmap,
            "parquet_vs_npy_max_abs_diff": float(np.abs(col - mm).max()) if len(col) else 0.0,
            "sum": float(np.asarray(mm, dtype=np.float64).sum()),
            "row0": [float(v) for v in mm[0]] if len(mm) else [],
        }
        # The unit rows: the stored rows divided by their norms.
        unit = np.concatenate(
            [np.load(os.path.join(d, "features", f + ".unit.npy"), mmap_mode="r") for d in segs])
        raw = np.asarray(mm, dtype=np.float64)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        want = np.where(norms > 0, raw / np.where(norms > 0, norms, 1), 0)
        out["features"][f]["unit_max_abs_diff"] = float(np.abs(unit - want).max())
        # The graph (the first segment's), read at the offsets ARCHITECTURE.md gives.
        b = open(os.path.join(root, "hnsw", manifest["hnsw"][f]["basename"] + ".graph"), "rb").read()
        n, dim, m, m0, layers = (int(np.frombuffer(b, "<u8", 1, 16)[0]),
                                 *(int(x) for x in np.frombuffer(b, "<u4", 4, 24)),)
        layers = int(np.frombuffer(b, "<u4", 1, 40)[0])
        levels = np.frombuffer(b, "u1", n, 256)
        lists = np.frombuffer(b, "<u4", n * (m0 + 1), 256 + (n + 7) // 8 * 8).reshape(n, m0 + 1)
        counts = lists[:, 0]
        ids = [int(i) for r in lists for i in r[1 : 1 + r[0]]]
        out["features"][f]["graph"] = {
            "magic": b[:8].decode("latin-1"),
            "n": n,
            "dim": dim,
            "m": m,
            "m0": m0,
            "layers": layers,
            "levels_max": int(levels.max()),
            "layer0_links": len(ids),
            "layer0_ids_in_range": all(0 <= i < n for i in ids),
            "layer0_max_count": int(counts.max()),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
