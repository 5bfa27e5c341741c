//! Your own listings, and runs where nothing can be indexed: every row that cannot become a
//! region is reported with its line and the rest of the image is kept; CSV is read as CSV;
//! a run that indexes nothing fails and says what to change.

mod common;

use std::path::Path;
use std::process::Output;

use partlens::dataset::{Dataset, LabelMap, ListingDataset, OpenOptions, RegionSettings};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A real 500 × 375 JPEG at `dir/name`.
fn photo(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        common::sample("pascal_part/img/val/2008_003228.jpg"),
        dir.join(name),
    )
    .unwrap();
}

fn reasons(ds: &ListingDataset) -> Vec<String> {
    ds.listing_problems()
        .iter()
        .map(|p| format!("{}: {}", p.path, p.reason))
        .collect()
}

#[test]
fn every_bad_row_is_reported_and_only_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    photo(root, "a.jpg");
    image::GrayImage::from_pixel(500, 375, image::Luma([255]))
        .save(root.join("good.png"))
        .unwrap();
    image::GrayImage::from_pixel(10, 10, image::Luma([255]))
        .save(root.join("small.png"))
        .unwrap();
    std::fs::write(
        root.join("r.jsonl"),
        concat!(
            r#"{"image": "a.jpg", "box": [10, 10, 100, 100], "label": "ok"}"#,
            "\n",
            r#"{"image": "a.jpg", "mask": "small.png", "label": "wrong size"}"#,
            "\n",
            r#"{"image": "a.jpg", "box": [100, 100, 10, 10], "label": "inverted"}"#,
            "\n",
            r#"{"image": "a.jpg", "box": [900, 900, 1000, 1000], "label": "outside"}"#,
            "\n",
            r#"{"image": "a.jpg", "polygon": [[5, 5]], "label": "one point"}"#,
            "\n",
            r#"{"image": "a.jpg", "polygon": [[5, 5], [50, 50]], "label": "two points"}"#,
            "\n",
            r#"{"image": "a.jpg", "box": [1, 2, "x", 4], "label": "not numbers"}"#,
            "\n",
            r#"{"image": "a.jpg", "box": [1, 2, 3], "label": "three values"}"#,
            "\n",
            r#"{"image": "a.jpg", "mask": "missing.png", "label": "no mask"}"#,
            "\n",
            r#"{"image": "a.jpg", "mask": "good.png", "label": "ok mask"}"#,
            "\n",
        ),
    )
    .unwrap();
    let ds = ListingDataset::listing(root.join("r.jsonl"), &OpenOptions::default()).unwrap();
    let listing = reasons(&ds);
    for (line, want) in [
        (3, "inverted"),
        (5, "1 point"),
        (6, "2 point"),
        (7, "column"),
        (8, "3 values"),
    ] {
        assert!(
            listing
                .iter()
                .any(|l| l.starts_with(&format!("r.jsonl:{line}: ")) && l.contains(want)),
            "line {line} ({want}): {listing:?}"
        );
    }
    // One position per JSON error, not serde's "line 1" besides ours.
    assert!(
        listing.iter().all(|l| !l.contains("at line")),
        "{listing:?}"
    );
    let settings = RegionSettings {
        min_area: 1,
        ..RegionSettings::default()
    };
    let loaded = ds.load(&ds.items()[0], &settings).unwrap();
    let labels: Vec<&str> = loaded
        .regions
        .iter()
        .map(|r| r.label_name.as_str())
        .collect();
    assert_eq!(labels, ["ok", "ok mask"]);
    let at_load: Vec<String> = loaded
        .skipped
        .iter()
        .map(|p| format!("{}: {}", p.path, p.reason))
        .collect();
    for (line, want) in [(2, "mask is 10×10"), (4, "no pixel"), (9, "missing.png")] {
        assert!(
            at_load
                .iter()
                .any(|l| l.starts_with(&format!("r.jsonl:{line}: ")) && l.contains(want)),
            "line {line} ({want}): {at_load:?}"
        );
    }
    // Through ingest, every one of them lands in the manifest.
    let m = common::ingest_json(
        &root.join("r.jsonl"),
        &["--min-area", "1"],
        &root.join("idx"),
    );
    assert_eq!(m["manifest"]["counts"]["regions"], 2);
    assert_eq!(m["manifest"]["skipped"].as_array().unwrap().len(), 8);
}

#[test]
fn csv_listings_are_read_as_csv() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    photo(root, "a.jpg");
    photo(root, "a,b.jpg");
    // A byte-order mark, quoted fields (one with a comma), CRLF line ends.
    std::fs::write(
        root.join("r.csv"),
        "\u{feff}image,x0,y0,x1,y1,label,split\r\n\
         \"a.jpg\",0,0,10,10,\"corner\",train\r\n\
         \"a,b.jpg\",5,5,60,60,\"wheel, front\",val\r\n",
    )
    .unwrap();
    let ds = ListingDataset::listing(root.join("r.csv"), &OpenOptions::default()).unwrap();
    assert!(ds.listing_problems().is_empty(), "{:?}", reasons(&ds));
    let images: Vec<&str> = ds.items().iter().map(|i| i.image.as_str()).collect();
    assert_eq!(images, ["a,b.jpg", "a.jpg"]);
    let settings = RegionSettings {
        min_area: 1,
        ..RegionSettings::default()
    };
    let r = ds.load(&ds.items()[0], &settings).unwrap().regions;
    assert_eq!(r[0].label_name, "wheel, front");
    assert_eq!(ds.items()[0].split, "val");
    // A header without the needed columns is an error that says what it has.
    std::fs::write(root.join("bad.csv"), "file,box\n").unwrap();
    let e = ListingDataset::listing(root.join("bad.csv"), &OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lacks image, x0") && e.contains("it has: file, box"),
        "{e}"
    );
}

#[test]
fn a_listing_in_the_current_folder_records_its_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "a.jpg");
    std::fs::write(
        dir.path().join("r.jsonl"),
        r#"{"image": "a.jpg", "box": [10, 10, 100, 100], "label": "x"}"#,
    )
    .unwrap();
    let o = common::bin()
        .current_dir(dir.path())
        .args([
            "--device",
            "cpu",
            "ingest",
            "--json",
            "--dataset",
            "r.jsonl",
            "--out",
            "idx",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let path = m["manifest"]["dataset"]["path"].as_str().unwrap();
    assert_eq!(
        Path::new(path),
        dir.path().canonicalize().unwrap(),
        "the dataset path must be usable from anywhere"
    );
}

/// The LIP sample with every label map halved (as CelebAMask-HQ's 512-px maps are for its
/// 1024-px photos), made with Pillow's NEAREST.
fn halved_lip(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("lip");
    common::copy_dir(&common::sample("lip"), &root);
    let script = format!(
        "import glob; from PIL import Image\n\
         for p in glob.glob({:?} + '/ann/*/*.png'):\n\
         \x20   m = Image.open(p); m.resize((m.width // 2, m.height // 2), Image.NEAREST).save(p)\n",
        root.display().to_string()
    );
    let o = std::process::Command::new(common::python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    root
}

#[test]
fn a_run_that_indexes_nothing_fails_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let root = halved_lip(dir.path());
    let out = dir.path().join("idx");
    let run = |extra: &[&str]| {
        common::bin()
            .args(["--device", "cpu", "ingest", "--dataset"])
            .arg(&root)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    // The issue's example: every image skipped, exit 0, an empty index and no hint.
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("no region was indexed"), "{e}");
    assert!(e.contains("--resize-labels nearest"), "{e}");
    assert!(!out.exists());
    // With the flag, the maps are scaled to their images and regions come out.
    let o = run(&["--resize-labels", "nearest", "--min-area", "64", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(m["manifest"]["counts"]["regions"].as_u64().unwrap() > 0);
    assert_eq!(m["manifest"]["settings"]["resize_labels"], "nearest");
    std::fs::remove_dir_all(&out).unwrap();
    // Second instances: every image corrupt; and regions that all fall under --min-area.
    let broken = dir.path().join("broken");
    common::copy_dir(&common::sample("lip"), &broken);
    for f in std::fs::read_dir(broken.join("img/val")).unwrap() {
        std::fs::write(f.unwrap().path(), b"not a jpeg").unwrap();
    }
    let o = common::bin()
        .args(["--device", "cpu", "ingest", "--dataset"])
        .arg(&broken)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("no region was indexed: 0 of 2 images"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--resize-labels", "nearest", "--min-area", "100000000"]);
    assert!(stderr(&o).contains("lower --min-area"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn nearest_label_scaling_equals_pillows() {
    // Random sizes up and down, against Image.resize(size, Image.NEAREST).
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (7, 5, 3, 2),
        (5, 3, 13, 11),
        (100, 37, 33, 90),
        (64, 48, 640, 480),
        (3, 7, 1, 1),
    ];
    let mut script = String::from("from PIL import Image\nimport sys\n");
    for (i, &(w, h, ow, oh)) in cases.iter().enumerate() {
        let data: Vec<u8> = (0..w * h).map(|v| (v * 7 % 251) as u8).collect();
        let m = LabelMap {
            width: w,
            height: h,
            data: data.clone(),
        };
        std::fs::write(dir.path().join(format!("{i}.raw")), &data).unwrap();
        std::fs::write(
            dir.path().join(format!("{i}.ours")),
            m.resize_nearest(ow, oh).data,
        )
        .unwrap();
        script.push_str(&format!(
            "m = Image.frombytes('L', ({w}, {h}), open({raw:?}, 'rb').read())\n\
             got = m.resize(({ow}, {oh}), Image.NEAREST).tobytes()\n\
             assert got == open({ours:?}, 'rb').read(), {i}\n",
            raw = dir.path().join(format!("{i}.raw")).display().to_string(),
            ours = dir.path().join(format!("{i}.ours")).display().to_string(),
        ));
    }
    let o = std::process::Command::new(common::python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_label_maps_size_is_checked_from_its_header_before_decoding() {
    // A PNG whose header claims 16000 × 16000 and whose data is garbage: refused for its size
    // (the header) rather than for its data (which decoding would have reached first).
    let dir = tempfile::tempdir().unwrap();
    let mut png = Vec::new();
    png.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&16000u32.to_be_bytes());
    ihdr.extend_from_slice(&16000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    let crc = crc32(&ihdr);
    png.extend_from_slice(&crc.to_be_bytes());
    png.extend_from_slice(&[0, 0, 0, 4, b'I', b'D', b'A', b'T', 1, 2, 3, 4, 0, 0, 0, 0]);
    let p = dir.path().join("m.png");
    std::fs::write(&p, &png).unwrap();
    let e = LabelMap::read_png_for(&p, (500, 375), Default::default(), "label map")
        .unwrap_err()
        .to_string();
    assert!(e.contains("16000×16000 but its image is 500×375"), "{e}");
}

/// CRC-32 (PNG's), bit by bit: enough for one chunk.
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn entries_listed_twice_are_reported_not_doubled() {
    let dir = tempfile::tempdir().unwrap();
    // COCO: an image entry repeated (same id) and one repeated under another id.
    let coco = dir.path().join("coco");
    common::copy_dir(&common::sample("keypoints/coco"), &coco);
    let json = coco.join("test_coco.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let first = v["images"][0].clone();
    let mut other_id = first.clone();
    other_id["id"] = 999_999_999u64.into();
    v["images"].as_array_mut().unwrap().push(first);
    v["images"].as_array_mut().unwrap().push(other_id);
    std::fs::write(&json, v.to_string()).unwrap();
    let ds = partlens::dataset::CocoKeypoints::open(&json, &OpenOptions::default()).unwrap();
    assert_eq!(ds.items().len(), 4);
    let twice = ds
        .listing_problems()
        .iter()
        .filter(|p| p.reason.contains("listed twice"))
        .count();
    assert_eq!(twice, 2, "{:?}", ds.listing_problems());
    // mmseg: x.jpg and x.png would share ann/val/x.png.
    let mm = dir.path().join("mm");
    common::copy_dir(&common::sample("lip"), &mm);
    let img = mm.join("img/val/86_185913.jpg");
    partlens::preprocess::decode_rgb(&img)
        .unwrap()
        .save(mm.join("img/val/86_185913.png"))
        .unwrap();
    let ds = partlens::MmsegDataset::open(&mm).unwrap();
    assert_eq!(ds.items().len(), 2);
    assert!(ds.listing_problems()[0].reason.contains("same label map"));
    // A listing whose rows disagree on an image's split.
    photo(dir.path(), "a.jpg");
    std::fs::write(
        dir.path().join("r.jsonl"),
        concat!(
            r#"{"image": "a.jpg", "box": [1, 1, 50, 50], "label": "x", "split": "train"}"#,
            "\n",
            r#"{"image": "a.jpg", "box": [2, 2, 60, 60], "label": "y", "split": "val"}"#,
            "\n",
        ),
    )
    .unwrap();
    let ds = ListingDataset::listing(dir.path().join("r.jsonl"), &OpenOptions::default()).unwrap();
    assert_eq!(ds.items()[0].split, "train");
    assert!(
        reasons(&ds)[0].starts_with("r.jsonl:2: split \"val\" differs"),
        "{:?}",
        reasons(&ds)
    );
}

#[test]
fn a_conversion_that_converts_nothing_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pp = dir.path().join("pp");
    common::copy_dir(&common::sample("pascal_part_raw"), &pp);
    for e in std::fs::read_dir(&pp).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jpg") {
            std::fs::write(&p, b"not a jpeg").unwrap();
        }
    }
    let o = common::bin()
        .args(["convert", "--from", "pascal-part", "--dataset"])
        .arg(&pp)
        .arg("--out")
        .arg(dir.path().join("out/."))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no image could be converted"),
        "{}",
        stderr(&o)
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["pp"]);
    // And a good one lands whole, even named with a trailing `/.`.
    let o = common::bin()
        .args(["convert", "--from", "pascal-part", "--dataset"])
        .arg(common::sample("pascal_part_raw"))
        .arg("--out")
        .arg(dir.path().join("good/."))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("good/classes.txt").is_file());
}
