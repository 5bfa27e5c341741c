//! Ingest throughput against the encoder alone, in the same process.
//!
//! `cargo bench --bench ingest` prints, for the default encoder (MobileNetV2) and the tiny ViT:
//! regions/s of a full ingest of the bundled Pascal-Part sample (decode, regions, preprocessing,
//! inference, Parquet/npy writes; HNSW build excluded), and regions/s of the same encoder run
//! on pre-made tensors of the same count (in whole batches) and batch size. The ratio is the share of encoder-alone
//! speed the pipeline keeps; the target is ≥ 0.90 on CPU. First, the same ingest through a model
//! that costs nothing: regions/s per thread of everything but the encoder, which is what must
//! feed a GPU (10,000 regions/s on 16 cores needs 625 per core).

use std::path::Path;
use std::time::Instant;

use partlens::encoder::Encoder;
use partlens::ingest::{ingest_with_encoder, IngestOptions};
use partlens::setup::{self, SetupOptions};
use partlens::{Device, EncoderOptions, MmsegDataset};

const REPEATS: usize = 3;
const BATCH: usize = 32;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(name: &str, model: &Path, dataset: &MmsegDataset) {
    let opts = EncoderOptions {
        device: Device::Cpu,
        ..EncoderOptions::default()
    };
    let enc = Encoder::load(model, &opts).expect("model");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ingest_rates = Vec::new();
    let mut alone_rates = Vec::new();
    let mut regions = 0;
    for rep in 0..REPEATS {
        let mut o = IngestOptions::new(dir.path().join(format!("idx{rep}")));
        o.batch_size = BATCH;
        let r = ingest_with_encoder(dataset, &enc, &o).expect("ingest");
        regions = r.manifest.counts.regions as usize;
        ingest_rates.push(r.regions_per_second());

        // As many regions (whole batches) through the encoder alone, from tensors made beforehand.
        let alone = partlens::encoder::throughput::measure(&enc, BATCH, regions)
            .expect("encoder alone")
            .regions_per_second;
        alone_rates.push(alone);
    }
    // Preprocessing alone, on one thread: decode, label maps, regions, crop/resize/normalise.
    let pre = enc.preprocessor();
    let settings = partlens::RegionSettings::default();
    let (mut t_load, mut t_tensor) = (0.0, 0.0);
    let mut out = vec![0f32; pre.tensor_len()];
    for item in partlens::Dataset::items(dataset) {
        let t = Instant::now();
        let r = partlens::Dataset::load(dataset, item, &settings).expect("load");
        t_load += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for region in &r.regions {
            pre.region_tensor(&r.image, region.crop_box, &mut out);
        }
        t_tensor += t.elapsed().as_secs_f64();
    }
    println!(
        "ingest/{name}: preprocessing on one thread: decode + regions {:.2} ms/region, crop + resize + normalise {:.2} ms/region",
        1e3 * t_load / regions as f64,
        1e3 * t_tensor / regions as f64
    );
    let (ingest, alone) = (median(ingest_rates), median(alone_rates));
    println!(
        "ingest/{name}: {regions} regions, ingest {ingest:.1} regions/s, encoder alone {alone:.1} regions/s, ratio {:.3} (target ≥ 0.90; median of {REPEATS})",
        ingest / alone
    );
}

/// A model that costs nothing (the mean of each input channel): an ingest through it runs at
/// the speed of everything but the encoder — decode, regions, preprocessing, batching, writes —
/// the ceiling preprocessing sets for a GPU encoder, per core of this machine.
fn null_model(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("null.onnx");
    let script = r#"
import json, sys, onnx
from onnx import TensorProto as T, helper as h
g = h.make_graph([h.make_node("ReduceMean", ["pixel_values"], ["pooled"], axes=[2, 3], keepdims=0)],
    "null", [h.make_tensor_value_info("pixel_values", T.FLOAT, ["batch", 3, 224, 224])],
    [h.make_tensor_value_info("pooled", T.FLOAT, ["batch", 3])])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)]); m.ir_version = 8
spec = {"spec_version": 1, "name": "null", "input": "pixel_values", "input_size": [224, 224],
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "outputs": {"pooled": "pooled"}}
h.set_model_props(m, {"partlens.spec": json.dumps(spec)})
onnx.save(m, sys.argv[1])
"#;
    let ok = std::process::Command::new(setup::venv_python())
        .args(["-c", script])
        .arg(&path)
        .status()
        .expect("python");
    assert!(ok.success(), "cannot write the null model");
    path
}

fn preprocessing_ceiling(dataset: &MmsegDataset) {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = null_model(dir.path());
    let enc = Encoder::load(
        &model,
        &EncoderOptions {
            device: Device::Cpu,
            ..EncoderOptions::default()
        },
    )
    .expect("null model");
    let mut rates = Vec::new();
    let mut report = None;
    for rep in 0..REPEATS {
        let mut o = IngestOptions::new(dir.path().join(format!("idx{rep}")));
        o.batch_size = 256;
        o.settings.min_area = 1;
        let r = ingest_with_encoder(dataset, &enc, &o).expect("ingest");
        rates.push(r.regions_per_second());
        report = Some(r);
    }
    let r = report.expect("ran");
    let threads = rayon::current_num_threads();
    let rate = median(rates);
    println!(
        "ingest/null encoder: {} regions, {rate:.1} regions/s on {threads} threads = {:.1} per thread (everything but the encoder; encoder idle waiting for input {:.0}% of its time; median of {REPEATS})",
        r.manifest.counts.regions,
        rate / threads as f64,
        100.0 * r.wait_seconds / (r.wait_seconds + r.encode_seconds).max(1e-9)
    );
}

fn main() {
    setup::ensure(&SetupOptions::default()).expect("partlens setup");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/samples/pascal_part");
    let dataset = MmsegDataset::open(root).expect("sample dataset");
    preprocessing_ceiling(&dataset);
    bench("mobilenet_v2", &setup::default_model_path(), &dataset);
    bench("vit_tiny", &setup::vit_tiny_path(), &dataset);
}
