//! Files outside the dataset folder are never read unless the user opts in
//! (`--allow-outside-root`), in every reader; names that become paths are checked; folders
//! are walked with loop detection.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Output;

fn stats(dataset: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let o = common::bin()
        .args(["dataset", "stats", "--json", "--min-area", "1"])
        .arg(dataset)
        .args(extra)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, v)
}

/// The skipped entries of a stats run, as `path: reason` lines.
fn skipped(v: &serde_json::Value) -> Vec<String> {
    v["skipped"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    format!(
                        "{}: {}",
                        s["path"].as_str().unwrap(),
                        s["reason"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn outside(lines: &[String], needle: &str) -> bool {
    lines
        .iter()
        .any(|l| l.contains(needle) && l.contains("outside the dataset folder"))
}

/// A real JPEG (a LIP image) at `p`.
fn jpeg(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::copy(common::sample("lip/img/val/86_185913.jpg"), p).unwrap();
}

#[test]
fn listings_never_read_outside_their_folder_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    jpeg(&root.join("a.jpg"));
    jpeg(&dir.path().join("secret.jpg"));
    symlink(dir.path().join("secret.jpg"), root.join("link.jpg")).unwrap();
    std::fs::write(
        root.join("regions.jsonl"),
        concat!(
            r#"{"image": "a.jpg", "box": [1, 1, 50, 50], "label": "ok"}"#,
            "\n",
            r#"{"image": "../secret.jpg", "box": [1, 1, 50, 50], "label": "up"}"#,
            "\n",
            r#"{"image": "/etc/passwd", "box": [1, 1, 50, 50], "label": "abs"}"#,
            "\n",
            r#"{"image": "link.jpg", "box": [1, 1, 50, 50], "label": "link"}"#,
            "\n",
            r#"{"image": "a.jpg", "mask": "../../../../etc/shadow", "label": "mask"}"#,
            "\n",
        ),
    )
    .unwrap();
    let (o, v) = stats(&root.join("regions.jsonl"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = skipped(&v);
    for needle in [
        "../secret.jpg",
        "/etc/passwd",
        "link.jpg",
        "regions.jsonl:5",
    ] {
        assert!(outside(&s, needle), "{needle}: {s:?}");
    }
    assert_eq!(v["regions"], 1);
    // Opting in reads the two JPEGs outside; /etc/passwd is then simply not an image.
    let (_, v) = stats(&root.join("regions.jsonl"), &["--allow-outside-root"]);
    assert_eq!(v["regions"], 3, "{:?}", skipped(&v));
    assert!(skipped(&v)
        .iter()
        .any(|l| l.contains("/etc/passwd") && l.contains("decode")));
}

#[test]
fn coco_cub_ade20k_and_mmseg_apply_the_same_policy() {
    let dir = tempfile::tempdir().unwrap();
    jpeg(&dir.path().join("secret.jpg"));

    // COCO: `file_name` leading out (the issue's example) and an absolute one.
    let coco = dir.path().join("coco");
    common::copy_dir(&common::sample("keypoints/coco"), &coco);
    let json = coco.join("test_coco.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    v["images"][0]["file_name"] = "../secret.jpg".into();
    v["images"][1]["file_name"] = dir.path().join("secret.jpg").display().to_string().into();
    std::fs::write(&json, v.to_string()).unwrap();
    let (_, st) = stats(&json, &[]);
    let s = skipped(&st);
    assert!(
        outside(&s, "../secret.jpg") && outside(&s, "/secret.jpg"),
        "{s:?}"
    );
    assert_eq!(st["images"], 2);

    // ADE20K: an `instance_mask` leading to /etc/passwd (the issue's example).
    let ade = dir.path().join("ade");
    common::copy_dir(&common::sample("ade20k_full"), &ade);
    let street = ade.join("dataset/ADE20K_2021_17_01/images/ADE/training/urban/street");
    let jp = street.join("ADE_train_00016900.json");
    let mut a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&jp).unwrap()).unwrap();
    a["annotation"]["object"][0]["instance_mask"] =
        "../../../../../../../../../../../etc/passwd".into();
    std::fs::write(&jp, a.to_string()).unwrap();
    let (_, st) = stats(&ade, &[]);
    let s = skipped(&st);
    assert!(
        s.iter().any(|l| l.contains("ADE_train_00016900")
            && l.contains("instance 0 mask")
            && l.contains("outside")),
        "{s:?}"
    );

    // CUB (second instance): a row of images.txt leading out.
    let cub = dir.path().join("cub");
    common::copy_dir(&common::sample("keypoints/cub_meta"), &cub);
    jpeg(&cub.join("images/birds/0001.jpg"));
    std::fs::write(
        cub.join("images.txt"),
        "1 birds/0001.jpg\n2 ../../secret.jpg\n",
    )
    .unwrap();
    let (_, st) = stats(&cub, &[]);
    let s = skipped(&st);
    assert!(outside(&s, "../../secret.jpg"), "{s:?}");
    assert_eq!(st["images"], 1);

    // mmseg (second instance): an image that is a link to a file outside.
    let mm = dir.path().join("mm");
    common::copy_dir(&common::sample("lip"), &mm);
    symlink(
        dir.path().join("secret.jpg"),
        mm.join("img/val/zz_link.jpg"),
    )
    .unwrap();
    let (_, st) = stats(&mm, &[]);
    assert!(
        outside(&skipped(&st), "img/val/zz_link.jpg"),
        "{:?}",
        skipped(&st)
    );
}

#[test]
fn folders_are_walked_once_through_link_loops_and_never_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    jpeg(&root.join("cats/a.jpg"));
    jpeg(&root.join("dogs/b.jpg"));
    // The issue's example: `cats/loop -> ..` indexed one image 41 times; with one more link
    // leading out, the walk hung.
    symlink("..", root.join("cats/loop")).unwrap();
    symlink("/", root.join("dogs/everything")).unwrap();
    jpeg(&dir.path().join("elsewhere/c.jpg"));
    symlink(dir.path().join("elsewhere"), root.join("dogs/out")).unwrap();
    let t = std::time::Instant::now();
    let (o, st) = stats(&root, &["--format", "folder"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.elapsed().as_secs() < 30);
    assert_eq!(st["images"], 2);
    let s = skipped(&st);
    assert!(
        s.iter()
            .any(|l| l.contains("cats/loop: symbolic link loop back to the dataset folder")),
        "{s:?}"
    );
    // `/` holds the dataset itself: a loop too, reported and not followed.
    assert!(s
        .iter()
        .any(|l| l.contains("dogs/everything") && l.contains("loop back to /")));
    assert!(outside(&s, "dogs/out"), "{s:?}");
    // Second instance: a loop through two links, in an ADE20K-style walk (Pascal-Part).
    let pp = dir.path().join("pp");
    common::copy_dir(&common::sample("pascal_part_raw"), &pp);
    std::fs::create_dir_all(pp.join("x/y")).unwrap();
    symlink("../../x", pp.join("x/y/back")).unwrap();
    let (o, st) = stats(&pp, &[]);
    assert!(o.status.success());
    assert_eq!(st["images"], 18);
    assert!(
        skipped(&st).iter().any(|l| l.contains("loop")),
        "{:?}",
        skipped(&st)
    );
}

#[test]
fn names_that_become_paths_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    // The issue's example: convert --split ../../evil wrote outside --out.
    for split in ["../../evil", "a/b", ".."] {
        let o = common::bin()
            .args(["convert", "--from", "pascal-part", "--dataset"])
            .arg(common::sample("pascal_part_raw"))
            .arg("--out")
            .arg(dir.path().join("out"))
            .args(["--split", split])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{split}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("not a plain name"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!dir.path().parent().unwrap().join("evil").exists());
}

#[test]
fn derived_and_fixed_name_files_follow_the_policy_too() {
    let dir = tempfile::tempdir().unwrap();
    jpeg(&dir.path().join("secret.jpg"));
    // ADE20K: X.json inside, X.jpg a link leading out.
    let ade = dir.path().join("ade");
    common::copy_dir(&common::sample("ade20k_full"), &ade);
    let street = ade.join("dataset/ADE20K_2021_17_01/images/ADE/training/urban/street");
    let img = street.join("ADE_train_00016900.jpg");
    std::fs::remove_file(&img).unwrap();
    symlink(dir.path().join("secret.jpg"), &img).unwrap();
    let (_, st) = stats(&ade, &[]);
    assert!(
        outside(&skipped(&st), "ADE_train_00016900.jpg"),
        "{:?}",
        skipped(&st)
    );
    // mmseg: a label map that is a link leading out.
    let mm = dir.path().join("mm");
    common::copy_dir(&common::sample("lip"), &mm);
    let ann = mm.join("ann/val/86_185913.png");
    std::fs::rename(&ann, dir.path().join("outside.png")).unwrap();
    symlink(dir.path().join("outside.png"), &ann).unwrap();
    let (_, st) = stats(&mm, &[]);
    assert!(
        outside(&skipped(&st), "ann/val/86_185913.png"),
        "{:?}",
        skipped(&st)
    );
    assert_eq!(st["images"], 1);
    // CUB: images.txt itself a link leading out refuses the dataset, naming the file.
    let cub = dir.path().join("cub");
    common::copy_dir(&common::sample("keypoints/cub_meta"), &cub);
    std::fs::create_dir_all(cub.join("images")).unwrap();
    std::fs::write(dir.path().join("list.txt"), "1 a.jpg\n").unwrap();
    symlink(dir.path().join("list.txt"), cub.join("images.txt")).unwrap();
    let (o, _) = stats(&cub, &[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("images.txt") && e.contains("outside the dataset folder"),
        "{e}"
    );
}
