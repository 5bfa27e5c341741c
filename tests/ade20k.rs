//! The ADE20K family on the real samples: the full release (instances, parts of objects) and
//! ADEChallengeData2016 (SceneParsing), checked against counts made independently with PIL,
//! numpy and scipy (`scripts/data/ade20k_counts.py`, `scripts/data/sceneparsing_counts.py`).

mod common;

fn level_opts(part_level: u8) -> partlens::dataset::OpenOptions {
    partlens::dataset::OpenOptions {
        part_level,
        ..Default::default()
    }
}

use partlens::dataset::{Ade20kDataset, Dataset, MmsegDataset, RegionSettings};
use partlens::RegionKind;
use serde_json::Value;

fn expected(sample: &str) -> Value {
    let p = common::sample(&format!("{sample}/EXPECTED.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn settings(min_area: u64) -> RegionSettings {
    RegionSettings {
        min_area,
        margin: 0.1,
        objects: true,
        ..RegionSettings::default()
    }
}

#[test]
fn ade20k_instances_match_independent_counts_and_know_their_objects() {
    let e = expected("ade20k_full");
    let total = &e["total"];
    for level in [1u8, 2] {
        let ds = Ade20kDataset::open(common::sample("ade20k_full"), &level_opts(level)).unwrap();
        assert_eq!(ds.items().len(), 3);
        for a in [1u64, 64, 256] {
            let settings = settings(a);
            let (mut parts, mut objects) = (0, 0);
            for item in ds.items() {
                for r in ds.load(item, &settings).unwrap().regions {
                    match r.kind {
                        RegionKind::Part => {
                            parts += 1;
                            // Every part is linked to the object it belongs to.
                            assert!(r.object_name.is_some(), "{} has no object", r.label_name);
                        }
                        RegionKind::Object => objects += 1,
                    }
                }
            }
            let n = |k: String| total[k].as_u64().unwrap_or(0);
            let want_parts = n(format!("level1_area{a}"))
                + if level == 2 {
                    n(format!("level2_area{a}"))
                } else {
                    0
                };
            assert_eq!(parts, want_parts, "parts, level ≤ {level}, area ≥ {a}");
            assert_eq!(objects, n(format!("level0_area{a}")), "objects, area ≥ {a}");
        }
    }
    // "window" of "building": names are the first synonym, objects come through ispartof.
    let ds = Ade20kDataset::open(common::sample("ade20k_full"), &level_opts(1)).unwrap();
    let r = ds.load(&ds.items()[0], &RegionSettings::default()).unwrap();
    assert!(r
        .regions
        .iter()
        .any(|r| r.label_name == "window" && r.object_name.as_deref() == Some("building")));
}

#[test]
fn scene_parsing_layout_reads_object_maps_named_by_object_info() {
    let root = common::sample("ade20k_challenge");
    let (format, _) = partlens::dataset::detect(&root).unwrap();
    assert_eq!(format, partlens::dataset::Format::Mmseg);
    let ds = MmsegDataset::open(&root).unwrap();
    assert_eq!(ds.splits(), ["all"]);
    assert_eq!(ds.items().len(), 3);
    assert_eq!(ds.items()[0].image, "images/ADE_val_00000001.jpg");
    let names = ds.object_classes().unwrap();
    assert_eq!(
        (names.len(), &names[2][..], &names[150][..]),
        (151, "building", "flag")
    );
    let e = expected("ade20k_challenge");
    for a in [1u64, 64, 256] {
        let mut by_class = std::collections::BTreeMap::<String, u64>::new();
        let mut n = 0;
        for item in ds.items() {
            for r in ds.load(item, &settings(a)).unwrap().regions {
                // Its maps are object classes: no parts, and an object is its own object.
                assert_eq!(r.kind, RegionKind::Object);
                assert_eq!(r.object_name.as_deref(), Some(&r.label_name[..]));
                *by_class.entry(r.label_name).or_default() += 1;
                n += 1;
            }
        }
        assert_eq!(
            n,
            e["object"][a.to_string()].as_u64().unwrap(),
            "area ≥ {a}"
        );
        if a == 256 {
            let want: std::collections::BTreeMap<String, u64> =
                serde_json::from_value(e["by_class_area256"].clone()).unwrap();
            assert_eq!(by_class, want);
        }
    }
}

/// Runs `partlens convert --from ade20k` and the independent Python conversion with the same
/// arguments and checks both write the same class lists and the same maps, pixel for pixel.
fn convert_matches_python(extra: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    let src = common::sample("ade20k_full");
    let mut cmd = common::bin();
    cmd.args(["convert", "--from", "ade20k", "--dataset"])
        .arg(&src)
        .arg("--out")
        .arg(&ours);
    let mut py: Vec<std::ffi::OsString> = vec![src.into(), theirs.clone().into()];
    match extra {
        [] => {}
        [map, names, parts] => {
            let files = [map, names, parts].map(|f| common::sample(f));
            for (flag, file) in ["--classes", "--class-names", "--part-classes"]
                .iter()
                .zip(&files)
            {
                cmd.arg(flag).arg(file);
            }
            py.extend(files.map(Into::into));
        }
        _ => panic!("give no class files, or map, names and parts"),
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args: Vec<&std::ffi::OsStr> = py.iter().map(|a| a.as_os_str()).collect();
    common::run_python("ade20k_to_mmseg.py", &args);
    for list in ["classes.txt", "object_classes.txt"] {
        let read = |d: &std::path::Path| std::fs::read_to_string(d.join(list)).unwrap();
        assert_eq!(read(&ours), read(&theirs), "{list}");
    }
    let mut maps = 0;
    for sub in ["ann/training", "obj/training"] {
        for e in std::fs::read_dir(theirs.join(sub)).unwrap() {
            let p = e.unwrap().path();
            let mine = ours.join(sub).join(p.file_name().unwrap());
            let a = partlens::dataset::LabelMap::read_png(&mine).unwrap();
            let b = partlens::dataset::LabelMap::read_png(&p).unwrap();
            assert!(a == b, "{} differs", mine.display());
            assert!(a.max_label().is_some(), "{} is empty", mine.display());
            maps += 1;
        }
    }
    assert_eq!(maps, 6);
    (dir, ours)
}

#[test]
fn convert_ade20k_matches_an_independent_conversion() {
    let (_dir, out) = convert_matches_python(&[]);
    // The result is an mmseg dataset partlens (and mmseg) read back: "wheel" of "car".
    let ds = MmsegDataset::open(&out).unwrap();
    assert_eq!(ds.items().len(), 3);
    assert_eq!(ds.splits(), ["training"]);
    let mut wheels = 0;
    for item in ds.items() {
        for r in ds.load(item, &settings(64)).unwrap().regions {
            if r.label_name == "car/wheel" {
                assert_eq!(r.object_name.as_deref(), Some("car"));
                wheels += 1;
            }
        }
    }
    assert!(wheels >= 2, "{wheels} car wheels");
}

#[test]
fn convert_ade20k_to_the_scene_parsing_150_classes() {
    let (_dir, out) = convert_matches_python(&[
        "ade20k_challenge/mapFromADE.txt",
        "ade20k_challenge/objectInfo150.csv",
        "ade20k_challenge/partInfo36.txt",
    ]);
    let names = std::fs::read_to_string(out.join("object_classes.txt")).unwrap();
    let names: Vec<&str> = names.lines().collect();
    assert_eq!((names.len(), names[2], names[21]), (151, "building", "car"));
    // SceneParsing's 36 parts, "car/wheel" among them and present in these images.
    let parts = std::fs::read_to_string(out.join("classes.txt")).unwrap();
    let parts: Vec<&str> = parts.lines().collect();
    assert_eq!(
        (parts.len(), parts[1], parts[18]),
        (37, "person/head", "car/wheel")
    );
}

#[test]
fn convert_ade20k_skips_and_reports_an_image_with_a_missing_or_wrong_map() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ade");
    common::copy_dir(&common::sample("ade20k_full"), &src);
    let street = src.join("dataset/ADE20K_2021_17_01/images/ADE/training/urban/street");
    std::fs::remove_file(street.join("ADE_train_00016900_seg.png")).unwrap();
    // A greyscale map where an RGB class map belongs (of the image's size: a map of another
    // size is refused from its header, before its colour type is looked at).
    image::GrayImage::new(2200, 1467)
        .save(street.join("ADE_train_00016964_parts_1.png"))
        .unwrap();
    let ds = Ade20kDataset::open(&src, &level_opts(1)).unwrap();
    let out = dir.path().join("out");
    let s = partlens::dataset::convert::ade20k_to_mmseg(&ds, &out, None, None, None).unwrap();
    assert_eq!(s.images, 1);
    let reasons: Vec<String> = s
        .skipped
        .iter()
        .map(|p| format!("{}: {}", p.path, p.reason))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("ADE_train_00016900_seg.png"),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].contains("8-bit RGB"), "{}", reasons[1]);
    // Nothing half-written for the skipped images.
    assert_eq!(
        std::fs::read_dir(out.join("img/training")).unwrap().count(),
        1
    );
}
