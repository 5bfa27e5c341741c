//! A model's spec: how to feed it and which outputs mean what. Stored inside the ONNX file
//! (`metadata_props["partlens.spec"]`), optionally overridden by a JSON sidecar.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Metadata key under which the spec JSON lives in the ONNX file.
pub const SPEC_KEY: &str = "partlens.spec";

/// Largest input side accepted, in pixels: one 4096² float32 image is 200 MB already.
pub const MAX_INPUT_SIDE: usize = 4096;

/// Which graph outputs carry which feature. Unnamed outputs are not produced by the model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecOutputs {
    /// Class token after the final norm, `[B, D]`.
    #[serde(default)]
    pub cls: Option<String>,
    /// Patch tokens after the final norm, `[B, N, D]`.
    #[serde(default)]
    pub patch_tokens: Option<String>,
    /// A CNN's last feature map, `[B, C, h, w]`.
    #[serde(default)]
    pub feature_map: Option<String>,
    /// The pretraining projection head's output, `[B, P]` (MoCo v3, DINO, iBOT).
    #[serde(default)]
    pub projection: Option<String>,
    /// The model's own mean of patch tokens / global average pool, `[B, D]`; when absent the
    /// mean is computed from `patch_tokens` or `feature_map`.
    #[serde(default)]
    pub pooled: Option<String>,
}

impl SpecOutputs {
    /// Every output the spec names, in a fixed order (cls, patch tokens, feature map,
    /// projection, pooled).
    pub fn named(&self) -> impl Iterator<Item = &String> {
        [
            &self.cls,
            &self.patch_tokens,
            &self.feature_map,
            &self.projection,
            &self.pooled,
        ]
        .into_iter()
        .flatten()
    }

    /// The outputs needed for the features: the token grid is skipped when `pooled` gives the
    /// mean already (it is the largest output to copy off a GPU).
    pub fn for_features(&self) -> Vec<String> {
        let mut v: Vec<String> = [&self.cls, &self.projection]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        match &self.pooled {
            Some(p) => v.push(p.clone()),
            None => v.extend(
                [&self.patch_tokens, &self.feature_map]
                    .into_iter()
                    .flatten()
                    .cloned(),
            ),
        }
        v
    }
}

/// Everything partlens needs to know to run a model faithfully.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Version of this spec format (1).
    pub spec_version: u32,
    /// A human name, e.g. `mobilenet_v2_imagenet`, `dino_vitb16`.
    pub name: String,
    /// Name of the image input, float32 `[B, 3, H, W]`.
    pub input: String,
    /// `[H, W]` in pixels.
    pub input_size: [usize; 2],
    /// Per-channel mean (RGB), after scaling pixels to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
    /// Resize interpolation; only `bicubic` (the paper's) is implemented.
    #[serde(default = "bicubic")]
    pub interpolation: String,
    /// Output roles.
    pub outputs: SpecOutputs,
    /// Patch size in pixels, for ViTs.
    #[serde(default)]
    pub patch_size: Option<usize>,
    /// The pretraining method the weights come from (`deit`, `mocov3`, `dino`, `beit`, `mae`,
    /// `cae`, `ibot`), as `scripts/models/vit.py --method` records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The precision the model computes in (`scripts/models/fp16.py` writes `fp16`).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
    /// For an fp16 model: the fp32 model it was made from (its twin for CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp32: Option<Twin>,
}

/// The numeric precision a model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 weights and compute.
    #[default]
    Fp32,
    /// float16 weights and compute, float32 input and outputs (CUDA only).
    Fp16,
}

impl Precision {
    /// Every choice.
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Fp16];

    /// `fp32` or `fp16`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
        }
    }

    fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }
}

/// The fp32 model an fp16 one was converted from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Twin {
    /// Its file name (in the fp16 model's folder).
    pub file: String,
    /// Its SHA-256.
    pub sha256: String,
}

fn bicubic() -> String {
    "bicubic".into()
}

impl ModelSpec {
    /// Parses and checks a spec; `origin` names where it came from in errors.
    pub fn from_json(json: &str, model: &Path, origin: &str) -> Result<ModelSpec> {
        let spec: ModelSpec = serde_json::from_str(json)
            .map_err(|e| Error::model(model, format!("invalid spec in {origin}: {e}")))?;
        spec.check(model)?;
        Ok(spec)
    }

    /// Checks every value that sizes an allocation or a computation; `model` names the file
    /// in errors. Specs read back from a manifest are checked again.
    pub fn check(&self, model: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::model(model, m));
        if self.spec_version != 1 {
            return bad(format!(
                "spec_version {} is not supported (this partlens reads 1)",
                self.spec_version
            ));
        }
        if self.interpolation != "bicubic" {
            return bad(format!(
                "interpolation {:?} is not supported; use \"bicubic\"",
                self.interpolation
            ));
        }
        if self
            .input_size
            .iter()
            .any(|&s| s == 0 || s > MAX_INPUT_SIDE)
        {
            return bad(format!(
                "input_size {:?} must be between 1 and {MAX_INPUT_SIDE} pixels per side",
                self.input_size
            ));
        }
        if self
            .patch_size
            .is_some_and(|p| p == 0 || p > MAX_INPUT_SIDE)
        {
            return bad("patch_size must be between 1 and the input size".into());
        }
        if self.std.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return bad("std must be positive and finite".into());
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return bad("mean must be finite".into());
        }
        if self.precision == Precision::Fp16 && self.fp32.is_none() {
            return bad(
                "an fp16 spec must name its fp32 model (\"fp32\": {file, sha256}); \
                 write fp16 models with scripts/models/fp16.py"
                    .into(),
            );
        }
        let o = &self.outputs;
        if o.pooled.is_none() && o.patch_tokens.is_none() && o.feature_map.is_none() {
            return bad(
                "spec names none of pooled, patch_tokens, feature_map: no mean feature".into(),
            );
        }
        Ok(())
    }

    /// The sidecar file that overrides the embedded spec: `model.onnx` → `model.spec.json`.
    pub fn sidecar_path(model: &Path) -> PathBuf {
        model.with_extension("spec.json")
    }
}
