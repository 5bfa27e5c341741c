//! Keypoint crops on the real COCO and AP-10K samples, checked crop by crop against an
//! independent Python implementation of the paper's rule (`scripts/data/keypoint_crops.py` →
//! data/samples/keypoints/EXPECTED.json).

mod common;

/// Reader options with these keypoint settings and the default 0.1 margin.
fn kp(k: &KeypointSettings) -> partlens::dataset::OpenOptions {
    partlens::dataset::OpenOptions {
        keypoints: k.clone(),
        margin: 0.1,
        ..Default::default()
    }
}

use std::collections::BTreeMap;

use partlens::dataset::{CocoKeypoints, Dataset, Distance, KeypointSettings, RegionSettings};
use partlens::RegionKind;
use serde_json::Value;

fn expected() -> Value {
    let p = common::sample("keypoints/EXPECTED.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A part crop: (image file name, label, box).
type Crop = (String, String, [i64; 4]);

/// (file name, label, box) of every part crop, in reading order.
fn crops(json: &str, classes: &[&str], distance: Distance) -> Vec<Crop> {
    let settings = KeypointSettings {
        classes: classes.iter().map(|s| s.to_string()).collect(),
        distance,
    };
    let ds = CocoKeypoints::open(common::sample(json), &kp(&settings)).unwrap();
    assert!(
        ds.listing_problems().is_empty(),
        "{:?}",
        ds.listing_problems()
    );
    let mut out = Vec::new();
    for item in ds.items() {
        let r = ds.load(item, &RegionSettings::default()).unwrap();
        for region in r.regions.iter().filter(|r| r.kind == RegionKind::Part) {
            assert_eq!(region.crop_box, region.bbox);
            out.push((
                region.image.clone(),
                region.label_name.clone(),
                region.bbox.to_array(),
            ));
        }
    }
    out
}

fn expected_crops(e: &Value, json: &str, variant: &str) -> Vec<Crop> {
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(common::sample(json)).unwrap()).unwrap();
    let names = file_names(&file["images"]);
    reference_crops(&e["variants"][variant]["crops"], |id| names[&id].clone())
}

/// Image id → file name, from a COCO-style `images` list.
fn file_names(images: &Value) -> BTreeMap<u64, String> {
    images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_u64().unwrap(),
                i["file_name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The reference's `[image_id, ann_id, label, box, d]` rows as (file name, label, box).
fn reference_crops(rows: &Value, name: impl Fn(u64) -> String) -> Vec<Crop> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                name(row[0].as_u64().unwrap()),
                row[2].as_str().unwrap().to_string(),
                serde_json::from_value(row[3].clone()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn coco_crops_match_the_reference_in_both_distance_variants() {
    let e = &expected()["coco"];
    let classes = ["nose", "right_wrist", "left_ankle"];
    for (variant, distance) in [("quirk", Distance::SeedQuirk), ("plain", Distance::Plain)] {
        let mine = crops("keypoints/coco/test_coco.json", &classes, distance);
        let want = expected_crops(e, "keypoints/coco/test_coco.json", variant);
        assert_eq!(mine.len(), 21, "{variant}");
        assert_eq!(mine, want, "{variant}");
    }
}

#[test]
fn ap10k_crops_match_the_reference() {
    let e = &expected()["ap10k"];
    // Asked in another order: crops still come in keypoint-index order.
    let mine = crops(
        "keypoints/ap10k/test_ap10k.json",
        &["nose", "left_eye", "right_eye"],
        Distance::SeedQuirk,
    );
    let want = expected_crops(e, "keypoints/ap10k/test_ap10k.json", "quirk");
    assert_eq!(mine.len(), 4);
    assert_eq!(mine, want);
}

#[test]
fn coco_object_regions_are_the_non_crowd_person_boxes() {
    let e = &expected()["coco"];
    let ds = CocoKeypoints::open(
        common::sample("keypoints/coco/test_coco.json"),
        &kp(&KeypointSettings::default()),
    )
    .unwrap();
    let mut n = 0;
    for item in ds.items() {
        let r = ds.load(item, &RegionSettings::default()).unwrap();
        n += r
            .regions
            .iter()
            .filter(|r| r.kind == RegionKind::Object)
            .count();
        assert!(r
            .regions
            .iter()
            .all(|r| r.object_name.as_deref() == Some("person")));
    }
    assert_eq!(n as u64, e["object_regions"]["count"].as_u64().unwrap());
}

#[test]
fn keypoint_dataset_ingests_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("coco");
    let v = common::ingest_json(&common::sample("keypoints/coco/test_coco.json"), &[], &out);
    assert_eq!(v["manifest"]["counts"]["parts"], 21);
    assert_eq!(v["manifest"]["counts"]["objects"], 14);
    assert_eq!(v["manifest"]["dataset"]["format"], "coco-keypoints");
    assert_eq!(
        v["manifest"]["dataset"]["options"]["distance"],
        "seed-quirk"
    );
}

#[test]
fn keypoint_files_with_problems_are_refused_or_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::sample("keypoints/coco");
    let root = dir.path().join("coco");
    common::copy_dir(&src, &root);
    let json = root.join("test_coco.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // A keypoint far outside its image is reported, not cropped.
    v["annotations"][0]["keypoints"][0] = Value::from(5000);
    // A missing image file is reported.
    std::fs::remove_file(root.join("000000197388.jpg")).unwrap();
    std::fs::write(&json, v.to_string()).unwrap();
    let ds = CocoKeypoints::open(&json, &kp(&KeypointSettings::default())).unwrap();
    let problems = ds.listing_problems();
    assert!(problems
        .iter()
        .any(|p| p.path == "000000197388.jpg" && p.reason.contains("missing")));
    assert!(problems
        .iter()
        .any(|p| p.reason.contains("lies outside the image")));
    // A field missing altogether is an error naming the file and the field.
    v["annotations"][0]
        .as_object_mut()
        .unwrap()
        .remove("image_id");
    std::fs::write(&json, v.to_string()).unwrap();
    let err = CocoKeypoints::open(&json, &kp(&KeypointSettings::default())).unwrap_err();
    assert!(
        err.to_string().contains("test_coco.json") && err.to_string().contains("image_id"),
        "{err}"
    );
    // Keypoint values that do not match the category's keypoint list.
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("test_coco.json")).unwrap())
            .unwrap();
    v["annotations"][0]["keypoints"]
        .as_array_mut()
        .unwrap()
        .pop();
    std::fs::write(&json, v.to_string()).unwrap();
    let err = CocoKeypoints::open(&json, &kp(&KeypointSettings::default())).unwrap_err();
    assert!(err.to_string().contains("keypoint values"), "{err}");
}

#[test]
fn synthetic_edge_cases_match_the_reference() {
    // Ties (round(10.5) = 10, box 90.5 → 90), d/2 exactly 20 and 1000, duplicate points,
    // v = 1, one-keypoint persons, crowd and empty boxes: EXPECTED.json's "synthetic" input.
    let e = &expected()["synthetic"];
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("synthetic.json");
    std::fs::write(&json, e["input"].to_string()).unwrap();
    for img in e["input"]["images"].as_array().unwrap() {
        let (w, h) = (
            img["width"].as_u64().unwrap() as u32,
            img["height"].as_u64().unwrap() as u32,
        );
        let mut bytes = Vec::new();
        image::RgbImage::new(w, h)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        std::fs::write(dir.path().join(img["file_name"].as_str().unwrap()), bytes).unwrap();
    }
    let names = file_names(&e["input"]["images"]);
    for (variant, distance) in [("quirk", Distance::SeedQuirk), ("plain", Distance::Plain)] {
        let settings = KeypointSettings {
            classes: vec!["a".into(), "b".into(), "c".into()],
            distance,
        };
        let ds = CocoKeypoints::open(&json, &kp(&settings)).unwrap();
        let mut mine = Vec::new();
        let mut objects = 0;
        for item in ds.items() {
            for r in ds.load(item, &RegionSettings::default()).unwrap().regions {
                match r.kind {
                    RegionKind::Part => mine.push((r.image, r.label_name, r.bbox.to_array())),
                    RegionKind::Object => objects += 1,
                }
            }
        }
        let want = reference_crops(&e["variants"][variant]["crops"], |id| names[&id].clone());
        assert_eq!(mine, want, "{variant}");
        assert_eq!(
            objects as u64,
            e["object_regions"]["count"].as_u64().unwrap()
        );
    }
}

#[test]
fn cub_without_images_names_the_missing_files() {
    let e = &expected()["cub"];
    let err = partlens::dataset::CubDataset::open(
        common::sample("keypoints/cub_meta"),
        &kp(&KeypointSettings::default()),
    )
    .unwrap_err()
    .to_string();
    for f in e["missing_files"].as_array().unwrap() {
        assert!(err.contains(f.as_str().unwrap()), "{err}");
    }
    assert!(err.contains("missing: images.txt, images"), "{err}");
}

#[test]
fn cub_crops_match_the_reference() {
    // The sample has annotations but no images: add an images.txt and 1×1 stand-in images
    // (crops do not depend on pixels; outside the image they are black).
    let e = &expected()["cub"];
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("CUB_200_2011");
    common::copy_dir(&common::sample("keypoints/cub_meta"), &root);
    let mut listing = String::new();
    let mut png = Vec::new();
    image::RgbImage::new(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::create_dir_all(root.join("images/birds")).unwrap();
    for id in 1..=200 {
        listing.push_str(&format!("{id} birds/{id:04}.jpg\n"));
        std::fs::write(root.join(format!("images/birds/{id:04}.jpg")), &png).unwrap();
    }
    std::fs::write(root.join("images.txt"), listing).unwrap();
    let (format, _) = partlens::dataset::detect(&root).unwrap();
    assert_eq!(format, partlens::dataset::Format::Cub);
    let ds = partlens::dataset::CubDataset::open(&root, &kp(&KeypointSettings::default())).unwrap();
    let mut mine = Vec::new();
    let mut objects = 0;
    for item in ds.items() {
        for r in ds.load(item, &RegionSettings::default()).unwrap().regions {
            match r.kind {
                RegionKind::Part => mine.push((r.image, r.label_name, r.bbox.to_array())),
                RegionKind::Object => {
                    objects += 1;
                    assert!(r.object_name.as_deref().unwrap().contains("Albatross") || r.label > 2);
                }
            }
        }
    }
    let want = reference_crops(&e["variants"]["plain"]["crops"], |id| {
        format!("images/birds/{id:04}.jpg")
    });
    assert_eq!(mine.len(), 445);
    assert_eq!(mine, want);
    assert_eq!(objects, 200);
}

#[test]
fn absurd_object_boxes_skip_that_region_instead_of_exhausting_memory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("coco");
    common::copy_dir(&common::sample("keypoints/coco"), &root);
    let json = root.join("test_coco.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    v["annotations"][0]["bbox"] = serde_json::json!([0, 0, 1e9, 1e9]);
    std::fs::write(&json, v.to_string()).unwrap();
    let out = dir.path().join("idx");
    let m = common::ingest_json(&json, &[], &out);
    let skipped = m["manifest"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0]["reason"]
        .as_str()
        .unwrap()
        .contains("far outside"));
    // Only that region is left out: its image and the image's keypoint crops stay.
    let c = &m["manifest"]["counts"];
    assert_eq!(
        (c["images"].as_u64(), c["images_skipped"].as_u64()),
        (Some(4), Some(0))
    );
    let clean = common::ingest_json(
        &common::sample("keypoints/coco/test_coco.json"),
        &[],
        &dir.path().join("clean"),
    );
    let regions = |m: &Value| m["manifest"]["counts"]["regions"].as_u64().unwrap();
    assert_eq!(regions(&m), regions(&clean) - 1);

    // Boxes beyond what coordinates can hold (1e10, 1e300) are reported at listing time (as
    // reaching far past the image the file declares), never overflow.
    for (i, huge) in [1e10, 1e300, -1e18].into_iter().enumerate() {
        v["annotations"][0]["bbox"] = serde_json::json!([huge, 0, 10, 10]);
        std::fs::write(&json, v.to_string()).unwrap();
        let out = dir.path().join(format!("idx{i}"));
        let m = common::ingest_json(&json, &[], &out);
        let s = m["manifest"]["skipped"].to_string();
        assert!(s.contains("reaches far outside"), "{huge}: {s}");
        assert_eq!(regions(&m), regions(&clean) - 1);
    }
}
