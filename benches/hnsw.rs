//! HNSW against exact search, same run: build time, queries/s and recall@10 at several search
//! widths, on real MobileNetV2 embeddings of the bundled sample (every region, 1,043 × 1280) and
//! on seeded synthetic clustered data (20,000 × 768).
//!
//! `cargo bench --bench hnsw` prints one line per (data, ef) and the fastest ef whose recall@10
//! is ≥ 0.95, with its speed-up over exact search.

use std::path::Path;
use std::time::Instant;

use partlens::encoder::Encoder;
use partlens::index::{exact_search, normalize_rows, recall, HnswIndex, HnswParams};
use partlens::ingest::{ingest_with_encoder, IngestOptions};
use partlens::setup::{self, SetupOptions};
use partlens::{Device, EncoderOptions, Feature, IndexDir, MmsegDataset};

const K: usize = 10;

fn real_embeddings() -> (Vec<f32>, usize) {
    setup::ensure(&SetupOptions::default()).expect("partlens setup");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/samples/pascal_part");
    let ds = MmsegDataset::open(root).expect("sample");
    let enc = Encoder::load(
        setup::default_model_path(),
        &EncoderOptions {
            device: Device::Cpu,
            ..EncoderOptions::default()
        },
    )
    .expect("model");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = IngestOptions::new(dir.path().join("idx"));
    o.settings.min_area = 1;
    ingest_with_encoder(&ds, &enc, &o).expect("ingest");
    let idx = IndexDir::open(dir.path().join("idx")).expect("index");
    let m = idx.feature(Feature::Mean).expect("mean");
    (normalize_rows(m.as_slice(), m.cols()), m.cols())
}

/// Gaussian-ish clusters: 200 centres, points = centre + noise, seeded.
fn synthetic(n: usize, dim: usize, seed: u64) -> Vec<f32> {
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

fn bench(name: &str, data: &[f32], dim: usize, queries: usize) {
    let n = data.len() / dim;
    let t = Instant::now();
    let g = HnswIndex::build(data, dim, HnswParams::default());
    let build = t.elapsed().as_secs_f64();
    let qs: Vec<&[f32]> = (0..queries)
        .map(|i| &data[(i * 7919 % n) * dim..][..dim])
        .collect();
    let t = Instant::now();
    let truth: Vec<_> = qs
        .iter()
        .map(|q| exact_search(data, dim, q, K, None))
        .collect();
    let exact_qps = queries as f64 / t.elapsed().as_secs_f64();
    println!("hnsw/{name}: {n} × {dim}, build {build:.2} s, exact {exact_qps:.0} queries/s");
    let mut best: Option<(usize, f64, f64)> = None;
    for ef in [16, 32, 64, 128] {
        let t = Instant::now();
        let res: Vec<_> = qs.iter().map(|q| g.search(q, K, ef, None)).collect();
        let qps = queries as f64 / t.elapsed().as_secs_f64();
        let r = truth
            .iter()
            .zip(&res)
            .map(|(e, a)| recall(e, a))
            .sum::<f64>()
            / queries as f64;
        println!("hnsw/{name}: ef {ef:>3}: {qps:>8.0} queries/s, recall@{K} {r:.4}");
        if r >= 0.95 && best.is_none_or(|b| qps > b.1) {
            best = Some((ef, qps, r));
        }
    }
    match best {
        Some((ef, qps, r)) => println!(
            "hnsw/{name}: at recall@{K} ≥ 0.95: ef {ef}, {qps:.0} queries/s = {:.1}× exact ({exact_qps:.0}/s), recall {r:.4}",
            qps / exact_qps
        ),
        None => println!("hnsw/{name}: no ef reached recall@{K} ≥ 0.95"),
    }
}

fn main() {
    let (real, dim) = real_embeddings();
    bench("real_mobilenet_1043x1280", &real, dim, real.len() / dim);
    bench("synthetic_20000x768", &synthetic(20_000, 768, 7), 768, 1000);
}
