//! Dense features end to end: `ingest --dense --tokens` checked against an independent Python
//! reference (Pillow + ONNX Runtime + numpy), `probe segment` whose `--predictions` score the
//! same in an independent numpy mmseg computation, `probe attentive` on the stored tokens, and
//! bad input: a missing --dense, label maps of the wrong size or with unknown classes, an
//! evaluation split with nothing labelled, an output folder in use, a truncated grid file.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{err, ingest_json, json, run, run_python, s, sample, vit_tiny};

/// A synthetic dataset (24 images, train and val, parts and objects) and its dense index with
/// region tokens, made once per test binary with the tiny ViT.
fn synth() -> (&'static Path, &'static Path) {
    static DIRS: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    let d = DIRS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (data, index) = (dir.path().join("synth"), dir.path().join("index"));
        let o = run(&[
            "synth",
            "--out",
            s(&data),
            "--images",
            "24",
            "--variation",
            "0.5",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let vit = vit_tiny();
        ingest_json(&data, &["--model", s(&vit), "--dense", "--tokens"], &index);
        (dir, data, index)
    });
    (&d.1, &d.2)
}

#[test]
fn dense_grids_equal_an_independent_reference_on_real_jpegs() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("pp");
    let vit = vit_tiny();
    let r = ingest_json(
        &sample("pascal_part"),
        &["--model", s(&vit), "--dense", "--tokens"],
        &index,
    );
    let d = &r["manifest"]["dense"];
    assert_eq!(d["images"], 18);
    assert_eq!(
        (d["cell"].as_u64(), d["stride"].as_u64()),
        (Some(16), Some(112))
    );
    assert_eq!(d["object_classes"][15], "person");
    let out = run_python(
        "dense_reference.py",
        &[index.as_os_str(), vit.as_os_str(), OsStr::new("3")],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["labels_equal"], true, "{v}");
    assert_eq!(v["rows"], 18);
    for im in v["images"].as_array().unwrap() {
        // float16 keeps 11 significant bits: half a unit in the last place of the largest value.
        let (diff, max) = (
            im["max_abs_diff"].as_f64().unwrap(),
            im["max_abs"].as_f64().unwrap(),
        );
        assert!(diff <= max * 2f64.powi(-11) + 1e-6, "{im}");
    }
    // Region tokens: their mean is the stored mean feature (to float16's precision).
    let idx = partlens::IndexDir::open(&index).unwrap();
    let t = idx.tokens().unwrap();
    let (n, dim) = (t.shape()[1], t.shape()[2]);
    let mut tok = vec![0f32; n * dim];
    t.read_region(5, &mut tok);
    let mean = idx.feature(partlens::Feature::Mean).unwrap().row(5);
    for (k, &m) in mean.iter().enumerate() {
        let got: f32 = (0..n).map(|i| tok[i * dim + k]).sum::<f32>() / n as f32;
        assert!(
            (got - m).abs() <= 2e-3 * m.abs().max(1.0),
            "dim {k}: {got} vs {m}"
        );
    }
}

#[test]
fn segment_probe_predictions_score_the_same_in_numpy() {
    let (data, index) = synth();
    let dir = tempfile::tempdir().unwrap();
    for (labels, ann) in [("parts", "ann"), ("objects", "obj")] {
        let (pred, over) = (
            dir.path().join(labels),
            dir.path().join(format!("{labels}-ov")),
        );
        let r = json(&[
            "probe",
            "segment",
            "--index",
            s(index),
            "--labels",
            labels,
            "--epochs",
            "5",
            "--predictions",
            s(&pred),
            "--overlays",
            s(&over),
            "--overlay-count",
            "3",
            "--json",
        ]);
        let nclass = r["classes"].as_array().unwrap().len();
        let eval = r["eval_images"].as_u64().unwrap();
        assert!(eval > 0 && r["fit_cells"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(std::fs::read_dir(&over).unwrap().count(), 3);
        let written = std::fs::read_dir(pred.join(ann).join("val"))
            .unwrap()
            .count();
        assert_eq!(written as u64, eval);
        let out = run_python(
            "miou_reference.py",
            &[
                OsStr::new("--pred"),
                pred.join(ann).join("val").as_os_str(),
                OsStr::new("--gt"),
                data.join(ann).join("val").as_os_str(),
                OsStr::new("--nclass"),
                OsStr::new(&nclass.to_string()),
                OsStr::new("--reduce-zero-label"),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        for (mine, theirs) in [("miou", "miou"), ("aacc", "aacc"), ("macc", "macc")] {
            let (a, b) = (
                r["metrics"][mine].as_f64().unwrap(),
                v[theirs].as_f64().unwrap(),
            );
            assert!((a - b).abs() < 1e-9, "{labels} {mine}: {a} vs numpy {b}");
        }
        let ious = r["metrics"]["classes"].as_array().unwrap();
        for (k, c) in ious.iter().enumerate() {
            assert_eq!(
                c["iou"].as_f64().map(|x| (x * 1e9).round()),
                v["iou"][k].as_f64().map(|x| (x * 1e9).round()),
                "{labels} class {k}"
            );
        }
    }
}

#[test]
fn attentive_probe_runs_on_the_index_tokens() {
    let (_, index) = synth();
    let r = json(&[
        "probe",
        "attentive",
        "--index",
        s(index),
        "--kind",
        "object",
        "--epochs",
        "3",
        "--json",
    ]);
    assert_eq!(r["tokens"], 196);
    assert_eq!(r["dim"], 64);
    let top1 = r["accuracy"]["top1"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&top1), "{r}");
}

#[test]
fn an_index_without_dense_features_or_tokens_says_how_to_add_them() {
    let (data, _) = synth();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    ingest_json(data, &["--model", s(&vit_tiny())], &plain);
    let e = err(&["probe", "segment", "--index", s(&plain)]);
    assert!(
        e.contains("no dense features") && e.contains("--dense"),
        "{e}"
    );
    let e = err(&["probe", "attentive", "--index", s(&plain)]);
    assert!(
        e.contains("no region tokens") && e.contains("--tokens"),
        "{e}"
    );
}

#[test]
fn output_folders_in_use_and_empty_evaluation_sets_leave_nothing_behind() {
    let (data, index) = synth();
    let dir = tempfile::tempdir().unwrap();
    let used = dir.path().join("used");
    std::fs::create_dir_all(&used).unwrap();
    std::fs::write(used.join("keep.txt"), "mine").unwrap();
    let e = err(&[
        "probe",
        "segment",
        "--index",
        s(index),
        "--predictions",
        s(&used),
    ]);
    assert!(e.contains("not empty") || e.contains("empty"), "{e}");
    assert_eq!(std::fs::read_dir(&used).unwrap().count(), 1);
    // The same folder for both, or one inside the other: refused before training, and no
    // folder is left behind.
    let out = dir.path().join("out");
    for (p, o) in [
        (out.clone(), out.clone()),
        (out.clone(), out.join("ov")),
        (out.join("p"), out.clone()),
    ] {
        let e = err(&[
            "probe",
            "segment",
            "--index",
            s(index),
            "--predictions",
            s(&p),
            "--overlays",
            s(&o),
        ]);
        assert!(e.contains("separate folders"), "{e}");
        assert!(!out.exists(), "{} left behind", out.display());
    }

    // Every validation map all background: nothing to score, and no prediction folder.
    let copy = dir.path().join("blank");
    common::copy_dir(data, &copy);
    for e in std::fs::read_dir(copy.join("ann/val")).unwrap() {
        let p = e.unwrap().path();
        let m = image::open(&p).unwrap().to_luma8();
        image::GrayImage::new(m.width(), m.height())
            .save(&p)
            .unwrap();
    }
    let blank = dir.path().join("blank-index");
    ingest_json(&copy, &["--model", s(&vit_tiny()), "--dense"], &blank);
    let pred = dir.path().join("pred");
    let e = err(&[
        "probe",
        "segment",
        "--index",
        s(&blank),
        "--epochs",
        "1",
        "--predictions",
        s(&pred),
    ]);
    assert!(e.contains("no labelled pixel"), "{e}");
    assert!(!pred.exists(), "a failed run left {}", pred.display());
    // LIP has part maps only: asking for objects names what there is.
    let lip = dir.path().join("lip");
    ingest_json(
        &sample("lip"),
        &["--model", s(&vit_tiny()), "--dense"],
        &lip,
    );
    let e = err(&[
        "probe",
        "segment",
        "--index",
        s(&lip),
        "--labels",
        "objects",
    ]);
    assert!(
        e.contains("no objects label maps") && e.contains("--labels parts"),
        "{e}"
    );
}

#[test]
fn label_maps_of_the_wrong_size_or_with_unknown_classes_are_refused_or_resized() {
    let (data, _) = synth();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("bad");
    common::copy_dir(data, &copy);
    let mut anns: Vec<PathBuf> = std::fs::read_dir(copy.join("ann/train"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    anns.sort();
    // One map of another size, one with a value past classes.txt.
    let small = image::open(&anns[0]).unwrap().to_luma8();
    image::imageops::resize(&small, 128, 128, image::imageops::FilterType::Nearest)
        .save(&anns[0])
        .unwrap();
    let mut odd = image::open(&anns[1]).unwrap().to_luma8();
    odd.put_pixel(3, 3, image::Luma([200]));
    odd.save(&anns[1]).unwrap();
    let vit = vit_tiny();
    let refused = dir.path().join("refused");
    let r = ingest_json(&copy, &["--model", s(&vit), "--dense"], &refused);
    let skipped = r["manifest"]["skipped"].to_string();
    assert!(
        skipped.contains("dense features") && skipped.contains("200"),
        "{skipped}"
    );
    assert!(skipped.contains("128"), "{skipped}");
    assert_eq!(r["manifest"]["dense"]["images"], 22);
    // With --resize-labels nearest the small map is scaled (and stored at the image's size).
    let resized = dir.path().join("resized");
    let r = ingest_json(
        &copy,
        &["--model", s(&vit), "--dense", "--resize-labels", "nearest"],
        &resized,
    );
    assert_eq!(r["manifest"]["dense"]["images"], 23);
    let idx = partlens::IndexDir::open(&resized).unwrap();
    let dense = idx.dense().unwrap();
    let n = dense
        .images
        .iter()
        .position(|im| {
            anns[0].ends_with(
                Path::new(&im.image)
                    .with_extension("png")
                    .file_name()
                    .unwrap(),
            )
        })
        .unwrap();
    let m = dense
        .label_map(n, partlens::store::dense::LabelSet::Parts)
        .unwrap()
        .unwrap();
    assert_eq!((m.width, m.height), (256, 256));
}

#[test]
fn dense_settings_are_checked_before_any_work_and_damage_is_caught() {
    let (data, index) = synth();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let vit = vit_tiny();
    for (flag, value) in [
        ("--dense-size", "100"),
        ("--dense-size", "450"),
        ("--dense-stride", "7"),
    ] {
        let e = err(&[
            "--device",
            "cpu",
            "ingest",
            "--dataset",
            s(data),
            "--model",
            s(&vit),
            "--dense",
            flag,
            value,
            "--out",
            s(&out),
        ]);
        assert!(e.contains(flag), "{flag} {value}: {e}");
        assert!(!out.exists());
    }
    // A truncated grid file: the index does not open.
    let copy = dir.path().join("copy");
    common::copy_dir(index, &copy);
    let g = common::seg0(&copy).join("dense/grids.npy");
    let bytes = std::fs::read(&g).unwrap();
    std::fs::write(&g, &bytes[..bytes.len() - 64]).unwrap();
    let e = err(&["probe", "segment", "--index", s(&copy)]);
    assert!(e.contains("grids.npy") && e.contains("truncated"), "{e}");
    // A NaN written over a cell (same length): named, never trained on or scored.
    let mut bytes = bytes;
    let at = (bytes.len() / 2) & !1;
    bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    std::fs::write(&g, &bytes).unwrap();
    let e = err(&["probe", "segment", "--index", s(&copy), "--epochs", "1"]);
    assert!(e.contains("NaN") && e.contains("--verify"), "{e}");
}

/// Rewrites `index`'s image table with `edit` applied, keeping the manifest's size record
/// true (so only the table's content is wrong).
fn rewrite_images(index: &Path, edit: impl FnOnce(&mut [partlens::store::dense::DenseImage])) {
    use partlens::store::dense::{read_images, write_images, IMAGES_FILE};
    let t = common::seg0(index).join(IMAGES_FILE);
    let mut rows = read_images(&t).unwrap();
    edit(&mut rows);
    write_images(&t, &rows).unwrap();
    let m = index.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v["segments"][0]["files"][IMAGES_FILE]["bytes"] = std::fs::metadata(&t).unwrap().len().into();
    std::fs::write(&m, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn a_lying_image_table_is_refused_and_predictions_stay_in_their_folder() {
    let (_, index) = synth();
    let dir = tempfile::tempdir().unwrap();
    // Grid sizes whose cells wrap around u64 to the file's true total: refused when the index
    // opens, not an allocation of terabytes when a grid is read.
    let copy = dir.path().join("wrap");
    common::copy_dir(index, &copy);
    rewrite_images(&copy, |rows| {
        let total: u64 = rows.iter().map(|r| r.cells() as u64).sum();
        let rest: u64 = rows[2..].iter().map(|r| r.cells() as u64).sum();
        rows[0].rows = u32::MAX;
        rows[0].cols = u32::MAX;
        let need = total
            .wrapping_sub(u64::from(u32::MAX) * u64::from(u32::MAX))
            .wrapping_sub(rest);
        let a = (2..100_000u64)
            .find(|a| need % a == 0 && need / a <= u64::from(u32::MAX))
            .unwrap();
        rows[1].rows = a as u32;
        rows[1].cols = (need / a) as u32;
        let mut off = 0u64;
        for r in rows.iter_mut() {
            r.offset = off;
            off = off.wrapping_add(r.cells() as u64);
        }
        assert_eq!(off, total);
    });
    let e = err(&["probe", "segment", "--index", s(&copy), "--epochs", "1"]);
    assert!(
        e.contains("images.parquet") && e.contains("4294967295"),
        "{e}"
    );
    // An annotation path leading out of the predictions folder (or an absolute one, as files
    // outside the dataset folder are recorded): the index opens, and each prediction keeps
    // its file name inside the folder.
    let copy = dir.path().join("escape");
    common::copy_dir(index, &copy);
    let outside = dir.path().join("outside");
    rewrite_images(&copy, |rows| {
        for r in rows.iter_mut() {
            r.part_annotation = Some(format!("../../outside/{}.png", r.offset));
        }
    });
    let pred = dir.path().join("pred");
    json(&[
        "probe",
        "segment",
        "--index",
        s(&copy),
        "--epochs",
        "1",
        "--predictions",
        s(&pred),
        "--json",
    ]);
    assert!(!outside.exists(), "a prediction left its folder");
    let kept: Vec<_> = std::fs::read_dir(&pred)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !kept.is_empty() && kept.iter().all(|n| n.to_string_lossy().ends_with(".png")),
        "{kept:?}"
    );
    std::fs::remove_dir_all(&pred).unwrap();
    // Two evaluation images whose predictions would share a name: refused, nothing written.
    let copy = dir.path().join("same");
    common::copy_dir(index, &copy);
    rewrite_images(&copy, |rows| {
        for r in rows.iter_mut().filter(|r| r.split == "val") {
            r.part_annotation = Some("ann/val/same.png".into());
        }
    });
    let e = err(&[
        "probe",
        "segment",
        "--index",
        s(&copy),
        "--epochs",
        "1",
        "--predictions",
        s(&pred),
    ]);
    assert!(e.contains("ann/val/same.png") && e.contains("both"), "{e}");
    assert!(!pred.exists());
}

#[test]
fn dense_grids_and_tokens_in_many_segments_probe_as_in_one() {
    // The shared synthetic index (one segment) against the same data in segments of 40
    // regions: the segmentation probe's metrics and the attentive probe's accuracy are equal.
    let (data, one) = synth();
    let dir = tempfile::tempdir().unwrap();
    let many = dir.path().join("many");
    let vit = vit_tiny();
    let r = ingest_json(
        data,
        &[
            "--model",
            s(&vit),
            "--dense",
            "--tokens",
            "--segment-size",
            "40",
        ],
        &many,
    );
    let segs = r["manifest"]["segments"].as_array().unwrap().len();
    assert!(segs >= 3, "{segs} segments");
    let probe = |idx: &Path, what: &str| {
        let mut v = json(&["probe", what, "--index", s(idx), "--epochs", "2", "--json"]);
        v.as_object_mut().unwrap().remove("seconds");
        v
    };
    let (a, b) = (probe(one, "segment"), probe(&many, "segment"));
    assert_eq!(a["metrics"], b["metrics"]);
    assert_eq!(a["fit_cells"], b["fit_cells"]);
    let (a, b) = (probe(one, "attentive"), probe(&many, "attentive"));
    assert_eq!(a["accuracy"], b["accuracy"]);
}
