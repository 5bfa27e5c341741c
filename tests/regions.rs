//! Region extraction on the real samples, checked against counts computed independently with
//! scipy (`scripts/data/count_regions.py` → data/samples/EXPECTED.json).

mod common;

use partlens::dataset::{Dataset, MmsegDataset, RegionSettings};
use partlens::RegionKind;
use serde_json::Value;

fn expected() -> Value {
    let p = common::sample("EXPECTED.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn count(ds: &MmsegDataset, min_area: u64, split: Option<&str>) -> (u64, u64) {
    let settings = RegionSettings {
        min_area,
        margin: 0.1,
        objects: true,
    };
    let (mut parts, mut objects) = (0, 0);
    for item in ds.items() {
        if split.is_some_and(|s| s != item.split) {
            continue;
        }
        let r = ds.load(item, &settings).unwrap();
        for region in r.regions {
            match region.kind {
                RegionKind::Part => parts += 1,
                RegionKind::Object => objects += 1,
            }
        }
    }
    (parts, objects)
}

#[test]
fn pascal_part_counts_match_independent_scipy_counts() {
    let ds = MmsegDataset::open(common::sample("pascal_part")).unwrap();
    let e = &expected()["pascal_part"];
    assert_eq!(ds.items().len(), 18);
    assert_eq!(ds.splits(), vec!["train", "val"]);
    for a in [1u64, 64, 256] {
        let (p, o) = count(&ds, a, None);
        assert_eq!(
            p,
            e["part"][a.to_string()].as_u64().unwrap(),
            "parts, area ≥ {a}"
        );
        assert_eq!(
            o,
            e["object"][a.to_string()].as_u64().unwrap(),
            "objects, area ≥ {a}"
        );
        for split in ["train", "val"] {
            let (p, o) = count(&ds, a, Some(split));
            let s = &e["splits"][split];
            assert_eq!(
                p,
                s["part"][a.to_string()].as_u64().unwrap(),
                "{split} parts ≥ {a}"
            );
            assert_eq!(
                o,
                s["object"][a.to_string()].as_u64().unwrap(),
                "{split} objects ≥ {a}"
            );
        }
    }
}

#[test]
fn lip_counts_match_independent_scipy_counts() {
    let ds = MmsegDataset::open(common::sample("lip")).unwrap();
    let e = &expected()["lip"];
    for a in [1u64, 64, 256] {
        let (p, o) = count(&ds, a, None);
        assert_eq!(p, e["part"][a.to_string()].as_u64().unwrap(), "parts ≥ {a}");
        assert_eq!(o, 0);
    }
}

#[test]
fn regions_carry_names_objects_and_consistent_geometry() {
    let ds = MmsegDataset::open(common::sample("pascal_part")).unwrap();
    let settings = RegionSettings::default();
    let mut saw_wheel_of_car = false;
    for item in ds.items() {
        let r = ds.load(item, &settings).unwrap();
        let (w, h) = (r.image.width() as i64, r.image.height() as i64);
        for region in &r.regions {
            let b = region.bbox;
            assert!(b.x0 >= 0 && b.y0 >= 0 && b.x1 <= w && b.y1 <= h);
            assert!(region.area >= settings.min_area);
            assert!(region.area <= (b.width() * b.height()) as u64);
            let inside: u64 = region
                .mask_rle
                .iter()
                .skip(1)
                .step_by(2)
                .map(|&n| u64::from(n))
                .sum();
            assert_eq!(inside, region.area, "mask RLE covers the region's pixels");
            let c = region.crop_box;
            assert_eq!(c.width(), c.height(), "crops are square");
            assert!(c.x0 <= b.x0 && c.y0 <= b.y0 && c.x1 >= b.x1 && c.y1 >= b.y1);
            if region.kind == RegionKind::Part {
                // Part names are "<object>/<part>"; the object map under the part agrees
                // except where Pascal-Part's own object masks overlap (see SOURCE.md).
                assert!(region.label_name.contains('/'), "{}", region.label_name);
                if region.label_name == "car/wheel" {
                    saw_wheel_of_car |= region.object_name.as_deref() == Some("car");
                }
            } else {
                assert_eq!(region.object_label, Some(region.label));
            }
            assert!(region.image.starts_with(&format!("img/{}/", region.split)));
        }
    }
    assert!(saw_wheel_of_car);
}

#[test]
fn ade20k_instances_match_independent_counts_and_know_their_objects() {
    use partlens::dataset::Ade20kDataset;
    // scripts/data/ade20k_counts.py → data/samples/ade20k_full/EXPECTED.json (PIL + numpy).
    let e: Value = serde_json::from_str(
        &std::fs::read_to_string(common::sample("ade20k_full/EXPECTED.json")).unwrap(),
    )
    .unwrap();
    let total = &e["total"];
    for level in [1u8, 2] {
        let ds = Ade20kDataset::open(common::sample("ade20k_full"), level).unwrap();
        assert_eq!(ds.items().len(), 3);
        for a in [1u64, 64, 256] {
            let settings = RegionSettings {
                min_area: a,
                margin: 0.1,
                objects: true,
            };
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
                + if level == 2 { n(format!("level2_area{a}")) } else { 0 };
            assert_eq!(parts, want_parts, "parts, level ≤ {level}, area ≥ {a}");
            assert_eq!(objects, n(format!("level0_area{a}")), "objects, area ≥ {a}");
        }
    }
    // "window" of "building": names are the first synonym, objects come through ispartof.
    let ds = Ade20kDataset::open(common::sample("ade20k_full"), 1).unwrap();
    let r = ds.load(&ds.items()[0], &RegionSettings::default()).unwrap();
    assert!(r
        .regions
        .iter()
        .any(|r| r.label_name == "window" && r.object_name.as_deref() == Some("building")));
}
