//! `examples/ray_ingest.py` on a local Ray instance: three `ingest --shard i/3` tasks and a
//! merge give the index a single-process ingest gives, region for region and bit for bit.
//!
//! Ray comes from PyPI into its own virtual environment, `<data dir>/ray-venv` (beside setup's
//! `venv`; ~300 MB, ~15 s to install), made on first use under a lock. `$PARTLENS_RAY_PYTHON`
//! names a Python that already has Ray instead. Where Ray cannot be installed (no network, no
//! wheel for this Python) the test prints `SKIPPED: ray could not be installed: <reason>` and
//! passes, unless `$PARTLENS_REQUIRE_RAY` is set.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::s;
use partlens::setup;
use partlens::{IndexDir, Region};
use sha2::{Digest, Sha256};

/// What the example needs: `ray.init(address="local")`, `retry_exceptions` as a list.
const RAY_REQUIREMENT: &str = "ray>=2.10";

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd`; `Err` names `what` and carries the end of its output.
fn run(cmd: &mut Command, what: &str) -> Result<Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            tail(&out.stdout, 10),
            tail(&out.stderr, 20)
        ))
    }
}

/// The version of Ray `python` imports, or why it imports none.
fn ray_version(python: &Path) -> Result<String, String> {
    let out = run(
        Command::new(python).args(["-c", "import ray; print(ray.__version__)"]),
        &format!("{} -c 'import ray'", python.display()),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A Python that imports Ray: `$PARTLENS_RAY_PYTHON`, else the test's own virtual environment,
/// created (`python3 -m venv` + `pip install ray`) on first use. Serialised by a lock file, so
/// concurrent test runs install once.
fn ray_python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PARTLENS_RAY_PYTHON") {
        let p = PathBuf::from(p);
        ray_version(&p)?;
        return Ok(p);
    }
    let data = setup::data_dir();
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let venv = data.join("ray-venv");
    let python = venv.join("bin").join("python");
    let ready = venv.join("partlens-ready");
    let lock_path = data.join("ray-venv.lock");
    let lock = std::fs::File::create(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    let res = (|| {
        if ready.is_file() && ray_version(&python).is_ok() {
            return Ok(python.clone());
        }
        // A half-made environment (an interrupted install) is made again from scratch.
        if venv.exists() {
            std::fs::remove_dir_all(&venv).map_err(|e| format!("{}: {e}", venv.display()))?;
        }
        let system = std::env::var("PARTLENS_PYTHON").unwrap_or_else(|_| "python3".into());
        let started = Instant::now();
        eprintln!(
            "ray_ingest: installing {RAY_REQUIREMENT} from PyPI into {} (once)",
            venv.display()
        );
        run(
            Command::new(&system).args(["-m", "venv"]).arg(&venv),
            &format!("{system} -m venv"),
        )?;
        run(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "--retries",
                "2",
                "--timeout",
                "30",
                RAY_REQUIREMENT,
            ]),
            &format!("pip install {RAY_REQUIREMENT}"),
        )?;
        let version = ray_version(&python)?;
        std::fs::write(&ready, format!("ray {version}\n"))
            .map_err(|e| format!("{}: {e}", ready.display()))?;
        eprintln!(
            "ray_ingest: ray {version} installed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(python.clone())
    })();
    let _ = lock.unlock();
    res
}

/// Runs `cmd`, killing it after `limit`; its output.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; pid is our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "{cmd:?} ran past {limit:?}:\n{}\n{}",
                tail(&out.stdout, 20),
                tail(&out.stderr, 40)
            );
        }
    }
}

/// What identifies a region independently of its id.
type Key = (String, &'static str, String, u32, [i64; 4]);

fn key(r: &Region) -> Key {
    (
        r.image.clone(),
        r.kind.as_str(),
        r.label_name.clone(),
        r.instance,
        r.bbox.to_array(),
    )
}

/// Regions by key, each key once.
fn by_key(regions: Vec<Region>, what: &str) -> BTreeMap<Key, Region> {
    let n = regions.len();
    let map: BTreeMap<Key, Region> = regions.into_iter().map(|r| (key(&r), r)).collect();
    assert_eq!(map.len(), n, "{what}: two regions share a key");
    map
}

/// `merged` holds exactly `single`'s regions (ids aside) with bit-identical rows of every
/// feature.
fn assert_same_index(single: &IndexDir, merged: &IndexDir) {
    assert_eq!(merged.len(), single.len(), "region counts differ");
    let (ms, mm) = (single.manifest(), merged.manifest());
    assert_eq!(
        (mm.counts.parts, mm.counts.objects, mm.counts.images),
        (ms.counts.parts, ms.counts.objects, ms.counts.images)
    );
    let features = single.feature_names();
    assert!(!features.is_empty());
    assert_eq!(merged.feature_names(), features);

    let a = by_key(single.read_all_regions().unwrap(), "single");
    let b = by_key(merged.read_all_regions().unwrap(), "merged");
    let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).take(5).collect();
    let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).take(5).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "regions of the single-process index missing from the merged one: {only_a:?}; \
         regions only in the merged one: {only_b:?}"
    );
    let mut ids: Vec<u64> = b.values().map(|r| r.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..b.len() as u64).collect::<Vec<_>>());

    for f in features {
        let (ra, rb) = (single.feature(f).unwrap(), merged.feature(f).unwrap());
        assert_eq!((ra.len(), ra.dim()), (rb.len(), rb.dim()), "{f} shape");
        for (k, x) in &a {
            let y = &b[k];
            let (va, vb) = (ra.row(x.id as usize), rb.row(y.id as usize));
            let differ = va
                .iter()
                .zip(vb)
                .filter(|(p, q)| p.to_bits() != q.to_bits())
                .count();
            assert_eq!(
                differ,
                0,
                "{f} of {k:?} (single id {}, merged id {}): {differ} of {} values differ",
                x.id,
                y.id,
                va.len()
            );
        }
    }
    for (k, x) in &a {
        let y = &b[k];
        assert_eq!(
            Region {
                id: y.id,
                ..x.clone()
            },
            *y,
            "metadata of {k:?} differs"
        );
    }
}

#[test]
fn ray_shards_and_merge_equal_a_single_process_ingest() {
    let python = match ray_python() {
        Ok(p) => p,
        Err(why) if std::env::var_os("PARTLENS_REQUIRE_RAY").is_some() => {
            panic!("ray could not be installed (PARTLENS_REQUIRE_RAY is set): {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: ray could not be installed: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth");
    let single = dir.path().join("single");
    let merged = dir.path().join("merged");
    let o = common::run(&[
        "synth",
        "--out",
        s(&data),
        "--images",
        "12",
        "--seed",
        "5",
        "--size",
        "128",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // One intra-op thread on both sides, as two shard tasks share two CPUs (the rows do not
    // depend on the thread count or on which images share a batch, but a test need not rely on
    // that to check the sharding).
    let flags = ["--device", "cpu", "--threads", "1"];
    common::ingest_json(&data, &flags[2..], &single);

    let ray_tmp = dir.path().join("r"); // short: Ray's socket paths must fit in 107 bytes
    std::fs::create_dir(&ray_tmp).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ray_ingest.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&example)
        .args(["--partlens", env!("CARGO_BIN_EXE_partlens")])
        .args(["--dataset", s(&data), "--out", s(&merged)])
        .args(["--shards", "3", "--num-cpus", "2", "--address", "local"])
        .args(["--extra-args", &flags.join(" ")])
        .env_remove("RAY_ADDRESS")
        .env("RAY_USAGE_STATS_ENABLED", "0")
        // Ray's session files and logs (/tmp/ray by default) go away with the test's folder.
        .env("RAY_TMPDIR", &ray_tmp);
    let started = Instant::now();
    let out = output_within(cmd, Duration::from_secs(300));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "ray_ingest.py ran in {:.1} s:\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "ray_ingest.py failed ({}):\n{}\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "summary is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    let single = IndexDir::open(&single).unwrap();
    let merged_idx = IndexDir::open(&merged).unwrap();
    assert_same_index(&single, &merged_idx);

    // Each shard took the images whose path hashes to it (SHA-256, first 8 bytes little-endian,
    // mod 3). These 12 images fall into shards 0 and 2 only, so shard 1 is the empty shard the
    // example leaves out of the merge.
    let mut want = [0u64; 3];
    for r in single.read_all_regions().unwrap() {
        let h = Sha256::digest(r.image.as_bytes());
        want[(u64::from_le_bytes(h[..8].try_into().unwrap()) % 3) as usize] += 1;
    }
    let per_shard: Vec<u64> = serde_json::from_value(summary["shard_regions"].clone()).unwrap();
    assert_eq!(per_shard, want, "regions per shard: {summary}");
    let empty: Vec<usize> = (0..3).filter(|&i| want[i] == 0).collect();
    assert_eq!(summary["empty_shards"], serde_json::json!(empty));
    assert_eq!(summary["regions"], single.len());
    assert_eq!(summary["shards"], 3);
    // The shard folders are gone (no --keep-shards).
    assert!(!dir.path().join("merged.shards").exists());
    // The merged index passes its own checksum verification.
    common::json(&["info", s(&merged), "--verify", "--json"]);
}
