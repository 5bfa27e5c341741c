//! Indexes of the previous layout (schema 1, hnsw_rs dumps; `tests/data/index_v1`, written by
//! partlens at 9ab36dd) open for `info`, refuse queries with the command that upgrades them,
//! and after `partlens upgrade` answer exactly as a fresh index of the same data.

mod common;

use std::path::Path;

use common::{err, json, run, s};

fn query(index: &Path) -> serde_json::Value {
    let img = common::sample("lip").join("img/val/684_2150041.jpg");
    json(&[
        "--device",
        "cpu",
        "query",
        "--index",
        s(index),
        "--model",
        s(&common::mobilenet()),
        "--image",
        s(&img),
        "--box",
        "10,10,120,150",
        "-k",
        "5",
        "--json",
    ])
}

#[test]
fn previous_layout_is_refused_then_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("v1");
    common::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/index_v1"),
        &old,
    );
    // info reads it and says what to do.
    let o = run(&["info", s(&old)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("partlens upgrade"), "{text}");
    // A query is refused, naming the command.
    let e = err(&[
        "--device",
        "cpu",
        "query",
        "--index",
        s(&old),
        "--model",
        s(&common::mobilenet()),
        "--image",
        s(&common::sample("lip").join("img/val/684_2150041.jpg")),
    ]);
    assert!(
        e.contains(&format!("partlens upgrade {}", old.display())),
        "{e}"
    );

    let r = json(&["upgrade", s(&old), "--json"]);
    assert_eq!((r["from"].as_u64(), r["to"].as_u64()), (Some(1), Some(2)));
    assert!(!old.join("hnsw/mean.hnsw.graph").exists());
    assert!(!old.join("hnsw/mean.hnsw.data").exists());
    assert!(old.join("hnsw/mean.graph").is_file() && old.join("features/mean.unit.npy").is_file());
    // Every file, new ones included, matches the manifest's checksums; the graph is shown.
    let o = run(&["info", "--verify", s(&old)]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("graph        mean: M 24 (48 on layer 0), ef_construction 200"),
        "{text}"
    );
    // A second upgrade does nothing.
    let again = json(&["upgrade", s(&old), "--json"]);
    assert_eq!(again["from"], again["to"]);
    assert_eq!(again["written"].as_array().unwrap().len(), 0);

    // The same answers as a fresh index of the same data with this partlens.
    let fresh = dir.path().join("fresh");
    common::ingest_json(&common::sample("lip"), &["--min-area", "1"], &fresh);
    let (a, b) = (query(&old), query(&fresh));
    assert_eq!(a.as_array().unwrap().len(), 5);
    assert_eq!(a, b);
}

#[test]
fn upgrade_refuses_what_is_not_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let e = err(&["upgrade", s(dir.path())]);
    assert!(e.contains("manifest.json"), "{e}");
}
