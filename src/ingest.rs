//! `partlens ingest`: dataset → regions → tensors → encoder → index directory.
//!
//! The stages, in order ([`ingest_with_encoder`]):
//! 1. **stage** — lock `--out`, clean up after killed runs, create `.NAME.partial-PID` beside
//!    it ([`crate::files::StagedDir`]);
//! 2. **embed** — decode, cut and preprocess images in parallel (rayon) on a producer thread a
//!    few images ahead of inference, through a bounded channel; the encoder runs batches on
//!    the calling thread and the [`Sink`] streams rows into Parquet and `.npy`
//!    (with `--tokens`, each region's token grid too, from the same encoder run);
//! 3. **dense** — with `--dense`, a second pass over the images: every image's token grid
//!    ([`crate::dense`]);
//! 4. **graphs** — one HNSW graph per feature from the memory-mapped `.npy`;
//! 5. **seal** — sizes and SHA-256 of every file, the marker and the manifest (atomically);
//! 6. **commit** — swap the staging folder into `--out` in one atomic step.
//!
//! A run that indexes no region fails, and `--out` is left as it was.

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
use crate::store::manifest::{Counts, DatasetInfo, EncoderInfo, FileRecord, HnswInfo, Manifest};
use crate::store::{
    feature_path, HalfWriter, NpyMatrix, NpyWriter, RegionWriter, MARKER_FILE, MARKER_TEXT,
};

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
}

impl IngestReport {
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
    /// it that were skipped.
    Image(usize, Result<Vec<Skipped>>),
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
                work.extend(l.regions.into_iter().map(|r| (images.len(), r)));
                images.push(l.image);
                l.skipped
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
}

impl Sink {
    /// Creates the region file and one `.npy` per feature in `dir`.
    fn create(
        dir: &Path,
        shard: &str,
        dims: &BTreeMap<Feature, usize>,
        tokens: Option<&TokensInfo>,
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
            next_id: 0,
            counts: Counts::default(),
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

    /// Closes every file (footer, header, fsync) and returns the counts.
    fn finish(self) -> Result<Counts> {
        self.parquet.finish()?;
        for w in self.npy.into_values() {
            w.finish()?;
        }
        if let Some(t) = self.tokens {
            t.finish()?;
        }
        Ok(self.counts)
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

/// Ingests `dataset` with an already loaded encoder.
pub fn ingest_with_encoder(
    dataset: &dyn Dataset,
    encoder: &Encoder,
    opts: &IngestOptions,
) -> Result<IngestReport> {
    let t0 = Instant::now();
    opts.validate(encoder.preprocessor().tensor_len())?;
    tracing::info!(
        "ingesting {} images from {} ({}) with {} ({}) on {}",
        dataset.items().len(),
        dataset.root().display(),
        dataset.format(),
        encoder.spec().name,
        encoder.path().display(),
        encoder.provider()
    );
    let out = &opts.out;
    let staged = StagedDir::begin(out, "index")?;
    check_target(staged.target(), opts.overwrite)?;
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

    // Embed.
    let dims = encoder.dims().clone();
    let shard = "regions/part-00000.parquet".to_string();
    let mut sink = Sink::create(&stage, &shard, &dims, tokens.as_ref())?;
    let mut skipped: Vec<Skipped> = dataset.listing_problems().to_vec();
    if let (true, Some(s)) = (opts.strict, skipped.first()) {
        return Err(strict_stop(dataset, s));
    }
    let timing = embed_all(dataset, encoder, opts, &mut sink, &mut skipped)?;
    let counts = sink.finish()?;
    if counts.regions == 0 {
        return Err(nothing_indexed(dataset, &counts, &skipped, &opts.settings));
    }

    // Dense grids: a second pass over the images.
    let td = Instant::now();
    let dense = match &opts.dense {
        Some(_) => {
            let out = crate::dense::write_dense(dataset, encoder, opts, &stage)?;
            skipped.extend(out.skipped.iter().cloned());
            Some(out)
        }
        None => None,
    };
    let dense_seconds = td.elapsed().as_secs_f64();

    // Graphs.
    let th = Instant::now();
    let hnsw = build_graphs(
        &stage,
        &dims,
        opts.hnsw,
        crate::index::DEFAULT_SEED,
        opts.graph_builder,
    )?;
    let hnsw_seconds = th.elapsed().as_secs_f64();

    // Seal.
    let manifest = Manifest {
        schema_version: crate::store::manifest::SCHEMA_VERSION,
        partlens_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
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
        counts,
        features: dims.keys().map(|f| f.as_str().to_string()).collect(),
        shards: vec![shard],
        hnsw,
        skipped,
        files: record_files(&stage)?,
        dense: dense.as_ref().map(|d| d.info.clone()),
        tokens,
    };
    let marker = stage.join(MARKER_FILE);
    std::fs::write(&marker, MARKER_TEXT).at(&marker)?;
    manifest.write_atomic(&stage)?;

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
        hnsw_seconds,
        wait_seconds: timing.wait_seconds,
        dense_seconds,
        dense_encode_seconds: dense.as_ref().map_or(0.0, |d| d.encode_seconds),
        dense_windows: dense.as_ref().map_or(0, |d| d.windows),
        cleaned,
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
fn check_target(out: &Path, overwrite: bool) -> Result<()> {
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
    counts: &Counts,
    skipped: &[Skipped],
    settings: &RegionSettings,
) -> Error {
    let mut message = format!(
        "no region was indexed: {} of {} images were read, {} inputs skipped",
        counts.images,
        dataset.items().len(),
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

/// Time spent in the encoder and waiting for input.
struct Timing {
    encode_seconds: f64,
    wait_seconds: f64,
}

/// Streams every image of `dataset` through preprocessing and the encoder into `sink`;
/// unreadable inputs go to `skipped` (or, with `strict`, end the run).
fn embed_all(
    dataset: &dyn Dataset,
    encoder: &Encoder,
    opts: &IngestOptions,
    sink: &mut Sink,
    skipped: &mut Vec<Skipped>,
) -> Result<Timing> {
    let t0 = Instant::now();
    let items = dataset.items();
    let pre = encoder.preprocessor();
    let tlen = pre.tensor_len();
    let settings = opts.settings;
    let pb = progress_bar(opts.progress, items.len(), "images");
    let (tx, rx) = sync_channel::<Msg>(4);
    let mut timing = Timing {
        encode_seconds: 0.0,
        wait_seconds: 0.0,
    };
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || produce(dataset, items, &settings, &pre, &tx));
        // Owning the receiver here means an early return drops it, which unblocks the
        // producer's `send` and lets the scope end.
        let rx = rx;
        let mut batch = Batch {
            regions: Vec::with_capacity(opts.batch_size),
            tensors: Vec::with_capacity(opts.batch_size * tlen),
        };
        let mut run = |batch: &mut Batch, sink: &mut Sink| -> Result<()> {
            let te = Instant::now();
            let (feats, tokens) = encoder.embed_with_tokens(
                &batch.tensors,
                batch.regions.len(),
                sink.tokens.is_some(),
            )?;
            timing.encode_seconds += te.elapsed().as_secs_f64();
            sink.write(
                std::mem::take(&mut batch.regions),
                &feats,
                tokens.as_deref(),
            )?;
            batch.tensors.clear();
            Ok(())
        };
        loop {
            let tw = Instant::now();
            let Ok(msg) = rx.recv() else { break };
            timing.wait_seconds += tw.elapsed().as_secs_f64();
            match msg {
                Msg::Image(_, Ok(regions_skipped)) => {
                    sink.counts.images += 1;
                    if let (true, Some(s)) = (opts.strict, regions_skipped.first()) {
                        return Err(strict_stop(dataset, s));
                    }
                    skipped.extend(regions_skipped);
                    pb.inc(1);
                }
                Msg::Image(idx, Err(e)) => {
                    if opts.strict {
                        return Err(e);
                    }
                    let item = &items[idx];
                    tracing::warn!("skipping {}: {e}", item.image);
                    sink.counts.images_skipped += 1;
                    skipped.push(Skipped::new(&item.image, e.to_string()));
                    pb.inc(1);
                }
                Msg::Regions(regions, tensors) => {
                    for (r, t) in regions.into_iter().zip(tensors.chunks_exact(tlen)) {
                        batch.regions.push(r);
                        batch.tensors.extend_from_slice(t);
                        if batch.regions.len() == opts.batch_size {
                            run(&mut batch, sink)?;
                        }
                    }
                    let secs = t0.elapsed().as_secs_f64().max(1e-9);
                    pb.set_message(format!(
                        "{} regions, {:.1} regions/s",
                        sink.counts.regions,
                        sink.counts.regions as f64 / secs
                    ));
                }
            }
        }
        if !batch.regions.is_empty() {
            run(&mut batch, sink)?;
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    Ok(timing)
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
fn record_files(dir: &Path) -> Result<BTreeMap<String, FileRecord>> {
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
                        assert!(r.unwrap().is_empty());
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
