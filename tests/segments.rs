//! An index of segments, end to end without an encoder: `import` (validation included),
//! queries that fan out over segments (exact and graph, filters, "more like this"), lazy
//! metadata, `merge`, `compact`, `verify` naming damage, and the `--shard` rule.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use partlens::query::{QueryEngine, SearchOptions};
use partlens::store::NpyWriter;
use partlens::{Feature, IndexDir};

const DIM: usize = 24;

/// Seeded rows: 12 clusters, a bit of noise.
fn rows(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let centres: Vec<f32> = (0..12 * DIM).map(|_| next()).collect();
    (0..n)
        .flat_map(|i| {
            let c = i % 12;
            (0..DIM)
                .map(|d| centres[c * DIM + d] + 0.15 * next())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn write_npy(path: &Path, data: &[f32]) {
    let mut w = NpyWriter::create(path, DIM).unwrap();
    w.append(data).unwrap();
    w.finish().unwrap();
}

/// The metadata table: image `img_<i/4>.jpg`, label `c<i%12>`, split by `i%5`, kind by `i%3`.
fn write_meta(path: &Path, n: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("label_name", DataType::Utf8, false),
        Field::new("instance", DataType::UInt32, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("img_{}.jpg", i / 4)),
        )),
        Arc::new(StringArray::from_iter_values((0..n).map(|i| {
            if i % 5 == 0 {
                "val"
            } else {
                "train"
            }
        }))),
        Arc::new(StringArray::from_iter_values((0..n).map(|i| {
            if i % 3 == 0 {
                "object"
            } else {
                "part"
            }
        }))),
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("c{}", i % 12)),
        )),
        Arc::new(UInt32Array::from_iter_values(
            (0..n).map(|i| (i % 4) as u32),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Imports `n` rows (seed `seed`) into `dir/name` with `segment` rows per segment.
fn import(dir: &Path, name: &str, n: usize, seed: u64, segment: usize) -> (PathBuf, Vec<f32>) {
    let x = rows(n, seed);
    let (xp, mp) = (
        dir.join(format!("{name}.npy")),
        dir.join(format!("{name}.parquet")),
    );
    write_npy(&xp, &x);
    write_meta(&mp, n);
    let out = dir.join(name);
    let seg = segment.to_string();
    common::json(&[
        "import",
        "--vectors",
        common::s(&xp),
        "--metadata",
        common::s(&mp),
        "--out",
        common::s(&out),
        "--segment-size",
        &seg,
        "--json",
    ]);
    (out, x)
}

fn engine(p: &Path) -> QueryEngine {
    QueryEngine::open(p, &partlens::EncoderOptions::default()).unwrap()
}

fn ids(hits: &[partlens::query::QueryHit]) -> Vec<(u64, u32)> {
    hits.iter().map(|h| (h.id, h.score.to_bits())).collect()
}

#[test]
fn imported_segments_search_as_one_index() {
    let dir = tempfile::tempdir().unwrap();
    let (one, x) = import(dir.path(), "one", 3000, 1, 100_000);
    let (many, _) = import(dir.path(), "many", 3000, 1, 700);
    let (a, b) = (engine(&one), engine(&many));
    assert_eq!(a.index().segments().len(), 1);
    assert_eq!(b.index().segments().len(), 5);
    assert_eq!(b.index().manifest().segments[4].first_id, 2800);
    // Exact search over five segments = over one: same ids, same score bits.
    let exact = SearchOptions {
        exact: true,
        k: 15,
        ..Default::default()
    };
    for q in [0, 777, 1400, 2999] {
        let v = &x[q * DIM..(q + 1) * DIM];
        assert_eq!(
            ids(&a.search_vector(v, &exact).unwrap()),
            ids(&b.search_vector(v, &exact).unwrap())
        );
    }
    // Graph search (exact_below 0 forces every segment's graph): recall against exact.
    let approx = SearchOptions {
        k: 10,
        exact_below: 0,
        ..Default::default()
    };
    let mut found = 0;
    for q in (0..3000).step_by(30) {
        let v = &x[q * DIM..(q + 1) * DIM];
        let want = b
            .search_vector(
                v,
                &SearchOptions {
                    exact: true,
                    k: 10,
                    ..Default::default()
                },
            )
            .unwrap();
        let got = b.search_vector(v, &approx).unwrap();
        assert_eq!(got[0].id as usize, q, "a row finds itself first");
        found += got
            .iter()
            .filter(|h| want.iter().any(|w| w.id == h.id))
            .count();
    }
    let recall = found as f64 / 1000.0;
    assert!(recall >= 0.95, "recall@10 over segments {recall}");
    // Filters across segments: every hit matches; a filter's value no region has is named.
    let f = SearchOptions {
        label: Some("c3".into()),
        split: Some("val".into()),
        k: 50,
        exact_below: 0,
        ..Default::default()
    };
    let hits = b.search_vector(&x[..DIM], &f).unwrap();
    // c3 and val: i % 12 == 3 and i % 5 == 0 → i ≡ 15 (mod 60): 50 rows in 3000.
    assert_eq!(hits.len(), 50);
    assert!(hits
        .iter()
        .all(|h| h.label == "c3" && h.split == "val" && h.id % 60 == 15));
    let e = b
        .search_vector(
            &x[..DIM],
            &SearchOptions {
                label: Some("c33".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("c33") && e.contains("Did you mean"), "{e}");
    // "More like this" by global id, metadata read lazily by id.
    let s = b.similar(2901, &SearchOptions::default()).unwrap();
    assert_eq!(s[0].id, 2901);
    assert_eq!(s[0].image, "img_725.jpg");
    let r = b.index().regions_at(&[2999, 5, 2999], true).unwrap();
    assert_eq!(r.iter().map(|r| r.id).collect::<Vec<_>>(), [2999, 5, 2999]);
    // An imported index has no encoder: image queries are refused with what works instead;
    // "more like this" works from the command line.
    let e = b.encoder().unwrap_err().to_string();
    assert!(e.contains("imported") && e.contains("--model"), "{e}");
    let v = common::json(&[
        "query",
        "--index",
        common::s(&many),
        "--like",
        "2901",
        "-k",
        "3",
        "--json",
    ]);
    assert_eq!(v[0]["id"], 2901);
    assert_eq!(v.as_array().unwrap().len(), 3);
    let img = common::sample("pascal_part").join("img/val/2008_000726.jpg");
    let e = common::err(&[
        "query",
        "--index",
        common::s(&many),
        "--image",
        common::s(&img),
    ]);
    assert!(e.contains("imported from vectors"), "{e}");
}

#[test]
fn merge_and_compact_keep_every_row_and_vector() {
    let dir = tempfile::tempdir().unwrap();
    let (p0, x0) = import(dir.path(), "s0", 900, 2, 400);
    let (p1, x1) = import(dir.path(), "s1", 500, 3, 300);
    let merged = dir.path().join("merged");
    common::json(&[
        "merge",
        "--out",
        common::s(&merged),
        common::s(&p0),
        common::s(&p1),
        "--json",
    ]);
    let idx = IndexDir::open(&merged).unwrap();
    assert_eq!(idx.len(), 1400);
    // 400, 400, 100 from s0; 300, 200 from s1.
    assert_eq!(idx.segments().len(), 5);
    let all: Vec<f32> = [x0.clone(), x1.clone()].concat();
    assert_eq!(idx.feature(Feature::Mean).unwrap().to_vec(), all);
    let regions = idx.read_all_regions().unwrap();
    assert!(regions.iter().enumerate().all(|(i, r)| r.id == i as u64));
    assert_eq!(regions[900].image, "img_0.jpg");
    let origin = idx.manifest().segments[3].origin.clone().unwrap();
    assert!(
        origin.index.unwrap().ends_with("s1") && origin.segment.as_deref() == Some("seg-000000")
    );
    // Inputs are untouched and still open.
    assert_eq!(IndexDir::open(&p0).unwrap().len(), 900);
    let exact20 = |p: &Path| {
        let opts = SearchOptions {
            exact: true,
            k: 20,
            ..Default::default()
        };
        ids(&engine(p).search_vector(&all[..DIM], &opts).unwrap())
    };
    let before = exact20(&merged);
    // Compact the run of consecutive segments under 350 rows (100, 300, 200) into one.
    let r = common::json(&["compact", common::s(&merged), "--below", "350", "--json"]);
    assert_eq!(r["segments"], 3);
    assert_eq!(
        r["removed"],
        serde_json::json!(["seg-000002", "seg-000003", "seg-000004"])
    );
    let idx = IndexDir::open(&merged).unwrap();
    assert_eq!(idx.manifest().segments[2].first_id, 800);
    assert_eq!(idx.manifest().segments[2].counts.regions, 600);
    assert_eq!(idx.feature(Feature::Mean).unwrap().to_vec(), all);
    assert_eq!(exact20(&merged), before);
    // Then everything into one.
    let r = common::json(&["compact", common::s(&merged), "--all", "--json"]);
    assert_eq!(r["segments"], 1);
    let idx = IndexDir::open(&merged).unwrap();
    assert_eq!(idx.feature(Feature::Mean).unwrap().to_vec(), all);
    assert_eq!(idx.read_all_regions().unwrap(), regions);
    let after = exact20(&merged);
    assert_eq!(before, after);
    assert!(partlens::store::verify::verify(&merged).unwrap().ok());
    // Only the listed segment folder is left.
    let left: Vec<_> = std::fs::read_dir(merged.join("segments"))
        .unwrap()
        .collect();
    assert_eq!(left.len(), 1);
    // Incompatible inputs are refused before anything is written.
    let other = dir.path().join("other.npy");
    let mut w = NpyWriter::create(&other, DIM + 1).unwrap();
    w.append(&vec![0.5; (DIM + 1) * 10]).unwrap();
    w.finish().unwrap();
    write_meta(&dir.path().join("other.parquet"), 10);
    let o = dir.path().join("o");
    common::json(&[
        "import",
        "--vectors",
        common::s(&other),
        "--metadata",
        common::s(&dir.path().join("other.parquet")),
        "--out",
        common::s(&o),
        "--json",
    ]);
    let e = common::err(&[
        "merge",
        "--out",
        common::s(&dir.path().join("bad")),
        common::s(&p0),
        common::s(&o),
    ]);
    assert!(
        e.contains("cannot be merged") && e.contains("features"),
        "{e}"
    );
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn import_refuses_bad_vectors_and_tables_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("idx");
    let run = |x: &Path, m: &Path| {
        common::err(&[
            "import",
            "--vectors",
            common::s(x),
            "--metadata",
            common::s(m),
            "--out",
            common::s(&out),
        ])
    };
    // NaN rows are named.
    let mut x = rows(50, 4);
    x[7 * DIM + 3] = f32::NAN;
    write_npy(&d.join("nan.npy"), &x);
    write_meta(&d.join("m50.parquet"), 50);
    let e = run(&d.join("nan.npy"), &d.join("m50.parquet"));
    assert!(e.contains("NaN") && e.contains('7'), "{e}");
    // Row counts must agree.
    write_npy(&d.join("ok.npy"), &rows(50, 4));
    write_meta(&d.join("m49.parquet"), 49);
    let e = run(&d.join("ok.npy"), &d.join("m49.parquet"));
    assert!(e.contains("49 rows") && e.contains("50"), "{e}");
    // float64 is not float32.
    let f64s = vec![0u8; 50 * DIM * 8];
    partlens::store::npy::write_raw(&d.join("f64.npy"), "<f8", &[50, DIM], &f64s).unwrap();
    let e = run(&d.join("f64.npy"), &d.join("m50.parquet"));
    assert!(e.contains("float32"), "{e}");
    // A table without an image column.
    let schema = Arc::new(Schema::new(vec![Field::new(
        "label_name",
        DataType::Utf8,
        false,
    )]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from_iter_values(
            (0..50).map(|i| format!("c{i}")),
        )) as ArrayRef],
    )
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(d.join("noimg.parquet")).unwrap(),
        schema,
        None,
    )
    .unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    let e = run(&d.join("ok.npy"), &d.join("noimg.parquet"));
    assert!(e.contains("\"image\""), "{e}");
    assert!(!out.exists());
}

#[test]
fn verify_names_the_damaged_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = import(dir.path(), "v", 1000, 5, 300);
    let o = common::run(&["verify", common::s(&p)]);
    assert!(o.status.success());
    // Same length, one byte changed in segment 2's raw rows; segment 3's graph truncated.
    let f = p.join("segments/seg-000002/features/mean.npy");
    let mut b = std::fs::read(&f).unwrap();
    b[500] ^= 0x10;
    std::fs::write(&f, b).unwrap();
    let g = p.join("segments/seg-000003/hnsw/mean.graph");
    let b = std::fs::read(&g).unwrap();
    std::fs::write(&g, &b[..b.len() - 8]).unwrap();
    let o = common::run(&["verify", common::s(&p)]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("damaged   seg-000002: segments/seg-000002/features/mean.npy: SHA-256"),
        "{out}"
    );
    assert!(
        out.contains("damaged   seg-000003: segments/seg-000003/hnsw/mean.graph"),
        "{out}"
    );
    assert!(
        out.contains("ok        seg-000000") && out.contains("ok        seg-000001"),
        "{out}"
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("seg-000002, seg-000003"), "{e}");
}

#[test]
fn shard_rule_is_stable_and_covers_every_image() {
    use partlens::ingest::Shard;
    let names: Vec<String> = (0..2000).map(|i| format!("img/train/{i:05}.jpg")).collect();
    let mut seen = [0usize; 4];
    for n in &names {
        let s = Shard::of(n, 4);
        seen[s as usize] += 1;
        // The share depends on the path alone: the same in any listing, with any neighbours.
        assert_eq!(Shard::of(n, 4), s);
        assert!(Shard::parse(&format!("{s}/4")).unwrap().takes(n));
    }
    assert_eq!(seen.iter().sum::<usize>(), 2000);
    assert!(seen.iter().all(|&c| (400..600).contains(&c)), "{seen:?}");
    // Known values (Python: int.from_bytes(hashlib.sha256(path).digest()[:8], "little") % N),
    // so the documented rule never changes silently.
    assert_eq!(Shard::of("img/train/00000.jpg", 1 << 16), 26489);
    assert_eq!(Shard::of("img/train/00000.jpg", 4), 1);
    assert_eq!(Shard::of("img/train/00000.jpg", 3), 2);
    for bad in ["4/4", "1/0", "x/2", "1", "-1/3", "0/70000"] {
        assert!(Shard::parse(bad).is_err(), "{bad}");
    }
}
