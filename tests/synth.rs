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

/// `opts` written twice (to `dir/a` and `dir/b`) gives the same summary and bytes; seed 8
/// instead (to `dir/c`) gives other bytes.
fn same_seed_same_bytes(dir: &std::path::Path, opts: &SynthOptions) {
    let a = generate(&dir.join("a"), opts).unwrap();
    let b = generate(&dir.join("b"), opts).unwrap();
    assert_eq!(a, b);
    assert_eq!(files(&dir.join("a")), files(&dir.join("b")));
    generate(&dir.join("c"), &SynthOptions { seed: 8, ..*opts }).unwrap();
    assert_ne!(files(&dir.join("a")), files(&dir.join("c")));
}

#[test]
fn same_seed_same_bytes_other_seed_other_images() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        images: 12,
        seed: 7,
        size: 128,
        variation: 0.0,
    };
    same_seed_same_bytes(dir.path(), &opts);
    // Refuses to write into a folder that has files.
    assert!(generate(&dir.path().join("a"), &opts).is_err());
}

#[test]
fn readers_find_what_the_generator_drew() {
    readers_count(128, 0.0);
}

#[test]
fn readers_find_what_the_generator_drew_at_full_variation() {
    // Squeezed frames, shrunk parts and distractors keep the invariants the counts rely on, at
    // the smallest size too: parts of a class never touch, each part and object is one region.
    readers_count(128, 1.0);
    readers_count(64, 1.0);
}

/// Images where two parts of different classes touch (4-neighbours in the part map).
fn images_with_touching_parts(root: &std::path::Path) -> usize {
    files(&root.join("ann"))
        .iter()
        .filter(|(rel, _)| {
            let ann = image::open(root.join("ann").join(rel)).unwrap().to_luma8();
            let (w, h) = ann.dimensions();
            let at = |x, y| ann.get_pixel(x, y)[0];
            (0..h).any(|y| {
                (0..w).any(|x| {
                    let c = at(x, y);
                    c != 0
                        && [(x + 1, y), (x, y + 1)]
                            .iter()
                            .any(|&(u, v)| u < w && v < h && at(u, v) != 0 && at(u, v) != c)
                })
            })
        })
        .count()
}

fn readers_count(size: u32, variation: f32) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("synth");
    let s = generate(
        &root,
        &SynthOptions {
            images: 300,
            seed: 1,
            size,
            variation,
        },
    )
    .unwrap();
    assert_eq!(s.images, 300);
    if size >= 128 {
        // The 4 % gaps between parts are at least a pixel from this size on (below, those
        // between parts of different classes can round away, which the counts don't mind).
        assert_eq!(images_with_touching_parts(&root), 0);
    }
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

#[test]
fn variation_is_deterministic_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        images: 12,
        seed: 7,
        size: 128,
        variation: 0.7,
    };
    same_seed_same_bytes(dir.path(), &opts);
    // The same seed at another variation: the same layout, other pixels.
    generate(
        &dir.path().join("d"),
        &SynthOptions {
            variation: 0.0,
            ..opts
        },
    )
    .unwrap();
    let (a, d) = (files(&dir.path().join("a")), files(&dir.path().join("d")));
    assert_eq!(a.len(), d.len());
    assert!(a
        .iter()
        .zip(&d)
        .any(|(x, y)| x.0.ends_with(".jpg") && x.1 != y.1));
    for v in [-0.1, 1.1, f32::NAN] {
        let e = generate(
            &dir.path().join("e"),
            &SynthOptions {
                variation: v,
                ..opts
            },
        );
        assert!(e.is_err(), "variation {v}");
    }
}

/// Per part class, the spread (standard deviation across images, mean over R, G, B) of the
/// mean colour of that class's pixels in an image, from the written JPEGs and part maps. Only
/// pixels whose four neighbours have the same label count, away from JPEG's bleeding edges.
fn class_colour_spread(root: &std::path::Path) -> Vec<f64> {
    let mut per_class: std::collections::BTreeMap<u8, Vec<[f64; 3]>> = Default::default();
    for (rel, _) in files(&root.join("img")) {
        let img = image::open(root.join("img").join(&rel)).unwrap().to_rgb8();
        let ann = image::open(root.join("ann").join(rel.replace(".jpg", ".png")))
            .unwrap()
            .to_luma8();
        let mut sums: std::collections::BTreeMap<u8, ([f64; 3], usize)> = Default::default();
        let (w, h) = ann.dimensions();
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let c = ann.get_pixel(x, y)[0];
                let same = [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)]
                    .iter()
                    .all(|&(u, v)| ann.get_pixel(u, v)[0] == c);
                if c == 0 || !same {
                    continue;
                }
                let e = sums.entry(c).or_default();
                for (k, v) in img.get_pixel(x, y).0.iter().enumerate() {
                    e.0[k] += f64::from(*v);
                }
                e.1 += 1;
            }
        }
        for (c, (sum, n)) in sums {
            if n >= 10 {
                per_class
                    .entry(c)
                    .or_default()
                    .push(sum.map(|s| s / n as f64));
            }
        }
    }
    per_class
        .values()
        .filter(|means| means.len() >= 3)
        .map(|means| {
            let n = means.len() as f64;
            (0..3)
                .map(|k| {
                    let mu = means.iter().map(|m| m[k]).sum::<f64>() / n;
                    (means.iter().map(|m| (m[k] - mu).powi(2)).sum::<f64>() / n).sqrt()
                })
                .sum::<f64>()
                / 3.0
        })
        .collect()
}

#[test]
fn variation_varies_part_colours() {
    let dir = tempfile::tempdir().unwrap();
    let spread = |variation: f32| {
        let root = dir.path().join(format!("v{variation}"));
        let opts = SynthOptions {
            images: 60,
            seed: 5,
            size: 128,
            variation,
        };
        generate(&root, &opts).unwrap();
        class_colour_spread(&root)
    };
    // At 0 a class's colour is fixed (what spread there is comes from texture phase and JPEG);
    // at 1 it is random: every one of the 11 classes spreads over tens of grey levels.
    let fixed = spread(0.0);
    let varied = spread(1.0);
    assert_eq!((fixed.len(), varied.len()), (11, 11));
    assert!(fixed.iter().all(|&s| s < 15.0), "{fixed:?}");
    assert!(varied.iter().all(|&s| s > 30.0), "{varied:?}");
}
