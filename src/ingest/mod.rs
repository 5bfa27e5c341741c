//! `partlens ingest`: dataset → regions → tensors → encoder → an index of segments.
//!
//! The stages, in order ([`ingest_with_encoder`]):
//! 1. **stage** — lock `--out`, clean up after killed runs, open `.NAME.ingest` beside it:
//!    continue the run waiting there (`--resume`), refuse it, or start afresh
//!    ([`segments`]);
//! 2. **embed** — decode, cut and preprocess images in parallel (rayon) on a producer thread a
//!    few images ahead of inference, through a bounded channel; the encoder runs batches on
//!    the calling thread and the [`Sink`] streams rows into the open segment's Parquet and
//!    `.npy` (with `--tokens`, each region's token grid too, from the same encoder run);
//! 3. **segment** — at the first image boundary at or past `--segment-size` regions (and at
//!    the end): the segment's files finished; with `--dense`, a second pass over its images
//!    ([`crate::dense`]); one HNSW graph per feature; sizes and SHA-256 of its files, fsync,
//!    and the manifest listing it replaced atomically — the commit;
//! 4. **seal** — the manifest marked complete;
//! 5. **swap** — the staging folder moved to `--out` in one atomic step.
//!
//! A run that indexes no region fails, and `--out` is left as it was. A run killed at any
//! moment resumes after its last committed segment with the same result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::dataset::{Dataset, ImageItem, RegionSettings, Skipped};
use crate::dense::DenseOptions;
use crate::encoder::{Encoder, EncoderOptions, Feature};
use crate::error::{Error, IoContext, Result};
use crate::files::StagedDir;
use crate::index::{GraphBuilder, HnswParams};
use crate::store::dense::TokensInfo;
use crate::store::manifest::{Counts, DatasetInfo, EncoderInfo, FileRecord, HnswInfo, Manifest};
use crate::store::{feature_path, NpyMatrix};
use embed::{embed_all, Segmenter, Timing};

mod embed;
mod segments;
pub(crate) use segments::add_counts;
pub use segments::Shard;

/// `--batch-size` on the CPU: enough to amortise a run, small enough to keep memory low.
pub const DEFAULT_BATCH_CPU: usize = 32;

/// `--batch-size` on CUDA: a GPU needs hundreds of inputs per run to be busy.
pub const DEFAULT_BATCH_CUDA: usize = 256;

/// The default batch size on `provider` (`cpu` or `cuda`).
pub fn default_batch_size(provider: &str) -> usize {
    if provider == "cuda" {
        DEFAULT_BATCH_CUDA
    } else {
        DEFAULT_BATCH_CPU
    }
}

/// Checks a batch size against [`MAX_BATCH`] and, for inputs of `tensor_len` floats,
/// [`MAX_BATCH_BYTES`].
pub fn check_batch_size(batch_size: usize, tensor_len: usize) -> Result<()> {
    let bytes = batch_size.saturating_mul(tensor_len).saturating_mul(4);
    if batch_size == 0 || batch_size > MAX_BATCH || bytes > MAX_BATCH_BYTES {
        return Err(Error::InvalidArgument(format!(
            "batch size must be between 1 and {MAX_BATCH} and its input at most {} GB; \
             {batch_size} regions of this model's input would need {:.1} GB",
            MAX_BATCH_BYTES >> 30,
            bytes as f64 / 1e9
        )));
    }
    Ok(())
}

/// Largest `--batch-size` accepted.
pub const MAX_BATCH: usize = 4096;

/// Largest input batch accepted, in bytes of float32 pixels (a 4096 × 224² batch is 2.5 GB).
pub const MAX_BATCH_BYTES: usize = 4 << 30;

/// A crop may extend this many times its image's longest side; past that the annotation is
/// wrong (and the region is skipped and reported), not a region.
pub const MAX_CROP_FACTOR: i64 = 16;

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The index directory to create.
    pub out: PathBuf,
    /// How regions are cut.
    pub settings: RegionSettings,
    /// Regions per inference batch.
    pub batch_size: usize,
    /// Make any unreadable input fatal instead of skipping and reporting it.
    pub strict: bool,
    /// Replace an existing index at `out`.
    pub overwrite: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// HNSW parameters.
    pub hnsw: HnswParams,
    /// What links the graphs.
    pub graph_builder: GraphBuilder,
    /// Also store every image's token grid (`--dense`); see [`crate::dense`].
    pub dense: Option<DenseOptions>,
    /// Also keep each region's own patch tokens (`--tokens`), for the attentive probe.
    pub tokens: bool,
    /// Regions per segment: a segment is committed at the first image boundary at or past
    /// this many regions (`--segment-size`).
    pub segment_size: usize,
    /// Continue an interrupted run of the same settings (`--resume`).
    pub resume: bool,
    /// Take only this share of the dataset's images (`--shard i/N`).
    pub shard: Option<Shard>,
}

impl IngestOptions {
    /// Defaults for writing to `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        IngestOptions {
            out: out.into(),
            settings: RegionSettings::default(),
            batch_size: DEFAULT_BATCH_CPU,
            strict: false,
            overwrite: false,
            progress: false,
            hnsw: HnswParams::default(),
            graph_builder: GraphBuilder::default(),
            dense: None,
            tokens: false,
            segment_size: crate::store::manifest::DEFAULT_SEGMENT_SIZE,
            resume: false,
            shard: None,
        }
    }

    /// Checks every setting that sizes memory or work, given the encoder's tensor length.
    fn validate(&self, tensor_len: usize) -> Result<()> {
        self.settings.validate()?;
        check_batch_size(self.batch_size, tensor_len)?;
        if self.segment_size == 0 {
            return Err(Error::InvalidArgument(
                "--segment-size must be at least 1".into(),
            ));
        }
        self.hnsw.validate().map_err(Error::InvalidArgument)
    }
}

/// What an ingest did.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// The index directory written.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Wall time of the whole ingest, in seconds.
    pub seconds: f64,
    /// Seconds the encoder's sessions spent running batches (summed over sessions).
    pub encode_seconds: f64,
    /// The encoder's sessions: batches run at once ([`Encoder::sessions`]).
    pub encoder_sessions: usize,
    /// The batch size the run used.
    pub batch_size: usize,
    /// Seconds spent building HNSW graphs.
    pub hnsw_seconds: f64,
    /// Seconds the encoder's sessions sat idle waiting for a batch (summed over sessions;
    /// high: preprocessing cannot keep up).
    pub wait_seconds: f64,
    /// Seconds of the dense pass (`--dense`), encoder included.
    pub dense_seconds: f64,
    /// Seconds the dense pass spent inside the encoder.
    pub dense_encode_seconds: f64,
    /// Windows the dense pass encoded.
    pub dense_windows: u64,
    /// Leftovers of killed runs for the same `--out` that were cleaned up first.
    pub cleaned: Vec<String>,
    /// Segments an interrupted run had committed, which this one continued after
    /// (`--resume`); `None` for a run from the start.
    pub resumed_after: Option<usize>,
}

impl IngestReport {
    /// The report of a `--resume` that found its run finished (nothing embedded).
    fn already_done(out: &Path, manifest: Manifest, t0: Instant, cleaned: Vec<String>) -> Self {
        IngestReport {
            path: out.to_path_buf(),
            resumed_after: Some(manifest.segments.len()),
            manifest,
            seconds: t0.elapsed().as_secs_f64(),
            encode_seconds: 0.0,
            encoder_sessions: 0,
            batch_size: 0,
            hnsw_seconds: 0.0,
            wait_seconds: 0.0,
            dense_seconds: 0.0,
            dense_encode_seconds: 0.0,
            dense_windows: 0,
            cleaned,
        }
    }

    /// Regions embedded per second of wall time (excluding the HNSW build and the dense pass).
    pub fn regions_per_second(&self) -> f64 {
        self.manifest.counts.regions as f64
            / (self.seconds - self.hnsw_seconds - self.dense_seconds).max(1e-9)
    }
}

/// A progress bar over `len` items named `what` (hidden unless `enabled`).
pub(crate) fn progress_bar(enabled: bool, len: usize, what: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {what} · {{msg}} · {{elapsed}} elapsed, ETA {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// Loads the model and ingests `dataset` into `opts.out`.
pub fn ingest(
    dataset: &dyn Dataset,
    model: &Path,
    enc_opts: &EncoderOptions,
    opts: &IngestOptions,
) -> Result<IngestReport> {
    let encoder = Encoder::load(model, enc_opts)?;
    ingest_with_encoder(dataset, &encoder, opts)
}

/// The manifest of a new run, before its first segment.
fn new_manifest(
    dataset: &dyn Dataset,
    encoder: &Encoder,
    opts: &IngestOptions,
    tokens: Option<TokensInfo>,
    progress: crate::store::manifest::IngestProgress,
) -> Manifest {
    let dims = encoder.dims();
    Manifest {
        schema_version: crate::store::manifest::SCHEMA_VERSION,
        partlens_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix: now_unix(),
        encoder: EncoderInfo {
            file: std::fs::canonicalize(encoder.path())
                .unwrap_or(encoder.path().into())
                .display()
                .to_string(),
            sha256: encoder.sha256().to_string(),
            spec: encoder.spec().clone(),
            provider: encoder.provider().to_string(),
            dims: dims
                .iter()
                .map(|(f, d)| (f.as_str().to_string(), *d))
                .collect(),
        },
        dataset: DatasetInfo {
            path: dataset.listing().root.canonical().display().to_string(),
            format: dataset.format().to_string(),
            splits: dataset.splits(),
            options: dataset.options(),
        },
        settings: opts.settings,
        counts: Counts::default(),
        features: dims.keys().map(|f| f.as_str().to_string()).collect(),
        shards: Vec::new(),
        hnsw: dims
            .keys()
            .map(|f| {
                (
                    f.as_str().to_string(),
                    HnswInfo {
                        basename: f.as_str().to_string(),
                        max_nb_connection: opts.hnsw.max_nb_connection,
                        ef_construction: opts.hnsw.ef_construction,
                        seed: Some(crate::index::DEFAULT_SEED),
                        builder: Some(opts.graph_builder.as_str().to_string()),
                    },
                )
            })
            .collect(),
        skipped: dataset.listing_problems().to_vec(),
        files: BTreeMap::new(),
        segments: Vec::new(),
        ingest: Some(progress),
        dense: None,
        tokens,
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Ingests `dataset` with an already loaded encoder: in `.<out>.ingest`, a segment committed
/// every `opts.segment_size` regions, then moved to `opts.out` in one step.
pub fn ingest_with_encoder(
    dataset: &dyn Dataset,
    encoder: &Encoder,
    opts: &IngestOptions,
) -> Result<IngestReport> {
    let t0 = Instant::now();
    opts.validate(encoder.preprocessor().tensor_len())?;
    let items: Vec<ImageItem> = match opts.shard {
        Some(sh) => dataset
            .items()
            .iter()
            .filter(|it| sh.takes(&it.image))
            .cloned()
            .collect(),
        None => dataset.items().to_vec(),
    };
    tracing::info!(
        "ingesting {} images{} from {} ({}) with {} ({}) on {}",
        items.len(),
        opts.shard
            .map(|s| format!(" (shard {s} of {})", dataset.items().len()))
            .unwrap_or_default(),
        dataset.root().display(),
        dataset.format(),
        encoder.spec().name,
        encoder.path().display(),
        encoder.provider()
    );
    let out = &opts.out;
    let staged = StagedDir::resumable(out, "index")?;
    let stage = staged.path().to_path_buf();

    // Dense and token settings are checked before any work.
    let grid = match (opts.dense.is_some() || opts.tokens, encoder.token_grid()) {
        (false, _) => None,
        (true, Ok(g)) => Some(g),
        (true, Err(e)) => {
            return Err(Error::InvalidArgument(format!(
                "--dense / --tokens need the model's token grid: {e}"
            )))
        }
    };
    if let (Some(d), Some(g)) = (&opts.dense, &grid) {
        d.check(g, encoder.spec().input_size)?;
    }
    let tokens = grid.filter(|_| opts.tokens).map(|g| TokensInfo {
        tokens: g.tokens(),
        rows: g.rows,
        cols: g.cols,
        dim: g.dim,
        source: g.source,
    });
    if let (true, Some(s)) = (opts.strict, dataset.listing_problems().first()) {
        return Err(strict_stop(dataset, s));
    }

    let fp = segments::fingerprint(dataset, &items, encoder, opts);
    let fresh = || {
        let progress =
            segments::progress(fp.clone(), items.len(), dataset.listing_problems().len());
        new_manifest(dataset, encoder, opts, tokens.clone(), progress)
    };
    let waiting = crate::store::manifest::Manifest::read(&stage)
        .ok()
        .is_some_and(|m| m.in_progress());
    if opts.resume && !waiting {
        // Killed after sealing, before the swap: the finished index waits in the stage.
        if let Some(manifest) = segments::finished(&stage, &fp) {
            let cleaned = staged.cleaned.clone();
            staged.commit(&|old| check_target(old, opts.overwrite).is_ok())?;
            return Ok(IngestReport::already_done(out, manifest, t0, cleaned));
        }
        // Killed after its last step: the finished index of this very run is there.
        if let Some(manifest) = segments::finished(staged.target(), &fp) {
            if stage.exists() && crate::store::replaceable(&stage).is_ok() {
                // What the swap moved aside (the index this run replaced).
                std::fs::remove_dir_all(&stage).at(&stage)?;
            }
            tracing::info!("{} is already complete: nothing to resume", out.display());
            let cleaned = staged.cleaned.clone();
            return Ok(IngestReport::already_done(out, manifest, t0, cleaned));
        }
    }
    if !(waiting && opts.resume) {
        // A new run may not replace what it must not (checked again at the swap).
        check_target(staged.target(), opts.overwrite)?;
    }
    let (mut manifest, resumed_after) = match segments::start(
        &stage,
        staged.target(),
        (opts.resume, opts.overwrite),
        &fp,
        fresh,
    )? {
        segments::Start::Fresh(m) => (m, None),
        segments::Start::Resumed(m) => {
            let n = m.segments.len();
            tracing::info!(
                "resuming after {n} committed segments ({} regions, {} of {} images)",
                m.counts.regions,
                m.ingest.as_ref().map_or(0, |p| p.next_item),
                items.len()
            );
            (m, Some(n))
        }
    };
    let next_item = manifest.ingest.as_ref().map_or(0, |p| p.next_item) as usize;
    let next_item = next_item.min(items.len());

    // Embed, committing a segment at the first image boundary past --segment-size.
    let mut seg = Segmenter {
        dataset,
        encoder,
        opts,
        stage: &stage,
        items: &items,
        tokens: tokens.clone(),
        manifest: &mut manifest,
        sink: None,
        start_item: next_item,
        timing: Timing::default(),
    };
    // The last segment: whatever remains (images after the last commit).
    let embedded = embed_all(&mut seg, next_item).and_then(|()| seg.close(items.len()));
    if let Err(e) = embedded {
        let m = &seg.manifest;
        if !m.segments.is_empty() {
            tracing::warn!(
                "the run stopped; its {} committed segments ({} regions) are kept in {}: \
                 fix the cause (e.g. free disk space) and rerun the same command with --resume",
                m.segments.len(),
                m.counts.regions,
                stage.display()
            );
        }
        return Err(e);
    }
    let timing = seg.timing;
    if manifest.counts.regions == 0 {
        let counts = manifest.counts.clone();
        let skipped = manifest.skipped.clone();
        // Nothing to keep: the stage goes, --out stays as it was.
        let _ = std::fs::remove_dir_all(&stage);
        return Err(nothing_indexed(
            dataset,
            items.len(),
            &counts,
            &skipped,
            &opts.settings,
        ));
    }

    // Seal: the run is complete.
    if let Some(p) = manifest.ingest.as_mut() {
        p.complete = true;
    }
    manifest.created_unix = now_unix();
    manifest.write_atomic(&stage)?;
    crate::files::crash_point("sealed");

    // Commit.
    let cleaned = staged.cleaned.clone();
    // What --out holds is checked again once moved aside: a folder filled while this run
    // worked is put back, never deleted.
    staged.commit(&|old| check_target(old, opts.overwrite).is_ok())?;
    Ok(IngestReport {
        path: out.clone(),
        manifest,
        seconds: t0.elapsed().as_secs_f64(),
        encode_seconds: timing.encode_seconds,
        encoder_sessions: encoder.sessions(),
        batch_size: opts.batch_size,
        hnsw_seconds: timing.hnsw_seconds,
        wait_seconds: timing.wait_seconds,
        dense_seconds: timing.dense_seconds,
        dense_encode_seconds: timing.dense_encode_seconds,
        dense_windows: timing.dense_windows,
        cleaned,
        resumed_after,
    })
}

/// The error `--strict` stops with at the first skipped input.
fn strict_stop(dataset: &dyn Dataset, s: &Skipped) -> Error {
    Error::Dataset {
        path: dataset.root().to_path_buf(),
        message: format!("{}: {} (--strict)", s.path, s.reason),
    }
}

/// Refuses to write over anything but an empty folder or a partlens index, and over an index
/// only with `overwrite`: `--out webapp --overwrite` must never delete a web app.
pub(crate) fn check_target(out: &Path, overwrite: bool) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(out, e)),
        Ok(_) => {}
    }
    match crate::store::replaceable(out) {
        Ok(false) => Ok(()),
        Ok(true) if overwrite => Ok(()),
        Ok(true) => Err(Error::InvalidArgument(format!(
            "{} already exists; pass --overwrite to replace it",
            out.display()
        ))),
        Err(why) => Err(Error::InvalidArgument(format!(
            "{} exists and is not a partlens index ({why}); refusing to replace it",
            out.display()
        ))),
    }
}

/// The error of a run that indexed nothing: what was skipped, most common reason first, and
/// what to change.
fn nothing_indexed(
    dataset: &dyn Dataset,
    images: usize,
    counts: &Counts,
    skipped: &[Skipped],
    settings: &RegionSettings,
) -> Error {
    let mut message = format!(
        "no region was indexed: {} of {} images were read, {} inputs skipped",
        counts.images,
        images,
        skipped.len()
    );
    if skipped.is_empty() {
        message.push_str(&format!(
            "; no region has at least {} px (lower --min-area?)",
            settings.min_area
        ));
    }
    for s in skipped.iter().take(3) {
        message.push_str(&format!("\n  {}: {}", s.path, s.reason));
    }
    if skipped.len() > 3 {
        message.push_str(&format!("\n  … and {} more", skipped.len() - 3));
    }
    Error::Dataset {
        path: dataset.root().to_path_buf(),
        message,
    }
}

/// Per feature, its unit-norm rows (`features/<f>.unit.npy`, written from the finished
/// `.npy` a block at a time) and the HNSW graph over them (`hnsw/<f>.graph`), so graph node id
/// = row = region id.
pub(crate) fn build_graphs(
    dir: &Path,
    dims: &BTreeMap<Feature, usize>,
    params: HnswParams,
    seed: u64,
    builder: GraphBuilder,
) -> Result<BTreeMap<String, HnswInfo>> {
    let mut hnsw = BTreeMap::new();
    std::fs::create_dir_all(dir.join("hnsw")).at(dir.join("hnsw"))?;
    for (f, d) in dims {
        let raw = NpyMatrix::open(feature_path(dir, *f))?;
        let up = crate::store::unit_path(dir, *f);
        crate::index::write_unit_npy(&raw, &up)?;
        drop(raw);
        let unit = NpyMatrix::open(&up)?;
        let info = HnswInfo {
            basename: f.as_str().to_string(),
            max_nb_connection: params.max_nb_connection,
            ef_construction: params.ef_construction,
            seed: Some(seed),
            builder: Some(builder.as_str().to_string()),
        };
        crate::index::build_graph_file(
            &dir.join(info.graph_file()),
            unit.as_slice(),
            *d,
            params,
            seed,
            builder,
        )?;
        hnsw.insert(f.as_str().to_string(), info);
    }
    Ok(hnsw)
}

/// Length and SHA-256 of every file under `regions/`, `features/`, `hnsw/`, `tokens/` and
/// `dense/` (its grid matrix and image table; the per-image label maps below `dense/labels/`
/// are checked when read instead, so opening an index stays one `stat` per listed file).
pub(crate) fn record_files(dir: &Path) -> Result<BTreeMap<String, FileRecord>> {
    let mut files = BTreeMap::new();
    for sub in ["regions", "features", "hnsw", "tokens", "dense"] {
        let d = dir.join(sub);
        if !d.is_dir() {
            continue;
        }
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .at(&d)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            files.insert(format!("{sub}/{n}"), FileRecord::of(&d.join(&n))?);
        }
    }
    Ok(files)
}
