//! `eval retrieval`, `probe classify`, `probe knn` and `report` end to end on indexes of the
//! bundled Pascal-Part sample (MobileNetV2 and the tiny random ViT), and what they do with bad
//! input: a feature the index lacks, a split with no region, NaN rows, missing splits.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{bin, err, ingest_json, json, run, run_python, s, sample};

/// Indexes built once per test binary: (MobileNetV2, ViT) over the Pascal-Part sample.
fn indexes() -> (&'static Path, &'static Path) {
    static DIRS: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    let d = DIRS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("mobilenet"), dir.path().join("vit"));
        ingest_json(&sample("pascal_part"), &[], &a);
        let vit = common::vit_tiny();
        ingest_json(
            &sample("pascal_part"),
            &["--model", vit.to_str().unwrap()],
            &b,
        );
        (dir, a, b)
    });
    (&d.1, &d.2)
}

#[test]
fn retrieval_on_real_parts_and_objects() {
    let (a, _) = indexes();
    for kind in ["part", "object"] {
        let r = json(&[
            "eval",
            "retrieval",
            "--index",
            s(a),
            "--kind",
            kind,
            "--json",
        ]);
        let map = r["map"].as_f64().unwrap();
        assert!(map > 5.0 && map < 100.0, "{kind}: mAP {map}");
        let regions = r["regions"].as_u64().unwrap();
        let skipped: u64 = r["per_class"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ap"].is_null())
            .map(|c| c["members"].as_u64().unwrap())
            .sum();
        assert_eq!(r["queries"].as_u64().unwrap() + skipped, regions, "{kind}");
        let recall: Vec<f64> = r["recall"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["recall"].as_f64().unwrap())
            .collect();
        assert!(
            recall[0] <= recall[1] && recall[1] <= recall[2],
            "{recall:?}"
        );
    }
    // With --approx: the HNSW graph's recall against exact, no AP.
    let r = json(&["eval", "retrieval", "--index", s(a), "--approx", "--json"]);
    assert_eq!(r["method"], "hnsw");
    assert!(r["map"].is_null());
    let g = r["graph_recall_at_10"].as_f64().unwrap();
    assert!(g > 80.0, "graph recall {g}");
    // Restricted to one split.
    let r = json(&[
        "eval",
        "retrieval",
        "--index",
        s(a),
        "--split",
        "val",
        "--json",
    ]);
    assert_eq!(r["selection"]["split"], "val");
}

#[test]
fn probes_on_real_parts() {
    let (a, b) = indexes();
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head.npz");
    let r = json(&[
        "probe",
        "classify",
        "--index",
        s(a),
        "--epochs",
        "10",
        "--json",
        "--save",
        s(&head),
    ]);
    assert_eq!(r["split"]["derived"], false);
    assert_eq!(r["heads"].as_array().unwrap().len(), 5);
    let c = r["classes"].as_array().unwrap().len();
    // The confusion matrix is sparse: (true, predicted, regions) for the non-zero cells.
    let cells = r["accuracy"]["confusion"].as_array().unwrap();
    let total: u64 = cells.iter().map(|t| t[2].as_u64().unwrap()).sum();
    assert_eq!(total, r["eval_regions"].as_u64().unwrap());
    assert!(cells.iter().all(|t| (t[0].as_u64().unwrap() as usize) < c));
    let top1 = r["accuracy"]["top1"].as_f64().unwrap();
    assert!(top1 > 0.0 && top1 <= r["accuracy"]["top5"].as_f64().unwrap());
    // The saved head reproduces the probe's predictions in numpy, without partlens.
    let out = run_python(
        "check_head.py",
        &[
            head.as_os_str(),
            common::seg0(a).join("features/mean.npy").as_os_str(),
        ],
    );
    assert!(
        out.contains("weight (") && out.contains(&format!("{c} classes")),
        "{out}"
    );
    // k-NN on the ViT's cls feature, objects.
    let r = json(&[
        "probe",
        "knn",
        "--index",
        s(b),
        "--feature",
        "cls",
        "--kind",
        "object",
        "--json",
    ]);
    assert_eq!(r["options"]["k"], 20);
    assert!(r["eval_regions"].as_u64().unwrap() > 0);
    // Evaluating on the training split: a stratified share of it is held out, said so.
    let r = json(&["probe", "knn", "--index", s(a), "--eval", "train", "--json"]);
    assert_eq!(r["split"]["derived"], true);
    assert!(
        r["warnings"].to_string().contains("is the training split"),
        "{}",
        r["warnings"]
    );
    // Sizes past the data are clamped, not allocated.
    let r = json(&[
        "probe",
        "knn",
        "--index",
        s(a),
        "-k",
        "1000000000000",
        "--json",
    ]);
    assert!(r["accuracy"]["top1"].as_f64().unwrap() > 0.0);
    let r = json(&[
        "eval",
        "retrieval",
        "--index",
        s(a),
        "--approx",
        "--ef",
        "1000000000000",
        "--json",
    ]);
    assert!(r["graph_recall_at_10"].as_f64().unwrap() > 99.0);
}

#[test]
fn bad_requests_are_clear_errors() {
    let (a, _) = indexes();
    let e = err(&["eval", "retrieval", "--index", s(a), "--feature", "cls"]);
    assert!(e.contains("has no feature \"cls\"; it has mean"), "{e}");
    let e = err(&["eval", "retrieval", "--index", s(a), "--split", "test"]);
    assert!(
        e.contains("no part region in split \"test\"") && e.contains("train, val"),
        "{e}"
    );
    let e = err(&["probe", "classify", "--index", s(a), "--train", "test"]);
    assert!(e.contains("no region in training split \"test\""), "{e}");
    let e = err(&["probe", "knn", "--index", s(a), "-k", "0"]);
    assert!(e.contains("k ≥ 1"), "{e}");
    let e = err(&["probe", "classify", "--index", s(a), "--lr", "0"]);
    assert!(e.contains("out of range"), "{e}");
    let e = err(&["probe", "classify", "--index", s(a), "--lr", "1e300"]);
    assert!(e.contains("out of range"), "{e}");
    let e = err(&[
        "probe",
        "classify",
        "--index",
        s(a),
        "--save",
        "/nonexistent/h.npz",
    ]);
    assert!(e.contains("the folder /nonexistent does not exist"), "{e}");
    let e = err(&["probe", "knn", "--index", s(a), "--eval", "test"]);
    assert!(e.contains("no region in evaluation split \"test\""), "{e}");
    let e = err(&[
        "probe",
        "knn",
        "--index",
        s(a),
        "--eval",
        "train",
        "--eval-fraction",
        "0",
    ]);
    assert!(e.contains("between 0 and 1"), "{e}");
}

#[test]
fn nan_rows_are_named_not_averaged() {
    let (a, _) = indexes();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("idx");
    common::copy_dir(a, &copy);
    // Region 2 gets a NaN, region 5 huge values (same file length: the index still opens).
    let f = common::seg0(&copy).join("features/mean.npy");
    let mut bytes = std::fs::read(&f).unwrap();
    let at = |row: usize| 128 + row * 1280 * 4 + 40;
    bytes[at(2)..at(2) + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    // Row 5: finite values whose norm passes float32's range (dot products would overflow).
    let row5 = 128 + 5 * 1280 * 4;
    for i in 0..1280 {
        bytes[row5 + 4 * i..row5 + 4 * i + 4].copy_from_slice(&1e37f32.to_le_bytes());
    }
    std::fs::write(&f, bytes).unwrap();
    for cmd in [
        vec!["eval", "retrieval"],
        vec!["probe", "classify", "--epochs", "1"],
        vec!["probe", "knn"],
    ] {
        let mut args = cmd.clone();
        args.extend(["--index", s(&copy), "--kind", "part"]);
        let o = run(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        // Regions 2 and 5 are parts or objects; whichever kind holds them names them.
        let mut args_o = cmd.clone();
        args_o.extend(["--index", s(&copy), "--kind", "object"]);
        let eo = String::from_utf8_lossy(&run(&args_o).stderr).into_owned();
        let both = format!("{e}{eo}");
        assert!(both.contains("hold NaN or infinity"), "{cmd:?}: {both}");
        assert!(
            both.contains("rows 2, 5") || (both.contains("rows 2") && both.contains("rows 5")),
            "{cmd:?}: {both}"
        );
    }
}

#[test]
fn report_compares_indexes_and_caches_results() {
    let (a, b) = indexes();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let ma = format!("mnv2={}", s(a));
    let vb = format!("vit={}", s(b));
    let args = [
        "report",
        "--index",
        &ma,
        "--index",
        &vb,
        "--out",
        s(&out),
        "--epochs",
        "5",
        "--json",
    ];
    let r = json(&args);
    let cells = r["cells"].as_array().unwrap();
    // MobileNetV2: mean; ViT: mean, cls (and projection if its spec has one) — 6 cells each.
    assert!(cells.len() >= 18, "{}", cells.len());
    assert!(cells.iter().all(|c| c["cached"] == false));
    for f in ["report.md", "report.json", "report.html"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 3, "one chart per task");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no external assets"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| mnv2 |") && md.contains("| vit |"), "{md}");
    // Again: everything from the indexes' caches.
    let r = json(&args);
    assert!(r["cells"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["cached"] == true));
    assert!(a.join("evals").is_dir());
    // Another setting is another result.
    let r = json(&[
        "report",
        "--index",
        &ma,
        "--out",
        s(&out),
        "--epochs",
        "6",
        "--json",
    ]);
    let fresh: Vec<_> = r["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["cached"] == false)
        .collect();
    assert!(
        fresh.iter().all(|c| c["task"] == "linear") && !fresh.is_empty(),
        "{fresh:?}"
    );
    // A path holding '=' is a path, not NAME=PATH.
    let odd = dir.path().join("run=3").join("idx");
    common::copy_dir(a, &odd);
    let r = json(&[
        "report",
        "--index",
        s(&odd),
        "--out",
        s(&out),
        "--epochs",
        "5",
        "--json",
    ]);
    assert_eq!(r["cells"][0]["index"], "idx");
    // An index holding cached results can still be replaced by ingest --overwrite.
    let copy = dir.path().join("copy");
    common::copy_dir(a, &copy);
    ingest_json(&sample("pascal_part"), &["--overwrite"], &copy);
    assert!(!copy.join("evals").exists());
}

#[test]
fn report_segmentation_columns_are_cached_and_skipped_without_dense() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    // 30 synthetic images; a copy without object label maps.
    let o = bin()
        .args([
            "--device",
            "cpu",
            "synth",
            "--images",
            "30",
            "--variation",
            "1.0",
        ])
        .arg("--out")
        .arg(p("synth"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    common::copy_dir(&p("synth"), &p("synth-parts"));
    std::fs::remove_dir_all(p("synth-parts").join("obj")).unwrap();
    std::fs::remove_file(p("synth-parts").join("object_classes.txt")).unwrap();
    let vit = common::vit_tiny();
    let dense = [
        "--model",
        vit.to_str().unwrap(),
        "--dense",
        "--dense-size",
        "224",
    ];
    ingest_json(&p("synth"), &dense, &p("full"));
    ingest_json(&p("synth-parts"), &dense, &p("parts"));
    ingest_json(&p("synth"), &dense[..2], &p("plain"));
    let out = p("report");
    let idx: Vec<String> = ["full", "parts", "plain"]
        .iter()
        .map(|n| format!("{n}={}", s(&p(n))))
        .collect();
    let args = |segment_epochs: &'static str| -> Vec<String> {
        let mut a: Vec<String> = vec!["report".into()];
        for i in &idx {
            a.extend(["--index".into(), i.clone()]);
        }
        a.extend(
            [
                "--out",
                s(&out),
                "--epochs",
                "5",
                "--segment-epochs",
                segment_epochs,
                "--json",
            ]
            .map(String::from),
        );
        a
    };
    let run_report = |e: &'static str| {
        let a = args(e);
        json(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let r = run_report("5");
    let seg = r["segmentation"].as_array().unwrap();
    let cell = |r: &serde_json::Value, index: &str, labels: &str| -> serde_json::Value {
        r["segmentation"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["index"] == index && c["labels"] == labels)
            .unwrap_or_else(|| panic!("{index} {labels}: {r}"))
            .clone()
    };
    assert_eq!(seg.len(), 6, "two per index: {seg:?}");
    for (index, labels) in [("full", "parts"), ("full", "objects"), ("parts", "parts")] {
        let c = cell(&r, index, labels);
        let v = c["value"].as_f64().unwrap_or_else(|| panic!("{c}"));
        assert!((0.0..=100.0).contains(&v), "{c}");
        assert_eq!(c["cached"], false);
        let file = p(index).join(format!("evals/segment-{labels}.json"));
        assert!(file.is_file(), "{}", file.display());
    }
    // Skipped with a note, not an error.
    let c = cell(&r, "parts", "objects");
    assert!(
        c["value"].is_null() && c["note"] == "no object label maps",
        "{c}"
    );
    for labels in ["parts", "objects"] {
        let c = cell(&r, "plain", labels);
        assert!(c["value"].is_null(), "{c}");
        assert_eq!(c["note"], "no dense features (ingest --dense)");
    }
    assert!(!p("plain").join("evals/segment-parts.json").exists());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| index | encoder | segment mIoU parts | segment mIoU objects |"),
        "{md}"
    );
    let full = cell(&r, "full", "parts")["value"].as_f64().unwrap();
    assert!(
        md.contains(&format!("| full | vit_tiny.onnx | {full:.1} |")),
        "{md}"
    );
    assert!(md.contains("no dense features (ingest --dense)"), "{md}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(
        html.matches("<svg").count(),
        4,
        "three tasks and segmentation"
    );
    assert!(html.contains("segmentation mIoU"));
    // Again: the same numbers, from the indexes' caches.
    let again = run_report("5");
    for (index, labels) in [("full", "parts"), ("full", "objects"), ("parts", "parts")] {
        let (a, b) = (cell(&r, index, labels), cell(&again, index, labels));
        assert_eq!(b["cached"], true, "{b}");
        assert_eq!(a["value"], b["value"]);
    }
    // Other segmentation settings: segmentation runs again, the rest stays cached.
    let other = run_report("6");
    assert_eq!(cell(&other, "full", "parts")["cached"], false);
    assert!(other["cells"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["cached"] == true));
}
