//! partlens at scale: `partlens import` of 100,000 and of 1,000,000 × 384 float32 vectors,
//! then the imported index opened and queried in a fresh process, and how every figure grows
//! from one scale to the other. Nothing is asserted; every figure is printed with its
//! baseline (the smaller scale) and the ratio.
//!
//! Data (seeded, cached under `~/.cache/partlens/bench-data/scale-<n>/` and reused): N raw
//! (not unit-norm) 384-d vectors, each one of 1,000 seeded centres plus uniform noise times a
//! random scale, written as `X.npy` (`<f4`, C order); a Parquet `M.parquet` of one row per
//! vector (`image`, `split`, `kind`, `label_name`, `label`, `object_name`, `box`, `area`,
//! `instance`; 8 regions per image); 1,000 held-out queries from the same distribution; and
//! their exact top-10 by cosine (every stored row scored by the index's own dot kernel, ties
//! to the smaller id) as the recall truth.
//!
//! Per layout — 100k (default `--segment-size` 100,000: one segment), 1M at the default
//! segment size (10 segments, each with its own graph, searched and merged per query) and 1M
//! as one segment (`--segment-size 1000000`):
//! 1. **import**: the `partlens` binary of this build runs `import --json` (M = 24,
//!    ef_construction = 200, the defaults) under a small wrapper process (this binary
//!    re-run) whose only child it is, so getrusage(RUSAGE_CHILDREN) is the import's own peak
//!    RSS (a child spawned straight from this process would inherit this process's peak
//!    through vfork + exec). Printed: wall time, the report's `seconds` and `hnsw_seconds`,
//!    peak RSS, bytes on disk.
//! 2. **query**, in a fresh process (this binary re-run), the page cache warm from the
//!    import: `QueryEngine::open` timed (goal < 1 s at 1M), then the 1,000 queries one at a
//!    time through `search_vector` (k = 10, the hits' metadata read as a user gets it) for
//!    ef 64 (the default) and 256, two passes each: the first pass is every page's first
//!    touch in this process, the second is steady state. Per-query latency p50/p99 and
//!    recall@10 against the truth. After each pass, VmRSS / RssAnon / RssFile / VmHWM and,
//!    from `/proc/self/smaps`, the mapped bytes and the resident (touched) bytes of each of
//!    the index's mapped files, split into unit rows, graphs, raw rows and other (also after
//!    open and after the first query). Resident is what RSS counts, not what the search
//!    read: on a fault the kernel also maps the file's neighbouring pages already in the page
//!    cache (fault-around, 64 KB by default), so with a warm cache "touched" is an upper
//!    bound of the bytes read. The query process's peak RSS is VmHWM after the ef 64 passes. Then, as diagnostics after those
//!    figures are taken: the same queries through the segment graphs alone (no metadata)
//!    and 20 queries with `exact: true`, compared with the truth.
//! 3. **cold open**: every index file dropped from the page cache (fdatasync +
//!    posix_fadvise DONTNEED), another fresh process times `open` and the first query.
//!
//! Growth, per figure, 100k → each 1M layout: the ratio. The memory goal is that query RSS
//! grows no faster than the mapped data the queries touched (and far slower than N): the
//! RSS ratio is printed next to the touched-bytes ratio and N's ratio.
//!
//! `cargo bench --bench scale`; `PARTLENS_BENCH_QUICK=1` runs 10k and 50k (segment size
//! 10k, 200 queries) as a smoke run. The indexes (~5 GB at 1M) are deleted at the end unless
//! `PARTLENS_SCALE_KEEP=1`; `PARTLENS_SCALE_ONE_SEGMENT=0` skips the one-segment 1M layout.
//! Needs ~16 GB free disk for the full run (data 1.7 GB per scale, one index at a time).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{
    FixedSizeListBuilder, Int32Builder, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use partlens::index::{normalize_rows, Dot};
use partlens::query::{QueryEngine, SearchOptions};
use partlens::store::{NpyMatrix, NpyWriter};
use partlens::{EncoderOptions, Feature};
use rayon::prelude::*;
use serde_json::{json, Value};

const DIM: usize = 384;
const K: usize = 10;
const CENTRES: usize = 1000;
const NOISE: f32 = 0.35;
const REGIONS_PER_IMAGE: usize = 8;
const EFS: [usize; 2] = [64, 256];
/// Queries searched with `exact: true` to check the truth against the engine's exact search.
const EXACT_SAMPLE: usize = 20;
const SEED: u64 = 0x5ca1e;
/// Bumped whenever the generator changes, so cached data is regenerated.
const DATA_VERSION: u64 = 1;

fn quick() -> bool {
    std::env::var_os("PARTLENS_BENCH_QUICK").is_some()
}

fn queries() -> usize {
    if quick() {
        200
    } else {
        1000
    }
}

fn cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/partlens/bench-data")
}

// ---------------------------------------------------------------- process memory

/// `/proc/self/status` fields in MB.
fn status() -> Value {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |field: &str| {
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    json!({
        "vm_rss_mb": get("VmRSS:"),
        "rss_anon_mb": get("RssAnon:"),
        "rss_file_mb": get("RssFile:"),
        "vm_hwm_mb": get("VmHWM:"),
    })
}

/// What of the index's files this process has mapped and touched, from `/proc/self/smaps`:
/// per kind of file, the mapped size and the resident bytes, MB.
fn mapped(index: &Path) -> Value {
    let index = index.canonicalize().unwrap_or_else(|_| index.to_path_buf());
    let prefix = index.to_string_lossy().into_owned();
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    // kind → (mapped kB, resident kB, mappings)
    let mut kinds: std::collections::BTreeMap<&str, (f64, f64, usize)> = Default::default();
    let mut current: Option<&str> = None;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address perms offset dev inode [path].
            let path = line.split_whitespace().nth(5).map(|_| {
                let mut rest = line;
                for _ in 0..5 {
                    rest = rest.trim_start();
                    rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
                }
                rest.trim()
            });
            current = path.filter(|p| p.starts_with(&prefix)).map(|p| {
                if p.ends_with(".unit.npy") {
                    "unit"
                } else if p.ends_with(".graph") {
                    "graph"
                } else if p.ends_with(".npy") {
                    "raw"
                } else if p.ends_with(".parquet") {
                    "parquet"
                } else {
                    "other"
                }
            });
            if let Some(k) = current {
                kinds.entry(k).or_default().2 += 1;
            }
            continue;
        }
        let Some(k) = current else { continue };
        let kb = f.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        match first {
            "Size:" => kinds.entry(k).or_default().0 += kb,
            "Rss:" => kinds.entry(k).or_default().1 += kb,
            _ => {}
        }
    }
    let mut out = serde_json::Map::new();
    let (mut tm, mut tr) = (0.0, 0.0);
    for (k, (m, r, n)) in kinds {
        tm += m;
        tr += r;
        out.insert(
            k.into(),
            json!({"mapped_mb": m / 1024.0, "touched_mb": r / 1024.0, "maps": n}),
        );
    }
    out.insert(
        "total".into(),
        json!({"mapped_mb": tm / 1024.0, "touched_mb": tr / 1024.0}),
    );
    Value::Object(out)
}

/// The mean figure of `v`'s memory snapshot under `path`, e.g. `["mapped", "unit", "touched_mb"]`.
fn num(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------- data

/// splitmix64: a stateless per-row stream, so rows generate in parallel and identically.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64, i: u64) -> Rng {
        let mut r = Rng(seed
            ^ stream.wrapping_mul(0x9e3779b97f4a7c15)
            ^ i.wrapping_mul(0xbf58476d1ce4e5b9));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-0.5, 0.5).
    fn centred(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn centres() -> Vec<f32> {
    (0..CENTRES)
        .flat_map(|c| {
            let mut r = Rng::new(SEED, 1, c as u64);
            (0..DIM).map(move |_| r.centred()).collect::<Vec<_>>()
        })
        .collect()
}

/// Row `i` of stream `stream` (2: stored rows, 3: queries): a centre plus uniform noise,
/// times a random scale in [0.5, 2) (raw vectors are not unit-norm; cosine ignores it).
fn point(centres: &[f32], stream: u64, i: usize, out: &mut Vec<f32>) {
    let mut r = Rng::new(SEED, stream, i as u64);
    let c = (r.next() % CENTRES as u64) as usize;
    let scale = 0.5 + 1.5 * (r.centred() + 0.5);
    out.extend(
        centres[c * DIM..(c + 1) * DIM]
            .iter()
            .map(|&x| (x + NOISE * r.centred()) * scale),
    );
}

/// The data set of one scale: vectors, metadata, queries and truth, made once.
struct Data {
    dir: PathBuf,
    n: usize,
}

impl Data {
    fn vectors(&self) -> PathBuf {
        self.dir.join("X.npy")
    }
    fn metadata(&self) -> PathBuf {
        self.dir.join("M.parquet")
    }
    fn queries(&self) -> PathBuf {
        self.dir.join("Q.npy")
    }
    fn truth(&self) -> PathBuf {
        self.dir.join("truth.bin")
    }
}

fn data(n: usize) -> Data {
    let q = queries();
    let dir = cache().join(format!("scale-{n}"));
    let d = Data { dir, n };
    let stamp = json!({"version": DATA_VERSION, "n": n, "dim": DIM, "queries": q,
        "centres": CENTRES, "noise": NOISE, "seed": SEED, "k": K});
    let stamp_file = d.dir.join("done.json");
    if std::fs::read_to_string(&stamp_file)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .is_some_and(|s| s == stamp)
    {
        println!("scale: data {n} × {DIM} reused from {}", d.dir.display());
        return d;
    }
    let _ = std::fs::remove_file(&stamp_file);
    std::fs::create_dir_all(&d.dir).expect("data dir");
    let cs = centres();

    let t = Instant::now();
    let mut w = NpyWriter::create(d.vectors(), DIM).expect("X.npy");
    const BLOCK: usize = 32_768;
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let rows: Vec<f32> = (start..end)
            .into_par_iter()
            .flat_map_iter(|i| {
                let mut v = Vec::with_capacity(DIM);
                point(&cs, 2, i, &mut v);
                v
            })
            .collect();
        w.append(&rows).expect("X.npy");
    }
    w.finish().expect("X.npy");
    let mut w = NpyWriter::create(d.queries(), DIM).expect("Q.npy");
    let mut qs = Vec::with_capacity(q * DIM);
    for i in 0..q {
        point(&cs, 3, i, &mut qs);
    }
    w.append(&qs).expect("Q.npy");
    w.finish().expect("Q.npy");
    let gen_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    write_metadata(&d.metadata(), n);
    let meta_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let x = NpyMatrix::open(d.vectors()).expect("X.npy");
    let truth = exact_truth(x.as_slice(), &qs);
    let ids: Vec<u8> = truth.iter().flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(d.truth(), ids).expect("truth");
    println!(
        "scale: data {n} × {DIM}: vectors {gen_s:.1} s, metadata {meta_s:.1} s, exact truth of {q} queries {:.1} s ({}), in {}",
        t.elapsed().as_secs_f64(),
        Dot::detect().name(),
        d.dir.display()
    );
    std::fs::write(&stamp_file, stamp.to_string()).expect("stamp");
    d
}

/// One Parquet row per vector, in the columns `partlens import --metadata` reads.
fn write_metadata(path: &Path, n: usize) {
    let item = Arc::new(Field::new("item", DataType::Int32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("label_name", DataType::Utf8, true),
        Field::new("label", DataType::UInt32, true),
        Field::new("object_name", DataType::Utf8, true),
        Field::new("box", DataType::FixedSizeList(item.clone(), 4), true),
        Field::new("area", DataType::UInt64, true),
        Field::new("instance", DataType::UInt32, true),
    ]));
    let file = std::fs::File::create(path).expect("M.parquet");
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).expect("parquet");
    const OBJECTS: [&str; 8] = ["person", "dog", "cat", "car", "bird", "horse", "cow", "bus"];
    const PARTS: [&str; 8] = [
        "head", "torso", "leg", "wheel", "wing", "tail", "door", "arm",
    ];
    const BATCH: usize = 65_536;
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let mut image = StringBuilder::new();
        let mut split = StringBuilder::new();
        let mut kind = StringBuilder::new();
        let mut label_name = StringBuilder::new();
        let mut label = UInt32Builder::new();
        let mut object = StringBuilder::new();
        let mut bx = FixedSizeListBuilder::new(Int32Builder::new(), 4).with_field(item.clone());
        let mut area = UInt64Builder::new();
        let mut instance = UInt32Builder::new();
        for i in start..end {
            let img = i / REGIONS_PER_IMAGE;
            let within = i % REGIONS_PER_IMAGE;
            let mut r = Rng::new(SEED, 4, i as u64);
            let obj = OBJECTS[img % OBJECTS.len()];
            image.append_value(format!("images/{:03}/{img:07}.jpg", img / 10_000));
            split.append_value(if img.is_multiple_of(10) {
                "val"
            } else {
                "train"
            });
            if within == 0 {
                kind.append_value("object");
                label_name.append_value(obj);
                label.append_value((img % OBJECTS.len()) as u32);
                object.append_null();
            } else {
                let p = (r.next() % PARTS.len() as u64) as usize;
                kind.append_value("part");
                label_name.append_value(format!("{obj}/{}", PARTS[p]));
                label.append_value((100 + (img % OBJECTS.len()) * PARTS.len() + p) as u32);
                object.append_value(obj);
            }
            let (w_, h_) = (8 + (r.next() % 240) as i32, 8 + (r.next() % 240) as i32);
            let (x0, y0) = ((r.next() % 256) as i32, (r.next() % 256) as i32);
            bx.values().append_slice(&[x0, y0, x0 + w_, y0 + h_]);
            bx.append(true);
            area.append_value((w_ * h_) as u64);
            instance.append_value(within as u32);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(image.finish()),
            Arc::new(split.finish()),
            Arc::new(kind.finish()),
            Arc::new(label_name.finish()),
            Arc::new(label.finish()),
            Arc::new(object.finish()),
            Arc::new(bx.finish()),
            Arc::new(area.finish()),
            Arc::new(instance.finish()),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).expect("batch");
        w.write(&batch).expect("parquet");
    }
    w.close().expect("parquet");
}

/// Exact top-`K` ids of every query by cosine over `x` (raw rows, normalised here as the
/// index normalises them), scored by the index's dot kernel; ties to the smaller id. Rows
/// are taken in tiles that stay in cache while every query is scored against them.
fn exact_truth(x: &[f32], queries: &[f32]) -> Vec<u32> {
    let q = normalize_rows(queries, DIM);
    let nq = q.len() / DIM;
    let dot = Dot::detect();
    const TILE: usize = 1024;
    type Top = Vec<Vec<(f32, u32)>>;
    let better = |a: &(f32, u32), b: &(f32, u32)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
    let push = move |top: &mut Vec<(f32, u32)>, h: (f32, u32)| {
        if !h.0.is_finite() {
            return;
        }
        if top.len() == K && !better(&h, &top[K - 1]) {
            return;
        }
        let at = top.iter().position(|t| better(&h, t)).unwrap_or(top.len());
        top.insert(at, h);
        top.truncate(K);
    };
    let top: Top = x
        .par_chunks(TILE * DIM)
        .enumerate()
        .fold(
            || vec![Vec::with_capacity(K + 1); nq],
            |mut top: Top, (t, tile)| {
                let unit = normalize_rows(tile, DIM);
                for (qi, qv) in q.chunks_exact(DIM).enumerate() {
                    for (r, row) in unit.chunks_exact(DIM).enumerate() {
                        push(&mut top[qi], (dot.dot(row, qv), (t * TILE + r) as u32));
                    }
                }
                top
            },
        )
        .reduce(
            || vec![Vec::new(); nq],
            |mut a, b| {
                for (ta, tb) in a.iter_mut().zip(b) {
                    for h in tb {
                        push(ta, h);
                    }
                }
                a
            },
        );
    top.into_iter()
        .flat_map(|t| {
            assert_eq!(t.len(), K);
            t.into_iter().map(|h| h.1)
        })
        .collect()
}

fn read_truth(path: &Path) -> Vec<Vec<u64>> {
    let b = std::fs::read(path).expect("truth");
    let ids: Vec<u64> = b
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as u64)
        .collect();
    ids.chunks(K).map(<[u64]>::to_vec).collect()
}

fn recall(truth: &[Vec<u64>], got: &[Vec<u64>]) -> f64 {
    let hit: usize = truth
        .iter()
        .zip(got)
        .map(|(t, g)| t.iter().filter(|i| g.contains(i)).count())
        .sum();
    hit as f64 / (got.len().max(1) * K) as f64
}

/// p50 and p99 of `ms` (nearest rank).
fn percentiles(ms: &mut [f64]) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| {
        if ms.is_empty() {
            return f64::NAN;
        }
        let i = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
        ms[i]
    };
    (at(0.50), at(0.99))
}

// ---------------------------------------------------------------- children

/// The query child: open `index`, search every query of `data` for each ef, and print one
/// JSON object of everything measured.
fn query_child(index: &Path, data: &Path) {
    let t = Instant::now();
    let engine = QueryEngine::open(index, &EncoderOptions::default()).expect("open index");
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let after_open = json!({"status": status(), "mapped": mapped(index)});
    // The queries copied out of their map, so the only mapped files are the index's.
    let qs: Vec<f32> = NpyMatrix::open(data.join("Q.npy"))
        .expect("queries")
        .as_slice()
        .to_vec();
    let truth = read_truth(&data.join("truth.bin"));
    let nq = qs.len() / DIM;
    let first = engine
        .search_vector(&qs[..DIM], &SearchOptions::default())
        .expect("first query");
    let first_query_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(first.len(), K);
    let after_first = json!({"status": status(), "mapped": mapped(index)});
    let segments = engine.index().segments().len();

    let mut passes = Vec::new();
    let mut peak_default = Value::Null;
    for ef in EFS {
        let opts = SearchOptions {
            k: K,
            ef,
            ..Default::default()
        };
        for pass in 1..=2 {
            let mut ms = Vec::with_capacity(nq);
            let mut got = Vec::with_capacity(nq);
            for qv in qs.chunks_exact(DIM) {
                let t = Instant::now();
                let hits = engine.search_vector(qv, &opts).expect("search");
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                got.push(hits.iter().map(|h| h.id).collect::<Vec<u64>>());
            }
            let total_s = ms.iter().sum::<f64>() / 1e3;
            let (p50, p99) = percentiles(&mut ms);
            passes.push(json!({"ef": ef, "pass": pass, "p50_ms": p50, "p99_ms": p99,
                "qps": nq as f64 / total_s, "recall": recall(&truth, &got),
                "status": status(), "mapped": mapped(index)}));
        }
        if ef == EFS[0] {
            peak_default = status();
        }
    }

    // Diagnostics, after the memory figures: the graph walk alone (no metadata), and the
    // engine's exact search against the bench's truth.
    let graphs = engine
        .index()
        .segment_graphs(Feature::Mean)
        .expect("segment graphs");
    let unit_q = normalize_rows(&qs, DIM);
    let mut ms = Vec::with_capacity(nq);
    let mut got = Vec::with_capacity(nq);
    for qv in unit_q.chunks_exact(DIM) {
        let t = Instant::now();
        let hits = graphs.search(qv, K, EFS[0], None);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        got.push(hits.iter().map(|h| h.id as u64).collect::<Vec<u64>>());
    }
    let (g50, g99) = percentiles(&mut ms);
    let graph_only = json!({"ef": EFS[0], "p50_ms": g50, "p99_ms": g99,
        "recall": recall(&truth, &got)});
    let exact_opts = SearchOptions {
        k: K,
        exact: true,
        ..Default::default()
    };
    let mut ms = Vec::new();
    let mut got = Vec::new();
    for qv in qs.chunks_exact(DIM).take(EXACT_SAMPLE) {
        let t = Instant::now();
        let hits = engine.search_vector(qv, &exact_opts).expect("exact");
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        got.push(hits.iter().map(|h| h.id).collect::<Vec<u64>>());
    }
    let (e50, _) = percentiles(&mut ms);
    let exact = json!({"queries": got.len(), "p50_ms": e50,
        "agreement": recall(&truth[..got.len()], &got)});

    println!(
        "{}",
        json!({"open_ms": open_ms, "first_query_ms": first_query_ms, "segments": segments,
            "queries": nq, "threads": rayon::current_num_threads(),
            "after_open": after_open, "after_first": after_first, "passes": passes, "peak_default": peak_default,
            "graph_only": graph_only, "exact": exact, "final": status()})
    );
}

/// The cold child: open and one query only, for a page cache emptied of the index.
fn cold_child(index: &Path, data: &Path) {
    let t = Instant::now();
    let engine = QueryEngine::open(index, &EncoderOptions::default()).expect("open index");
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let q = NpyMatrix::open(data.join("Q.npy")).expect("queries");
    let t1 = Instant::now();
    let hits = engine
        .search_vector(q.row(0), &SearchOptions::default())
        .expect("first query");
    let query_ms = t1.elapsed().as_secs_f64() * 1e3;
    assert_eq!(hits.len(), K);
    println!(
        "{}",
        json!({"open_ms": open_ms, "first_query_ms": query_ms,
            "open_and_first_ms": t.elapsed().as_secs_f64() * 1e3, "status": status()})
    );
}

/// The wrapper: runs `args` as its only child, passes its stdout through, then prints the
/// child's peak RSS and exit status after a marker line.
fn wrapper(args: &[String]) {
    let out = Command::new(&args[0])
        .args(&args[1..])
        .stderr(Stdio::inherit())
        .output()
        .expect("run the child");
    // SAFETY: getrusage writes into the struct it is given.
    let maxrss_kb = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss
    };
    let mut o = std::io::stdout().lock();
    o.write_all(&out.stdout).expect("stdout");
    writeln!(
        o,
        "\n{MARKER}{}",
        json!({"peak_rss_mb": maxrss_kb as f64 / 1024.0, "code": out.status.code()})
    )
    .expect("stdout");
}

const MARKER: &str = "@@partlens-scale-wrapper@@ ";

// ---------------------------------------------------------------- parent

/// Everything measured of one layout.
struct Run {
    name: String,
    n: usize,
    segment_size: usize,
    import_wall_s: f64,
    import: Value,
    import_rss_mb: f64,
    disk_mb: f64,
    query: Value,
    cold: Value,
}

fn dir_bytes(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Drops every file of `dir` from the page cache (written back first).
fn evict(dir: &Path) {
    use std::os::fd::AsRawFd;
    for e in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
    {
        if !e.file_type().is_file() {
            continue;
        }
        if let Ok(f) = std::fs::File::open(e.path()) {
            let _ = f.sync_data();
            // SAFETY: a valid descriptor; advice only.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

fn last_json(stdout: &[u8]) -> Value {
    let s = String::from_utf8_lossy(stdout);
    s.lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l.trim())
                .ok()
                .filter(Value::is_object)
        })
        .unwrap_or(Value::Null)
}

fn child(vars: &[(&str, &Path)]) -> Value {
    let mut c = Command::new(std::env::current_exe().expect("exe"));
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = c.stderr(Stdio::inherit()).output().expect("child");
    if !out.status.success() {
        println!("scale: child {vars:?} failed: {}", out.status);
        return Value::Null;
    }
    last_json(&out.stdout)
}

fn run_layout(name: &str, d: &Data, segment_size: usize) -> Run {
    let index = cache().join("scale-index").join(name);
    std::fs::create_dir_all(index.parent().unwrap()).expect("index dir");
    println!(
        "\nscale/{name}: import {} × {DIM}, --segment-size {segment_size} (M = 24, ef_construction = 200)",
        d.n
    );
    let t = Instant::now();
    let out = Command::new(std::env::current_exe().expect("exe"))
        .env("PARTLENS_SCALE_WRAP", "1")
        .arg(env!("CARGO_BIN_EXE_partlens"))
        .args(["-q", "import", "--vectors"])
        .arg(d.vectors())
        .arg("--metadata")
        .arg(d.metadata())
        .arg("--out")
        .arg(&index)
        .args(["--segment-size", &segment_size.to_string()])
        .args([
            "--hnsw-m",
            "24",
            "--ef-construction",
            "200",
            "--overwrite",
            "--json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("import");
    let import_wall_s = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.split_once(MARKER).unwrap_or((&text, "{}"));
    let wrap: Value = serde_json::from_str(tail.trim()).unwrap_or(Value::Null);
    let import: Value = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if a < b => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let mut run = Run {
        name: name.into(),
        n: d.n,
        segment_size,
        import_wall_s,
        import_rss_mb: wrap["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
        import,
        disk_mb: dir_bytes(&index) as f64 / 1048576.0,
        query: Value::Null,
        cold: Value::Null,
    };
    if wrap["code"].as_i64() != Some(0) || !out.status.success() {
        println!(
            "scale/{name}: import FAILED (exit {}): {}",
            wrap["code"],
            body.trim()
        );
        return run;
    }
    println!(
        "scale/{name}: import done in {import_wall_s:.1} s: {}",
        run.import
    );
    run.query = child(&[
        ("PARTLENS_SCALE_CHILD", &index),
        ("PARTLENS_SCALE_DATA", &d.dir),
    ]);
    evict(&index);
    run.cold = child(&[
        ("PARTLENS_SCALE_COLD", &index),
        ("PARTLENS_SCALE_DATA", &d.dir),
    ]);
    report(&run);
    if std::env::var_os("PARTLENS_SCALE_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&index);
    } else {
        println!("scale/{name}: index kept at {}", index.display());
    }
    run
}

fn pass(r: &Run, ef: usize, pass: u64) -> &Value {
    r.query["passes"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|p| p["ef"].as_u64() == Some(ef as u64) && p["pass"].as_u64() == Some(pass))
        })
        .unwrap_or(&Value::Null)
}

fn report(r: &Run) {
    let name = &r.name;
    let q = &r.query;
    println!(
        "scale/{name}: {} regions in {} segments (--segment-size {}); import {:.1} s wall, report {:.1} s of which graph build {:.1} s ({:.0} regions/s); import peak RSS {:.0} MB; index {:.0} MB on disk ({:.0} B/region)",
        r.n,
        r.import["segments"].as_u64().map_or(q["segments"].clone(), Value::from),
        r.segment_size,
        r.import_wall_s,
        r.import["seconds"].as_f64().unwrap_or(f64::NAN),
        r.import["hnsw_seconds"].as_f64().unwrap_or(f64::NAN),
        r.n as f64 / r.import_wall_s,
        r.import_rss_mb,
        r.disk_mb,
        r.disk_mb * 1048576.0 / r.n as f64
    );
    if q.is_null() {
        println!("scale/{name}: no query figures (the query child failed)");
        return;
    }
    println!(
        "scale/{name}: open {:.1} ms warm, {:.1} ms cold (page cache dropped) (goal < 1000 ms at 1M); first query answered at {:.1} ms warm, cold first query {:.1} ms; {} threads",
        q["open_ms"].as_f64().unwrap_or(f64::NAN),
        r.cold["open_ms"].as_f64().unwrap_or(f64::NAN),
        q["first_query_ms"].as_f64().unwrap_or(f64::NAN),
        r.cold["first_query_ms"].as_f64().unwrap_or(f64::NAN),
        q["threads"]
    );
    println!(
        "scale/{name}: memory in MB; unit/graph/raw/other = resident (touched) bytes of the index's mapped files of that kind"
    );
    println!(
        "scale/{name}: {:>4} {:>4} | {:>8} {:>8} {:>7} {:>7} | {:>8} {:>8} {:>8} | {:>9} {:>9} {:>9} {:>9}",
        "ef", "pass", "p50 ms", "p99 ms", "q/s", "rec@10", "VmRSS", "anon", "VmHWM", "unit MB", "graph MB", "raw MB", "other MB"
    );
    let row = |label: &str, pass: &str, p: &Value, st: &Value, m: &Value| {
        let touched = |k: &str| {
            let t = num(m, &[k, "touched_mb"]);
            if t.is_nan() {
                0.0
            } else {
                t
            }
        };
        println!(
            "scale/{name}: {label:>4} {pass:>4} | {:>8.3} {:>8.3} {:>7.0} {:>7.4} | {:>8.0} {:>8.0} {:>8.0} | {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            num(p, &["p50_ms"]),
            num(p, &["p99_ms"]),
            num(p, &["qps"]),
            num(p, &["recall"]),
            num(st, &["vm_rss_mb"]),
            num(st, &["rss_anon_mb"]),
            num(st, &["vm_hwm_mb"]),
            touched("unit"),
            touched("graph"),
            touched("raw"),
            touched("parquet") + touched("other"),
        );
    };
    row(
        "open",
        "-",
        &Value::Null,
        &q["after_open"]["status"],
        &q["after_open"]["mapped"],
    );
    row(
        "1st",
        "-",
        &Value::Null,
        &q["after_first"]["status"],
        &q["after_first"]["mapped"],
    );
    for ef in EFS {
        for p in 1..=2 {
            let v = pass(r, ef, p);
            row(
                &ef.to_string(),
                &p.to_string(),
                v,
                &v["status"],
                &v["mapped"],
            );
        }
    }
    let m = &pass(r, EFS[0], 2)["mapped"];
    println!(
        "scale/{name}: mapped by the query process: unit rows {:.0} MB, graphs {:.0} MB, raw rows {:.0} MB, total {:.0} MB; touched after 2 × {} queries at ef {}: {:.1} MB = {:.2} % of it",
        num(m, &["unit", "mapped_mb"]),
        num(m, &["graph", "mapped_mb"]),
        num(m, &["raw", "mapped_mb"]),
        num(m, &["total", "mapped_mb"]),
        q["queries"],
        EFS[0],
        num(m, &["total", "touched_mb"]),
        100.0 * num(m, &["total", "touched_mb"]) / num(m, &["total", "mapped_mb"])
    );
    println!(
        "scale/{name}: query process peak RSS (VmHWM after the ef {} passes) {:.0} MB = anon {:.0} MB + file {:.0} MB now",
        EFS[0],
        num(&q["peak_default"], &["vm_hwm_mb"]),
        num(&q["peak_default"], &["rss_anon_mb"]),
        num(&q["peak_default"], &["rss_file_mb"]),
    );
    println!(
        "scale/{name}: diagnostics: graph walk alone at ef {}: p50 {:.3} ms p99 {:.3} ms recall {:.4} (search_vector adds the hits' metadata); exact search {} queries: p50 {:.1} ms, agreement with the bench's truth {:.4}",
        q["graph_only"]["ef"],
        num(q, &["graph_only", "p50_ms"]),
        num(q, &["graph_only", "p99_ms"]),
        num(q, &["graph_only", "recall"]),
        q["exact"]["queries"],
        num(q, &["exact", "p50_ms"]),
        num(q, &["exact", "agreement"]),
    );
}

/// The growth table of `a` (the smaller scale) → `b`.
fn growth(a: &Run, b: &Run) {
    let g = format!("growth {} → {}", a.name, b.name);
    println!(
        "\nscale/{g}: N ×{:.1} ({} → {} regions; segments {} → {})",
        b.n as f64 / a.n as f64,
        a.n,
        b.n,
        a.query["segments"],
        b.query["segments"]
    );
    println!(
        "scale/{g}: {:<42} {:>12} {:>12} {:>8}",
        "figure", a.name, b.name, "ratio"
    );
    let line = |what: &str, x: f64, y: f64| {
        println!("scale/{g}: {what:<42} {x:>12.3} {y:>12.3} {:>7.2}×", y / x);
    };
    line("import wall s", a.import_wall_s, b.import_wall_s);
    line(
        "import report seconds",
        num(&a.import, &["seconds"]),
        num(&b.import, &["seconds"]),
    );
    line(
        "graph build s (hnsw_seconds)",
        num(&a.import, &["hnsw_seconds"]),
        num(&b.import, &["hnsw_seconds"]),
    );
    line("import peak RSS MB", a.import_rss_mb, b.import_rss_mb);
    line("index on disk MB", a.disk_mb, b.disk_mb);
    line(
        "open ms (warm)",
        num(&a.query, &["open_ms"]),
        num(&b.query, &["open_ms"]),
    );
    line(
        "open ms (cold)",
        num(&a.cold, &["open_ms"]),
        num(&b.cold, &["open_ms"]),
    );
    for ef in EFS {
        for p in [1, 2] {
            let (x, y) = (pass(a, ef, p), pass(b, ef, p));
            line(
                &format!("ef {ef} pass {p} p50 ms"),
                num(x, &["p50_ms"]),
                num(y, &["p50_ms"]),
            );
            line(
                &format!("ef {ef} pass {p} p99 ms"),
                num(x, &["p99_ms"]),
                num(y, &["p99_ms"]),
            );
        }
        let (x, y) = (pass(a, ef, 2), pass(b, ef, 2));
        line(
            &format!("ef {ef} recall@10"),
            num(x, &["recall"]),
            num(y, &["recall"]),
        );
    }
    let pa = &a.query["peak_default"];
    let pb = &b.query["peak_default"];
    let ta = num(&pass(a, EFS[0], 2)["mapped"], &["total", "touched_mb"]);
    let tb = num(&pass(b, EFS[0], 2)["mapped"], &["total", "touched_mb"]);
    line(
        "query peak RSS MB (VmHWM, ef 64)",
        num(pa, &["vm_hwm_mb"]),
        num(pb, &["vm_hwm_mb"]),
    );
    line(
        "  of it anon MB",
        num(pa, &["rss_anon_mb"]),
        num(pb, &["rss_anon_mb"]),
    );
    line(
        "  of it file-backed MB",
        num(pa, &["rss_file_mb"]),
        num(pb, &["rss_file_mb"]),
    );
    line(
        "touched after the first query MB",
        num(&a.query["after_first"]["mapped"], &["total", "touched_mb"]),
        num(&b.query["after_first"]["mapped"], &["total", "touched_mb"]),
    );
    line("index mapped data touched MB", ta, tb);
    for k in ["unit", "graph", "raw"] {
        line(
            &format!("  {k} touched MB"),
            num(&pass(a, EFS[0], 2)["mapped"], &[k, "touched_mb"]),
            num(&pass(b, EFS[0], 2)["mapped"], &[k, "touched_mb"]),
        );
    }
    line(
        "index mapped MB",
        num(&pass(a, EFS[0], 2)["mapped"], &["total", "mapped_mb"]),
        num(&pass(b, EFS[0], 2)["mapped"], &["total", "mapped_mb"]),
    );
    let rss = num(pb, &["vm_hwm_mb"]) / num(pa, &["vm_hwm_mb"]);
    let touched = tb / ta;
    println!(
        "scale/{g}: query peak RSS grew ×{rss:.2}, the mapped data touched ×{touched:.2}, N ×{:.1} (goal: RSS growth ≤ touched growth: {}); open at {}: {:.1} ms warm, {:.1} ms cold (goal < 1000 ms)",
        b.n as f64 / a.n as f64,
        if rss <= touched { "met" } else { "not met" },
        b.name,
        num(&b.query, &["open_ms"]),
        num(&b.cold, &["open_ms"]),
    );
}

fn label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn main() {
    if std::env::var_os("PARTLENS_SCALE_WRAP").is_some() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        wrapper(&args);
        return;
    }
    if let Some(data) = std::env::var_os("PARTLENS_SCALE_DATA") {
        if let Some(index) = std::env::var_os("PARTLENS_SCALE_CHILD") {
            query_child(Path::new(&index), Path::new(&data));
        } else if let Some(index) = std::env::var_os("PARTLENS_SCALE_COLD") {
            cold_child(Path::new(&index), Path::new(&data));
        }
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is read from the arguments.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "scale: load average {} (other work on the machine shows in every timing); {} cores; dot kernel {}; {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        Dot::detect().name(),
        if quick() { "QUICK smoke run" } else { "full run" }
    );
    let (small, large, seg) = if quick() {
        (10_000, 50_000, 10_000)
    } else {
        (100_000, 1_000_000, 100_000)
    };
    let one_segment = !std::env::var("PARTLENS_SCALE_ONE_SEGMENT").is_ok_and(|v| v == "0");
    let ds = data(small);
    let a = run_layout(&label(small), &ds, seg);
    drop(ds);
    let dl = data(large);
    let b = run_layout(
        &format!("{}-{}seg", label(large), large.div_ceil(seg)),
        &dl,
        seg,
    );
    // Printed before the one-segment layout runs (its graph build takes the longest).
    growth(&a, &b);
    let c = one_segment.then(|| run_layout(&format!("{}-1seg", label(large)), &dl, large));
    if let Some(c) = &c {
        growth(&a, c);
        println!(
            "\nscale/layouts at {}: {} segments vs 1: graph build {:.1} s vs {:.1} s; ef {} p50 {:.3} vs {:.3} ms, p99 {:.3} vs {:.3} ms, recall {:.4} vs {:.4}; query peak RSS {:.0} vs {:.0} MB",
            label(large),
            large.div_ceil(seg),
            num(&b.import, &["hnsw_seconds"]),
            num(&c.import, &["hnsw_seconds"]),
            EFS[0],
            num(pass(&b, EFS[0], 2), &["p50_ms"]),
            num(pass(c, EFS[0], 2), &["p50_ms"]),
            num(pass(&b, EFS[0], 2), &["p99_ms"]),
            num(pass(c, EFS[0], 2), &["p99_ms"]),
            num(pass(&b, EFS[0], 2), &["recall"]),
            num(pass(c, EFS[0], 2), &["recall"]),
            num(&b.query["peak_default"], &["vm_hwm_mb"]),
            num(&c.query["peak_default"], &["vm_hwm_mb"]),
        );
    }
    std::io::stdout().flush().ok();
}
