//! Every value read from a file or a flag that sizes an allocation or a loop is bounded: the
//! examples of the hardening issue, and a second instance of each class made up here. None
//! may crash the process; each gets an error that names the value and the limit.

mod common;

use std::path::Path;
use std::process::Output;

use partlens::dataset::{Dataset, ImageItem, RegionSettings};
use partlens::encoder::Encoder;
use partlens::query::QueryEngine;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small real index (LIP, tiny ViT) in `dir/idx`.
fn small_index(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("idx");
    let model = common::vit_tiny();
    common::ingest_json(
        &common::sample("lip"),
        &["--model", model.to_str().unwrap(), "--min-area", "64"],
        &out,
    );
    out
}

/// Rewrites one value of `idx/manifest.json`.
fn edit_manifest(idx: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let p = idx.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&p, m.to_string()).unwrap();
}

#[test]
fn manifest_values_are_checked_again_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let idx = small_index(dir.path());
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        // The example: a margin of 1000 made query crops of 30 GB.
        (
            "margin",
            Box::new(|m| m["settings"]["margin"] = 1000.0.into()),
        ),
        // Second instances: an input size, a dimension, a file name, counts that disagree.
        (
            "input_size",
            Box::new(|m| m["encoder"]["spec"]["input_size"] = serde_json::json!([100000, 100000])),
        ),
        (
            "dimension",
            Box::new(|m| m["encoder"]["dims"]["mean"] = 4_000_000_000u64.into()),
        ),
        (
            "not a plain path",
            Box::new(|m| {
                m["segments"][0]["files"]["../../../../etc/passwd"] =
                    serde_json::json!({"bytes": 1, "sha256": "0"})
            }),
        ),
        (
            "segment name",
            Box::new(|m| m["segments"][0]["name"] = "../../x".into()),
        ),
        // Segments whose ids overlap, or whose rows do not add up to the index's.
        (
            "ids must continue",
            Box::new(|m| m["segments"][0]["first_id"] = 3u64.into()),
        ),
        (
            "segments hold",
            Box::new(|m| {
                m["segments"][0]["counts"]["regions"] = 1_000_000u64.into();
                m["segments"][0]["counts"]["parts"] = 1_000_000u64.into();
                m["segments"][0]["counts"]["objects"] = 0u64.into();
            }),
        ),
        (
            "HNSW base name",
            Box::new(|m| m["hnsw"]["mean"]["basename"] = "../../x".into()),
        ),
        (
            "counts",
            Box::new(|m| m["counts"]["parts"] = 1_000_000u64.into()),
        ),
    ];
    let pristine = std::fs::read(idx.join("manifest.json")).unwrap();
    for (want, edit) in cases {
        std::fs::write(idx.join("manifest.json"), &pristine).unwrap();
        edit_manifest(&idx, edit);
        let e = QueryEngine::open(&idx, &common::cpu())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("manifest.json") && e.contains(want),
            "{want}: {e}"
        );
        // `info` and `query` from the command line: an error, never an abort.
        let o = common::bin().arg("info").arg(&idx).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{want}: {}", stderr(&o));
    }
}

#[test]
fn batch_sizes_and_threads_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let run = |global: &[&str], local: &[&str]| {
        common::bin()
            .args(["--device", "cpu"])
            .args(global)
            .args(["ingest", "--dataset"])
            .arg(common::sample("lip"))
            .arg("--out")
            .arg(dir.path().join("idx"))
            .args(local)
            .output()
            .unwrap()
    };
    // The examples: 100,000 regions per batch (60 GB), 100,000 threads; and a second
    // instance of each.
    let cases: [(&[&str], &[&str], &str); 4] = [
        (
            &[],
            &["--batch-size", "100000"],
            "batch size must be between 1 and 4096",
        ),
        (
            &[],
            &["--batch-size", "0"],
            "batch size must be between 1 and 4096",
        ),
        (&["--threads", "100000"], &[], "--threads 100000"),
        (&["--threads", "0"], &[], "--threads 0"),
    ];
    for (global, local, want) in cases {
        let o = run(global, local);
        assert_eq!(o.status.code(), Some(1), "{global:?} {local:?}");
        assert!(stderr(&o).contains(want), "{want}: {}", stderr(&o));
        assert!(!dir.path().join("idx").exists());
    }
}

#[test]
fn synth_sizes_are_bounded_and_a_refused_run_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (images, size, want) in [
        ("1", "100000", "64 to 8192"), // the example (30 GB)
        ("1", "9000", "64 to 8192"),
        ("0", "256", "between 1 and"),
        ("20000000", "256", "between 1 and"),
    ] {
        let out = dir.path().join("synth");
        let o = common::bin()
            .args(["synth", "--out"])
            .arg(&out)
            .args(["--images", images, "--size", size])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // A real run is staged and moved into place; nothing else is left beside it.
    let out = dir.path().join("synth");
    let o = common::bin()
        .args(["synth", "--out"])
        .arg(&out)
        .args(["--images", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["synth"]);
}

/// A MAT v5 file: the 128-byte header and one uncompressed `miMATRIX` element holding
/// `payload` (array flags, dimensions, name, then the class's own elements).
fn mat_file(payload: &[u8]) -> Vec<u8> {
    let mut f = b"MATLAB 5.0 MAT-file, fuzz".to_vec();
    f.resize(124, b' ');
    f.extend_from_slice(&[0x00, 0x01, b'I', b'M']);
    f.extend_from_slice(&14u32.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// Array flags for `class`, int32 dimensions, and the name `anno`.
fn mat_header(class: u8, dims: [i32; 2]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&6u32.to_le_bytes()); // miUINT32 flags
    p.extend_from_slice(&8u32.to_le_bytes());
    p.extend_from_slice(&[class, 0, 0, 0, 0, 0, 0, 0]);
    p.extend_from_slice(&5u32.to_le_bytes()); // miINT32 dims
    p.extend_from_slice(&8u32.to_le_bytes());
    p.extend_from_slice(&dims[0].to_le_bytes());
    p.extend_from_slice(&dims[1].to_le_bytes());
    p.extend_from_slice(&[1, 0, 4, 0]); // small element: miINT8, 4 bytes
    p.extend_from_slice(b"anno");
    p
}

#[test]
fn mat_element_counts_are_bounded_by_the_bytes_that_remain() {
    let started = std::time::Instant::now();
    let zero_field_struct = |dims| {
        let mut p = mat_header(2, dims);
        p.extend_from_slice(&[5, 0, 4, 0, 1, 0, 0, 0]); // field name length 1
        p.extend_from_slice(&1u32.to_le_bytes()); // miINT8 names, 0 bytes: no fields
        p.extend_from_slice(&0u32.to_le_bytes());
        mat_file(&p)
    };
    // The example: a zero-field struct of 32768 × 32768 elements in ~200 bytes.
    let e =
        partlens::dataset::matfile::read(&zero_field_struct([32768, 32768]), Path::new("bomb.mat"))
            .unwrap_err()
            .to_string();
    assert!(e.contains("bomb.mat") && e.contains("too large"), "{e}");
    // Below the element limit, the bytes that remain refuse it.
    let e =
        partlens::dataset::matfile::read(&zero_field_struct([16384, 16384]), Path::new("s.mat"))
            .unwrap_err()
            .to_string();
    assert!(e.contains("struct of 268435456 elements"), "{e}");
    // Second instance: a cell array claiming 2^28 elements.
    let p = mat_header(1, [16384, 16384]);
    let e = partlens::dataset::matfile::read(&mat_file(&p), Path::new("cell.mat"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cell of"), "{e}");
    // A field name of a megabyte, cloned into every one of 10,000 empty elements (10 GB).
    let mut p = mat_header(2, [1, 10_000]);
    p.extend_from_slice(&[5, 0, 4, 0]);
    p.extend_from_slice(&(1u32 << 20).to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&(1u32 << 20).to_le_bytes());
    p.extend(std::iter::repeat_n(b'a', 1 << 20));
    for _ in 0..10_000 {
        p.extend_from_slice(&14u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
    }
    let e = partlens::dataset::matfile::read(&mat_file(&p), Path::new("names.mat"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("field name length 1048576"), "{e}");
    // Both are refused at once, not after looping over the claimed elements.
    assert!(started.elapsed().as_secs() < 5);
}

#[test]
fn library_entry_points_return_errors_on_items_they_did_not_list() {
    // The examples: ADE20K and Pascal-Part items without their annotation.
    let item = ImageItem {
        image: "x.jpg".into(),
        split: "all".into(),
        image_path: common::sample("lip").join("img/val/86_185913.jpg"),
        part_ann: None,
        object_ann: None,
    };
    let settings = RegionSettings::default();
    let ade =
        partlens::dataset::Ade20kDataset::open(common::sample("ade20k_full"), &Default::default())
            .unwrap();
    let e = ade.load(&item, &settings).unwrap_err().to_string();
    assert!(e.contains("no ADE20K annotation"), "{e}");
    let pascal = partlens::dataset::PascalPartDataset::open(
        common::sample("pascal_part_raw"),
        &Default::default(),
    )
    .unwrap();
    let e = pascal.load(&item, &settings).unwrap_err().to_string();
    assert!(e.contains("no Pascal-Part annotation"), "{e}");
    // Second instance: an item of another reader given to mmseg has no maps: its image alone.
    let mmseg = partlens::MmsegDataset::open(common::sample("lip")).unwrap();
    assert!(mmseg.load(&item, &settings).unwrap().regions.is_empty());
}

/// The tiny ViT with its batch dimension fixed at 2 (written with the onnx package).
fn fixed_batch_model(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("fixed.onnx");
    let script = format!(
        "import onnx; m = onnx.load({src:?}); \
         m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2; onnx.save(m, {out:?})",
        src = common::vit_tiny().display().to_string(),
        out = out.display().to_string()
    );
    let o = std::process::Command::new(common::python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn empty_and_malformed_batches_are_errors_or_empty_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    for model in [fixed_batch_model(dir.path()), common::vit_tiny()] {
        let enc = Encoder::load(&model, &common::cpu()).unwrap();
        // The example: an empty batch on a fixed-batch model.
        let f = enc.embed(&[], 0).unwrap();
        assert_eq!(f.n, 0);
        assert!(f.values.values().all(Vec::is_empty));
        // Second instance: a batch whose length is not n whole tensors.
        let e = enc.embed(&[0.0; 10], 1).unwrap_err().to_string();
        assert!(e.contains("expected 1 ×"), "{e}");
        // A batch of 3 on a model fixed at 2: chunked and padded, 3 rows back.
        let t = vec![0.1f32; 3 * enc.preprocessor().tensor_len()];
        assert_eq!(enc.embed(&t, 3).unwrap().n, 3);
    }
}

#[test]
fn keypoints_without_a_declared_image_size_are_still_bounded() {
    // A COCO file without width/height: a keypoint at 1e300 must not reach crop arithmetic.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("coco");
    common::copy_dir(&common::sample("keypoints/coco"), &root);
    let json = root.join("test_coco.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for img in v["images"].as_array_mut().unwrap() {
        img.as_object_mut().unwrap().remove("width");
        img.as_object_mut().unwrap().remove("height");
    }
    let kps = v["annotations"][0]["keypoints"].as_array_mut().unwrap();
    kps[0] = 1e300.into();
    kps[1] = (-1e300).into();
    kps[2] = 2.into();
    std::fs::write(&json, v.to_string()).unwrap();
    let m = common::ingest_json(&json, &[], &dir.path().join("idx"));
    let skipped = m["manifest"]["skipped"].to_string();
    assert!(skipped.contains("lies outside the image"), "{skipped}");
}

#[test]
fn counts_that_size_work_are_bounded_too() {
    let dir = tempfile::tempdir().unwrap();
    let idx = small_index(dir.path());
    // `-k` and `--ef` far past the index: every region, not a billion-entry heap.
    let o = common::bin()
        .args([
            "--device",
            "cpu",
            "query",
            "--json",
            "-k",
            "1000000000",
            "--ef",
            "1000000000",
        ])
        .arg("--index")
        .arg(&idx)
        .arg("--image")
        .arg(common::sample("lip/img/val/86_185913.jpg"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let hits: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = partlens::IndexDir::open(&idx).unwrap().len();
    assert_eq!(hits.as_array().unwrap().len(), n);

    // Keypoints: the distance rule compares every pair; 10,002 kept keypoints in one image
    // are refused with their count instead of 10^8 distance computations.
    let coco = dir.path().join("coco");
    common::copy_dir(&common::sample("keypoints/coco"), &coco);
    let json = coco.join("test_coco.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let template = v["annotations"][0].clone();
    let image_id = template["image_id"].clone();
    let nk = v["categories"][0]["keypoints"].as_array().unwrap().len();
    let anns = v["annotations"].as_array_mut().unwrap();
    for i in 0..5001u64 {
        let mut a = template.clone();
        a["id"] = (1_000_000 + i).into();
        a["image_id"] = image_id.clone();
        let mut k = vec![serde_json::json!(0); 3 * nk];
        // nose and right wrist, visible, spread out
        k[0] = ((i % 50) as f64 * 5.0).into();
        k[1] = ((i / 50) as f64 * 2.0).into();
        k[2] = 2.into();
        k[3 * 10] = ((i % 50) as f64 * 5.0 + 3.0).into();
        k[3 * 10 + 1] = ((i / 50) as f64 * 2.0 + 1.0).into();
        k[3 * 10 + 2] = 2.into();
        a["keypoints"] = k.into();
        anns.push(a);
    }
    std::fs::write(&json, v.to_string()).unwrap();
    let t = std::time::Instant::now();
    let o = common::bin()
        .args(["dataset", "stats", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("keypoints in one image (at most 10000)"), "{s}");
    assert!(t.elapsed().as_secs() < 60);

    // Listed polygons: rasterising costs rows × points.
    std::fs::copy(
        common::sample("lip/img/val/86_185913.jpg"),
        dir.path().join("a.jpg"),
    )
    .unwrap();
    let points: Vec<[f64; 2]> = (0..100_001)
        .map(|i| [(i % 97) as f64, (i % 89) as f64])
        .collect();
    let row = serde_json::json!({"image": "a.jpg", "polygon": points, "label": "x"});
    std::fs::write(dir.path().join("l.jsonl"), row.to_string()).unwrap();
    let ds =
        partlens::dataset::ListingDataset::listing(dir.path().join("l.jsonl"), &Default::default())
            .unwrap();
    assert!(ds.listing_problems()[0].reason.contains("at most 100000"));
}

#[test]
fn object_boxes_past_any_image_are_refused_at_listing() {
    // CUB declares no image sizes: a box of 10^18 pixels would have made a 2 GB mask.
    let dir = tempfile::tempdir().unwrap();
    let cub = dir.path().join("cub");
    common::copy_dir(&common::sample("keypoints/cub_meta"), &cub);
    std::fs::create_dir_all(cub.join("images")).unwrap();
    std::fs::copy(
        common::sample("lip/img/val/86_185913.jpg"),
        cub.join("images/a.jpg"),
    )
    .unwrap();
    std::fs::write(cub.join("images.txt"), "1 a.jpg\n").unwrap();
    std::fs::write(
        cub.join("bounding_boxes.txt"),
        "1 0 0 1000000000 1000000000\n",
    )
    .unwrap();
    let ds = partlens::dataset::CubDataset::open(&cub, &Default::default()).unwrap();
    let p = ds.listing_problems();
    assert!(
        p.iter()
            .any(|p| p.reason.contains("far more than any image")),
        "{p:?}"
    );
}
