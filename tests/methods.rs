//! The paper's seven ViT pretraining methods (DeiT, MoCo v3, DINO, BEiT, MAE, CAE, iBOT) end to
//! end: `scripts/models/test_methods.py` (the converter against the numpy references written
//! from each method's official code), then random models written in each method's published
//! checkpoint layout by `scripts/models/vit.py --method`, ingested by `partlens ingest`, compared
//! by `partlens report` — small ones, and ViT-B/16-shaped ones (`--preset base`).

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{ingest_json, json, s, sample};

/// The seven methods, in the paper's order.
const METHODS: [&str; 7] = ["deit", "mocov3", "dino", "beit", "mae", "cae", "ibot"];

/// Whether the method's pretraining has a projection head (exported as `projection`).
fn has_projection(method: &str) -> bool {
    matches!(method, "mocov3" | "dino" | "ibot")
}

/// The features an index of the method's model must hold, sorted.
fn expected_features(method: &str) -> Vec<String> {
    let mut f = vec!["cls".to_string(), "mean".to_string()];
    if has_projection(method) {
        f.push("projection".into());
    }
    f
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/models")
        .join(name)
}

/// Writes a random model in `method`'s published layout to `dir/<method>-vit-random.onnx`
/// (spec name the same, without `.onnx`); `shape` is `--preset base` or custom sizes.
fn convert(method: &str, dir: &Path, shape: &[&str]) -> PathBuf {
    let name = format!("{method}-vit-random");
    let out = dir.join(format!("{name}.onnx"));
    let mut args: Vec<OsString> = vec![
        script("vit.py").into(),
        "--method".into(),
        method.into(),
        "--name".into(),
        name.into(),
        "--out".into(),
        out.clone().into(),
    ];
    args.extend(shape.iter().map(OsString::from));
    let text = common::python_ok(&args);
    assert!(text.contains("wrote "), "{method}: {text}");
    assert_eq!(
        text.contains("projection["),
        has_projection(method),
        "{method}: {text}"
    );
    out
}

/// Checks what the index records about its model: the method (in the manifest's JSON as
/// `ingest --json` printed it, and in the Rust `ModelSpec` read back from disk), exactly the
/// method's features, their widths, and at least one region.
fn check_index(
    method: &str,
    index: &Path,
    report: &serde_json::Value,
    width: usize,
    projection: usize,
) {
    let m = &report["manifest"];
    assert_eq!(m["encoder"]["spec"]["method"], method, "{method}: {m}");
    let mut features: Vec<String> = m["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    features.sort();
    assert_eq!(features, expected_features(method), "{method}");
    assert!(
        m["counts"]["regions"].as_u64().unwrap() > 0,
        "{method}: {m}"
    );

    let dir = partlens::IndexDir::open(index).unwrap();
    let manifest = dir.manifest();
    assert_eq!(manifest.encoder.spec.method.as_deref(), Some(method));
    assert_eq!(
        manifest.encoder.spec.name,
        format!("{method}-vit-random"),
        "{method}"
    );
    let mut dims: Vec<(String, usize)> = manifest
        .encoder
        .dims
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    dims.sort();
    let mut want = vec![("cls".to_string(), width), ("mean".to_string(), width)];
    if has_projection(method) {
        want.push(("projection".into(), projection));
    }
    assert_eq!(dims, want, "{method}");
    // The rows are finite and not all the same (a broken graph gives NaN or a constant).
    for f in expected_features(method) {
        let rows =
            partlens::store::NpyMatrix::open(common::seg0(index).join(format!("features/{f}.npy")))
                .unwrap();
        let v = rows.as_slice();
        assert!(v.iter().all(|x| x.is_finite()), "{method}/{f}: not finite");
        assert!(
            rows.rows() < 2 || rows.row(0) != rows.row(1),
            "{method}/{f}: rows 0 and 1 are equal"
        );
    }
}

#[test]
fn test_methods_script_passes() {
    let t = Instant::now();
    let out = common::python_ok(&[script("test_methods.py").as_os_str()]);
    println!("{out}");
    assert!(out.contains(" 0 failed"), "{out}");
    println!("test_methods.py: {:.1} s", t.elapsed().as_secs_f64());
}

/// Small random models (depth 2, width 64, 2 heads, 224 px; heads 128 hidden → 32) of each
/// method, ingested, then compared by `partlens report`.
#[test]
fn seven_methods_ingest_and_report() {
    let t = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let small = [
        "--depth",
        "2",
        "--dim",
        "64",
        "--heads",
        "2",
        "--img-size",
        "224",
    ];
    let head = [
        "--proj-hidden",
        "128",
        "--proj-dim",
        "32",
        "--proj-out",
        "256",
    ];
    let mut named = Vec::new();
    for m in METHODS {
        let mut shape = small.to_vec();
        if has_projection(m) {
            shape.extend(head);
        }
        let model = convert(m, dir.path(), &shape);
        let index = dir.path().join(m);
        let r = ingest_json(
            &sample("pascal_part"),
            &["--model", s(&model), "--min-area", "2000"],
            &index,
        );
        check_index(m, &index, &r, 64, 32);
        named.push(format!("{m}={}", s(&index)));
    }

    // DeiT, DINO and iBOT share the architecture (learned pos_embed, fused qkv, no layer
    // scale), and the random checkpoints draw the encoder first from the same seed: the three
    // published layouts must convert to the same encoder — the DINO/iBOT teacher backbone, not
    // the student or anything else the file carries.
    let cls = |m: &str| {
        partlens::store::NpyMatrix::open(common::seg0(&dir.path().join(m)).join("features/cls.npy"))
            .unwrap()
            .as_slice()
            .to_vec()
    };
    let deit = cls("deit");
    for m in ["dino", "ibot"] {
        let other = cls(m);
        assert_eq!(deit.len(), other.len());
        let diff = deit
            .iter()
            .zip(&other)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "deit vs {m}: cls differs by {diff}");
    }

    let out = dir.path().join("report");
    let mut args = vec!["report"];
    for n in &named {
        args.extend(["--index", n.as_str()]);
    }
    args.extend(["--out", s(&out), "--epochs", "5", "--json"]);
    let r = json(&args);
    let cells = r["cells"].as_array().unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    // The tables (the notes below them are the sample's small classes, per cell).
    for line in md.lines().filter(|l| l.starts_with('|')) {
        println!("{line}");
    }
    for m in METHODS {
        let mine: Vec<&serde_json::Value> = cells.iter().filter(|c| c["index"] == m).collect();
        assert!(!mine.is_empty(), "{m}: no row in the report");
        let mut features: Vec<String> = mine
            .iter()
            .map(|c| c["feature"].as_str().unwrap().to_string())
            .collect();
        features.sort();
        features.dedup();
        assert_eq!(features, expected_features(m), "{m}");
        // The method is visible in every row: the encoder column names the model file and
        // the method its spec records.
        let file = format!("{m}-vit-random.onnx ({m})");
        assert!(mine.iter().all(|c| c["encoder"] == file.as_str()), "{m}");
        assert!(
            mine.iter().all(|c| c["value"].as_f64().is_some()),
            "{m}: a task without a value"
        );
        for f in expected_features(m) {
            assert!(
                md.contains(&format!("| {m} | {file} | {f} |")),
                "{m}/{f}\n{md}"
            );
        }
        if !has_projection(m) {
            assert!(
                !md.contains(&format!("| {m} | {file} | projection |")),
                "{m}"
            );
        }
    }
    println!(
        "seven small methods: convert + ingest + report in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// ViT-B/16-shaped random models (`--preset base`: 12 blocks, 768 wide, 12 heads, the official
/// head widths) of each method, one at a time (conversion peaks near 3 GB), through `ingest`
/// on the sample's few largest regions.
#[test]
fn seven_methods_at_vit_b16_size() {
    let dir = tempfile::tempdir().unwrap();
    for m in METHODS {
        let t = Instant::now();
        let model = convert(m, dir.path(), &["--preset", "base"]);
        let converted = t.elapsed().as_secs_f64();
        let index = dir.path().join(m);
        let r = ingest_json(
            &sample("pascal_part"),
            &["--model", s(&model), "--min-area", "50000"],
            &index,
        );
        check_index(m, &index, &r, 768, 256);
        println!(
            "{m}: ViT-B/16 converted in {converted:.1} s, {} regions ingested in {:.1} s",
            r["manifest"]["counts"]["regions"],
            t.elapsed().as_secs_f64() - converted
        );
        std::fs::remove_file(&model).unwrap();
        std::fs::remove_dir_all(&index).unwrap();
    }
}
