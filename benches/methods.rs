//! The paper's seven ViT pretraining methods at ViT-B/16 size, against DeiT in the same run.
//!
//! `cargo bench --bench methods` first writes, one method at a time, a random ViT-B/16 in each
//! method's published checkpoint layout (`scripts/models/vit.py --method M --preset base`,
//! timed). Then, in rounds that visit every method in turn, each round starting one method
//! later (so a slow spell of a shared machine falls on all of them), it measures on CPU:
//! regions/s of a full ingest of the bundled Pascal-Part sample (fixed `min_area`, so every
//! method embeds the same regions; HNSW build excluded), and regions/s of the same encoder on
//! pre-made tensors of the same count (in whole batches) and batch size. DeiT (the plain timm ViT) is the baseline
//! each ratio is taken against: the methods differ only in what rides on the same encoder
//! (BEiT/CAE's relative position bias, q/v biases and layer scale; MoCo v3/DINO/iBOT's
//! projection head), so the ratios should stay near 1. Each figure is the fastest of the rounds.
//! Nothing is asserted about time.

use std::path::{Path, PathBuf};
use std::time::Instant;

use partlens::encoder::Encoder;
use partlens::ingest::{ingest_with_encoder, IngestOptions};
use partlens::setup::{self, SetupOptions};
use partlens::{Device, EncoderOptions, MmsegDataset};

const METHODS: [&str; 7] = ["deit", "mocov3", "dino", "beit", "mae", "cae", "ibot"];
const BATCH: usize = 32;
/// Smallest region kept: 111 regions of the sample.
const MIN_AREA: u64 = 2000;
const ROUNDS: usize = 3;

/// The fastest of the rounds: on a shared machine another process only ever slows a round down,
/// so the fastest is the closest to what the machine can do (a median still moves with a busy
/// spell that covers most rounds).
fn best(v: Vec<f64>) -> f64 {
    v.into_iter().fold(0.0, f64::max)
}

/// Writes `dir/<method>.onnx`; returns it and the seconds the conversion took.
fn convert(method: &str, dir: &Path) -> (PathBuf, f64) {
    let out = dir.join(format!("{method}.onnx"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/models/vit.py");
    let t = Instant::now();
    let o = std::process::Command::new(setup::venv_python())
        .arg(&script)
        .args(["--method", method, "--preset", "base", "--name"])
        .arg(format!("{method}-vitb16-random"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("python");
    let s = t.elapsed().as_secs_f64();
    assert!(
        o.status.success(),
        "vit.py --method {method}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (out, s)
}

/// One ingest and one encoder-alone pass: (regions, ingest regions/s, alone regions/s).
fn measure(method: &str, model: &Path, dataset: &MmsegDataset, dir: &Path) -> (usize, f64, f64) {
    let opts = EncoderOptions {
        device: Device::Cpu,
        ..EncoderOptions::default()
    };
    let enc = Encoder::load(model, &opts).expect("model");
    assert_eq!(enc.spec().method.as_deref(), Some(method));

    let mut o = IngestOptions::new(dir.join(format!("idx-{method}")));
    o.batch_size = BATCH;
    o.settings.min_area = MIN_AREA;
    let r = ingest_with_encoder(dataset, &enc, &o).expect("ingest");
    let regions = r.manifest.counts.regions as usize;
    let ingest = r.regions_per_second();
    std::fs::remove_dir_all(&o.out).expect("remove index");

    // As many regions (whole batches) through the encoder alone, from tensors made beforehand.
    let alone = partlens::encoder::throughput::measure(&enc, BATCH, regions)
        .expect("encoder alone")
        .regions_per_second;
    (regions, ingest, alone)
}

fn main() {
    setup::ensure(&SetupOptions::default()).expect("partlens setup");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/samples/pascal_part");
    let dataset = MmsegDataset::open(root).expect("sample dataset");
    let dir = tempfile::tempdir().expect("tempdir");

    let mut models = Vec::new();
    for m in METHODS {
        let (path, s) = convert(m, dir.path());
        let mb = std::fs::metadata(&path).expect("model").len() as f64 / 1e6;
        println!("methods/{m}: ViT-B/16 converted in {s:.1} s ({mb:.0} MB)");
        models.push((m, path, s, mb));
    }

    let mut regions = vec![0; METHODS.len()];
    let mut ingest = vec![Vec::new(); METHODS.len()];
    let mut alone = vec![Vec::new(); METHODS.len()];
    for round in 0..ROUNDS {
        // Each round starts one method later, so no method is always first after a pause.
        for k in 0..models.len() {
            let i = (k + round) % models.len();
            let (m, path, ..) = &models[i];
            let (n, a, b) = measure(m, path, &dataset, dir.path());
            println!(
                "methods/{m} round {}: {n} regions, ingest {a:.2} regions/s, encoder alone {b:.2} regions/s",
                round + 1
            );
            regions[i] = n;
            ingest[i].push(a);
            alone[i].push(b);
        }
    }
    let ingest: Vec<f64> = ingest.into_iter().map(best).collect();
    let alone: Vec<f64> = alone.into_iter().map(best).collect();

    println!(
        "\nViT-B/16, random weights in each method's published layout; CPU, {} threads, batch \
         {BATCH}, min_area {MIN_AREA}; fastest of {ROUNDS} interleaved, rotated rounds; baseline DeiT (plain \
         timm ViT), same run",
        rayon::current_num_threads()
    );
    println!(
        "| method | convert s | MB | regions | ingest regions/s | encoder alone regions/s | \
         ingest / alone | ingest vs DeiT | alone vs DeiT |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, (m, _, s, mb)) in models.iter().enumerate() {
        println!(
            "| {m} | {s:.1} | {mb:.0} | {} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} |",
            regions[i],
            ingest[i],
            alone[i],
            ingest[i] / alone[i],
            ingest[i] / ingest[0],
            alone[i] / alone[0]
        );
    }
}
