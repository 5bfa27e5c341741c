//! Crash safety of segmented ingest: `ingest` killed with SIGKILL at named moments (fault
//! injection, `PARTLENS_CRASH_AT`) and at random times, resumed each time with `--resume`,
//! ends with the same index as an uninterrupted run: no region lost, none twice, every vector
//! bit-identical. The same after a full disk (a small tmpfs; skipped where mounting is not
//! allowed).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use partlens::{Feature, IndexDir};

/// Regions per segment: the sample below gives 8 segments.
const SEGMENT: &str = "40";

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    dataset: PathBuf,
    reference: PathBuf,
    /// Wall time of the uninterrupted run.
    seconds: f64,
}

fn ingest(dataset: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = common::bin();
    c.args([
        "--device",
        "cpu",
        "--threads",
        "2",
        "-q",
        "ingest",
        "--dataset",
    ])
    .arg(dataset)
    .arg("--model")
    .arg(common::vit_tiny())
    .args(["--segment-size", SEGMENT, "--batch-size", "8", "--out"])
    .arg(out)
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let dataset = root.join("ds");
    let o = common::run(&[
        "synth",
        "--out",
        common::s(&dataset),
        "--images",
        "40",
        "--seed",
        "7",
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = root.join("reference");
    let t = Instant::now();
    let o = ingest(&dataset, &reference, &[]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Setup {
        _dir: dir,
        root,
        dataset,
        reference,
        seconds: t.elapsed().as_secs_f64(),
    }
}

/// The finished index at `got` equals `want`: the same segments, regions (every field) and
/// rows of every feature (raw and unit, bit for bit), the same counts and skipped inputs;
/// `partlens verify` passes; nothing is left beside it.
fn assert_same(want: &Path, got: &Path) {
    let (a, b) = (IndexDir::open(want).unwrap(), IndexDir::open(got).unwrap());
    let (ma, mb) = (a.manifest(), b.manifest());
    assert_eq!(ma.counts, mb.counts);
    assert_eq!(ma.skipped, mb.skipped);
    let seg = |m: &partlens::store::Manifest| -> Vec<_> {
        m.segments
            .iter()
            .map(|s| (s.name.clone(), s.first_id, s.counts.clone(), s.items))
            .collect()
    };
    assert_eq!(seg(ma), seg(mb));
    let (ra, rb) = (a.read_all_regions().unwrap(), b.read_all_regions().unwrap());
    assert_eq!(ra.len(), rb.len(), "lost or duplicated regions");
    assert_eq!(ra, rb);
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    for f in a.feature_names() {
        assert_eq!(
            bits(a.feature(f).unwrap().to_vec()),
            bits(b.feature(f).unwrap().to_vec())
        );
        assert_eq!(
            bits(a.unit(f).unwrap().to_vec()),
            bits(b.unit(f).unwrap().to_vec())
        );
    }
    let v = partlens::store::verify::verify(got).unwrap();
    assert!(v.ok(), "{:?}", v.segments);
    let name = got.file_name().unwrap().to_string_lossy();
    let left: Vec<String> = std::fs::read_dir(got.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{name}.")) && !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Queries answer the same.
    let q = a.feature(Feature::Mean).unwrap().row(3).to_vec();
    let opts = partlens::query::SearchOptions {
        exact: true,
        ..Default::default()
    };
    let search = |p: &Path| {
        partlens::query::QueryEngine::open(p, &common::cpu())
            .unwrap()
            .search_vector(&q, &opts)
            .unwrap()
            .iter()
            .map(|h| (h.id, h.score.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(search(want), search(got));
}

/// Runs `ingest --resume` to completion (no kill) and returns its exit status.
fn resume(s: &Setup, out: &Path) {
    let o = ingest(&s.dataset, out, &["--resume"]).output().unwrap();
    assert!(
        o.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn killed_ingest_resumes_to_the_same_index() {
    let s = setup();
    let mut kills = 0;
    // 1. At named moments: while writing a segment's files, after its graphs, between the
    //    manifest's temp file and its rename, after a commit, after sealing.
    let out = s.root.join("injected");
    let points = [
        "manifest-tmp:1",
        "segment-written:1",
        "graphs-built:1",
        "manifest-tmp:1",
        "committed:1",
        "segment-written:2",
        "graphs-built:3",
        "manifest-tmp:2",
        "committed:2",
        "sealed:1",
    ];
    for (i, p) in points.iter().enumerate() {
        let o = ingest(&s.dataset, &out, &["--resume"])
            .env("PARTLENS_CRASH_AT", p)
            .output()
            .unwrap();
        assert_eq!(
            o.status.signal(),
            Some(libc::SIGKILL),
            "{p}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        kills += 1;
        if i == 4 {
            // Without --resume, the waiting run is refused, naming --resume.
            let o = ingest(&s.dataset, &out, &[]).output().unwrap();
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && e.contains("--resume"), "{e}");
        }
    }
    resume(&s, &out);
    assert_same(&s.reference, &out);
    // A resume of the finished run does nothing and succeeds.
    resume(&s, &out);

    // 2. At random moments (seeded), through reading, embedding, writing, graphs, commits.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut episode = 0;
    while kills < 24 {
        episode += 1;
        let out = s.root.join(format!("random-{episode}"));
        loop {
            let mut child = ingest(&s.dataset, &out, &["--resume"]).spawn().unwrap();
            let wait = Duration::from_secs_f64(s.seconds * (0.1 + 0.8 * next()));
            let t = Instant::now();
            let mut finished = None;
            while t.elapsed() < wait {
                if let Some(st) = child.try_wait().unwrap() {
                    finished = Some(st);
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            match finished {
                Some(st) => {
                    assert!(st.success(), "episode {episode}: the run failed");
                    break;
                }
                None => {
                    child.kill().unwrap();
                    let st = child.wait().unwrap();
                    if st.signal() == Some(libc::SIGKILL) {
                        kills += 1;
                    } else {
                        assert!(st.success(), "episode {episode}: the run failed");
                        break;
                    }
                }
            }
        }
        resume(&s, &out);
        assert_same(&s.reference, &out);
    }
    println!(
        "{kills} SIGKILLs ({} at named moments, the rest at random times over {episode} \
         episodes), every resumed index equal to the uninterrupted one",
        points.len()
    );
}

/// Mounts a tmpfs of `kb` KiB at `at`; `false` where this machine does not allow it.
fn mount_tmpfs(at: &Path, kb: u64, remount: bool) -> bool {
    let mut c = Command::new("mount");
    c.args(["-t", "tmpfs", "-o"]);
    c.arg(if remount {
        format!("remount,size={kb}k")
    } else {
        format!("size={kb}k")
    });
    c.arg("tmpfs").arg(at);
    c.stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn a_full_disk_is_a_clear_error_and_resumes_after_space_is_freed() {
    let s = setup();
    let mnt = s.root.join("small");
    std::fs::create_dir(&mnt).unwrap();
    // About half of what the index needs on disk.
    let bytes: u64 = walk_bytes(&s.reference);
    let kb = (bytes / 2 / 1024).max(64);
    if !mount_tmpfs(&mnt, kb, false) {
        println!("SKIPPED: cannot mount a tmpfs here (needs root and mount permission)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let out = mnt.join("idx");
    let o = ingest(&s.dataset, &out, &[]).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "the run should fail on a {kb} KiB disk"
    );
    assert!(
        e.contains("No space left on device"),
        "not a clear error: {e}"
    );
    assert!(!out.exists(), "nothing is put at --out by a failed run");
    // What was committed before the disk filled is kept for --resume.
    let stage = mnt.join(".idx.ingest");
    let m = partlens::store::Manifest::read(&stage).unwrap();
    assert!(m.in_progress());
    println!(
        "full disk ({kb} KiB): {} segments committed before it filled; error: {}",
        m.segments.len(),
        e.lines().last().unwrap_or("")
    );
    // Space freed: the same mount, four times larger.
    assert!(mount_tmpfs(&mnt, kb * 4, true), "remount failed");
    resume(&s, &out);
    assert_same(&s.reference, &out);
}

fn walk_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk_bytes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}
