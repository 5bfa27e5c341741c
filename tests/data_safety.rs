//! Nothing a user has is lost or silently damaged: only a real partlens index is ever
//! replaced, one writer at a time, atomically; killed runs leave nothing behind; damaged
//! feature rows are reported and never ranked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use partlens::files::PathLock;
use partlens::IndexDir;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `partlens --device cpu ingest` of the LIP sample with the tiny ViT into `out`.
fn ingest_cmd(dataset: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = common::bin();
    c.args([
        "--device",
        "cpu",
        "--threads",
        "2",
        "-q",
        "ingest",
        "--model",
    ])
    .arg(common::vit_tiny())
    .arg("--dataset")
    .arg(dataset)
    .arg("--out")
    .arg(out)
    .args(extra)
    .stdout(std::process::Stdio::null());
    c
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn only_a_real_index_is_ever_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let lip = common::sample("lip");
    // The issue's example: a web app with its own manifest.json.
    let webapp = dir.path().join("webapp");
    std::fs::create_dir_all(webapp.join("src")).unwrap();
    std::fs::write(webapp.join("manifest.json"), br#"{"name": "my app"}"#).unwrap();
    std::fs::write(webapp.join("src/app.js"), b"console.log(1)").unwrap();
    // Second instances: a real partlens manifest copied next to a user's file, and a folder
    // with the marker plus a user's file.
    let idx = dir.path().join("idx");
    assert!(ingest_cmd(&lip, &idx, &[]).status().unwrap().success());
    let copied = dir.path().join("copied");
    std::fs::create_dir_all(&copied).unwrap();
    std::fs::copy(idx.join("manifest.json"), copied.join("manifest.json")).unwrap();
    std::fs::write(copied.join("notes.txt"), b"mine").unwrap();
    let marked = dir.path().join("marked");
    common::copy_dir(&idx, &marked);
    std::fs::write(marked.join("thesis.tex"), b"mine").unwrap();
    for (target, keep) in [
        (&webapp, "src/app.js"),
        (&copied, "notes.txt"),
        (&marked, "thesis.tex"),
    ] {
        let o = ingest_cmd(&lip, target, &["--overwrite"]).output().unwrap();
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert!(
            e.contains("not a partlens index") && e.contains("did not write"),
            "{e}"
        );
        assert!(target.join(keep).is_file(), "{keep} was deleted");
    }
    // A folder that only looks like a manifest holder, without foreign files, is still not an
    // index: no marker and no partlens manifest.
    let fake = dir.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("manifest.json"), b"{}").unwrap();
    let o = ingest_cmd(&lip, &fake, &["--overwrite"]).output().unwrap();
    assert!(stderr(&o).contains("no partlens marker"), "{}", stderr(&o));
    assert!(fake.join("manifest.json").is_file());
    // The real index is replaced, and keeps its marker.
    assert!(ingest_cmd(&lip, &idx, &["--overwrite"])
        .status()
        .unwrap()
        .success());
    assert!(idx.join(partlens::store::MARKER_FILE).is_file());
    assert_eq!(
        names(dir.path()),
        ["copied", "fake", "idx", "marked", "webapp"]
    );
}

/// Starts an ingest of `dataset` into `out` (MobileNetV2: slow enough to overlap) and, once
/// it holds the lock, a second one. Returns the second's output, or `None` when the first had
/// already finished by the time the second reached the lock (then there was no overlap).
fn overlapping_ingests(dataset: &Path, out: &Path) -> Option<Output> {
    let cmd = |extra: &[&str]| {
        let mut c = common::bin();
        c.args([
            "--device",
            "cpu",
            "--threads",
            "1",
            "-q",
            "ingest",
            "--dataset",
        ])
        .arg(dataset)
        .arg("--out")
        .arg(out)
        .args(extra);
        c
    };
    let mut first = cmd(&[]).spawn().unwrap();
    let lock = PathLock::lock_path(out).unwrap();
    let t = std::time::Instant::now();
    while !lock.exists() {
        assert!(t.elapsed().as_secs() < 60, "the first ingest never started");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let second = cmd(&[]).output().unwrap();
    assert!(first.wait().unwrap().success());
    let overlapped = !stderr(&second).contains("already exists");
    std::fs::remove_dir_all(out).unwrap();
    overlapped.then_some(second)
}

#[test]
fn a_second_writer_to_the_same_out_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    // The issue's example: two ingests to the same new --out both succeeded, the later one
    // silently replacing the first. The first now holds a lock for its whole run.
    let second = (0..5)
        .find_map(|_| overlapping_ingests(&common::sample("pascal_part"), &out))
        .expect("the two ingests never overlapped in 5 tries");
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("another partlens process is writing"),
        "{}",
        stderr(&second)
    );
    assert_eq!(
        names(dir.path()),
        Vec::<String>::new(),
        "lock and staging removed"
    );
    // Second instance: the lock held by this process (as a server would hold it) stops a
    // synth to the same folder, deterministically.
    let held = PathLock::try_acquire(&dir.path().join("synth"))
        .unwrap()
        .unwrap();
    let o = common::bin()
        .args(["synth", "--images", "2", "--out"])
        .arg(dir.path().join("synth"))
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("another partlens process"),
        "{}",
        stderr(&o)
    );
    held.release();
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

#[test]
fn stale_staging_folders_are_removed_and_an_interrupted_swap_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    let lip = common::sample("lip");
    // Leftovers of killed runs: a half-written staging folder of a process that is gone
    // (4194304 is above Linux's largest pid), and a stale lock file.
    let stale = dir.path().join(".idx.partial-4194304");
    std::fs::create_dir_all(stale.join("features")).unwrap();
    std::fs::write(stale.join("features/mean.npy"), vec![0u8; 4096]).unwrap();
    std::fs::write(dir.path().join(".idx.lock"), b"").unwrap();
    // And one of a live process (this test's), which must be left alone.
    let live = dir
        .path()
        .join(format!(".idx.partial-{}", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    let o = ingest_cmd(&lip, &out, &[]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("removed") && stderr(&o).contains("4194304"));
    assert!(!stale.exists() && live.exists());
    std::fs::remove_dir(&live).unwrap();
    assert_eq!(names(dir.path()), ["idx"]);

    // Second instance: a replace killed between its two renames (file systems without an
    // atomic exchange) left the old index as `.idx.old-PID` and no `idx`: it is put back.
    std::fs::rename(&out, dir.path().join(".idx.old-4194304")).unwrap();
    let o = ingest_cmd(&lip, &out, &[]).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "without --overwrite the restored index stays"
    );
    assert!(stderr(&o).contains("restored"), "{}", stderr(&o));
    assert!(IndexDir::open(&out).is_ok());
    assert_eq!(names(dir.path()), ["idx"]);
}

/// Flips the first value of `row` in `idx/features/<feature>.npy` to `v`.
fn poke(idx: &Path, feature: &str, row: usize, v: f32) {
    use std::io::{Seek, SeekFrom, Write};
    let p = common::seg0(idx).join(format!("features/{feature}.npy"));
    let m = partlens::store::NpyMatrix::open(&p).unwrap();
    let offset = 128 + (row * m.cols() * 4) as u64;
    drop(m);
    let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&v.to_le_bytes()).unwrap();
}

#[test]
fn damaged_feature_rows_are_reported_and_never_ranked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    let lip = common::sample("lip");
    assert!(ingest_cmd(&lip, &out, &["--min-area", "1"])
        .status()
        .unwrap()
        .success());
    // The issue's example: NaN in a stored row was ranked first with "score": null. Second
    // instance: +infinity.
    poke(&out, "mean", 0, f32::NAN);
    poke(&out, "mean", 3, f32::INFINITY);
    let image = lip.join("img/val/86_185913.jpg");
    for exact in [true, false] {
        let mut c = common::bin();
        c.args(["--device", "cpu", "query", "--json", "-k", "100", "--index"])
            .arg(&out)
            .arg("--image")
            .arg(&image);
        if exact {
            c.arg("--exact");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let hits: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let hits = hits.as_array().unwrap();
        assert!(hits.iter().all(|h| h["score"].is_number()), "{hits:?}");
        assert!(hits.iter().all(|h| h["id"] != 0 && h["id"] != 3));
        assert_eq!(hits.len(), 10, "12 regions, 2 damaged");
        if exact {
            assert!(stderr(&o).contains("2 stored mean rows"), "{}", stderr(&o));
        }
    }
    // `info` reports them and exits with 1; --verify also names the changed file.
    let o = common::bin()
        .args(["info", "--verify"])
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text.contains("damaged      2 rows of mean") && text.contains("0, 3"),
        "{text}"
    );
    assert!(
        text.contains("changed      segments/seg-000000/features/mean.npy"),
        "{text}"
    );
}

#[test]
fn a_healthy_index_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    assert!(ingest_cmd(&common::sample("lip"), &out, &[])
        .status()
        .unwrap()
        .success());
    let o = common::bin()
        .args(["info", "--verify"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("verified     7 files"), "{text}");
}

/// A small deterministic generator (the seed is printed so a failure can be replayed).
struct Lcg(u64);

impl Lcg {
    fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `out` is absent, or a complete index whose every file matches its recorded checksum.
fn absent_or_complete(out: &Path, ever_created: bool) -> bool {
    if !out.exists() {
        assert!(
            !ever_created,
            "{} vanished after it was created",
            out.display()
        );
        return false;
    }
    let idx = IndexDir::open(out).unwrap_or_else(|e| panic!("incomplete index: {e}"));
    assert_eq!(idx.verify().unwrap(), Vec::<String>::new());
    true
}

#[test]
fn kill_9_at_random_moments_never_leaves_a_half_index_or_orphans() {
    let seed = std::env::var("PARTLENS_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261130u64);
    println!("seed {seed} (replay with PARTLENS_KILL_SEED={seed})");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("idx");
    let pascal = common::sample("pascal_part");
    // How long one ingest takes here (warm: the second of two runs), to spread the kills
    // over all of it.
    let probe = dir.path().join("probe");
    let mut full = 0.0;
    for _ in 0..2 {
        let t = std::time::Instant::now();
        assert!(ingest_cmd(&pascal, &probe, &["--overwrite"])
            .status()
            .unwrap()
            .success());
        full = t.elapsed().as_secs_f64();
    }
    std::fs::remove_dir_all(&probe).unwrap();
    let mut ever = false;
    for round in 0..10 {
        let at = rng.next_f64() * full;
        let mut child = ingest_cmd(&pascal, &out, &["--overwrite"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_secs_f64(at));
        let _ = child.kill(); // SIGKILL
        let finished = child.wait().unwrap().success();
        println!("round {round}: killed at {at:.3} s of {full:.3} s (finished first: {finished})");
        ever |= absent_or_complete(&out, ever);
        // The rerun cleans up after the killed one and completes.
        let o = ingest_cmd(&pascal, &out, &["--overwrite"])
            .output()
            .unwrap();
        assert!(o.status.success(), "round {round}: {}", stderr(&o));
        ever |= absent_or_complete(&out, ever);
        assert_eq!(names(dir.path()), ["idx"], "round {round}: leftovers");
    }
}

#[test]
fn odd_targets_are_refused_without_touching_them() {
    let dir = tempfile::tempdir().unwrap();
    let lip = common::sample("lip");
    // A regular file named with a trailing slash: ENOTDIR is not "absent".
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, b"mine").unwrap();
    let o = ingest_cmd(
        &lip,
        Path::new(&format!("{}/", notes.display())),
        &["--overwrite"],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a folder"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&notes).unwrap(), b"mine");
    // A folder whose marker is a FIFO: refused at once (opening it would block forever).
    let fifo_dir = dir.path().join("fifo");
    std::fs::create_dir(&fifo_dir).unwrap();
    std::fs::write(fifo_dir.join("manifest.json"), b"{}").unwrap();
    let marker = fifo_dir.join(partlens::store::MARKER_FILE);
    assert!(Command::new("mkfifo")
        .arg(&marker)
        .status()
        .unwrap()
        .success());
    let t = std::time::Instant::now();
    let o = ingest_cmd(&lip, &fifo_dir, &["--overwrite"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(t.elapsed().as_secs() < 60);
    assert!(fifo_dir.join("manifest.json").exists());
    assert_eq!(names(dir.path()), ["fifo", "notes.txt"]);
}
