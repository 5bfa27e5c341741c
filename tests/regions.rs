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
        ..RegionSettings::default()
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

/// The mmseg conversion of Pascal-Part is label maps: regions are its connected components.
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
fn own_listings_and_bare_folders() {
    use partlens::dataset::ListingDataset;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Two real Pascal-Part images; a box, a polygon and a mask region on one of them.
    let src = common::sample("pascal_part/img/val");
    std::fs::create_dir_all(root.join("photos/cars")).unwrap();
    std::fs::copy(src.join("2008_003228.jpg"), root.join("photos/a.jpg")).unwrap();
    std::fs::copy(src.join("2008_003228.jpg"), root.join("photos/cars/b.jpg")).unwrap();
    let mut mask = image::GrayImage::new(500, 375);
    for y in 10..30 {
        for x in 20..60 {
            mask.put_pixel(x, y, image::Luma([255]));
        }
    }
    mask.save(root.join("photos/m.png")).unwrap();
    std::fs::write(
        root.join("photos/regions.jsonl"),
        concat!(
            r#"{"image": "a.jpg", "box": [140, 120, 402, 372], "label": "torso", "object": "person"}"#, "\n",
            r#"{"image": "a.jpg", "polygon": [[10, 10], [110, 10], [110, 60]], "label": "roof", "split": "val"}"#, "\n",
            r#"{"image": "a.jpg", "mask": "m.png", "label": "sign", "kind": "object"}"#, "\n",
            r#"{"image": "a.jpg", "box": [1, 1, 5, 5], "mask": "m.png", "label": "both"}"#, "\n",
            r#"{"image": "gone.jpg", "box": [1, 1, 5, 5], "label": "x"}"#, "\n",
        ),
    )
    .unwrap();
    let no = partlens::dataset::OpenOptions::default();
    let ds = ListingDataset::listing(root.join("photos/regions.jsonl"), &no).unwrap();
    let problems: Vec<String> = ds
        .listing_problems()
        .iter()
        .map(|p| format!("{}: {}", p.path, p.reason))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("regions.jsonl:4") && problems[0].contains("exactly one of"));
    assert!(problems[1].contains("gone.jpg") && problems[1].contains("missing"));
    let settings = RegionSettings {
        min_area: 1,
        ..RegionSettings::default()
    };
    let r = ds.load(&ds.items()[0], &settings).unwrap().regions;
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].bbox.to_array(), [140, 120, 402, 372]);
    assert_eq!(r[0].area, 262 * 252);
    assert_eq!(r[0].object_name.as_deref(), Some("person"));
    // The top-left corner is a sliver: the first pixel centre inside is at x = 11.5.
    assert_eq!(r[1].bbox.to_array(), [11, 10, 110, 60]);
    assert!(r[1].area < 100 * 50 / 2 + 100 && r[1].area > 100 * 50 / 2 - 100);
    assert_eq!((r[2].kind, r[2].area), (RegionKind::Object, 40 * 20));
    assert_eq!(ds.items()[0].split, "val");

    // A malformed CSV row is skipped and reported with its line; the good row stays.
    std::fs::write(
        root.join("photos/regions.csv"),
        "image,x0,y0,x1,y1,label,object\na.jpg,0,0,10,10,corner,\na.jpg,0,0,x,10,bad,\n",
    )
    .unwrap();
    let ds = ListingDataset::listing(root.join("photos/regions.csv"), &no).unwrap();
    let p = &ds.listing_problems()[0];
    assert!(
        p.path.ends_with("regions.csv:3") && p.reason.contains("x1"),
        "{p:?}"
    );
    assert_eq!(ds.items().len(), 1);

    // A bare folder: every image is a region labelled by its sub-folder.
    let ds = ListingDataset::folder(root.join("photos"), &no).unwrap();
    assert_eq!(ds.items().len(), 3); // a.jpg, cars/b.jpg, m.png
    let labels: Vec<String> = ds
        .items()
        .iter()
        .map(|i| {
            ds.load(i, &RegionSettings::default()).unwrap().regions[0]
                .label_name
                .clone()
        })
        .collect();
    assert_eq!(labels, vec!["image", "cars", "image"]);
}

/// Settings for counting every region of at least `min_area` pixels, objects included.
fn at_least(min_area: u64) -> RegionSettings {
    RegionSettings {
        min_area,
        ..RegionSettings::default()
    }
}

/// A region as `count_regions.py` lists it: `kind class object instance area x0,y0,x1,y1`.
fn listed(r: &partlens::Region) -> String {
    let b = r.bbox;
    format!(
        "{} {} {} {} {} {},{},{},{}",
        r.kind.as_str(),
        r.label_name,
        r.object_name.as_deref().unwrap_or("-"),
        r.instance,
        r.area,
        b.x0,
        b.y0,
        b.x1,
        b.y1
    )
}

/// Pixels inside a region's RLE mask.
fn rle_area(r: &partlens::Region) -> u64 {
    r.mask_rle
        .iter()
        .skip(1)
        .step_by(2)
        .map(|&n| u64::from(n))
        .sum()
}

#[test]
fn pascal_part_regions_are_the_annotated_instances_scipy_reads() {
    use partlens::dataset::PascalPartDataset;
    // Our MAT-file reader vs scipy.io.loadmat (count_regions.py): the same instances, region by
    // region and in the same order (class, object, instance, area, box), at every min area.
    for sample in ["pascal_part_raw", "pascal_part_instances"] {
        let ds = PascalPartDataset::open(common::sample(sample), &Default::default()).unwrap();
        let e = &expected()[sample];
        assert!(ds.listing_problems().is_empty());
        assert_eq!(ds.items().len() as u64, e["images"].as_u64().unwrap());
        for a in [1u64, 64, 256] {
            let (mut parts, mut objects) = (0, 0);
            for item in ds.items() {
                let stem = item.image.trim_end_matches(".jpg");
                let want = &e["per_image"][stem];
                let r = ds.load(item, &at_least(a)).unwrap().regions;
                let count = |k: RegionKind| r.iter().filter(|r| r.kind == k).count() as u64;
                let (p, o) = (count(RegionKind::Part), count(RegionKind::Object));
                assert_eq!(p, want["part"][a.to_string()], "{stem} parts ≥ {a}");
                assert_eq!(o, want["object"][a.to_string()], "{stem} objects ≥ {a}");
                (parts, objects) = (parts + p, objects + o);
                if a == 1 {
                    let mine: Vec<String> = r.iter().map(listed).collect();
                    assert_eq!(mine, want["regions"].as_array().unwrap().clone(), "{stem}");
                    for region in &r {
                        assert_eq!(rle_area(region), region.area, "{stem}: {}", listed(region));
                    }
                }
            }
            assert_eq!(parts, e["part"][a.to_string()], "{sample} parts ≥ {a}");
            assert_eq!(
                objects,
                e["object"][a.to_string()],
                "{sample} objects ≥ {a}"
            );
        }
    }
    // Part class ids are the same as in the scipy conversion (its classes.txt).
    let raw =
        PascalPartDataset::open(common::sample("pascal_part_raw"), &Default::default()).unwrap();
    let conv = MmsegDataset::open(common::sample("pascal_part")).unwrap();
    assert_eq!(raw.part_classes(), conv.part_classes().unwrap());
    for item in raw.items() {
        for r in raw.load(item, &at_least(1)).unwrap().regions {
            let names = match r.kind {
                RegionKind::Part => raw.part_classes(),
                RegionKind::Object => conv.object_classes().unwrap(),
            };
            assert_eq!(names[r.label as usize], r.label_name);
            assert_eq!(
                conv.object_classes().unwrap()[r.object_label.unwrap() as usize],
                r.object_name.unwrap()
            );
        }
    }
}

#[test]
fn pascal_part_has_one_object_region_per_annotated_object() {
    use partlens::dataset::PascalPartDataset;
    let ds =
        PascalPartDataset::open(common::sample("pascal_part_raw"), &Default::default()).unwrap();
    let e = &expected()["pascal_part_raw"];
    assert_eq!(ds.items().len(), 18);
    let mut total = 0;
    for item in ds.items() {
        let stem = item.image.trim_end_matches(".jpg");
        let annotated = &e["per_image"][stem]["annotated"];
        let n = annotated["objects"].as_u64().unwrap();
        // Every object of the sample has pixels (scipy), so each must be exactly one region.
        assert_eq!(annotated["objects_with_pixels"], n, "{stem}");
        let r = ds.load(item, &at_least(1)).unwrap().regions;
        let objects: Vec<&partlens::Region> =
            r.iter().filter(|r| r.kind == RegionKind::Object).collect();
        let instances: Vec<u32> = objects.iter().map(|o| o.instance).collect();
        assert_eq!(instances, (0..n as u32).collect::<Vec<_>>(), "{stem}");
        // Each part names the object it is annotated in, and that object's class.
        for p in r.iter().filter(|r| r.kind == RegionKind::Part) {
            let o = objects[p.instance as usize];
            assert_eq!(p.object_label, Some(o.label), "{stem}: {}", listed(p));
        }
        total += n;
    }
    // 53 objects in the 18 annotations, where the painted object maps have 58 components.
    assert_eq!(total, 53);
}

#[test]
fn a_pascal_part_instance_is_one_region_whatever_its_pieces() {
    use partlens::dataset::{components, LabelResize, PascalPartDataset};
    // data/samples/pascal_part_instances (scripts/data/make_pascal_part_instances.py), 16 × 8:
    // person 0's torso is two separate pieces (4 + 9 px); persons 0 and 1 touch, and so do
    // person 0's lower torso piece and person 1's torso; car 2 has wheel_1 and wheel_2 (1 px
    // each); person 1's lfoot and boat 3 have no pixels.
    let root = common::sample("pascal_part_instances");
    let ds = PascalPartDataset::open(&root, &Default::default()).unwrap();
    let item = &ds.items()[0];
    let r = ds.load(item, &at_least(1)).unwrap().regions;
    let got: Vec<String> = r.iter().map(listed).collect();
    assert_eq!(
        got,
        [
            "part person/torso person 0 13 0,0,6,8",
            "part person/head person 0 6 0,3,3,5",
            "part person/torso person 1 9 6,5,9,8",
            "part car/wheel car 2 1 12,7,13,8",
            "part car/wheel car 2 1 15,7,16,8",
            "object person person 0 48 0,0,6,8",
            "object person person 1 48 6,0,12,8",
            "object car car 2 16 12,4,16,8",
        ]
    );
    // The two-piece torso: one mask holding both pieces, rows 0–1 and 5–7 of its 6 × 8 box.
    assert_eq!(r[0].mask_rle, [0, 2, 4, 2, 25, 3, 3, 3, 3, 3]);
    assert_eq!(r[0].crop_box, r[0].bbox.square_crop(0.1));
    // Painted into label maps (what `convert` writes) and cut into components, the same
    // annotation gives one person and torsos of 4 and 9 + 9 px.
    let (parts, objects) = ds.label_maps(item, (16, 8), LabelResize::Never).unwrap();
    let person = components(&objects, 1)
        .iter()
        .filter(|c| c.label == 15)
        .count();
    assert_eq!(person, 1);
    let torso = ds.part_classes().iter().position(|c| c == "person/torso");
    let torsos: Vec<u64> = components(&parts, 1)
        .iter()
        .filter(|c| Some(c.label as usize) == torso)
        .map(|c| c.area)
        .collect();
    assert_eq!(torsos, [4, 18]);

    // A min area drops small instances and keeps the others' instance numbers.
    let r = ds.load(item, &at_least(2)).unwrap().regions;
    assert_eq!(
        r.iter().map(|r| r.instance).collect::<Vec<_>>(),
        [0, 0, 1, 0, 1, 2]
    );
    // Without objects, parts still know theirs.
    let no_objects = RegionSettings {
        objects: false,
        ..at_least(1)
    };
    let r = ds.load(item, &no_objects).unwrap().regions;
    assert_eq!(r.len(), 5);
    assert!(r.iter().all(|r| r.kind == RegionKind::Part));
    assert_eq!(r[3].object_name.as_deref(), Some("car"));

    // A class map renames (wheel → tyre, both wheels) and drops (`-`: no head region).
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("map.txt");
    std::fs::write(&map, "car/wheel car/tyre\nperson/head -\n").unwrap();
    let opts = partlens::dataset::OpenOptions {
        class_map: Some(map),
        ..Default::default()
    };
    let mapped = PascalPartDataset::open(&root, &opts).unwrap();
    assert_eq!(
        mapped.part_classes(),
        ["background", "car/tyre", "person/lfoot", "person/torso"]
    );
    let r = mapped
        .load(&mapped.items()[0], &at_least(1))
        .unwrap()
        .regions;
    let parts: Vec<(u32, &str, u32)> = r
        .iter()
        .filter(|r| r.kind == RegionKind::Part)
        .map(|r| (r.label, r.label_name.as_str(), r.instance))
        .collect();
    assert_eq!(
        parts,
        [
            (3, "person/torso", 0),
            (3, "person/torso", 1),
            (1, "car/tyre", 2),
            (1, "car/tyre", 2)
        ]
    );

    // Masks of another size than the image: an error, or scaled with --resize-labels nearest.
    let big = dir.path().join("big");
    common::copy_dir(&root, &big);
    image::RgbImage::new(32, 16)
        .save(big.join("instances.jpg"))
        .unwrap();
    let ds = PascalPartDataset::open(&big, &Default::default()).unwrap();
    let err = ds.load(&ds.items()[0], &at_least(1)).unwrap_err();
    assert!(err.to_string().contains("--resize-labels nearest"), "{err}");
    let nearest = RegionSettings {
        resize_labels: LabelResize::Nearest,
        ..at_least(1)
    };
    let r = ds.load(&ds.items()[0], &nearest).unwrap().regions;
    assert_eq!(listed(&r[0]), "part person/torso person 0 52 0,0,12,16");
    assert_eq!(r.len(), 8);
}

#[test]
fn damaged_mat_files_are_errors_naming_the_file() {
    use partlens::dataset::matfile;
    let bytes = std::fs::read(common::sample("pascal_part_raw/2008_000652.mat")).unwrap();
    let p = std::path::Path::new("x.mat");
    assert!(matfile::read(&bytes, p).is_ok());
    // A bare header is a MAT-file without variables (the Pascal-Part reader then says `anno`
    // is missing); every other cut is an error.
    assert!(matfile::read(&bytes[..128], p).unwrap().is_empty());
    for cut in [0, 100, 129, 200, bytes.len() / 2, bytes.len() - 1] {
        let err = matfile::read(&bytes[..cut], p).unwrap_err().to_string();
        assert!(
            err.contains("x.mat") && err.contains("MAT-file"),
            "cut at {cut}: {err}"
        );
    }
    let mut flipped = bytes.clone();
    for i in (200..flipped.len()).step_by(97) {
        flipped[i] ^= 0x5a;
    }
    assert!(matfile::read(&flipped, p).is_err());

    // In a dataset: reported once, with the file, and the other 17 images still read.
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&common::sample("pascal_part_raw"), dir.path());
    let cut = dir.path().join("2008_000652.mat");
    let writable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
    std::fs::set_permissions(&cut, writable).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let ds = partlens::dataset::PascalPartDataset::open(dir.path(), &Default::default()).unwrap();
    assert_eq!(ds.items().len(), 17);
    let problems = ds.listing_problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].path == "2008_000652.jpg" && problems[0].reason.contains("2008_000652.mat")
    );
}

#[test]
fn convert_pascal_part_writes_the_same_maps_as_the_scipy_converter() {
    use partlens::dataset::convert::pascal_part_to_mmseg;
    use partlens::dataset::{LabelMap, PascalPartDataset};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mmseg");
    let raw =
        PascalPartDataset::open(common::sample("pascal_part_raw"), &Default::default()).unwrap();
    let s = pascal_part_to_mmseg(&raw, &out, "all").unwrap();
    assert_eq!((s.images, s.skipped.len()), (18, 0));
    let reference = common::sample("pascal_part");
    assert_eq!(
        std::fs::read_to_string(out.join("classes.txt")).unwrap(),
        std::fs::read_to_string(reference.join("classes.txt")).unwrap()
    );
    for item in MmsegDataset::open(&reference).unwrap().items() {
        let stem = item
            .image
            .rsplit('/')
            .next()
            .unwrap()
            .replace(".jpg", ".png");
        for dir_name in ["ann", "obj"] {
            let mine = LabelMap::read_png(&out.join(dir_name).join("all").join(&stem)).unwrap();
            let theirs =
                LabelMap::read_png(&reference.join(dir_name).join(&item.split).join(&stem))
                    .unwrap();
            assert_eq!(mine, theirs, "{dir_name}/{stem}");
        }
    }
    // Refuses to write into a folder with files.
    assert!(pascal_part_to_mmseg(&raw, &out, "all").is_err());
}

#[test]
fn every_sample_is_detected_as_its_format() {
    use partlens::dataset::{detect, Format};
    let street = "ade20k_full/dataset/ADE20K_2021_17_01/images/ADE/training/urban/street";
    for (sample, want) in [
        ("lip", Format::Mmseg),
        ("pascal_part", Format::Mmseg),
        ("ade20k_challenge", Format::Mmseg),
        ("pascal_part_raw", Format::PascalPart),
        ("ade20k_full", Format::Ade20k),
        // Pointed at a folder deep inside the release, it still finds X.json + X_seg.png.
        (street, Format::Ade20k),
        ("keypoints/coco", Format::CocoKeypoints),
        ("keypoints/ap10k", Format::CocoKeypoints),
        ("keypoints/coco/test_coco.json", Format::CocoKeypoints),
    ] {
        let (format, _) = detect(&common::sample(sample)).unwrap();
        assert_eq!(format, want, "{sample}");
    }
    // One ADE20K image's JSON is not a COCO file: say what to pass instead.
    let one = common::sample(&format!("{street}/ADE_train_00016900.json"));
    let err = detect(&one).unwrap_err().to_string();
    assert!(err.contains("ADE20K image's annotation"), "{err}");
    // Two COCO files: ambiguous, and the error names both.
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.json", "b.json"] {
        std::fs::write(
            dir.path().join(name),
            r#"{"images": [], "annotations": []}"#,
        )
        .unwrap();
    }
    let err = detect(dir.path()).unwrap_err().to_string();
    assert!(err.contains("a.json, b.json"), "{err}");
    // Only images: a bare folder.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::sample("lip/img/val/684_2150041.jpg"),
        dir.path().join("x.jpg"),
    )
    .unwrap();
    assert_eq!(detect(dir.path()).unwrap().0, Format::Folder);
}
