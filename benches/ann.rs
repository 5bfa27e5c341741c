//! partlens's HNSW against hnswlib 0.8.0 and faiss-cpu 1.15.1 on the same vectors in the same
//! run. Nothing is asserted; every figure is printed with its baselines.
//!
//! Data sets (rows L2-normalised, so inner product = cosine; 1,000 queries held out of the
//! index, exact top-10 by brute force as the truth):
//! 1. **real**: MobileNetV2 `mean` embeddings of the regions of a synthetic set
//!    (`dataset::synth`, variation 1.0) ingested with the default model, ~20k × 1280 (cached
//!    under `~/.cache/partlens/bench-data/`, the ingest takes a minute or two the first time);
//! 2. **clustered 20k × 768** and 3. **clustered 100k × 384**: 200 seeded centres + uniform
//!    noise (the generator of the older `benches/hnsw.rs`).
//!
//! Per set and library: build time on 2 threads (M = 24, ef_construction = 200, the index's
//! defaults; for partlens also the graph built by the hnsw_rs crate, copied into partlens's
//! file and searched by the same kernel, as `hnsw_rs-built`); then, in a **fresh child process** per library (this binary re-run, or the
//! Python script `benches/ann/compare.py` in a venv that `benches/ann/setup_venv.sh` makes),
//! the index is opened (timed) and every query is searched one at a time on **one thread**
//! for each ef of a sweep: queries/s (after a warm-up pass, the best of 3 passes, for every
//! library alike) and recall@10. The Python libraries are timed both one
//! call per query and with one batched call on one thread (no per-call interpreter cost); the
//! batched figure is the one the ratios use, the conservative comparison. The child's peak
//! RSS (getrusage) is the search process's memory.
//!
//! Printed per set: the sweep table, then for recall 0.95 and 0.99 the fastest ef of each
//! library reaching it and the ratio partlens/hnswlib (goal ≥ 1.2×), build time ratio (goal
//! ≤ 1.2×), peak memory ratio (goal ≤ 1.2×), and the time to open the index and answer one
//! query in a fresh process (goal ≤ 20 ms at 20k).
//!
//! `cargo bench --bench ann`; `PARTLENS_BENCH_QUICK=1` shrinks the sets for a smoke run;
//! without Python's libraries (no venv could be made) partlens's figures print alone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use partlens::encoder::Encoder;
use partlens::index::{
    build_graph_file, exact_search, normalize_rows, GraphBuilder, HnswIndex, HnswParams,
};
use partlens::ingest::{ingest_with_encoder, IngestOptions};
use partlens::setup::{self, SetupOptions};
use partlens::store::{NpyMatrix, NpyWriter};
use partlens::{Device, EncoderOptions, Feature, IndexDir, MmsegDataset};
use serde_json::Value;

const K: usize = 10;
const EFS: [usize; 12] = [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512];
const QUERIES: usize = 1000;
const BUILD_THREADS: usize = 2;
/// Timed passes per ef (the best is kept), as `compare.py --repeats`.
const REPEATS: usize = 3;

fn quick() -> bool {
    std::env::var_os("PARTLENS_BENCH_QUICK").is_some()
}

/// A `/proc/self/status` field in MB.
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Peak RSS of this process, MB: `VmHWM`, which starts afresh at exec (getrusage's
/// `ru_maxrss` would carry the parent's peak into a child spawned with vfork).
fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

fn rss_now_mb() -> f64 {
    status_mb("VmRSS:")
}

/// The child: open the graph `file` over the vectors in `dir`, one warm-up pass, then the
/// sweep on one thread; results under the name `lib`.
fn child(dir: &Path, file: &str, lib: &str) {
    let t = Instant::now();
    let unit = Arc::new(NpyMatrix::open(dir.join("data.npy")).expect("data"));
    let g = HnswIndex::open(dir.join(file), unit).expect("graph");
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let q = NpyMatrix::open(dir.join("queries.npy")).expect("queries");
    let first = g.search(q.row(0), K, 64, None);
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(first.len(), K);
    let rss_after_load = rss_now_mb();
    let truth = read_truth(&dir.join("truth.bin"), q.rows());
    let out = std::io::stdout();
    let mut out = out.lock();
    for &ef in &EFS {
        let run = || -> Vec<Vec<usize>> {
            (0..q.rows())
                .map(|i| {
                    g.search(q.row(i), K, ef, None)
                        .iter()
                        .map(|h| h.id)
                        .collect()
                })
                .collect()
        };
        // As compare.py times the Python libraries: a warm-up pass, then the best of
        // REPEATS passes.
        let mut res = run();
        let mut qps = 0f64;
        for _ in 0..REPEATS {
            let t = Instant::now();
            res = run();
            qps = qps.max(q.rows() as f64 / t.elapsed().as_secs_f64());
        }
        writeln!(
            out,
            "{}",
            serde_json::json!({"lib": lib, "ef": ef, "qps": qps, "recall": recall(&truth, &res)})
        )
        .expect("stdout");
    }
    writeln!(
        out,
        "{}",
        serde_json::json!({"lib": lib, "load_ms": load_ms, "first_query_ms": first_ms,
            "rss_after_load_mb": rss_after_load, "peak_rss_mb": peak_rss_mb()})
    )
    .expect("stdout");
}

fn recall(truth: &[Vec<usize>], got: &[Vec<usize>]) -> f64 {
    let hit: usize = truth
        .iter()
        .zip(got)
        .map(|(t, g)| t.iter().filter(|i| g.contains(i)).count())
        .sum();
    hit as f64 / (truth.len() * K) as f64
}

fn write_npy(path: &Path, rows: &[f32], dim: usize) {
    let mut w = NpyWriter::create(path, dim).expect("npy");
    w.append(rows).expect("npy");
    w.finish().expect("npy");
}

/// int64 `.npy` of shape (rows, K) for Python, and the same ids as raw u64 for the child.
fn write_truth(dir: &Path, truth: &[Vec<usize>]) {
    let ids: Vec<i64> = truth.iter().flatten().map(|&i| i as i64).collect();
    let body: &[u8] = bytemuck::cast_slice(&ids);
    partlens::store::npy::write_raw(&dir.join("truth.npy"), "<i8", &[truth.len(), K], body)
        .expect("truth");
    std::fs::write(dir.join("truth.bin"), body).expect("truth");
}

fn read_truth(path: &Path, rows: usize) -> Vec<Vec<usize>> {
    let b = std::fs::read(path).expect("truth");
    let ids: Vec<usize> = b
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    ids.chunks(K).take(rows).map(<[usize]>::to_vec).collect()
}

/// Seeded clustered data: 200 centres, each point a centre plus uniform noise; normalised.
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let centres: Vec<f32> = (0..200 * dim).map(|_| next()).collect();
    let mut v = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = &centres[(i % 200) * dim..(i % 200 + 1) * dim];
        v.extend(c.iter().map(|&x| x + 0.35 * next()));
    }
    normalize_rows(&v, dim)
}

/// MobileNetV2 mean embeddings of a synthetic set's regions (at least `want` rows), cached.
fn real(want: usize) -> (Vec<f32>, usize) {
    let cache = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/partlens/bench-data");
    // About 8.5 regions per image at variation 1.0.
    let images = want / 8 + 1;
    let file = cache.join(format!("mobilenet_mean_synth{images}.npy"));
    if let Ok(m) = NpyMatrix::open(&file) {
        if m.rows() >= want {
            println!(
                "ann: real: {} × {} from {}",
                m.rows(),
                m.cols(),
                file.display()
            );
            return (m.as_slice().to_vec(), m.cols());
        }
    }
    setup::ensure(&SetupOptions::default()).expect("partlens setup");
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("synth");
    let t = Instant::now();
    partlens::dataset::synth::generate(
        &data,
        &partlens::dataset::synth::SynthOptions {
            images,
            seed: 11,
            size: 256,
            variation: 1.0,
        },
    )
    .expect("synth");
    let ds = MmsegDataset::open(&data).expect("synth set");
    let enc = Encoder::load(
        setup::default_model_path(),
        &EncoderOptions {
            device: Device::Cpu,
            ..EncoderOptions::default()
        },
    )
    .expect("model");
    let out = tmp.path().join("idx");
    let mut o = IngestOptions::new(&out);
    o.settings.min_area = 1;
    ingest_with_encoder(&ds, &enc, &o).expect("ingest");
    let idx = IndexDir::open(&out).expect("index");
    let m = idx.feature(Feature::Mean).expect("mean");
    println!(
        "ann: real: ingested {} regions of {images} synthetic images in {:.0} s",
        m.rows(),
        t.elapsed().as_secs_f64()
    );
    let unit = normalize_rows(&m.to_vec(), m.cols());
    std::fs::create_dir_all(&cache).expect("cache dir");
    write_npy(&file, &unit, m.cols());
    (unit, m.cols())
}

/// The Python interpreter of the bench venv, or None (printed why).
fn python() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ann/setup_venv.sh");
    let out = Command::new("bash").arg(&script).output().ok()?;
    if !out.status.success() {
        println!(
            "ann: SKIPPED hnswlib and faiss: {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()?
        .trim()
        .to_string();
    Some(PathBuf::from(last))
}

/// Results of one library on one set.
#[derive(Default)]
struct Lib {
    name: String,
    build_s: f64,
    sweep: Vec<(usize, f64, f64)>,
    summary: Value,
}

impl Lib {
    /// The fastest (ef, qps) with recall ≥ `target`.
    fn at(&self, target: f64) -> Option<(usize, f64, f64)> {
        self.sweep
            .iter()
            .filter(|p| p.2 >= target)
            .copied()
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

fn parse(name: &str, stdout: &[u8], qps_field: &str) -> Lib {
    let mut lib = Lib {
        name: name.into(),
        ..Lib::default()
    };
    for line in String::from_utf8_lossy(stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let (Some(ef), Some(r)) = (v["ef"].as_u64(), v["recall"].as_f64()) {
            let qps = v[qps_field].as_f64().or(v["qps"].as_f64()).unwrap_or(0.0);
            lib.sweep.push((ef as usize, qps, r));
        } else if v.get("peak_rss_mb").is_some() || v.get("build_s").is_some() {
            if let Some(b) = v["build_s"].as_f64() {
                lib.build_s = b;
            }
            merge(&mut lib.summary, v);
        } else {
            merge(&mut lib.summary, v);
        }
    }
    lib
}

fn merge(into: &mut Value, v: Value) {
    if !into.is_object() {
        *into = serde_json::json!({});
    }
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), v) {
        a.extend(b);
    }
}

fn run_set(name: &str, all: &[f32], dim: usize, py: Option<&Path>) {
    let n = all.len() / dim - QUERIES;
    let (data, queries) = all.split_at(n * dim);
    println!("\nann/{name}: {n} × {dim} indexed, {QUERIES} held-out queries, k = {K}, M = 24, ef_construction = 200");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_npy(&d.join("data.npy"), data, dim);
    write_npy(&d.join("queries.npy"), queries, dim);
    let t = Instant::now();
    let truth: Vec<Vec<usize>> = {
        use rayon::prelude::*;
        queries
            .par_chunks(dim)
            .map(|q| {
                exact_search(data, dim, q, K, None)
                    .iter()
                    .map(|h| h.id)
                    .collect()
            })
            .collect()
    };
    println!(
        "ann/{name}: exact truth in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    write_truth(d, &truth);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(BUILD_THREADS)
        .build()
        .expect("pool");
    // partlens's builder, and hnsw_rs's lists copied into the same file (searched by the same
    // kernel: the difference is the graph and its build time).
    let mut ours = Vec::new();
    for (lib, builder) in [
        ("partlens", GraphBuilder::Partlens),
        ("hnsw_rs-built", GraphBuilder::HnswRs),
    ] {
        if builder == GraphBuilder::HnswRs
            && std::env::var_os("PARTLENS_ANN_SKIP_HNSW_RS").is_some()
        {
            continue;
        }
        let file = format!("{lib}.graph");
        let t = Instant::now();
        pool.install(|| {
            build_graph_file(
                &d.join(&file),
                data,
                dim,
                HnswParams::default(),
                partlens::index::DEFAULT_SEED,
                builder,
            )
        })
        .expect("build");
        let build_s = t.elapsed().as_secs_f64();
        let out = Command::new(std::env::current_exe().expect("exe"))
            .env("PARTLENS_ANN_CHILD", d)
            .env("PARTLENS_ANN_GRAPH", &file)
            .env("PARTLENS_ANN_LIB", lib)
            .output()
            .expect("child");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut l = parse(lib, &out.stdout, "qps");
        l.build_s = build_s;
        ours.push(l);
    }
    let mut libs = vec![ours.remove(0)];

    if let Some(py) = py {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ann/compare.py");
        for lib in ["hnswlib", "faiss"] {
            let efs: Vec<String> = EFS.iter().map(|e| e.to_string()).collect();
            let work = d.join(lib);
            std::fs::create_dir_all(&work).expect("work dir");
            let out = Command::new(py)
                .arg(&script)
                .args([
                    "--lib",
                    lib,
                    "--k",
                    "10",
                    "--M",
                    "24",
                    "--ef-construction",
                    "200",
                ])
                .args(["--efs", &efs.join(","), "--build-threads", "2"])
                .arg("--data")
                .arg(d.join("data.npy"))
                .arg("--queries")
                .arg(d.join("queries.npy"))
                .arg("--truth")
                .arg(d.join("truth.npy"))
                .arg("--work")
                .arg(&work)
                .output()
                .expect("python");
            if !out.status.success() {
                println!(
                    "ann/{name}: {lib} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
                continue;
            }
            libs.push(parse(lib, &out.stdout, "qps_batched"));
        }
    }
    libs.extend(ours);
    report(name, &libs);
}

fn report(name: &str, libs: &[Lib]) {
    print!("ann/{name}: {:>4}", "ef");
    for l in libs {
        print!(" | {:>9} q/s recall", l.name);
    }
    println!();
    for &ef in &EFS {
        print!("ann/{name}: {ef:>4}");
        for l in libs {
            match l.sweep.iter().find(|p| p.0 == ef) {
                Some(p) => print!(" | {:>13.0} {:.4}", p.1, p.2),
                None => print!(" | {:>20}", "-"),
            }
        }
        println!();
    }
    for l in libs {
        println!(
            "ann/{name}: {} build {:.2} s (2 threads); {}",
            l.name, l.build_s, l.summary
        );
    }
    let p = &libs[0];
    for base in &libs[1..] {
        if base.name.starts_with("hnsw_rs") {
            println!(
                "ann/{name}: build partlens/{} = {:.2}× ({:.2} s vs {:.2} s; the same search kernel on both graphs)",
                base.name,
                p.build_s / base.build_s.max(1e-9),
                p.build_s,
                base.build_s
            );
            continue;
        }
        for target in [0.95, 0.99] {
            match (p.at(target), base.at(target)) {
                (Some(a), Some(b)) => println!(
                    "ann/{name}: at recall@{K} ≥ {target}: partlens {:.0} q/s (ef {}, {:.4}) vs {} {:.0} q/s (ef {}, {:.4}): {:.2}× (goal ≥ 1.2× vs hnswlib)",
                    a.1, a.0, a.2, base.name, b.1, b.0, b.2, a.1 / b.1
                ),
                (a, b) => println!(
                    "ann/{name}: at recall@{K} ≥ {target}: partlens {} / {} {}",
                    a.map_or("not reached".into(), |a| format!("{:.0} q/s", a.1)),
                    base.name,
                    b.map_or("not reached".into(), |b| format!("{:.0} q/s", b.1)),
                ),
            }
        }
        println!(
            "ann/{name}: build partlens/{} = {:.2}× (goal ≤ 1.2×)",
            base.name,
            p.build_s / base.build_s.max(1e-9)
        );
        let rss = |l: &Lib| l.summary["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
        println!(
            "ann/{name}: search process peak RSS partlens {:.0} MB / {} {:.0} MB = {:.2}× (goal ≤ 1.2×)",
            rss(p),
            base.name,
            rss(base),
            rss(p) / rss(base)
        );
    }
    println!(
        "ann/{name}: fresh process: partlens opens the index in {:.2} ms, first query answered at {:.2} ms (goal ≤ 20 ms)",
        p.summary["load_ms"].as_f64().unwrap_or(f64::NAN),
        p.summary["first_query_ms"].as_f64().unwrap_or(f64::NAN)
    );
}

fn main() {
    if let Some(dir) = std::env::var_os("PARTLENS_ANN_CHILD") {
        let file = std::env::var("PARTLENS_ANN_GRAPH").unwrap_or_else(|_| "partlens.graph".into());
        let lib = std::env::var("PARTLENS_ANN_LIB").unwrap_or_else(|_| "partlens".into());
        child(Path::new(&dir), &file, &lib);
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "ann: load average {} (other work on the machine shows in every timing); dot kernel {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        partlens::index::Dot::detect().name()
    );
    let py = python();
    let scale = if quick() { 10 } else { 1 };
    let (r, dim) = real(20_000 / scale + QUERIES);
    let rows = (20_000 / scale + QUERIES).min(r.len() / dim);
    run_set("real_mobilenet", &r[..rows * dim], dim, py.as_deref());
    run_set(
        "clustered_20k_768",
        &clustered(20_000 / scale + QUERIES, 768, 7),
        768,
        py.as_deref(),
    );
    run_set(
        "clustered_100k_384",
        &clustered(100_000 / scale + QUERIES, 384, 8),
        384,
        py.as_deref(),
    );
}
