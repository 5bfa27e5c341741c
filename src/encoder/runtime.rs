//! Finding and loading the ONNX Runtime shared library (once per process).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// Environment variable that names the ONNX Runtime library (the same one `ort` reads).
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

static LOADED: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

fn find_in_site_packages(site: &Path) -> Option<PathBuf> {
    let capi = site.join("onnxruntime").join("capi");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so") || n == "onnxruntime.dll")
        })
        .collect();
    // Prefer the fully versioned file name (libonnxruntime.so.1.32.0).
    libs.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    libs.into_iter().next()
}

/// The library inside a virtual environment (`venv/lib/python3.*/site-packages/...`).
pub fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut pys: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    pys.sort();
    pys.iter()
        .find_map(|py| find_in_site_packages(&py.join("site-packages")))
}

fn find_via_python() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, onnxruntime; print(os.path.dirname(os.path.dirname(onnxruntime.__file__)))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let site = String::from_utf8(out.stdout).ok()?;
    find_in_site_packages(Path::new(site.trim()))
}

/// Resolves the ONNX Runtime library: `flag` (e.g. `--ort-lib`), then `ORT_DYLIB_PATH`, then the
/// install made by `partlens setup`, then an importable Python `onnxruntime`. The error lists what
/// was tried and the command that fixes it; a flag or variable naming a missing file is an error
/// of its own.
pub fn resolve_library(flag: Option<&Path>) -> Result<PathBuf> {
    // An explicit choice that does not exist is an error, not a reason to load another library.
    if let Some(p) = flag {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        return Err(Error::Runtime(format!(
            "--ort-lib {}: no such file. Run `partlens setup` and drop the flag, or point it at \
             a libonnxruntime.so",
            p.display()
        )));
    }
    let mut tried = Vec::new();
    match std::env::var_os(ORT_DYLIB_ENV) {
        Some(p) if Path::new(&p).is_file() => return Ok(PathBuf::from(p)),
        Some(p) => {
            return Err(Error::Runtime(format!(
                "{ORT_DYLIB_ENV}={}: no such file. Unset it to use the library `partlens setup` \
                 installs, or point it at a libonnxruntime.so",
                Path::new(&p).display()
            )))
        }
        None => tried.push(format!("{ORT_DYLIB_ENV} (not set)")),
    }
    let venv = crate::setup::data_dir().join("venv");
    if let Some(p) = find_in_venv(&venv) {
        return Ok(p);
    }
    tried.push(format!(
        "{} (no onnxruntime installed there)",
        venv.display()
    ));
    if let Some(p) = find_via_python() {
        return Ok(p);
    }
    tried.push("python3 -c 'import onnxruntime' (not importable)".into());
    Err(Error::Runtime(format!(
        "no ONNX Runtime library found; tried: {}. Fix: run `partlens setup` (installs onnxruntime {} \
         from PyPI into {}), or pass --ort-lib /path/to/libonnxruntime.so",
        tried.join("; "),
        crate::setup::ONNXRUNTIME_VERSION,
        crate::setup::data_dir().display()
    )))
}

/// Loads ONNX Runtime from `lib` (first call) and returns the process-wide environment. Later
/// calls must name the same library: one process cannot hold two runtimes.
pub fn environment(lib: &Path) -> Result<&'static ort::environment::Environment> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((loaded, env)) = LOADED.get() {
        if loaded != lib {
            tracing::warn!(
                "ONNX Runtime already loaded from {}; ignoring {}",
                loaded.display(),
                lib.display()
            );
        }
        return Ok(env);
    }
    let builder = ort::init_from(lib).map_err(|e| {
        Error::Runtime(format!(
            "cannot load {}: {e}. Run `partlens setup` or pass --ort-lib",
            lib.display()
        ))
    })?;
    let env = builder
        .with_name("partlens")
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start {}: {e}", lib.display())))?;
    tracing::info!("ONNX Runtime loaded from {}", lib.display());
    let _ = LOADED.set((lib.to_path_buf(), env));
    Ok(&LOADED.get().expect("just set").1)
}
