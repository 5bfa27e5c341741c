//! Opening an index whose manifest, Parquet region file or `.npy` feature matrix is damaged.
//!
//! A small valid index (5 regions, `mean` 8-d and `cls` 4-d) is written once per process with
//! the library's own writers; each input replaces one of its files. The first byte picks the
//! file (0 manifest.json, 1 regions/part-00000.parquet, 2 features/mean.npy), the rest is its
//! new content. Whatever the bytes, `IndexDir::open` must return an error or an index whose
//! every accessor works: no panic, no abort, no huge allocation.
//!
//! Seeds: `PARTLENS_FUZZ_SEEDS=corpus/index_open cargo fuzz run index_open -- -runs=1` writes
//! the three valid files, each prefixed by its selector byte, into that folder.
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use partlens::encoder::{Feature, Features, ModelSpec};
use partlens::region::{PixelBox, Region, RegionKind};
use partlens::store::manifest::{Counts, DatasetInfo, EncoderInfo, Manifest};
use partlens::store::{feature_path, IndexDir, NpyWriter, RegionWriter};

const FILES: [&str; 3] = [
    "manifest.json",
    "regions/part-00000.parquet",
    "features/mean.npy",
];

fn template() -> &'static (PathBuf, Vec<Vec<u8>>) {
    static T: OnceLock<(PathBuf, Vec<Vec<u8>>)> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("partlens-fuzz-index-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_index(&dir);
        let files: Vec<Vec<u8>> = FILES.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect();
        if let Some(seeds) = std::env::var_os("PARTLENS_FUZZ_SEEDS") {
            let seeds = PathBuf::from(seeds);
            std::fs::create_dir_all(&seeds).unwrap();
            for (i, bytes) in files.iter().enumerate() {
                let mut s = vec![i as u8];
                s.extend_from_slice(bytes);
                std::fs::write(seeds.join(format!("seed-{i}")), s).unwrap();
            }
        }
        (dir, files)
    })
}

fn write_index(dir: &Path) {
    for sub in ["regions", "features", "hnsw"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let dims = [(Feature::Mean, 8), (Feature::Cls, 4)].into_iter().collect();
    let n = 5;
    let regions: Vec<Region> = (0..n)
        .map(|i| Region {
            id: i as u64,
            image: format!("img/{i}.jpg"),
            split: if i % 2 == 0 { "train" } else { "val" }.into(),
            kind: if i < 3 { RegionKind::Part } else { RegionKind::Object },
            label: i as u32 % 2 + 1,
            label_name: ["wheel", "door"][i % 2].into(),
            object_label: Some(7),
            object_name: Some("car".into()),
            instance: 0,
            bbox: PixelBox::new(1, 2, 30, 40).unwrap(),
            crop_box: PixelBox::new(-2, 0, 36, 38).unwrap(),
            area: 900,
            mask_rle: vec![0, 900],
        })
        .collect();
    let values = |d: usize| (0..n * d).map(|v| (v as f32 * 0.37).sin()).collect::<Vec<f32>>();
    let feats = Features {
        n,
        values: [(Feature::Mean, values(8)), (Feature::Cls, values(4))]
            .into_iter()
            .collect(),
    };
    let mut w = RegionWriter::create(dir.join(FILES[1]), &dims).unwrap();
    w.write(&regions, &feats).unwrap();
    w.finish().unwrap();
    for (f, d) in [(Feature::Mean, 8), (Feature::Cls, 4)] {
        let mut m = NpyWriter::create(feature_path(dir, f), d).unwrap();
        m.append(&feats.values[&f]).unwrap();
        m.finish().unwrap();
    }
    let spec = r#"{"spec_version": 1, "name": "fuzz", "input": "x", "input_size": [32, 32],
        "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "outputs": {"cls": "c", "patch_tokens": "p"}}"#;
    let m = Manifest {
        schema_version: 1,
        partlens_version: "fuzz".into(),
        created_unix: 0,
        encoder: EncoderInfo {
            file: "/nonexistent/model.onnx".into(),
            sha256: "0".repeat(64),
            spec: serde_json::from_str::<ModelSpec>(spec).unwrap(),
            provider: "cpu".into(),
            dims: [("mean".to_string(), 8), ("cls".to_string(), 4)].into_iter().collect(),
        },
        dataset: DatasetInfo {
            path: "/nonexistent".into(),
            format: "mmseg".into(),
            splits: vec!["train".into(), "val".into()],
            options: serde_json::Value::Null,
        },
        settings: Default::default(),
        counts: Counts {
            regions: n as u64,
            parts: 3,
            objects: 2,
            images: n as u64,
            images_skipped: 0,
        },
        features: vec!["mean".into(), "cls".into()],
        shards: vec![FILES[1].into()],
        hnsw: Default::default(),
        skipped: vec![],
        files: Default::default(),
    };
    m.write_atomic(dir).unwrap();
    IndexDir::open(dir).expect("the template index opens");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, content)) = data.split_first() else {
        return;
    };
    let (template, files) = template();
    let dir = template.with_extension(format!("run-{}", which % 3));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["regions", "features"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for (i, (name, bytes)) in FILES.iter().zip(files).enumerate() {
        let b: &[u8] = if i == usize::from(which % 3) { content } else { bytes };
        std::fs::write(dir.join(name), b).unwrap();
    }
    std::fs::copy(template.join("features/cls.npy"), dir.join("features/cls.npy")).unwrap();
    if let Ok(idx) = IndexDir::open(&dir) {
        let _ = idx.label_counts();
        let _ = idx.verify();
        for f in idx.feature_names() {
            let _ = idx.damaged_rows(f);
            let m = idx.feature(f).unwrap();
            let q = vec![1.0; m.cols()];
            let unit = partlens::index::normalize_rows(m.as_slice(), m.cols());
            let _ = partlens::index::exact_search(&unit, m.cols(), &q, 3, None);
        }
        for r in idx.regions() {
            let _ = (r.bbox.width(), r.crop_box.height(), r.mask_rle.len());
        }
        let _ = idx.manifest().validate();
    }
});
