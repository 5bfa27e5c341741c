//! `--precision` and the encoder's sessions, on a machine without a GPU: fp16 is refused on
//! the CPU with a message (never a silent fallback), the fp32/fp16 twins resolve both ways,
//! `scripts/models/fp16.py` writes a float16 model whose outputs agree with the fp32 one, and
//! the ordered pipeline over several sessions (`PARTLENS_SESSIONS`) writes exactly what one
//! session writes.

mod common;

use std::path::Path;

use common::{bin, ingest_json, s};

fn npy(path: &Path) -> Vec<f32> {
    partlens::store::NpyMatrix::open(path)
        .unwrap()
        .as_slice()
        .to_vec()
}

fn sample() -> std::path::PathBuf {
    common::sample("pascal_part")
}

fn stderr_of(cmd: &mut std::process::Command) -> String {
    let o = cmd.output().unwrap();
    assert!(!o.status.success(), "{cmd:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn fp16_is_refused_on_the_cpu_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    for device in ["cpu", "auto"] {
        let e = stderr_of(bin().args([
            "--device",
            device,
            "--precision",
            "fp16",
            "ingest",
            "--dataset",
            s(&sample()),
            "--out",
            s(&out),
        ]));
        assert!(e.contains("fp16 runs only on CUDA"), "{device}: {e}");
        assert!(e.contains("--precision fp32"), "{device}: {e}");
        assert!(!out.exists(), "{device}: an index was written");
    }
    // An fp16 model given directly is fp16 too.
    let fp16 = partlens::setup::data_dir()
        .join("models")
        .join(partlens::setup::DEFAULT_MODEL_FP16);
    let e = stderr_of(bin().args([
        "--device",
        "cpu",
        "ingest",
        "--model",
        s(&fp16),
        "--dataset",
        s(&sample()),
        "--out",
        s(&out),
    ]));
    assert!(e.contains("this model is fp16"), "{e}");
}

#[test]
fn fp16_without_its_variant_names_the_command_that_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mine.onnx");
    std::fs::copy(common::vit_tiny(), &model).unwrap();
    let e = stderr_of(bin().args([
        "--device",
        "cuda",
        "--precision",
        "fp16",
        "ingest",
        "--model",
        s(&model),
        "--dataset",
        s(&sample()),
        "--out",
        s(&dir.path().join("idx")),
    ]));
    assert!(e.contains("mine.fp16.onnx"), "{e}");
    assert!(e.contains("scripts/models/fp16.py"), "{e}");
}

#[test]
fn an_fp16_model_asked_for_fp32_runs_its_fp32_twin() {
    let dir = tempfile::tempdir().unwrap();
    let models = partlens::setup::data_dir().join("models");
    let fp16 = models.join(partlens::setup::DEFAULT_MODEL_FP16);
    let out = dir.path().join("idx");
    let r = ingest_json(
        &sample(),
        &[
            "--model",
            s(&fp16),
            "--precision",
            "fp32",
            "--min-area",
            "2000",
        ],
        &out,
    );
    let m = &r["manifest"]["encoder"];
    assert!(
        m["file"]
            .as_str()
            .unwrap()
            .ends_with(partlens::setup::DEFAULT_MODEL),
        "{m}"
    );
    assert_eq!(
        m["sha256"].as_str().unwrap(),
        partlens::encoder::sha256_file(&models.join(partlens::setup::DEFAULT_MODEL)).unwrap()
    );
    // The fp16 file names its fp32 model, which setup made first.
    let o = std::process::Command::new(common::python())
        .args([
            "-c",
            "import json, sys, onnx; m = onnx.load(sys.argv[1], load_external_data=False); \
             print(json.loads({p.key: p.value for p in m.metadata_props}['partlens.spec'])['fp32']['sha256'])",
            s(&fp16),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        m["sha256"].as_str().unwrap()
    );
}

#[test]
fn fp16_script_writes_float16_weights_with_float32_edges_that_agree() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("vit.onnx");
    // Written by this tree's vit.py: its `pooled` output is made by an op kept in float32.
    common::python_ok(&[
        "scripts/models/vit.py".as_ref(),
        "--preset".as_ref(),
        "tiny".as_ref(),
        "--out".as_ref(),
        model.as_os_str(),
    ]);
    let out = common::python_ok(&[
        "scripts/models/fp16.py".as_ref(),
        model.as_os_str(),
        "--check".as_ref(),
        "8".as_ref(),
    ]);
    let twin = dir.path().join("vit.fp16.onnx");
    assert!(twin.is_file(), "{out}");
    // Worst cosine per output, printed by --check: every one at least 0.999.
    let mut seen = 0;
    for line in out.lines().filter(|l| l.contains("worst cosine")) {
        let cos: f64 = line
            .split("inputs ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(cos >= 0.999, "{line}");
        seen += 1;
    }
    assert!(seen >= 3, "cls, patch_tokens and pooled: {out}");
    // Weights are float16; input and outputs float32; the spec says fp16 and names its twin.
    let check = common::python_ok(&[
        "-c".as_ref(),
            "import json, sys, onnx; m = onnx.load(sys.argv[1]); T = onnx.TensorProto; \
             f = [t.data_type for t in m.graph.initializer if t.data_type in (T.FLOAT, T.FLOAT16)]; \
             print('fp16', sum(d == T.FLOAT16 for d in f), 'fp32', sum(d == T.FLOAT for d in f)); \
             print('io', sorted({v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)})); \
             s = json.loads({p.key: p.value for p in m.metadata_props}['partlens.spec']); \
             print('spec', s['precision'], s['fp32']['file'])"
                .as_ref(),
            twin.as_os_str(),
    ]);
    assert!(check.contains("io [1]"), "{check}");
    assert!(check.contains("spec fp16 vit.onnx"), "{check}");
    let counts: Vec<usize> = check
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(counts[0] > 10 && counts[0] > 10 * counts[1], "{check}");
    // Converting an fp16 model again is refused.
    let o = std::process::Command::new(common::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/models/fp16.py"))
        .arg(&twin)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already fp16"));
}

#[test]
fn several_sessions_write_what_one_session_writes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |sessions: &str, binding: &str, name: &str| {
        let out = dir.path().join(name);
        let o = bin()
            .env("PARTLENS_SESSIONS", sessions)
            .env("PARTLENS_IO_BINDING", binding)
            .args(["--device", "cpu", "--threads", "1", "ingest", "--json"])
            .args(["--dataset", s(&sample()), "--min-area", "500"])
            .args(["--batch-size", "7", "--segment-size", "60", "--model"])
            .arg(common::vit_tiny())
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let one = run("1", "1", "one");
    let three = run("3", "1", "three");
    let plain = run("2", "0", "plain");
    let a = partlens::IndexDir::open(&one).unwrap();
    assert!(
        a.manifest().segments.len() >= 3,
        "segments close mid-pipeline"
    );
    for other in [&three, &plain] {
        let b = partlens::IndexDir::open(other).unwrap();
        assert_eq!(a.manifest().segments.len(), b.manifest().segments.len());
        assert_eq!(a.manifest().counts, b.manifest().counts);
        for (sa, sb) in a.manifest().segments.iter().zip(&b.manifest().segments) {
            assert_eq!(
                (sa.first_id, &sa.counts, &sa.items),
                (sb.first_id, &sb.counts, &sb.items)
            );
            for f in ["mean", "cls"] {
                let rel = format!("segments/{}/features/{f}.npy", sa.name);
                assert_eq!(npy(&one.join(&rel)), npy(&other.join(&rel)), "{rel}");
            }
        }
        let ids: Vec<usize> = (0..a.manifest().counts.regions as usize).collect();
        let ra = a.regions_at(&ids, false).unwrap();
        let rb = b.regions_at(&ids, false).unwrap();
        assert_eq!(ra.len(), rb.len());
        for (x, y) in ra.iter().zip(&rb) {
            assert_eq!(
                (&x.image, x.kind, x.label, x.bbox.to_array()),
                (&y.image, y.kind, y.label, y.bbox.to_array())
            );
        }
    }
    let e = stderr_of(
        bin()
            .env("PARTLENS_SESSIONS", "9")
            .args(["--device", "cpu", "ingest", "--dataset", s(&sample())])
            .args(["--out", s(&dir.path().join("bad"))]),
    );
    assert!(e.contains("PARTLENS_SESSIONS"), "{e}");
}
