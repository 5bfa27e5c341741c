//! `--precision`: which file of an fp32/fp16 pair to load, and the checks that keep the pair
//! honest (the fp16 file must have been made from this fp32 file, and fp16 runs only on CUDA).

use std::path::{Path, PathBuf};

use super::{sha256_file, Device, ModelSpec, Precision};
use crate::error::{Error, Result};

/// Suffix of an fp16 model's file name (`scripts/models/fp16.py` writes `X.fp16.onnx` for
/// `X.onnx`).
pub const FP16_SUFFIX: &str = ".fp16.onnx";

/// The fp16 twin's path of the fp32 model `path`: `X.onnx` → `X.fp16.onnx`.
pub fn fp16_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".onnx").unwrap_or(&name);
    path.with_file_name(format!("{stem}{FP16_SUFFIX}"))
}

fn is_fp16_name(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(FP16_SUFFIX))
}

/// What to load for `path` at `want`: the file, its precision, and (for an fp16 twin found
/// from an fp32 path) the fp32 file it must have been made from.
pub(super) struct Choice {
    pub(super) path: PathBuf,
    pub(super) precision: Precision,
    pub(super) made_from: Option<PathBuf>,
}

/// Chooses the file for `path` at `want` on `device`; refuses fp16 on the CPU.
pub(super) fn choose(path: &Path, want: Option<Precision>, device: Device) -> Result<Choice> {
    let own = if is_fp16_name(path) {
        Precision::Fp16
    } else {
        Precision::Fp32
    };
    let precision = want.unwrap_or(own);
    if precision == Precision::Fp16 && device == Device::Cpu {
        return Err(Error::InvalidArgument(format!(
            "fp16 runs only on CUDA (--device cuda){}: ONNX Runtime's CPU provider lacks \
             float16 kernels for most operators. On CPU use --precision fp32{}",
            if want.is_some() {
                ""
            } else {
                ", and this model is fp16"
            },
            if own == Precision::Fp16 {
                " (the fp16 model's fp32 twin is then loaded)"
            } else {
                ""
            }
        )));
    }
    let choice = match (own, precision) {
        (a, b) if a == b => Choice {
            path: path.to_path_buf(),
            precision,
            made_from: None,
        },
        (Precision::Fp32, _) => {
            let twin = fp16_path(path);
            if !twin.is_file() {
                return Err(Error::model(
                    path,
                    format!(
                        "--precision fp16: no fp16 variant {} beside it. Write it with \
                         `python scripts/models/fp16.py {}` (`partlens setup` writes the \
                         default model's)",
                        twin.display(),
                        path.display()
                    ),
                ));
            }
            Choice {
                path: twin,
                precision,
                made_from: Some(path.to_path_buf()),
            }
        }
        (Precision::Fp16, _) => {
            // The fp32 twin is read from the fp16 model's spec once it is loaded; here only
            // the name is known.
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let twin = path.with_file_name(format!(
                "{}.onnx",
                name.strip_suffix(FP16_SUFFIX).unwrap_or(&name)
            ));
            if !twin.is_file() {
                return Err(Error::model(
                    path,
                    format!(
                        "--precision fp32: this is an fp16 model and its fp32 twin {} is \
                         missing",
                        twin.display()
                    ),
                ));
            }
            Choice {
                path: twin,
                precision,
                made_from: None,
            }
        }
    };
    Ok(choice)
}

/// Checks a loaded model's spec against the choice: the precision its name promised, and for
/// an fp16 twin, that it was made from the fp32 file it stands for.
pub(super) fn check(choice: &Choice, spec: &ModelSpec) -> Result<()> {
    if spec.precision != choice.precision {
        return Err(Error::model(
            &choice.path,
            format!(
                "its spec says precision {} but it was loaded as {} (files named *{FP16_SUFFIX} \
                 must be written by scripts/models/fp16.py)",
                spec.precision.as_str(),
                choice.precision.as_str()
            ),
        ));
    }
    if let (Some(src), Some(twin)) = (&choice.made_from, &spec.fp32) {
        let sha = sha256_file(src)?;
        if sha != twin.sha256 {
            return Err(Error::model(
                &choice.path,
                format!(
                    "was made from another model than {} (sha256 {}… ≠ {}…); rewrite it with \
                     `python scripts/models/fp16.py {}`",
                    src.display(),
                    &twin.sha256[..12.min(twin.sha256.len())],
                    &sha[..12],
                    src.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The SHA-256 of the fp32 model behind `spec` / `sha256`: the model's own for fp32, its
/// twin's for fp16. Indexes built by either twin are queried by either.
pub fn fp32_sha256<'a>(spec: &'a ModelSpec, sha256: &'a str) -> &'a str {
    match (&spec.precision, &spec.fp32) {
        (Precision::Fp16, Some(t)) => &t.sha256,
        _ => sha256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(precision: &str, fp32_sha: Option<&str>) -> ModelSpec {
        let twin = fp32_sha.map_or(String::new(), |s| {
            format!(r#","fp32":{{"file":"m.onnx","sha256":"{s}"}}"#)
        });
        let json = format!(
            r#"{{"spec_version":1,"name":"m","input":"x","input_size":[8,8],
                "mean":[0,0,0],"std":[1,1,1],"outputs":{{"pooled":"p"}},
                "precision":"{precision}"{twin}}}"#
        );
        ModelSpec::from_json(&json, Path::new("m.onnx"), "test").unwrap()
    }

    #[test]
    fn twins_resolve_both_ways_and_a_stale_fp16_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fp32 = dir.path().join("m.onnx");
        std::fs::write(&fp32, b"fp32 weights").unwrap();
        let e = choose(&fp32, Some(Precision::Fp16), Device::Cuda)
            .err()
            .unwrap();
        assert!(e.to_string().contains("m.fp16.onnx"), "{e}");
        let fp16 = fp16_path(&fp32);
        assert_eq!(fp16.file_name().unwrap(), "m.fp16.onnx");
        std::fs::write(&fp16, b"fp16 weights").unwrap();

        let c = choose(&fp32, Some(Precision::Fp16), Device::Cuda).unwrap();
        assert_eq!(
            (c.path.as_path(), c.precision),
            (fp16.as_path(), Precision::Fp16)
        );
        let sha = sha256_file(&fp32).unwrap();
        check(&c, &spec("fp16", Some(&sha))).unwrap();
        let stale = check(&c, &spec("fp16", Some(&"0".repeat(64)))).unwrap_err();
        assert!(
            stale.to_string().contains("made from another model"),
            "{stale}"
        );
        // A file named fp16 whose spec says fp32 is refused.
        let wrong = check(&c, &spec("fp32", None)).unwrap_err();
        assert!(wrong.to_string().contains("precision fp32"), "{wrong}");

        let back = choose(&fp16, Some(Precision::Fp32), Device::Cpu).unwrap();
        assert_eq!(back.path, fp32);
        assert_eq!(
            choose(&fp16, None, Device::Cuda).unwrap().precision,
            Precision::Fp16
        );
        assert!(choose(&fp16, None, Device::Cpu).is_err());
        assert!(choose(&fp32, Some(Precision::Fp16), Device::Cpu).is_err());
        assert_eq!(fp32_sha256(&spec("fp16", Some("abc")), "own"), "abc");
        assert_eq!(fp32_sha256(&spec("fp32", None), "own"), "own");
        // An fp16 spec must name its fp32 model.
        let json = r#"{"spec_version":1,"name":"m","input":"x","input_size":[8,8],
            "mean":[0,0,0],"std":[1,1,1],"outputs":{"pooled":"p"},"precision":"fp16"}"#;
        assert!(ModelSpec::from_json(json, Path::new("m.onnx"), "test").is_err());
    }
}
