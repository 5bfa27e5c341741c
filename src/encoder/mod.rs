//! Running an ONNX encoder over batches of region tensors and reading the paper's features
//! (`mean`, `cls`, `projection`) out of it.

pub mod precision;
pub mod runtime;
mod session;
pub mod spec;
pub mod throughput;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ort::session::Session;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::preprocess::Preprocessor;
use session::{build_session, session_count, Sessions};
pub use session::{DEFAULT_CUDA_SESSIONS, MAX_SESSIONS};
pub use spec::{ModelSpec, Precision, SpecOutputs};

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU execution provider.
    Cpu,
    /// CUDA; fails with [`Error::Device`] when CUDA cannot be used (never a silent CPU fallback).
    Cuda,
    /// CUDA when it works, otherwise CPU; logs which one runs.
    #[default]
    Auto,
}

impl Device {
    /// Every choice.
    pub const ALL: [Device; 3] = [Device::Cpu, Device::Cuda, Device::Auto];

    /// `cpu`, `cuda` or `auto`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Auto => "auto",
        }
    }
}

/// Most intra-op threads accepted, as a multiple of the machine's cores: beyond a few per
/// core, threads only add memory (each has its own stack and arena) and contention.
pub const MAX_THREADS_PER_CORE: usize = 4;

/// One of the paper's per-region features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Feature {
    /// Mean of the patch tokens after the final norm (CNNs: global average of the feature map).
    Mean,
    /// The class token after the final norm.
    Cls,
    /// The output of the pretraining projection head.
    Projection,
}

impl Feature {
    /// All features, in storage order.
    pub const ALL: [Feature; 3] = [Feature::Mean, Feature::Cls, Feature::Projection];

    /// `mean`, `cls` or `projection` (file and column names).
    pub fn as_str(&self) -> &'static str {
        match self {
            Feature::Mean => "mean",
            Feature::Cls => "cls",
            Feature::Projection => "projection",
        }
    }

    /// Parses a feature name.
    pub fn parse(s: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to load an encoder.
#[derive(Debug, Clone, Default)]
pub struct EncoderOptions {
    /// ONNX Runtime library to load (see [`runtime::resolve_library`] for the search order).
    pub ort_lib: Option<PathBuf>,
    /// Execution provider.
    pub device: Device,
    /// Intra-op threads for ONNX Runtime; `None` lets it use every core.
    pub intra_threads: Option<usize>,
    /// A spec JSON file that replaces the one embedded in the model.
    pub spec_file: Option<PathBuf>,
    /// The precision to run in; `None` is the model file's own (`*.fp16.onnx` is fp16). fp16
    /// runs only on CUDA: an fp32 model `X.onnx` is run as its twin `X.fp16.onnx` (written by
    /// `scripts/models/fp16.py`), and an fp16 model as the fp32 model it was made from.
    pub precision: Option<Precision>,
}

/// Features of a batch: for each feature the model has, `n × dim` floats, row-major.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// Number of rows.
    pub n: usize,
    /// Row-major `n × dim` values per feature.
    pub values: BTreeMap<Feature, Vec<f32>>,
}

/// The patch grid a model produces for one input: its patch tokens (ViT) or last feature map
/// (CNN) as `rows × cols` cells of `dim` values, each cell covering `cell × cell` input pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrid {
    /// Cells per column of the input.
    pub rows: usize,
    /// Cells per row of the input.
    pub cols: usize,
    /// Values per cell.
    pub dim: usize,
    /// Input pixels per cell side (the patch size, or the feature map's stride).
    pub cell: usize,
    /// Which output the grid comes from: `patch_tokens` or `feature_map`.
    pub source: GridSource,
}

/// Where a model's token grid comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GridSource {
    /// A ViT's patch tokens, `[B, N, D]`, raster order.
    PatchTokens,
    /// A CNN's feature map, `[B, C, h, w]`.
    FeatureMap,
}

impl TokenGrid {
    /// Cells per input (`rows × cols`).
    pub fn tokens(&self) -> usize {
        self.rows * self.cols
    }
}

/// A loaded, validated encoder.
pub struct Encoder {
    path: PathBuf,
    sha256: String,
    spec: ModelSpec,
    provider: &'static str,
    dims: BTreeMap<Feature, usize>,
    /// The batch size the graph is fixed to, if its batch dimension is not dynamic.
    fixed_batch: Option<usize>,
    /// The token grid, or why the model has none usable.
    grid: std::result::Result<TokenGrid, String>,
    sessions: Sessions,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("path", &self.path)
            .field("spec", &self.spec)
            .field("provider", &self.provider)
            .field("dims", &self.dims)
            .finish()
    }
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = crate::files::open_regular(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).at(path)?;
    Ok(format!("{:x}", h.finalize()))
}

fn read_spec(session: &Session, path: &Path, opts: &EncoderOptions) -> Result<ModelSpec> {
    let sidecar = opts
        .spec_file
        .clone()
        .unwrap_or_else(|| ModelSpec::sidecar_path(path));
    if sidecar.is_file() {
        let text = crate::files::read_text_limited(&sidecar, crate::files::MAX_ANNOTATION_BYTES)?;
        return ModelSpec::from_json(&text, path, &sidecar.display().to_string());
    }
    if let Some(p) = &opts.spec_file {
        return Err(Error::io(
            p,
            std::io::Error::new(std::io::ErrorKind::NotFound, "spec file not found"),
        ));
    }
    let meta = session.metadata()?;
    match meta.custom(spec::SPEC_KEY) {
        Some(json) => ModelSpec::from_json(&json, path, "its metadata"),
        None => Err(Error::model(
            path,
            format!(
                "no partlens spec: the ONNX metadata has no {:?} entry and there is no sidecar {}. \
                 Convert the model with scripts/models/*.py or write the sidecar (see README)",
                spec::SPEC_KEY,
                sidecar.display()
            ),
        )),
    }
}

/// Feeds `pixels` (`tlen` floats per input) to `run` in batches of exactly `b` inputs, as a
/// model exported with a fixed batch size needs: the last batch is zero-padded (a copy; full
/// batches are passed in place), and `run` is told how many of its inputs are real.
fn in_fixed_batches(
    pixels: &[f32],
    tlen: usize,
    b: usize,
    mut run: impl FnMut(&[f32], usize) -> Result<()>,
) -> Result<()> {
    let mut padded = Vec::new();
    for chunk in pixels.chunks(b * tlen) {
        let m = chunk.len() / tlen;
        let input = if m == b {
            chunk
        } else {
            padded.clear();
            padded.extend_from_slice(chunk);
            padded.resize(b * tlen, 0.0);
            &padded[..]
        };
        run(input, m)?;
    }
    Ok(())
}

impl Encoder {
    /// Loads `path`, reads its spec, builds a session on the requested device and validates the
    /// graph against the spec with one dry run. Refuses with [`Error::Model`] naming the tensor
    /// and shapes when they disagree.
    pub fn load(path: impl AsRef<Path>, opts: &EncoderOptions) -> Result<Encoder> {
        let path = path.as_ref().to_path_buf();
        if let Some(n) = opts.intra_threads {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let max = cores * MAX_THREADS_PER_CORE;
            if n == 0 || n > max {
                return Err(Error::InvalidArgument(format!(
                    "--threads {n}: this machine has {cores} cores; use 1 to {max} \
                     ({MAX_THREADS_PER_CORE} per core at most)"
                )));
            }
        }
        if !path.is_file() {
            return Err(Error::model(&path, "no such model file"));
        }
        let choice = precision::choose(&path, opts.precision, opts.device)?;
        let path = choice.path.clone();
        let lib = runtime::resolve_library(opts.ort_lib.as_deref())?;
        let env = runtime::environment(&lib)?;
        let (session, provider) = match (opts.device, choice.precision) {
            (Device::Cpu, _) => (build_session(env, &path, opts, false)?, "cpu"),
            (Device::Cuda, _) => (build_session(env, &path, opts, true)?, "cuda"),
            (Device::Auto, Precision::Fp16) => match build_session(env, &path, opts, true) {
                Ok(s) => (s, "cuda"),
                Err(Error::Device { provider, message }) => {
                    return Err(Error::Device {
                        provider,
                        message: format!(
                            "{message}. fp16 runs only on CUDA; on CPU use --precision fp32"
                        ),
                    })
                }
                Err(e) => return Err(e),
            },
            (Device::Auto, Precision::Fp32) => match build_session(env, &path, opts, true) {
                Ok(s) => (s, "cuda"),
                Err(Error::Device { message, .. }) => {
                    tracing::info!("CUDA not usable ({message}); running on CPU");
                    (build_session(env, &path, opts, false)?, "cpu")
                }
                Err(e) => return Err(e),
            },
        };
        let spec = read_spec(&session, &path, opts)?;
        precision::check(&choice, &spec)?;
        let cuda = provider == "cuda";
        let sessions = Sessions::new(session, session_count(provider)?, env, &path, opts, cuda)?;
        tracing::info!(
            "execution provider: {provider}, {} ({} session{}, I/O binding {})",
            choice.precision.as_str(),
            sessions.len(),
            if sessions.len() == 1 { "" } else { "s" },
            if sessions.io_binding() { "on" } else { "off" }
        );
        let mut enc = Encoder {
            sha256: sha256_file(&path)?,
            path,
            spec,
            provider,
            dims: BTreeMap::new(),
            fixed_batch: None,
            grid: Err("not validated".into()),
            sessions,
        };
        enc.validate()?;
        Ok(enc)
    }

    fn validate(&mut self) -> Result<()> {
        let [h, w] = self.spec.input_size;
        {
            let runner = self.sessions.first();
            let session = runner.session();
            let input = session
                .inputs()
                .iter()
                .find(|i| i.name() == self.spec.input)
                .ok_or_else(|| {
                    let names: Vec<_> = session.inputs().iter().map(|i| i.name()).collect();
                    Error::model(
                        &self.path,
                        format!(
                            "spec input {:?} is not a graph input (inputs: {names:?})",
                            self.spec.input
                        ),
                    )
                })?;
            let shape: Vec<i64> = input
                .dtype()
                .tensor_shape()
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            if let Some(&b) = shape.first().filter(|&&b| b > 0) {
                if b > crate::ingest::MAX_BATCH as i64 {
                    return Err(Error::model(
                        &self.path,
                        format!(
                            "input batch dimension is fixed at {b}; at most {} is supported \
                             (export the model with a dynamic batch)",
                            crate::ingest::MAX_BATCH
                        ),
                    ));
                }
                self.fixed_batch = Some(b as usize);
            }
            let want = [-1, 3, h as i64, w as i64];
            let ok = shape.len() == 4
                && shape
                    .iter()
                    .zip(want)
                    .all(|(&g, w)| g == -1 || w == -1 || g == w);
            if !ok {
                return Err(Error::model(
                    &self.path,
                    format!(
                        "input {:?} has shape {shape:?}; the spec needs [batch, 3, {h}, {w}]",
                        self.spec.input
                    ),
                ));
            }
            let names: Vec<String> = session
                .outputs()
                .iter()
                .map(|o| o.name().to_string())
                .collect();
            for name in self.spec.outputs.named() {
                if !names.contains(name) {
                    return Err(Error::model(
                        &self.path,
                        format!("spec output {name:?} is not a graph output (outputs: {names:?})"),
                    ));
                }
            }
        }
        // A dry run gives the real shapes, including dynamic ones.
        let b = self.fixed_batch.unwrap_or(1);
        let zeros = vec![0f32; b * 3 * h * w];
        let all: Vec<String> = self.spec.outputs.named().cloned().collect();
        let shapes = self.run_raw(&[&zeros], b, &all, |name, shape, _| {
            let mut s = shape;
            if let Some(first) = s.first_mut() {
                *first /= b as i64; // report per-image shapes, batch 1
            }
            (name.to_string(), s)
        })?;
        let shape_of = |n: &Option<String>| {
            n.as_ref()
                .and_then(|n| shapes.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone()))
        };
        let o = self.spec.outputs.clone();
        let expect = |n: &Option<String>, rank: usize, what: &str| -> Result<Option<Vec<i64>>> {
            match shape_of(n) {
                Some(s) if s.len() == rank && s[0] == 1 && s.iter().all(|&d| d > 0) => Ok(Some(s)),
                Some(s) => Err(Error::model(
                    &self.path,
                    format!(
                        "output {:?} ({what}) has shape {s:?} for a batch of 1; expected rank {rank} \
                         with the batch first",
                        n.as_deref().unwrap_or_default()
                    ),
                )),
                None => Ok(None),
            }
        };
        let cls = expect(&o.cls, 2, "cls, [B, D]")?;
        let patch = expect(&o.patch_tokens, 3, "patch tokens, [B, N, D]")?;
        let fmap = expect(&o.feature_map, 4, "feature map, [B, C, h, w]")?;
        let proj = expect(&o.projection, 2, "projection, [B, P]")?;
        let pooled = expect(&o.pooled, 2, "pooled, [B, D]")?;
        let token_dim = patch.as_ref().map(|s| s[2]).or(fmap.as_ref().map(|s| s[1]));
        let mean_dim = pooled.as_ref().map(|s| s[1]).or(token_dim).unwrap_or(0);
        if let (Some(p), Some(t)) = (&pooled, token_dim) {
            if p[1] != t {
                return Err(Error::model(
                    &self.path,
                    format!("pooled output has {} dims but the tokens have {t}", p[1]),
                ));
            }
        }
        if let (Some(c), Some(t)) = (&cls, token_dim) {
            if c[1] != t {
                return Err(Error::model(
                    &self.path,
                    format!("cls output has {} dims but the patch tokens have {t}", c[1]),
                ));
            }
        }
        self.grid = grid_of(&self.spec, patch.as_deref(), fmap.as_deref());
        self.dims.insert(Feature::Mean, mean_dim as usize);
        if let Some(c) = cls {
            self.dims.insert(Feature::Cls, c[1] as usize);
        }
        if let Some(p) = proj {
            self.dims.insert(Feature::Projection, p[1] as usize);
        }
        Ok(())
    }

    /// Runs the model on `n` CHW tensors (the concatenation of `parts`), computing only the
    /// outputs in `names`, and hands each to `f`. Takes a free session.
    fn run_raw<T>(
        &self,
        parts: &[&[f32]],
        n: usize,
        names: &[String],
        mut f: impl FnMut(&str, Vec<i64>, &[f32]) -> T,
    ) -> Result<Vec<T>> {
        let [h, w] = self.spec.input_size;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len != n * 3 * h * w {
            return Err(Error::InvalidArgument(format!(
                "batch holds {len} floats, expected {n} × 3 × {h} × {w}"
            )));
        }
        let mut runner = self.sessions.take();
        runner
            .run(
                &self.spec.input,
                [n, 3, h, w],
                parts,
                names,
                |name, shape, data| Ok(f(name, shape, data)),
            )
            .map_err(|e| match e {
                Error::Ort(m) if m.contains("is not float32") => Error::model(&self.path, m),
                e => e,
            })
    }

    /// Embeds `n` preprocessed regions (`pixels` = `n × 3 × H × W`, CHW each) and returns
    /// every feature the model has. Models exported with a fixed batch size are fed in chunks of
    /// that size (the last one zero-padded).
    pub fn embed(&self, pixels: &[f32], n: usize) -> Result<Features> {
        Ok(self.embed_with_tokens(pixels, n, false)?.0)
    }

    /// [`Encoder::embed`], and with `tokens` also each region's token grid (`n × cells × dim`,
    /// cells first, as [`Encoder::embed_tokens`]) from the same run.
    pub fn embed_with_tokens(
        &self,
        pixels: &[f32],
        n: usize,
        tokens: bool,
    ) -> Result<(Features, Option<Vec<f32>>)> {
        self.embed_parts(&[pixels], n, tokens)
    }

    /// [`Encoder::embed_with_tokens`] of a batch given in pieces (their concatenation is the
    /// `n × 3 × H × W` input): the pieces are copied straight into the session's input tensor
    /// (pinned memory on CUDA), so the caller never joins them. Callable from several threads
    /// at once: each call takes a free session ([`Encoder::sessions`]).
    pub fn embed_parts(
        &self,
        parts: &[&[f32]],
        n: usize,
        tokens: bool,
    ) -> Result<(Features, Option<Vec<f32>>)> {
        let grid = if tokens {
            Some(self.token_grid()?)
        } else {
            None
        };
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if n == 0 {
            if len != 0 {
                return Err(Error::InvalidArgument(format!(
                    "{len} floats given for an empty batch"
                )));
            }
            let values = self.dims.keys().map(|f| (*f, Vec::new())).collect();
            return Ok((Features { n: 0, values }, grid.map(|_| Vec::new())));
        }
        let tlen = self.preprocessor().tensor_len();
        if len != n.saturating_mul(tlen) {
            return Err(Error::InvalidArgument(format!(
                "batch holds {len} floats, expected {n} × {tlen}"
            )));
        }
        let Some(b) = self.fixed_batch.filter(|&b| b != n) else {
            return self.embed_exact(parts, n, grid.as_ref());
        };
        let pixels = parts.concat();
        let mut all = Features {
            n,
            values: BTreeMap::new(),
        };
        let mut all_tokens = grid.map(|g| Vec::with_capacity(n * g.tokens() * g.dim));
        in_fixed_batches(&pixels, tlen, b, |input, m| {
            let (f, t) = self.embed_exact(&[input], b, grid.as_ref())?;
            for (feat, v) in f.values {
                let d = v.len() / b;
                all.values
                    .entry(feat)
                    .or_insert_with(|| Vec::with_capacity(n * d))
                    .extend_from_slice(&v[..m * d]);
            }
            if let (Some(all_t), Some(t), Some(g)) = (&mut all_tokens, t, grid) {
                all_t.extend_from_slice(&t[..m * g.tokens() * g.dim]);
            }
            Ok(())
        })?;
        Ok((all, all_tokens))
    }

    fn embed_exact(
        &self,
        pixels: &[&[f32]],
        n: usize,
        grid: Option<&TokenGrid>,
    ) -> Result<(Features, Option<Vec<f32>>)> {
        let o = self.spec.outputs.clone();
        let mut values = BTreeMap::new();
        let mut tokens_mean = None;
        let mut tokens = None;
        let mut needed = o.for_features();
        let token_output = grid.map(|g| match g.source {
            GridSource::PatchTokens => o.patch_tokens.clone().unwrap_or_default(),
            GridSource::FeatureMap => o.feature_map.clone().unwrap_or_default(),
        });
        if let Some(t) = token_output.as_ref().filter(|t| !needed.contains(t)) {
            needed.push(t.clone());
        }
        let raw = self.run_raw(pixels, n, &needed, |name, shape, data| {
            (name.to_string(), shape, data.to_vec())
        })?;
        for (name, shape, data) in raw {
            let is = |x: &Option<String>| x.as_deref() == Some(name.as_str());
            if is(&o.cls) {
                values.insert(Feature::Cls, data);
            } else if is(&o.projection) {
                values.insert(Feature::Projection, data);
            } else if is(&o.pooled) {
                values.insert(Feature::Mean, data);
            } else if is(&o.patch_tokens) || is(&o.feature_map) {
                let fmap = is(&o.feature_map);
                let (t, d) = if fmap {
                    ((shape[2] * shape[3]) as usize, shape[1] as usize)
                } else {
                    (shape[1] as usize, shape[2] as usize)
                };
                if o.pooled.is_none() {
                    tokens_mean = Some(mean_rows(&data, n, t, d, fmap));
                }
                if token_output.as_deref() == Some(name.as_str()) {
                    tokens = Some(if fmap {
                        cells_first(&data, n, t, d)
                    } else {
                        data
                    });
                }
            }
        }
        if let (false, Some(m)) = (values.contains_key(&Feature::Mean), tokens_mean) {
            values.insert(Feature::Mean, m);
        }
        for (f, v) in &values {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::model(
                    &self.path,
                    format!(
                        "produced a non-finite {f} value for region {} of the batch; refusing to \
                         store it",
                        i / (v.len() / n).max(1)
                    ),
                ));
            }
        }
        for (f, d) in &self.dims {
            let got = values.get(f).map_or(0, Vec::len);
            if got != n * d {
                return Err(Error::model(
                    &self.path,
                    format!("feature {f} has {got} values for {n} regions, expected {n} × {d}"),
                ));
            }
        }
        if let (Some(g), Some(t)) = (grid, &tokens) {
            if t.len() != n * g.tokens() * g.dim {
                return Err(Error::model(
                    &self.path,
                    format!(
                        "token output holds {} values for {n} inputs, expected {n} × {} × {}",
                        t.len(),
                        g.tokens(),
                        g.dim
                    ),
                ));
            }
            if let Some(i) = t.iter().position(|x| !x.is_finite()) {
                return Err(Error::model(
                    &self.path,
                    format!(
                        "produced a non-finite token value for input {} of the batch",
                        i / (g.tokens() * g.dim)
                    ),
                ));
            }
        }
        Ok((Features { n, values }, tokens))
    }

    /// The model's token grid (patch tokens or feature map as cells), or why it has none: a
    /// spec without either output, or tokens that do not form a square grid of the input.
    pub fn token_grid(&self) -> Result<TokenGrid> {
        self.grid
            .clone()
            .map_err(|why| Error::model(&self.path, why))
    }

    /// Runs `n` preprocessed inputs and returns their token grids, `n × cells × dim` floats,
    /// cells in raster order (a feature map is transposed to cells-first).
    pub fn embed_tokens(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        let g = self.token_grid()?;
        let tlen = self.preprocessor().tensor_len();
        if n == 0 || pixels.len() != n.saturating_mul(tlen) {
            return Err(Error::InvalidArgument(format!(
                "batch holds {} floats, expected {n} × {tlen} (n ≥ 1)",
                pixels.len()
            )));
        }
        let per = g.tokens() * g.dim;
        let b = self.fixed_batch.unwrap_or(n);
        let mut out = Vec::with_capacity(n * per);
        in_fixed_batches(pixels, tlen, b, |input, m| {
            let t = self.run_tokens(input, b, &g)?;
            out.extend_from_slice(&t[..m * per]);
            Ok(())
        })?;
        if let Some(i) = out.iter().position(|x| !x.is_finite()) {
            return Err(Error::model(
                &self.path,
                format!(
                    "produced a non-finite token value for input {} of the batch",
                    i / per
                ),
            ));
        }
        Ok(out)
    }

    /// One run of exactly `b` inputs (the graph's batch), tokens cells-first.
    fn run_tokens(&self, pixels: &[f32], b: usize, g: &TokenGrid) -> Result<Vec<f32>> {
        let o = &self.spec.outputs;
        let name = match g.source {
            GridSource::PatchTokens => o.patch_tokens.clone(),
            GridSource::FeatureMap => o.feature_map.clone(),
        }
        .unwrap_or_default();
        let per = g.tokens() * g.dim;
        let mut raw = self.run_raw(&[pixels], b, &[name], |_, shape, data| {
            (shape.iter().product::<i64>() as usize, data.to_vec())
        })?;
        let (len, data) = raw.pop().unwrap_or_default();
        if len != b * per || data.len() != len {
            return Err(Error::model(
                &self.path,
                format!("token output holds {len} values for {b} inputs, expected {b} × {per}"),
            ));
        }
        Ok(match g.source {
            GridSource::PatchTokens => data,
            GridSource::FeatureMap => cells_first(&data, b, g.tokens(), g.dim),
        })
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 of the model file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The model's spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// How many sessions the encoder holds: the batches that can run at once (2 on CUDA, 1 on
    /// CPU, whose one session uses every core).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Whether runs bind their input and outputs (ONNX Runtime's I/O binding).
    pub fn io_binding(&self) -> bool {
        self.sessions.io_binding()
    }

    /// The precision the model computes in.
    pub fn precision(&self) -> Precision {
        self.spec.precision
    }

    /// The SHA-256 of the fp32 model behind this one (its own for fp32 models): indexes built
    /// with either of an fp32/fp16 pair are queried with either.
    pub fn fp32_sha256(&self) -> &str {
        precision::fp32_sha256(&self.spec, &self.sha256)
    }

    /// The execution provider in use: `cpu` or `cuda`.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Dimension of every feature this model produces.
    pub fn dims(&self) -> &BTreeMap<Feature, usize> {
        &self.dims
    }

    /// The preprocessing this model expects.
    pub fn preprocessor(&self) -> Preprocessor {
        Preprocessor {
            size: (self.spec.input_size[0], self.spec.input_size[1]),
            mean: self.spec.mean,
            std: self.spec.std,
        }
    }
}

/// The token grid of a model from its outputs' per-image shapes (`[1, N, D]` patch tokens or
/// `[1, C, h, w]` feature map): cells must tile the input exactly.
fn grid_of(
    spec: &ModelSpec,
    patch: Option<&[i64]>,
    fmap: Option<&[i64]>,
) -> std::result::Result<TokenGrid, String> {
    let [h, w] = spec.input_size;
    let (rows, cols, dim, source) = if let Some(s) = fmap {
        (
            s[2] as usize,
            s[3] as usize,
            s[1] as usize,
            GridSource::FeatureMap,
        )
    } else if let Some(s) = patch {
        let (n, d) = (s[1] as usize, s[2] as usize);
        let (rows, cols) = match spec.patch_size {
            Some(p) => (h / p, w / p),
            None => {
                // A square grid over the input's aspect: rows/cols = h/w.
                let r = ((n as f64 * h as f64 / w as f64).sqrt()).round() as usize;
                (r, n / r.max(1))
            }
        };
        if rows * cols != n {
            return Err(format!(
                "its {n} patch tokens do not form the {rows} × {cols} grid of a {h} × {w} input \
                 (a class token among them? set patch_size in the spec)"
            ));
        }
        (rows, cols, d, GridSource::PatchTokens)
    } else {
        return Err(
            "its spec names neither patch_tokens nor feature_map, so it has no token \
                    grid (needed for dense features and --tokens)"
                .into(),
        );
    };
    if rows == 0 || cols == 0 || h % rows != 0 || w % cols != 0 || h / rows != w / cols {
        return Err(format!(
            "its {rows} × {cols} token grid does not tile the {h} × {w} input in square cells"
        ));
    }
    Ok(TokenGrid {
        rows,
        cols,
        dim,
        cell: h / rows,
        source,
    })
}

/// `[n, d, t]` (a feature map, channels first) as `[n, t, d]` (cells first).
fn cells_first(data: &[f32], n: usize, t: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * t * d];
    for (src, dst) in data.chunks_exact(t * d).zip(out.chunks_exact_mut(t * d)) {
        for c in 0..d {
            for k in 0..t {
                dst[k * d + c] = src[c * t + k];
            }
        }
    }
    out
}

/// Mean over the token axis: `data` is `[n, t, d]` (or `[n, d, t]` when `channels_first`);
/// returns `[n, d]`.
fn mean_rows(data: &[f32], n: usize, t: usize, d: usize, channels_first: bool) -> Vec<f32> {
    let mut out = vec![0f32; n * d];
    for b in 0..n {
        let x = &data[b * t * d..(b + 1) * t * d];
        let o = &mut out[b * d..(b + 1) * d];
        if channels_first {
            for (c, oc) in o.iter_mut().enumerate() {
                *oc = x[c * t..(c + 1) * t]
                    .iter()
                    .map(|&v| f64::from(v))
                    .sum::<f64>() as f32
                    / t as f32;
            }
        } else {
            let mut acc = vec![0f64; d];
            for tok in x.chunks_exact(d) {
                for (a, &v) in acc.iter_mut().zip(tok) {
                    *a += f64::from(v);
                }
            }
            for (oc, a) in o.iter_mut().zip(acc) {
                *oc = (a / t as f64) as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::mean_rows;

    #[test]
    fn token_and_channel_means() {
        // n=1, t=2, d=3 tokens-last
        let x = [1.0, 2.0, 3.0, 3.0, 4.0, 5.0];
        assert_eq!(mean_rows(&x, 1, 2, 3, false), vec![2.0, 3.0, 4.0]);
        // n=1, c=2, hw=3 channels-first
        let y = [1.0, 2.0, 3.0, 10.0, 10.0, 10.0];
        assert_eq!(mean_rows(&y, 1, 3, 2, true), vec![2.0, 10.0]);
    }
}
