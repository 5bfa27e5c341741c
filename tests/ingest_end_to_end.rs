//! Ingest → store → query on the real samples with the real default encoder, cross-checked
//! against pyarrow / numpy readers and against PIL + onnxruntime reference embeddings.

mod common;

use std::path::Path;

use partlens::encoder::Encoder;
use partlens::index::{exact_search, normalize_rows, recall, HnswIndex, HnswParams};
use partlens::ingest::{ingest_with_encoder, IngestOptions};
use partlens::query::{QueryEngine, SearchOptions};
use partlens::{Feature, IndexDir, MmsegDataset, RegionKind};
use serde_json::Value;

fn build(dataset: &str, model: &Path, out: &Path, min_area: u64) -> IndexDir {
    let ds = MmsegDataset::open(common::sample(dataset)).unwrap();
    let enc = Encoder::load(model, &common::cpu()).unwrap();
    let mut opts = IngestOptions::new(out);
    opts.settings.min_area = min_area;
    opts.batch_size = 16;
    let report = ingest_with_encoder(&ds, &enc, &opts).unwrap();
    assert_eq!(report.path, out);
    IndexDir::open(out).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn pascal_part_index_is_complete_and_readable_by_pyarrow_and_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pascal");
    let idx = build("pascal_part", &common::mobilenet(), &out, 256);
    let m = idx.manifest();
    // 213 parts and 41 objects at area ≥ 256: data/samples/EXPECTED.json (scipy).
    assert_eq!((m.counts.parts, m.counts.objects), (213, 41));
    assert_eq!(m.counts.regions, 254);
    assert_eq!((m.counts.images, m.counts.images_skipped), (18, 0));
    assert!(m.skipped.is_empty());
    assert_eq!(m.encoder.dims["mean"], 1280);
    assert_eq!(m.features, vec!["mean"]);
    assert_eq!(m.encoder.sha256.len(), 64);
    assert_eq!(m.dataset.format, "mmseg");
    assert!(common::seg0(&out)
        .join(m.hnsw["mean"].graph_file())
        .is_file());
    assert!(common::seg0(&out).join("features/mean.unit.npy").is_file());
    assert!(!out.join("manifest.json.tmp").exists());

    let py: Value =
        serde_json::from_str(&common::run_python("read_index.py", &[out.as_os_str()])).unwrap();
    assert_eq!(py["rows"], 254);
    assert_eq!(
        py["types"]["mean"],
        "fixed_size_list<item: float not null>[1280]"
    );
    let ids: Vec<u64> = serde_json::from_value(py["ids"].clone()).unwrap();
    assert_eq!(ids, (0..254).collect::<Vec<u64>>());
    let names: Vec<String> = serde_json::from_value(py["label_names"].clone()).unwrap();
    let boxes: Vec<[i64; 4]> = serde_json::from_value(py["boxes"].clone()).unwrap();
    for (i, r) in idx.read_all_regions().unwrap().iter().enumerate() {
        assert_eq!(names[i], r.label_name);
        assert_eq!(boxes[i], r.bbox.to_array());
        assert_eq!(py["kinds"][i], r.kind.as_str());
    }
    let f = &py["features"]["mean"];
    assert_eq!(f["npy_shape"], serde_json::json!([254, 1280]));
    assert_eq!(f["npy_dtype"], "float32");
    assert_eq!(f["is_memmap"], true);
    assert_eq!(f["parquet_vs_npy_max_abs_diff"], 0.0);
    // numpy reads the unit rows and the graph file without partlens.
    assert!(f["unit_max_abs_diff"].as_f64().unwrap() < 1e-7, "{f}");
    let g = &f["graph"];
    let h = *idx.graphs(Feature::Mean).unwrap()[0].header();
    assert_eq!(g["magic"], "PLGRAPH\u{0}");
    assert_eq!(
        (
            g["n"].as_u64(),
            g["dim"].as_u64(),
            g["m"].as_u64(),
            g["m0"].as_u64()
        ),
        (Some(254), Some(1280), Some(24), Some(48))
    );
    assert_eq!(g["layers"].as_u64(), Some(h.layers as u64));
    assert_eq!(g["levels_max"].as_u64(), Some(h.layers as u64 - 1));
    assert_eq!(g["layer0_ids_in_range"], true);
    assert!(g["layer0_links"].as_u64().unwrap() >= 254);
    assert!(g["layer0_max_count"].as_u64().unwrap() <= 48);
    let mine = idx.feature(Feature::Mean).unwrap();
    let sum: f64 = mine.to_vec().iter().map(|&v| f64::from(v)).sum();
    assert!((sum - f["sum"].as_f64().unwrap()).abs() <= 1e-6 * sum.abs().max(1.0));
    let row0: Vec<f32> = serde_json::from_value(f["row0"].clone()).unwrap();
    assert_eq!(row0, mine.row(0));
}

fn compare_with_reference(dataset: &str, model: &Path, features: &[Feature]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    let idx = build(dataset, model, &out, 64);
    let crops: Vec<Value> = idx
        .read_all_regions()
        .unwrap()
        .iter()
        .map(|r| serde_json::json!({"image": r.image, "crop_box": r.crop_box.to_array()}))
        .collect();
    let crops_path = dir.path().join("crops.json");
    std::fs::write(&crops_path, serde_json::to_string(&crops).unwrap()).unwrap();
    let ref_path = dir.path().join("ref.npz");
    let root = common::sample(dataset);
    common::run_python(
        "reference_embed.py",
        &[
            "--model".as_ref(),
            model.as_os_str(),
            "--dataset".as_ref(),
            root.as_os_str(),
            "--crops".as_ref(),
            crops_path.as_os_str(),
            "--out".as_ref(),
            ref_path.as_os_str(),
        ],
    );
    // np.savez writes an uncompressed zip of .npy files; unpack them and read with our reader.
    let unpacked = dir.path().join("ref");
    let status = std::process::Command::new(common::python())
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])",
        ])
        .arg(&ref_path)
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    for f in features {
        let reference =
            partlens::store::NpyMatrix::open(unpacked.join(format!("{f}.npy"))).unwrap();
        let mine = idx.feature(*f).unwrap();
        assert_eq!(
            (reference.rows(), reference.cols()),
            (mine.rows(), mine.cols())
        );
        let worst = (0..mine.rows())
            .map(|i| cosine(mine.row(i), reference.row(i)))
            .fold(f64::INFINITY, f64::min);
        // The inputs are equal bit for bit (tests/preprocess.rs) and the same ONNX Runtime
        // library runs them, so the features are too: measured here, max difference 0 over
        // every crop (partlens runs batches of 32, the reference one batch of all).
        let worst_abs = (0..mine.rows())
            .flat_map(|i| {
                mine.row(i)
                    .iter()
                    .zip(reference.row(i))
                    .map(|(a, b)| (a - b).abs())
            })
            .fold(0f32, f32::max);
        println!(
            "{dataset} {f}: over {} crops vs PIL+onnxruntime, worst cosine {worst:.9}, largest \
             difference {worst_abs:e}",
            mine.rows()
        );
        assert_eq!(
            worst_abs, 0.0,
            "{dataset} {f}: features differ from the reference"
        );
    }
}

#[test]
fn mobilenet_embeddings_match_pil_and_onnxruntime() {
    compare_with_reference("pascal_part", &common::mobilenet(), &[Feature::Mean]);
    // LIP has a greyscale JPEG and small images whose square crops extend past the border.
    compare_with_reference("lip", &common::mobilenet(), &[Feature::Mean]);
}

#[test]
fn decoded_pixels_equal_pillows() {
    // Greyscale (LIP), colour photos (Pascal-Part, ADE20K) and CMYK JPEGs made by Pillow.
    let ade = "ade20k_full/dataset/ADE20K_2021_17_01/images/ADE/training/urban/street";
    let files = [
        common::sample("pascal_part/img/train/2008_000652.jpg"),
        common::sample("lip/img/val/86_185913.jpg"),
        common::sample("lip/img/val/684_2150041.jpg"),
        common::sample(&format!("{ade}/ADE_train_00016900.jpg")),
        common::sample("ade20k_challenge/images/ADE_val_00000003.jpg"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![dir.path().as_os_str()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let listed: Vec<Value> =
        serde_json::from_str(&common::run_python("pil_decode.py", &args)).unwrap();
    assert_eq!(listed.len(), files.len() + 2);
    for f in listed {
        let path = Path::new(f["path"].as_str().unwrap());
        let ours = partlens::preprocess::decode_rgb(path).unwrap();
        let pil = std::fs::read(f["raw"].as_str().unwrap()).unwrap();
        assert!(
            ours.as_raw() == &pil,
            "{} differs from Pillow",
            path.display()
        );
    }
}

#[test]
fn vit_embeddings_match_pil_and_onnxruntime() {
    compare_with_reference("lip", &common::vit_tiny(), &[Feature::Mean, Feature::Cls]);
}

#[test]
fn query_by_a_stored_region_finds_itself_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pascal");
    build("pascal_part", &common::mobilenet(), &out, 256);
    let engine = QueryEngine::open(&out, &common::cpu()).unwrap();
    let root = common::sample("pascal_part");
    let probes: Vec<_> = engine
        .index()
        .read_all_regions()
        .unwrap()
        .into_iter()
        .step_by(37)
        .collect();
    for r in &probes {
        for exact in [true, false] {
            // exact_below 0 sends the non-exact case through the HNSW graph.
            let opts = SearchOptions {
                k: 3,
                exact,
                exact_below: 0,
                ..SearchOptions::default()
            };
            let hits = engine
                .search_image_file(&root.join(&r.image), Some(r.bbox), &opts)
                .unwrap();
            assert_eq!(hits[0].id, r.id, "{} {:?}", r.image, r.bbox);
            assert!(hits[0].score > 0.9999, "self-similarity {}", hits[0].score);
            assert_eq!(hits[0].crop_box, r.crop_box.to_array());
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }
    // Filters restrict results to matching regions.
    let r = &probes[0];
    for exact_below in [0, usize::MAX] {
        let opts = SearchOptions {
            k: 50,
            kind: Some(RegionKind::Object),
            split: Some("train".into()),
            exact_below,
            ..SearchOptions::default()
        };
        let hits = engine
            .search_image_file(&root.join(&r.image), Some(r.bbox), &opts)
            .unwrap();
        // 26 train objects of ≥ 256 px (EXPECTED.json), fewer than k: all of them, filtered.
        assert_eq!(hits.len(), 26, "exact_below {exact_below}");
        assert!(hits
            .iter()
            .all(|h| h.kind == RegionKind::Object && h.split == "train"));
    }
    let opts = SearchOptions {
        k: 50,
        label: Some("person/hair".into()),
        ..SearchOptions::default()
    };
    let hits = engine
        .search_image_file(&root.join(&r.image), Some(r.bbox), &opts)
        .unwrap();
    assert!(!hits.is_empty() && hits.iter().all(|h| h.label == "person/hair"));
}

#[test]
fn hnsw_recall_on_real_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pascal_all");
    // Every region down to one pixel: 985 parts + 58 objects (EXPECTED.json).
    let idx = build("pascal_part", &common::mobilenet(), &out, 1);
    assert_eq!(idx.len(), 1043);
    let m = idx.feature(Feature::Mean).unwrap();
    let norm = normalize_rows(&m.to_vec(), m.cols());
    // The stored unit rows are the raw rows normalised.
    let unit = idx.unit(Feature::Mean).unwrap();
    assert_eq!(unit.to_vec(), norm);
    let graph = idx.graphs(Feature::Mean).unwrap().remove(0);
    assert_eq!(graph.header().n, 1043);
    // A second build from the same rows (another thread interleaving) is as good.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh_path = fresh_dir.path().join("g.graph");
    partlens::index::build_graph_file(
        &fresh_path,
        &norm,
        m.cols(),
        HnswParams::default(),
        partlens::index::DEFAULT_SEED,
        partlens::index::GraphBuilder::Partlens,
    )
    .unwrap();
    let fresh = HnswIndex::open(
        &fresh_path,
        idx.segments()[0].unit(Feature::Mean).unwrap().clone(),
    )
    .unwrap();
    for (name, g) in [("stored", &graph), ("fresh", &fresh)] {
        let mut total = 0.0;
        for q in 0..m.rows() {
            let qv = &norm[q * m.cols()..(q + 1) * m.cols()];
            let exact = exact_search(&norm, m.cols(), qv, 10, None);
            total += recall(&exact, &g.search(qv, 10, 64, None));
        }
        let r = total / m.rows() as f64;
        println!(
            "{name} HNSW recall@10 over {} real queries: {r:.4}",
            m.rows()
        );
        assert!(r >= 0.95, "{name}: recall@10 {r}");
    }
}

#[test]
fn cli_ingest_info_query_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lip");
    let root = common::sample("lip");
    let o = common::bin()
        .args([
            "--device",
            "cpu",
            "ingest",
            "--json",
            "--min-area",
            "64",
            "--dataset",
        ])
        .arg(&root)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["manifest"]["counts"]["parts"], 12); // EXPECTED.json: lip part ≥ 64
    assert_eq!(v["manifest"]["counts"]["objects"], 0);

    let o = common::bin().arg("info").arg(&out).output().unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("12 parts") && text.contains("mobilenet_v2_imagenet"),
        "{text}"
    );

    let image = root.join("img/val/684_2150041.jpg");
    let o = common::bin()
        .args(["--device", "cpu", "query", "--json", "-k", "5", "--index"])
        .arg(&out)
        .arg("--image")
        .arg(&image)
        .args(["--box", "10,10,90,120"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hits: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(hits.len(), 5);
    for h in &hits {
        for key in ["id", "image", "box", "crop_box", "label", "score"] {
            assert!(h.get(key).is_some(), "hit lacks {key}: {h}");
        }
        assert!(h["image"].as_str().unwrap().starts_with("img/val/"));
        assert_eq!(h["box"].as_array().unwrap().len(), 4);
    }
    // Without --box the whole image is the query.
    let o = common::bin()
        .args(["--device", "cpu", "query", "--json", "--index"])
        .arg(&out)
        .arg("--image")
        .arg(&image)
        .output()
        .unwrap();
    assert!(o.status.success());
    let hits: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(hits.len(), 10); // default k; the index holds 12 regions
}

#[test]
fn model_with_a_fixed_batch_size_is_fed_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = dir.path().join("fixed1.onnx");
    let status = std::process::Command::new(common::python())
        .args([
            "-c",
            "import onnx, sys\nm = onnx.load(sys.argv[1])\nfor v in list(m.graph.input) + list(m.graph.output):\n    v.type.tensor_type.shape.dim[0].dim_value = 1\nonnx.save(m, sys.argv[2])",
        ])
        .arg(common::mobilenet())
        .arg(&fixed)
        .status()
        .unwrap();
    assert!(status.success());
    let a = build("lip", &common::mobilenet(), &dir.path().join("dynamic"), 64);
    let b = build("lip", &fixed, &dir.path().join("fixed"), 64);
    let (fa, fb) = (
        a.feature(Feature::Mean).unwrap(),
        b.feature(Feature::Mean).unwrap(),
    );
    assert_eq!(fa.rows(), 12);
    for i in 0..fa.rows() {
        assert!(cosine(fa.row(i), fb.row(i)) > 0.99999, "row {i}");
    }
}

#[test]
fn every_reader_ingests_its_real_sample_end_to_end() {
    // (sample, extra flags, parts, objects, format): counts from the independent scripts'
    // EXPECTED.json files at the default --min-area 256 (keypoint crops have no area limit;
    // Pascal-Part as released: one region per annotated instance, `pascal_part_raw`).
    let street = "ade20k_full/dataset/ADE20K_2021_17_01/images/ADE/training/urban/street";
    let cases: &[(&str, &[&str], u64, u64, &str)] = &[
        ("ade20k_full", &[], 22, 109, "ade20k"),
        (street, &["--part-level", "2"], 25, 109, "ade20k"),
        ("ade20k_challenge", &[], 0, 39, "mmseg"),
        ("pascal_part_raw", &[], 229, 52, "pascal-part"),
        (
            "keypoints/ap10k",
            &["--keypoints", "nose,left_eye,right_eye"],
            4,
            2,
            "coco-keypoints",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (sample, flags, parts, objects, format)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("idx{i}"));
        let v = common::ingest_json(&common::sample(sample), flags, &out);
        let m = &v["manifest"];
        assert_eq!(m["dataset"]["format"], *format, "{sample}");
        assert_eq!(m["counts"]["parts"], *parts, "{sample} parts");
        assert_eq!(m["counts"]["objects"], *objects, "{sample} objects");
        assert_eq!(m["skipped"].as_array().unwrap().len(), 0, "{sample}: {m}");
        // The index answers: its first region finds itself.
        let idx = IndexDir::open(&out).unwrap();
        assert_eq!(idx.len() as u64, parts + objects);
        let feats = idx.feature(Feature::Mean).unwrap();
        let d = feats.cols();
        let unit = partlens::index::normalize_rows(feats.row(0), d);
        let all = partlens::index::normalize_rows(&feats.to_vec(), d);
        assert_eq!(exact_search(&all, d, &unit, 1, None)[0].id, 0, "{sample}");
    }
}
