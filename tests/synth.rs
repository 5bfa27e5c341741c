//! The synthetic generator: deterministic per seed, readable by the mmseg and keypoint readers,
//! and its own count of what it drew matches what the readers find.

mod common;

use partlens::dataset::synth::{generate, SynthOptions};
use partlens::dataset::{CocoKeypoints, Dataset, KeypointSettings, MmsegDataset, RegionSettings};
use partlens::RegionKind;

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_images() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        images: 12,
        seed: 7,
        size: 128,
    };
    let a = generate(&dir.path().join("a"), &opts).unwrap();
    let b = generate(&dir.path().join("b"), &opts).unwrap();
    assert_eq!(a, b);
    assert_eq!(files(&dir.path().join("a")), files(&dir.path().join("b")));
    generate(&dir.path().join("c"), &SynthOptions { seed: 8, ..opts }).unwrap();
    assert_ne!(files(&dir.path().join("a")), files(&dir.path().join("c")));
    // Refuses to write into a folder that has files.
    assert!(generate(&dir.path().join("a"), &opts).is_err());
}

#[test]
fn readers_find_what_the_generator_drew() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("synth");
    let s = generate(
        &root,
        &SynthOptions {
            images: 300,
            seed: 1,
            size: 128,
        },
    )
    .unwrap();
    assert_eq!(s.images, 300);
    let ds = MmsegDataset::open(&root).unwrap();
    assert_eq!(ds.splits(), vec!["train", "val"]);
    let settings = RegionSettings {
        min_area: 1,
        ..RegionSettings::default()
    };
    let (mut parts, mut objects) = (0, 0);
    for item in ds.items() {
        for r in ds.load(item, &settings).unwrap().regions {
            match r.kind {
                RegionKind::Part => {
                    parts += 1;
                    // Each part knows its object, and the names agree: "car/wheel" of "car".
                    let object = r.object_name.clone().unwrap();
                    assert!(
                        r.label_name.starts_with(&format!("{object}/")),
                        "{} of {object}",
                        r.label_name
                    );
                }
                RegionKind::Object => objects += 1,
            }
        }
    }
    assert_eq!((parts, objects), (s.parts, s.objects));
    let kp = CocoKeypoints::open(
        root.join("keypoints.json"),
        &partlens::dataset::OpenOptions {
            keypoints: KeypointSettings {
                classes: vec!["head".into(), "body".into(), "wheel".into()],
                ..KeypointSettings::default()
            },
            margin: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        kp.listing_problems().is_empty(),
        "{:?}",
        kp.listing_problems()
    );
    let mut kp_objects = 0;
    for item in kp.items() {
        kp_objects += kp
            .load(item, &RegionSettings::default())
            .unwrap()
            .regions
            .iter()
            .filter(|r| r.kind == RegionKind::Object)
            .count();
    }
    assert_eq!(kp_objects, s.objects);
}
