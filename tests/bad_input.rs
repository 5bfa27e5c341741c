//! Bad input gets a clear error naming the file, and loses nothing: ingest skips and reports what
//! it cannot read (or stops under --strict), and a damaged index or a wrong model is refused.

mod common;

use std::path::{Path, PathBuf};

use partlens::encoder::{Encoder, EncoderOptions};
use partlens::ingest::{ingest_with_encoder, IngestOptions};
use partlens::query::QueryEngine;
use partlens::{Device, Error, IndexDir, MmsegDataset};

/// A copy of the LIP sample (2 val images) that a test may damage.
fn lip_copy(dir: &Path) -> PathBuf {
    let root = dir.join("lip");
    common::copy_dir(&common::sample("lip"), &root);
    root
}

fn ingest(root: &Path, out: &Path, strict: bool) -> partlens::Result<partlens::store::Manifest> {
    let ds = MmsegDataset::open(root)?;
    let enc = Encoder::load(common::mobilenet(), &common::cpu())?;
    let mut opts = IngestOptions::new(out);
    opts.strict = strict;
    opts.settings.min_area = 64;
    Ok(ingest_with_encoder(&ds, &enc, &opts)?.manifest)
}

/// Damages one input, checks the lenient run skips exactly that image with `reason`, keeps the
/// other image's 6 regions, and that --strict stops naming the file.
fn skipped_and_strict(damage: impl Fn(&Path), skipped_path: &str, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = lip_copy(dir.path());
    damage(&root);
    let m = ingest(&root, &dir.path().join("idx"), false).unwrap();
    assert_eq!(m.skipped.len(), 1, "{:?}", m.skipped);
    assert_eq!(m.skipped[0].path, skipped_path);
    assert!(
        m.skipped[0].reason.contains(reason),
        "reason {:?} lacks {reason:?}",
        m.skipped[0].reason
    );
    assert_eq!(m.counts.images_skipped, 1);
    // The other image (86_185913) has 6 part regions of ≥ 64 px (EXPECTED.json per_image).
    assert_eq!(m.counts.regions, 6);
    assert!(IndexDir::open(dir.path().join("idx")).is_ok());

    let err = ingest(&root, &dir.path().join("strict"), true).unwrap_err();
    assert!(err.to_string().contains(reason), "{err}");
    assert!(
        !dir.path().join("strict").exists(),
        "a failed ingest leaves no index"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "staging folder left behind");
}

const BROKEN: &str = "img/val/684_2150041.jpg";

#[test]
fn corrupt_image_is_skipped_and_reported() {
    skipped_and_strict(
        |r| std::fs::write(r.join(BROKEN), b"definitely not a jpeg").unwrap(),
        BROKEN,
        "cannot decode image",
    );
}

#[test]
fn truncated_jpeg_is_skipped_and_reported() {
    skipped_and_strict(
        |r| {
            let p = r.join(BROKEN);
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        },
        BROKEN,
        "truncated JPEG",
    );
}

#[test]
fn image_claiming_more_pixels_than_pillow_opens_is_skipped_before_decoding() {
    // The real JPEG with its frame header (SOF0) patched to claim 60000×60000 pixels: refused
    // from the header, not after allocating 10 GB (the fuzzer's decompression-bomb case).
    skipped_and_strict(
        |r| {
            let p = r.join(BROKEN);
            let mut bytes = std::fs::read(&p).unwrap();
            let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
            bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
            std::fs::write(&p, bytes).unwrap();
        },
        BROKEN,
        "60000×60000 pixels is over the 178956970 limit",
    );
}

#[test]
fn label_map_of_the_wrong_size_is_skipped() {
    skipped_and_strict(
        |r| {
            image::GrayImage::new(7, 5)
                .save(r.join("ann/val/684_2150041.png"))
                .unwrap()
        },
        BROKEN,
        "label map is 7×5 but its image is",
    );
}

#[test]
fn missing_annotation_is_skipped() {
    skipped_and_strict(
        |r| std::fs::remove_file(r.join("ann/val/684_2150041.png")).unwrap(),
        BROKEN,
        "annotation missing",
    );
}

#[test]
fn unknown_class_id_is_skipped() {
    skipped_and_strict(
        |r| {
            let p = r.join("ann/val/684_2150041.png");
            let mut m = image::open(&p).unwrap().to_luma8();
            m.put_pixel(0, 0, image::Luma([40]));
            m.save(&p).unwrap();
        },
        BROKEN,
        "label value 40 has no class",
    );
}

#[test]
fn colour_label_map_is_skipped() {
    skipped_and_strict(
        |r| {
            let p = r.join("ann/val/684_2150041.png");
            let m = image::open(&p).unwrap().to_rgb8();
            m.save(&p).unwrap();
        },
        BROKEN,
        "8-bit greyscale or palette",
    );
}

#[test]
fn annotation_without_image_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = lip_copy(dir.path());
    std::fs::copy(
        root.join("ann/val/86_185913.png"),
        root.join("ann/val/orphan.png"),
    )
    .unwrap();
    let m = ingest(&root, &dir.path().join("idx"), false).unwrap();
    assert_eq!(m.counts.regions, 12);
    assert_eq!(m.skipped.len(), 1);
    assert_eq!(m.skipped[0].path, "ann/val/orphan.png");
    assert!(ingest(&root, &dir.path().join("strict"), true).is_err());
}

#[test]
fn not_a_dataset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = MmsegDataset::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("no img/ folder"), "{err}");
}

#[test]
fn existing_index_is_not_overwritten_without_asking() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    ingest(&common::sample("lip"), &out, false).unwrap();
    let before = std::fs::read(out.join("manifest.json")).unwrap();
    let err = ingest(&common::sample("lip"), &out, false).unwrap_err();
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), before);
}

fn model_err(path: &Path) -> String {
    Encoder::load(path, &common::cpu()).unwrap_err().to_string()
}

#[test]
fn unreadable_model_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("garbage.onnx");
    std::fs::write(&p, b"\x08\x07not a protobuf at all").unwrap();
    let e = model_err(&p);
    assert!(
        e.contains("garbage.onnx") && e.contains("cannot load"),
        "{e}"
    );
    let e = model_err(&dir.path().join("missing.onnx"));
    assert!(e.contains("no such model file"), "{e}");
}

#[test]
fn spec_that_does_not_match_the_graph_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::copy(common::mobilenet(), &model).unwrap();
    let sidecar = dir.path().join("m.spec.json");
    let spec = |input_size: [usize; 2], pooled: &str| {
        serde_json::json!({
            "spec_version": 1, "name": "broken", "input": "pixel_values",
            "input_size": input_size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "outputs": {"feature_map": "feature_map", "pooled": pooled}
        })
        .to_string()
    };
    std::fs::write(&sidecar, spec([256, 256], "embedding")).unwrap();
    let e = model_err(&model);
    assert!(
        e.contains("\"pixel_values\"") && e.contains("[batch, 3, 256, 256]"),
        "{e}"
    );
    std::fs::write(&sidecar, spec([224, 224], "pooled_output")).unwrap();
    let e = model_err(&model);
    assert!(
        e.contains("\"pooled_output\" is not a graph output") && e.contains("embedding"),
        "{e}"
    );
    // A role given the wrong tensor: logits [1, 1000] as the pooled feature of a 1280-d map.
    std::fs::write(&sidecar, spec([224, 224], "logits")).unwrap();
    let e = model_err(&model);
    assert!(
        e.contains("pooled output has 1000 dims but the tokens have 1280"),
        "{e}"
    );
    std::fs::write(&sidecar, "{ not json").unwrap();
    assert!(model_err(&model).contains("invalid spec in"));
}

#[test]
fn model_without_spec_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("plain.onnx");
    let status = std::process::Command::new(common::python())
        .args([
            "-c",
            "import onnx, sys; m = onnx.load(sys.argv[1]); del m.metadata_props[:]; onnx.save(m, sys.argv[2])",
        ])
        .arg(common::mobilenet())
        .arg(&model)
        .status()
        .unwrap();
    assert!(status.success());
    let e = model_err(&model);
    assert!(
        e.contains("no partlens spec") && e.contains("plain.spec.json"),
        "{e}"
    );
}

#[test]
fn cuda_request_fails_clearly_instead_of_falling_back() {
    let opts = EncoderOptions {
        device: Device::Cuda,
        ..common::cpu()
    };
    let err = Encoder::load(common::mobilenet(), &opts).unwrap_err();
    assert!(matches!(err, Error::Device { .. }), "{err}");
    assert!(err.to_string().contains("onnxruntime-gpu"), "{err}");
    // auto falls back and says so in the log; it still works.
    let opts = EncoderOptions {
        device: Device::Auto,
        ..common::cpu()
    };
    assert_eq!(
        Encoder::load(common::mobilenet(), &opts)
            .unwrap()
            .provider(),
        "cpu"
    );
}

#[test]
fn missing_runtime_says_what_was_tried_and_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("idx");
    ingest(&common::sample("lip"), &idx, false).unwrap();
    let o = common::bin()
        .env_remove("ORT_DYLIB_PATH")
        .env("PARTLENS_HOME", dir.path().join("empty-home"))
        .env("PATH", dir.path().join("no-bin"))
        .args(["query", "--index"])
        .arg(&idx)
        .args(["--image", "x.jpg"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("no ONNX Runtime library found")
            && e.contains("ORT_DYLIB_PATH (not set)")
            && e.contains("empty-home")
            && e.contains("run `partlens setup`"),
        "{e}"
    );
    let o = common::bin()
        .args([
            "--ort-lib",
            "/nonexistent/libonnxruntime.so",
            "query",
            "--index",
        ])
        .arg(&idx)
        .args(["--image", "x.jpg"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--ort-lib /nonexistent/libonnxruntime.so: no such file"),
        "{e}"
    );
}

fn damaged_index(damage: impl Fn(&Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    ingest(&common::sample("lip"), &out, false).unwrap();
    damage(&out);
    QueryEngine::open(&out, &common::cpu())
        .unwrap_err()
        .to_string()
}

fn truncate(p: &Path) {
    let bytes = std::fs::read(p).unwrap();
    std::fs::write(p, &bytes[..bytes.len() - 100]).unwrap();
}

#[test]
fn damaged_index_files_are_refused() {
    let e = damaged_index(|d| truncate(&common::seg0(d).join("features/mean.npy")));
    assert!(e.contains("mean.npy") && e.contains("truncated"), "{e}");
    let e = damaged_index(|d| truncate(&common::seg0(d).join("regions/part-00000.parquet")));
    assert!(e.contains("part-00000.parquet"), "{e}");
    let e = damaged_index(|d| std::fs::remove_file(d.join("manifest.json")).unwrap());
    assert!(
        e.contains("manifest.json") && e.contains("did not finish"),
        "{e}"
    );
    let e = damaged_index(|d| {
        std::fs::write(d.join("manifest.json"), b"{\"schema_version\": 1").unwrap()
    });
    assert!(e.contains("unreadable manifest"), "{e}");
    let e = damaged_index(|d| truncate(&common::seg0(d).join("hnsw/mean.graph")));
    assert!(e.contains("mean.graph"), "{e}");
    // Same length, one byte changed: the graph's own checks catch it when it is opened.
    let e = damaged_index(|d| {
        let p = common::seg0(d).join("hnsw/mean.graph");
        let mut b = std::fs::read(&p).unwrap();
        b[300] ^= 0x40;
        std::fs::write(&p, b).unwrap();
    });
    assert!(e.contains("mean.graph") && e.contains("checksum"), "{e}");
    let e = damaged_index(|d| {
        std::fs::remove_file(common::seg0(d).join("features/mean.unit.npy")).unwrap()
    });
    assert!(e.contains("mean.unit.npy") && e.contains("missing"), "{e}");
}

#[test]
fn query_with_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    ingest(&common::sample("lip"), &out, false).unwrap();
    let err = QueryEngine::open_with_model(&out, Some(&common::vit_tiny()), &common::cpu())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not the model the index was built with"),
        "{err}"
    );
}

#[test]
fn malformed_query_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    ingest(&common::sample("lip"), &out, false).unwrap();
    let image = common::sample("lip").join("img/val/86_185913.jpg");
    let run = |b: &str| {
        common::bin()
            .args(["--device", "cpu", "query", "--index"])
            .arg(&out)
            .arg("--image")
            .arg(&image)
            .args(["--box", b])
            .output()
            .unwrap()
    };
    let o = run("5,5,1,1");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("x1 > x0"));
    let o = run("5000,5000,5100,5100");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("lies outside"));
    let o = common::bin()
        .args(["--device", "cpu", "query", "--index"])
        .arg(&out)
        .arg("--image")
        .arg(dir.path().join("nope.jpg"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.jpg"));
}

#[test]
fn strict_stop_on_a_many_block_dataset_does_not_hang() {
    // 18 images = several producer blocks; the first image is corrupt.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pascal");
    common::copy_dir(&common::sample("pascal_part"), &root);
    std::fs::write(root.join("img/train/2008_000652.jpg"), b"garbage").unwrap();
    let err = ingest(&root, &dir.path().join("idx"), true).unwrap_err();
    assert!(err.to_string().contains("2008_000652.jpg"), "{err}");
}

#[test]
fn overwrite_never_deletes_a_folder_that_is_not_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("photos");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("holiday.jpg"), b"...").unwrap();
    let ds = MmsegDataset::open(common::sample("lip")).unwrap();
    let enc = Encoder::load(common::mobilenet(), &common::cpu()).unwrap();
    let mut opts = IngestOptions::new(&precious);
    opts.overwrite = true;
    let err = ingest_with_encoder(&ds, &enc, &opts).unwrap_err();
    assert!(err.to_string().contains("not a partlens index"), "{err}");
    assert!(precious.join("holiday.jpg").is_file());
    // An existing index is replaced in place with --overwrite.
    let out = dir.path().join("idx");
    ingest(&common::sample("lip"), &out, false).unwrap();
    let mut opts = IngestOptions::new(&out);
    opts.overwrite = true;
    opts.settings.min_area = 1;
    let m = ingest_with_encoder(&ds, &enc, &opts).unwrap().manifest;
    assert_eq!(m.counts.regions, 12); // lip part ≥ 1 (EXPECTED.json)
    assert_eq!(IndexDir::open(&out).unwrap().len(), 12);
}

#[test]
fn impossible_margins_are_refused() {
    let ds = MmsegDataset::open(common::sample("lip")).unwrap();
    let enc = Encoder::load(common::mobilenet(), &common::cpu()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for margin in [f32::NAN, f32::INFINITY, -0.5, 100.0] {
        let mut opts = IngestOptions::new(dir.path().join("idx"));
        opts.settings.margin = margin;
        let err = ingest_with_encoder(&ds, &enc, &opts).unwrap_err();
        assert!(
            err.to_string().contains("margin must be between"),
            "{margin}: {err}"
        );
    }
}

#[test]
fn missing_object_map_costs_only_that_images_objects() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pascal");
    common::copy_dir(&common::sample("pascal_part"), &root);
    std::fs::remove_file(root.join("obj/val/2008_003228.png")).unwrap();
    let m = ingest(&root, &dir.path().join("idx"), false).unwrap();
    assert_eq!(m.counts.images, 18);
    assert!(m.counts.objects < 41);
    assert_eq!(m.skipped.len(), 1);
    assert_eq!(m.skipped[0].path, "obj/val/2008_003228.png");
    assert!(m.skipped[0].reason.contains("parts only"));
}

#[test]
fn class_names_keep_their_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let root = lip_copy(dir.path());
    // An empty name for class 1 (Hat) must not shift Hair (2) onto id 1.
    let text = std::fs::read_to_string(root.join("classes.txt")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1] = "";
    std::fs::write(root.join("classes.txt"), lines.join("\n") + "\n\n").unwrap();
    let ds = MmsegDataset::open(&root).unwrap();
    assert_eq!(ds.part_classes().unwrap()[2], "Hair");
    assert_eq!(ds.part_classes().unwrap().len(), 20);
}

#[test]
fn oversized_query_box_is_clipped_and_k_zero_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    ingest(&common::sample("lip"), &out, false).unwrap();
    let engine = QueryEngine::open(&out, &common::cpu()).unwrap();
    let image = common::sample("lip").join("img/val/86_185913.jpg");
    let huge = partlens::PixelBox::new(-5, -5, 1_000_000, 1_000_000);
    let mut opts = partlens::query::SearchOptions::default();
    let hits = engine.search_image_file(&image, huge, &opts).unwrap();
    assert!(!hits.is_empty());
    opts.k = 0;
    assert!(engine.search_image_file(&image, huge, &opts).is_err());
}
