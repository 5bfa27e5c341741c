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
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use rayon::prelude::*;

use crate::dataset::{Dataset, ImageItem, RegionSettings, Skipped};
use crate::dense::DenseOptions;
use crate::encoder::{Encoder, EncoderOptions, Feature, Features};
use crate::error::{Error, IoContext, Result};
use crate::files::StagedDir;
use crate::index::{GraphBuilder, HnswParams};
use crate::region::{Region, RegionKind};
use crate::store::dense::{TokensInfo, TOKENS_FILE};
use crate::store::manifest::SegmentInfo;
use crate::store::manifest::{Counts, DatasetInfo, EncoderInfo, FileRecord, HnswInfo, Manifest};
use crate::store::{feature_path, HalfWriter, NpyMatrix, NpyWriter, RegionWriter};

mod segments;
pub(crate) use segments::add_counts;
pub use segments::Shard;

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
            batch_size: 32,
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
        let bytes = self.batch_size.saturating_mul(tensor_len).saturating_mul(4);
        if self.batch_size == 0 || self.batch_size > MAX_BATCH || bytes > MAX_BATCH_BYTES {
            return Err(Error::InvalidArgument(format!(
                "batch size must be between 1 and {MAX_BATCH} and its input at most {} GB; \
                 {} regions of this model's input would need {:.1} GB",
                MAX_BATCH_BYTES >> 30,
                self.batch_size,
                bytes as f64 / 1e9
            )));
        }
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
    /// Seconds spent inside the encoder.
    pub encode_seconds: f64,
    /// Seconds spent building HNSW graphs.
    pub hnsw_seconds: f64,
    /// Seconds inference waited for preprocessed regions (high: input-bound).
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

/// Most regions whose tensors are made at once (a piece of work sent to the encoder thread).
/// With a bounded channel this bounds the tensors in flight — ~0.6 MB per region at 224 px —
/// whatever an image holds (a noisy label map under `--min-area 1` has 100,000s of regions).
const PIECE: usize = 64;

/// Most bytes of tensors in one piece: fewer than [`PIECE`] regions for models with large
/// inputs (one 4096-px input is 201 MB).
const PIECE_BYTES: usize = 64 << 20;

/// What the producer sends the encoder thread, in dataset order.
enum Msg {
    /// One image was read: its regions follow in `Regions` messages; `Ok` holds the regions of
    /// it that were skipped and how many regions follow.
    Image(usize, Result<(Vec<Skipped>, usize)>),
    /// Up to [`PIECE`] regions (of one or more images, in order) and their tensors
    /// (`regions.len() × tensor_len` floats).
    Regions(Vec<Region>, Vec<f32>),
}

/// Reads one image and its regions, leaving out (and reporting) regions whose crop is far
/// larger than the image.
fn load(
    dataset: &dyn Dataset,
    item: &ImageItem,
    settings: &RegionSettings,
) -> Result<crate::dataset::ImageRegions> {
    let mut loaded = dataset.load(item, settings)?;
    // Annotations can claim any box; a crop far larger than its image is a wrong annotation,
    // not a region: skip it, keep the image's other regions.
    let (w, h) = (loaded.image.width(), loaded.image.height());
    let limit = (MAX_CROP_FACTOR * i64::from(w.max(h))).min(crate::preprocess::MAX_CROP_SIDE);
    let (regions, far): (Vec<Region>, Vec<Region>) = std::mem::take(&mut loaded.regions)
        .into_iter()
        .partition(|r| r.crop_box.width() <= limit && r.crop_box.height() <= limit);
    for r in far {
        loaded.skipped.push(Skipped::new(
            &item.image,
            format!(
                "region {:?} has box {:?}, far outside its {w}×{h} image",
                r.label_name,
                r.bbox.to_array(),
            ),
        ));
    }
    loaded.regions = regions;
    Ok(loaded)
}

/// Reads `items` in parallel blocks and sends, per block, each image's outcome and then its
/// regions' tensors in pieces of at most [`PIECE`], made in parallel. Stops when the receiver
/// is gone.
fn produce(
    dataset: &dyn Dataset,
    items: &[ImageItem],
    settings: &RegionSettings,
    pre: &crate::preprocess::Preprocessor,
    tx: &std::sync::mpsc::SyncSender<Msg>,
) {
    let chunk = (rayon::current_num_threads() * 2).max(4);
    let len = pre.tensor_len();
    let piece_len = (PIECE_BYTES / (len * 4).max(1)).clamp(1, PIECE);
    for (ci, block) in items.chunks(chunk).enumerate() {
        let loaded: Vec<Result<crate::dataset::ImageRegions>> = block
            .par_iter()
            .map(|item| load(dataset, item, settings))
            .collect();
        // The block's decoded images, and every region with the slot of its image.
        let mut images = Vec::new();
        let mut work: Vec<(usize, Region)> = Vec::new();
        let mut outcomes = Vec::new();
        for (i, res) in loaded.into_iter().enumerate() {
            let outcome = res.map(|l| {
                let n = l.regions.len();
                work.extend(l.regions.into_iter().map(|r| (images.len(), r)));
                images.push(l.image);
                (l.skipped, n)
            });
            outcomes.push(Msg::Image(ci * chunk + i, outcome));
        }
        for m in outcomes {
            if tx.send(m).is_err() {
                return; // the consumer stopped on an error
            }
        }
        let mut work = work.into_iter().peekable();
        while work.peek().is_some() {
            let piece: Vec<(usize, Region)> = work.by_ref().take(piece_len).collect();
            let mut tensors = vec![0f32; piece.len() * len];
            tensors
                .par_chunks_mut(len)
                .zip(&piece)
                .for_each(|(out, (slot, r))| pre.region_tensor(&images[*slot], r.crop_box, out));
            let regions = piece.into_iter().map(|(_, r)| r).collect();
            if tx.send(Msg::Regions(regions, tensors)).is_err() {
                return;
            }
        }
    }
}

/// Regions waiting for inference and their tensors, `regions.len() × tlen` floats.
struct Batch {
    regions: Vec<Region>,
    tensors: Vec<f32>,
}

/// Where embedded regions go, and the one place region ids are assigned.
///
/// **The id contract:** regions get ids 0, 1, 2, … in the order they are written here, and
/// each is written at once to all its files, so region id = Parquet row = row of every
/// `features/<feature>.npy` = point id in every HNSW graph (built from those `.npy` files in
/// row order). Readers rely on it ([`crate::IndexDir::open`] checks ids are 0..N in order).
struct Sink {
    parquet: RegionWriter,
    npy: BTreeMap<Feature, NpyWriter>,
    tokens: Option<HalfWriter>,
    next_id: u64,
    counts: Counts,
    /// Inputs of this segment's images that were skipped.
    skipped: Vec<Skipped>,
}

impl Sink {
    /// Creates the region file and one `.npy` per feature in `dir`; ids start at `first_id`.
    fn create(
        dir: &Path,
        shard: &str,
        dims: &BTreeMap<Feature, usize>,
        tokens: Option<&TokensInfo>,
        first_id: u64,
    ) -> Result<Sink> {
        for sub in ["regions", "features", "hnsw"] {
            std::fs::create_dir_all(dir.join(sub)).at(dir.join(sub))?;
        }
        let tokens = match tokens {
            Some(t) => {
                std::fs::create_dir_all(dir.join("tokens")).at(dir.join("tokens"))?;
                Some(HalfWriter::create(
                    dir.join(TOKENS_FILE),
                    &[t.tokens, t.dim],
                )?)
            }
            None => None,
        };
        Ok(Sink {
            tokens,
            parquet: RegionWriter::create(dir.join(shard), dims)?,
            npy: dims
                .iter()
                .map(|(f, d)| Ok((*f, NpyWriter::create(feature_path(dir, *f), *d)?)))
                .collect::<Result<_>>()?,
            next_id: first_id,
            counts: Counts::default(),
            skipped: Vec::new(),
        })
    }

    fn write(
        &mut self,
        mut regions: Vec<Region>,
        features: &Features,
        tokens: Option<&[f32]>,
    ) -> Result<()> {
        for r in &mut regions {
            r.id = self.next_id;
            self.next_id += 1;
            match r.kind {
                RegionKind::Part => self.counts.parts += 1,
                RegionKind::Object => self.counts.objects += 1,
            }
        }
        self.counts.regions += regions.len() as u64;
        self.parquet.write(&regions, features)?;
        for (f, w) in &mut self.npy {
            w.append(&features.values[f])?;
        }
        match (&mut self.tokens, tokens) {
            (Some(w), Some(t)) => w.append(t)?,
            (None, None) => {}
            _ => {
                return Err(Error::InvalidArgument(
                    "region tokens are kept for every batch or for none".into(),
                ))
            }
        }
        Ok(())
    }

    /// Closes every file (footer, header, fsync) and returns the counts and skipped inputs.
    fn finish(self) -> Result<(Counts, Vec<Skipped>)> {
        self.parquet.finish()?;
        for w in self.npy.into_values() {
            w.finish()?;
        }
        if let Some(t) = self.tokens {
            t.finish()?;
        }
        Ok((self.counts, self.skipped))
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
        hnsw_seconds: timing.hnsw_seconds,
        wait_seconds: timing.wait_seconds,
        dense_seconds: timing.dense_seconds,
        dense_encode_seconds: timing.dense_encode_seconds,
        dense_windows: timing.dense_windows,
        cleaned,
        resumed_after,
    })
}

/// Writes segments: the open one's [`Sink`], and what closing one takes (dense pass, graphs,
/// commit).
struct Segmenter<'a> {
    dataset: &'a dyn Dataset,
    encoder: &'a Encoder,
    opts: &'a IngestOptions,
    stage: &'a Path,
    items: &'a [ImageItem],
    tokens: Option<TokensInfo>,
    manifest: &'a mut Manifest,
    sink: Option<Sink>,
    /// First item of the open segment.
    start_item: usize,
    timing: Timing,
}

impl Segmenter<'_> {
    /// The open segment's sink (created on first use).
    fn sink(&mut self) -> Result<&mut Sink> {
        if self.sink.is_none() {
            let (_, dir) = segments::segment_dir(self.stage, self.manifest.segments.len());
            if dir.exists() {
                std::fs::remove_dir_all(&dir).at(&dir)?;
            }
            std::fs::create_dir_all(&dir).at(&dir)?;
            self.sink = Some(Sink::create(
                &dir,
                crate::store::SEGMENT_REGIONS,
                self.encoder.dims(),
                self.tokens.as_ref(),
                self.manifest.counts.regions,
            )?);
        }
        Ok(self.sink.as_mut().expect("created"))
    }

    /// Regions written to the open segment.
    fn regions(&self) -> u64 {
        self.sink.as_ref().map_or(0, |s| s.counts.regions)
    }

    /// Closes the open segment at item `end` (exclusive): finishes its files, runs the dense
    /// pass over its images, builds its graphs and commits it. A segment without regions is
    /// not written; its images' counts and skipped inputs go to the previous segment (or, with
    /// none, stay with the manifest).
    fn close(&mut self, end: usize) -> Result<()> {
        let start = self.start_item;
        self.start_item = end;
        let Some(sink) = self.sink.take() else {
            return Ok(());
        };
        let (counts, skipped) = sink.finish()?;
        crate::files::crash_point("segment-written");
        if counts.regions == 0 {
            // Images without regions: their counts and reasons are kept with the last
            // segment's (or the manifest's, before any), and the progress moves on.
            if let Some(last) = self.manifest.segments.last_mut() {
                add_counts(&mut last.counts, &counts);
                if let Some(it) = last.items.as_mut() {
                    it[1] = end as u64;
                }
            }
            self.manifest.counts.images += counts.images;
            self.manifest.counts.images_skipped += counts.images_skipped;
            self.manifest.skipped.extend(skipped);
            let (_, dir) = segments::segment_dir(self.stage, self.manifest.segments.len());
            let _ = std::fs::remove_dir_all(&dir);
            if let Some(p) = self.manifest.ingest.as_mut() {
                p.next_item = end as u64;
            }
            return self.manifest.write_atomic(self.stage);
        }
        let (name, dir) = segments::segment_dir(self.stage, self.manifest.segments.len());
        let mut skipped = skipped;
        // Dense grids of the segment's images.
        let td = Instant::now();
        let mut dense_counts = None;
        if self.opts.dense.is_some() {
            let out = crate::dense::write_dense(
                self.dataset,
                &self.items[start..end],
                self.encoder,
                self.opts,
                &dir,
            )?;
            skipped.extend(out.skipped.iter().cloned());
            dense_counts = Some([out.info.images, out.info.cells]);
            self.timing.dense_encode_seconds += out.encode_seconds;
            self.timing.dense_windows += out.windows;
            self.manifest.dense = Some(match self.manifest.dense.take() {
                None => out.info,
                Some(prev) => crate::store::dense::merge_info(&prev, &out.info),
            });
        }
        self.timing.dense_seconds += td.elapsed().as_secs_f64();
        let th = Instant::now();
        build_graphs(
            &dir,
            self.encoder.dims(),
            self.opts.hnsw,
            crate::index::DEFAULT_SEED,
            self.opts.graph_builder,
        )?;
        self.timing.hnsw_seconds += th.elapsed().as_secs_f64();
        crate::files::crash_point("graphs-built");
        let info = SegmentInfo {
            name,
            first_id: self.manifest.counts.regions,
            counts,
            origin: self
                .opts
                .shard
                .map(|s| crate::store::manifest::SegmentOrigin {
                    shard: Some(s.to_string()),
                    index: None,
                    segment: None,
                }),
            items: Some([start as u64, end as u64]),
            dense: dense_counts,
            files: record_files(&dir)?,
        };
        self.manifest.skipped.extend(skipped);
        segments::commit(self.stage, self.manifest, info, end as u64)?;
        tracing::info!(
            "committed segment {} ({} regions in all)",
            self.manifest.segments.len(),
            self.manifest.counts.regions
        );
        Ok(())
    }
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

/// Seconds spent in each stage.
#[derive(Debug, Clone, Default)]
struct Timing {
    encode_seconds: f64,
    wait_seconds: f64,
    hnsw_seconds: f64,
    dense_seconds: f64,
    dense_encode_seconds: f64,
    dense_windows: u64,
}

/// An image whose outcome arrived and whose regions may still be coming.
struct Pending {
    item: usize,
    remaining: usize,
    outcome: std::result::Result<Vec<Skipped>, String>,
}

/// Streams the images from `first` on through preprocessing and the encoder into `seg`'s
/// segments, closing one at the first image boundary at or past `--segment-size` regions;
/// unreadable inputs are skipped and reported (or, with `strict`, end the run).
fn embed_all(seg: &mut Segmenter<'_>, first: usize) -> Result<()> {
    let t0 = Instant::now();
    let (dataset, encoder, opts) = (seg.dataset, seg.encoder, seg.opts);
    let items = &seg.items[first..];
    let pre = encoder.preprocessor();
    let tlen = pre.tensor_len();
    let settings = opts.settings;
    let pb = progress_bar(opts.progress, items.len(), "images");
    let (tx, rx) = sync_channel::<Msg>(4);
    let want_tokens = seg.tokens.is_some();
    let base_regions = seg.manifest.counts.regions;
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || produce(dataset, items, &settings, &pre, &tx));
        // Owning the receiver here means an early return drops it, which unblocks the
        // producer's `send` and lets the scope end.
        let rx = rx;
        let mut batch = Batch {
            regions: Vec::with_capacity(opts.batch_size),
            tensors: Vec::with_capacity(opts.batch_size * tlen),
        };
        let run = |batch: &mut Batch, seg: &mut Segmenter<'_>| -> Result<()> {
            if batch.regions.is_empty() {
                return Ok(());
            }
            let te = Instant::now();
            let (feats, tokens) =
                encoder.embed_with_tokens(&batch.tensors, batch.regions.len(), want_tokens)?;
            seg.timing.encode_seconds += te.elapsed().as_secs_f64();
            seg.sink()?.write(
                std::mem::take(&mut batch.regions),
                &feats,
                tokens.as_deref(),
            )?;
            batch.tensors.clear();
            Ok(())
        };
        // Images in order whose regions are still arriving; a finished one is counted in the
        // open segment, which closes after it once it holds --segment-size regions.
        let mut pending: std::collections::VecDeque<Pending> = Default::default();
        let finish_images = |pending: &mut std::collections::VecDeque<Pending>,
                             batch: &mut Batch,
                             seg: &mut Segmenter<'_>|
         -> Result<()> {
            while pending.front().is_some_and(|p| p.remaining == 0) {
                let p = pending.pop_front().expect("front");
                let all_items = seg.items;
                let sink = seg.sink()?;
                match p.outcome {
                    Ok(skipped) => {
                        sink.counts.images += 1;
                        sink.skipped.extend(skipped);
                    }
                    Err(reason) => {
                        sink.counts.images_skipped += 1;
                        sink.skipped
                            .push(Skipped::new(&all_items[first + p.item].image, reason));
                    }
                }
                pb.inc(1);
                if seg.regions() + batch.regions.len() as u64 >= opts.segment_size as u64 {
                    run(batch, seg)?;
                    seg.close(first + p.item + 1)?;
                }
            }
            Ok(())
        };
        loop {
            let tw = Instant::now();
            let Ok(msg) = rx.recv() else { break };
            seg.timing.wait_seconds += tw.elapsed().as_secs_f64();
            match msg {
                Msg::Image(idx, Ok((regions_skipped, n))) => {
                    if let (true, Some(s)) = (opts.strict, regions_skipped.first()) {
                        return Err(strict_stop(dataset, s));
                    }
                    pending.push_back(Pending {
                        item: idx,
                        remaining: n,
                        outcome: Ok(regions_skipped),
                    });
                }
                Msg::Image(idx, Err(e)) => {
                    if opts.strict {
                        return Err(e);
                    }
                    tracing::warn!("skipping {}: {e}", items[idx].image);
                    pending.push_back(Pending {
                        item: idx,
                        remaining: 0,
                        outcome: Err(e.to_string()),
                    });
                }
                Msg::Regions(regions, tensors) => {
                    for (r, t) in regions.into_iter().zip(tensors.chunks_exact(tlen)) {
                        finish_images(&mut pending, &mut batch, seg)?;
                        let Some(p) = pending.front_mut() else {
                            return Err(Error::InvalidArgument(
                                "internal: a region arrived before its image".into(),
                            ));
                        };
                        p.remaining -= 1;
                        batch.regions.push(r);
                        batch.tensors.extend_from_slice(t);
                        if batch.regions.len() == opts.batch_size {
                            run(&mut batch, seg)?;
                        }
                    }
                    let done = seg.manifest.counts.regions - base_regions + seg.regions();
                    let secs = t0.elapsed().as_secs_f64().max(1e-9);
                    pb.set_message(format!(
                        "{} regions, {:.1} regions/s",
                        done,
                        done as f64 / secs
                    ));
                }
            }
            finish_images(&mut pending, &mut batch, seg)?;
        }
        finish_images(&mut pending, &mut batch, seg)?;
        run(&mut batch, seg)?;
        Ok(())
    })?;
    pb.finish_and_clear();
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_of_many_regions_is_sent_in_bounded_pieces() {
        // A 100 × 100 checkerboard label map: 10,000 one-pixel regions in one image.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["img/val", "ann/val"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        image::RgbImage::from_pixel(100, 100, image::Rgb([90, 120, 150]))
            .save(root.join("img/val/a.png"))
            .unwrap();
        image::GrayImage::from_fn(100, 100, |x, y| image::Luma([1 + ((x + y) % 2) as u8]))
            .save(root.join("ann/val/a.png"))
            .unwrap();
        let ds = crate::MmsegDataset::open(root).unwrap();
        let settings = RegionSettings {
            min_area: 1,
            ..RegionSettings::default()
        };
        let pre = crate::preprocess::Preprocessor {
            size: (8, 8),
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let (tx, rx) = sync_channel(1);
        let mut regions = 0;
        std::thread::scope(|s| {
            s.spawn(|| produce(&ds, ds.items(), &settings, &pre, &tx));
            let mut images = 0;
            while let Ok(m) = rx.recv_timeout(std::time::Duration::from_secs(60)) {
                match m {
                    Msg::Image(_, r) => {
                        assert!(r.unwrap().0.is_empty());
                        images += 1;
                    }
                    Msg::Regions(r, t) => {
                        assert!(r.len() <= PIECE, "a piece of {} regions", r.len());
                        assert_eq!(t.len(), r.len() * pre.tensor_len());
                        regions += r.len();
                        if regions == 10_000 {
                            break;
                        }
                    }
                }
            }
            assert_eq!(images, 1);
        });
        assert_eq!(regions, 10_000);
    }
}
