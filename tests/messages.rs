//! Messages a user can act on: unknown names are refused with the valid ones (and the closest),
//! flags parse as a user writes them, and output meant for files and pipes is plain text.

mod common;

use std::path::Path;
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stats(dataset: &Path, extra: &[&str]) -> Output {
    common::bin()
        .args(["dataset", "stats"])
        .arg(dataset)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn unknown_keypoint_names_are_refused_with_the_valid_ones() {
    // The example: `--keypoints bogus,nose` silently ignored `bogus`.
    let coco = common::sample("keypoints/coco/test_coco.json");
    let o = stats(&coco, &["--keypoints", "bogus,nose"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("\"bogus\"") && e.contains("left_ankle"), "{e}");
    // Second instance: CUB's part names.
    let dir = tempfile::tempdir().unwrap();
    let cub = dir.path().join("cub");
    common::copy_dir(&common::sample("keypoints/cub_meta"), &cub);
    std::fs::create_dir_all(cub.join("images")).unwrap();
    std::fs::write(cub.join("images.txt"), "").unwrap();
    let o = stats(&cub, &["--keypoints", "right eye,bogus"]);
    let e = stderr(&o);
    assert!(e.contains("\"bogus\"") && e.contains("left wing"), "{e}");
}

#[test]
fn query_filters_that_match_nothing_name_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    common::ingest_json(&common::sample("lip"), &["--min-area", "64"], &out);
    let run = |flag: &str, value: &str| {
        common::bin()
            .args(["--device", "cpu", "query", "--index"])
            .arg(&out)
            .arg("--image")
            .arg(common::sample("lip/img/val/86_185913.jpg"))
            .args([flag, value])
            .output()
            .unwrap()
    };
    // The examples: --label, --object and --split matching nothing printed an empty
    // table and exited 0.
    let o = run("--label", "hair");
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("--label \"hair\" matches no region. Did you mean \"Hair\"?"),
        "{e}"
    );
    assert!(e.contains("labels in this index: "), "{e}");
    let e = stderr(&run("--split", "vall"));
    assert!(e.contains("Did you mean \"val\"?"), "{e}");
    let e = stderr(&run("--object", "person"));
    assert!(e.contains("no region of this index has an object"), "{e}");
    // Second instance: a label far from every name gets the list, no guess.
    let e = stderr(&run("--label", "xylophone"));
    assert!(!e.contains("Did you mean") && e.contains("\"Hair\""), "{e}");
    // A value that exists still works, by name or by id.
    assert!(run("--label", "Hair").status.success());
    assert!(run("--split", "val").status.success());
}

#[test]
fn flags_parse_as_users_write_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    common::ingest_json(&common::sample("lip"), &[], &out);
    // The example: `--box -100,…` was taken for a flag.
    let o = common::bin()
        .args(["--device", "cpu", "query", "--index"])
        .arg(&out)
        .arg("--image")
        .arg(common::sample("lip/img/val/86_185913.jpg"))
        .args(["--box", "-100,-20,80,90"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Second instance: a negative margin is a number the library refuses, not a flag.
    let o = common::bin()
        .args(["ingest", "--dataset"])
        .arg(common::sample("lip"))
        .args(["--margin", "-0.5", "--out"])
        .arg(dir.path().join("m"))
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("margin must be between 0 and 4"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_names_every_dataset_format() {
    let o = common::bin().args(["ingest", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for f in partlens::dataset::Format::ALL {
        assert!(help.contains(f.as_str()), "ingest --help lacks {f}: {help}");
    }
    for words in [
        "COCO",
        "CUB",
        "ADE20K",
        "Pascal-Part",
        "listing",
        "bare folder",
    ] {
        assert!(help.contains(words), "{words}");
    }
}

#[test]
fn pipes_and_files_get_no_colour_codes() {
    // stderr is a pipe here: log lines and errors must be plain text.
    let o = common::bin()
        .args(["--device", "cpu", "-v", "info"])
        .arg("/nonexistent/index")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(!e.is_empty());
    assert!(!e.contains('\u{1b}'), "escape codes in {e:?}");
    let o = common::bin()
        .args(["--device", "cpu", "ingest", "--dataset"])
        .arg(common::sample("lip"))
        .arg("--out")
        .arg(tempfile::tempdir().unwrap().path().join("i"))
        .output()
        .unwrap();
    assert!(
        !stderr(&o).contains('\u{1b}') && !String::from_utf8_lossy(&o.stdout).contains('\u{1b}')
    );
}

#[test]
fn output_folders_that_cannot_be_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    // The example: `File exists` for an --out under a regular file.
    let o = common::bin()
        .args(["synth", "--images", "1", "--out"])
        .arg(dir.path().join("file/sub/out"))
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(e.contains("is a file, not a folder"), "{e}");
    // Second instance: a mount point cannot be replaced by a rename (was `Device or resource
    // busy` after all the work was done).
    if partlens::files::is_mount_point(Path::new("/proc")) {
        let o = common::bin()
            .args(["synth", "--images", "1", "--out", "/proc"])
            .output()
            .unwrap();
        let e = stderr(&o);
        assert!(
            e.contains("/proc is a mount point") && e.contains("/proc/dataset"),
            "{e}"
        );
    }
}
