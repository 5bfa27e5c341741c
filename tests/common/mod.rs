//! Shared test helpers: the setup step (ONNX Runtime + default models, installed once per
//! machine under a lock), the bundled samples, and small file builders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use partlens::setup::{self, SetupOptions};
use partlens::{Device, EncoderOptions};

/// Runs `partlens setup --test-tools` once per test binary.
pub fn ensure_setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        setup::ensure(&SetupOptions {
            test_tools: true,
            force: false,
        })
        .expect("partlens setup failed");
    });
}

/// CPU encoder options with two intra-op threads (the CI machine has two cores).
pub fn cpu() -> EncoderOptions {
    ensure_setup();
    EncoderOptions {
        device: Device::Cpu,
        intra_threads: Some(2),
        ..EncoderOptions::default()
    }
}

/// The default MobileNetV2 encoder.
pub fn mobilenet() -> PathBuf {
    ensure_setup();
    setup::default_model_path()
}

/// The tiny random-weight ViT.
pub fn vit_tiny() -> PathBuf {
    ensure_setup();
    setup::vit_tiny_path()
}

/// A bundled sample dataset (`pascal_part` or `lip`).
pub fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/samples")
        .join(name)
}

/// The Python of setup's virtual environment.
pub fn python() -> PathBuf {
    ensure_setup();
    setup::venv_python()
}

/// Runs setup's Python with `args` in the repository root (so `scripts/…` paths work);
/// panics with its output on failure, else returns stdout and stderr together.
pub fn python_ok<A: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[A]) -> String {
    let out = std::process::Command::new(python())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("cannot start python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?} failed:\n{text}");
    text
}

/// Runs a Python script from tests/python with arguments; panics with its output on failure.
pub fn run_python(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = std::process::Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .expect("cannot start python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies a dataset folder recursively (so tests can damage the copy).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// The `partlens` binary built for this test run.
pub fn bin() -> std::process::Command {
    ensure_setup();
    std::process::Command::new(env!("CARGO_BIN_EXE_partlens"))
}

/// Runs `partlens --device cpu ingest --json --dataset DATASET [FLAGS] --out OUT`, asserts it
/// succeeded, and returns its JSON report (`{"manifest": …}`).
pub fn ingest_json(dataset: &Path, flags: &[&str], out: &Path) -> serde_json::Value {
    let o = bin()
        .args(["--device", "cpu", "ingest", "--json", "--dataset"])
        .arg(dataset)
        .args(flags)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}: {}",
        dataset.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Runs `partlens ARGS` and returns its output.
pub fn run(args: &[&str]) -> std::process::Output {
    bin().args(args).output().unwrap()
}

/// Runs `partlens ARGS`, asserts it succeeded, and parses its stdout as JSON.
pub fn json(args: &[&str]) -> serde_json::Value {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Runs `partlens ARGS`, asserts it failed, and returns its stderr.
pub fn err(args: &[&str]) -> String {
    let o = run(args);
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path as the `&str` argument it is passed as.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A running `partlens serve` on an ephemeral loopback port (`args` add the indexes and
/// settings); killed when dropped, `stop` sends SIGTERM first.
pub struct Server {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base: String,
}

impl Server {
    /// Starts the server and waits for the address it prints.
    pub fn start(args: &[&str]) -> Server {
        let mut child = bin()
            .args(["--device", "cpu", "-q", "serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .trim_end_matches('/')
            .to_string();
        Server { child, base }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The folder of an index's first segment (an index of default segment size has one).
pub fn seg0(index: &Path) -> PathBuf {
    index.join("segments/seg-000000")
}
