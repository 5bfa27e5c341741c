//! `partlens ingest`: dataset → regions → tensors → encoder → index directory.
//!
//! Decoding, region extraction and preprocessing run in parallel (rayon) on a producer thread,
//! a few images ahead of inference, through a bounded channel; the encoder runs batches on the
//! calling thread and streams rows into Parquet and `.npy`. The index is built in a temporary
//! folder beside the target and renamed into place only when complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use rayon::prelude::*;

use crate::dataset::{Dataset, ImageItem, RegionSettings};
use crate::encoder::{Encoder, EncoderOptions, Feature, Features};
use crate::error::{Error, IoContext, Result};
use crate::index::{HnswIndex, HnswParams};
use crate::region::{Region, RegionKind};
use crate::store::manifest::{Counts, DatasetInfo, EncoderInfo, HnswInfo, Manifest, Skipped};
use crate::store::{feature_path, NpyMatrix, NpyWriter, RegionWriter};

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
        }
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
}

impl IngestReport {
    /// Regions embedded per second of wall time (excluding the HNSW build).
    pub fn regions_per_second(&self) -> f64 {
        self.manifest.counts.regions as f64 / (self.seconds - self.hnsw_seconds).max(1e-9)
    }
}

/// One image's outcome from the producer.
type Prepared = std::result::Result<(Vec<Region>, Vec<f32>), Error>;

fn prepare(
    dataset: &dyn Dataset,
    item: &ImageItem,
    settings: &RegionSettings,
    pre: &crate::preprocess::Preprocessor,
) -> Prepared {
    let loaded = dataset.load(item, settings)?;
    // Annotations can claim any box; a crop far larger than its image is a wrong annotation
    // (and would need gigabytes), not a region.
    let limit = 16 * i64::from(loaded.image.width().max(loaded.image.height()));
    if let Some(r) = loaded
        .regions
        .iter()
        .find(|r| r.crop_box.width() > limit || r.crop_box.height() > limit)
    {
        return Err(Error::annotation(
            &item.image_path,
            format!(
                "region {:?} has box {:?}, far outside its {}×{} image",
                r.label_name,
                r.bbox.to_array(),
                loaded.image.width(),
                loaded.image.height()
            ),
        ));
    }
    let len = pre.tensor_len();
    let mut tensors = vec![0f32; loaded.regions.len() * len];
    tensors
        .par_chunks_mut(len)
        .zip(&loaded.regions)
        .for_each(|(out, r)| pre.region_tensor(&loaded.image, r.crop_box, out));
    Ok((loaded.regions, tensors))
}

/// Regions waiting for inference and their tensors, `regions.len() × tlen` floats.
struct Batch {
    regions: Vec<Region>,
    tensors: Vec<f32>,
}

impl Batch {
    fn new(size: usize, tlen: usize) -> Self {
        Batch {
            regions: Vec::with_capacity(size),
            tensors: Vec::with_capacity(size * tlen),
        }
    }
}

struct Sink {
    parquet: RegionWriter,
    npy: BTreeMap<Feature, NpyWriter>,
    next_id: u64,
    counts: Counts,
}

impl Sink {
    fn write(&mut self, mut regions: Vec<Region>, features: &Features) -> Result<()> {
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
        Ok(())
    }
}

fn progress_bar(enabled: bool, len: usize) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images · {msg} · {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// `<parent>/.<name>.<what>-<pid>`: a sibling of `out`, so renames stay on one file system.
fn staging_dir(out: &Path, what: &str) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a folder name", out.display())))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).at(&parent)?;
    Ok(parent.join(format!(
        ".{}.{what}-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
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
    let out = &opts.out;
    check_target(out, opts.overwrite)?;
    opts.settings.validate()?;
    if opts.batch_size == 0 {
        return Err(Error::InvalidArgument(
            "batch size must be at least 1".into(),
        ));
    }
    let stage = staging_dir(out, "partial")?;
    if stage.exists() {
        std::fs::remove_dir_all(&stage).at(&stage)?;
    }
    let result = build(dataset, encoder, opts, &stage).and_then(|mut report| {
        replace_dir(&stage, out)?;
        report.path = out.clone();
        Ok(report)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&stage);
    }
    result
}

/// Refuses to write over anything but an existing partlens index, and over that only with
/// `overwrite`: `--out ~/photos --overwrite` must never delete photos.
fn check_target(out: &Path, overwrite: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let is_index = out.join("manifest.json").is_file();
    let is_empty_dir = out.is_dir() && std::fs::read_dir(out).at(out)?.next().is_none();
    if !out.is_dir() || !(is_index || is_empty_dir) {
        return Err(Error::InvalidArgument(format!(
            "{} exists and is not a partlens index; refusing to replace it",
            out.display()
        )));
    }
    if is_index && !overwrite {
        return Err(Error::InvalidArgument(format!(
            "{} already exists; pass --overwrite to replace it",
            out.display()
        )));
    }
    Ok(())
}

/// Moves the finished `stage` to `out`. An old index is renamed aside first and deleted only
/// after the new one is in place; if the final rename fails, the old one is put back.
fn replace_dir(stage: &Path, out: &Path) -> Result<()> {
    let old = staging_dir(out, "old")?;
    let had_old = out.exists();
    if had_old {
        std::fs::rename(out, &old).at(out)?;
    }
    if let Err(e) = std::fs::rename(stage, out) {
        if had_old {
            let _ = std::fs::rename(&old, out);
        }
        return Err(Error::io(out, e));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    if had_old {
        std::fs::remove_dir_all(&old).at(&old)?;
    }
    Ok(())
}

fn build(
    dataset: &dyn Dataset,
    encoder: &Encoder,
    opts: &IngestOptions,
    stage: &Path,
) -> Result<IngestReport> {
    let t0 = Instant::now();
    for sub in ["regions", "features", "hnsw"] {
        std::fs::create_dir_all(stage.join(sub)).at(stage.join(sub))?;
    }
    let dims = encoder.dims().clone();
    let shard = "regions/part-00000.parquet".to_string();
    let mut sink = Sink {
        parquet: RegionWriter::create(stage.join(&shard), &dims)?,
        npy: dims
            .iter()
            .map(|(f, d)| Ok((*f, NpyWriter::create(feature_path(stage, *f), *d)?)))
            .collect::<Result<_>>()?,
        next_id: 0,
        counts: Counts::default(),
    };
    let mut skipped: Vec<Skipped> = dataset
        .listing_problems()
        .iter()
        .map(|(p, r)| Skipped {
            path: p.clone(),
            reason: r.clone(),
        })
        .collect();
    if opts.strict {
        if let Some(s) = skipped.first() {
            return Err(Error::Dataset {
                path: dataset.root().to_path_buf(),
                message: format!("{}: {} (--strict)", s.path, s.reason),
            });
        }
    }

    let items = dataset.items();
    let pre = encoder.preprocessor();
    let tlen = pre.tensor_len();
    let settings = opts.settings;
    let pb = progress_bar(opts.progress, items.len());
    let chunk = (rayon::current_num_threads() * 2).max(4);
    let (tx, rx) = sync_channel::<Vec<(usize, Prepared)>>(2);
    let mut encode_seconds = 0.0;
    let mut wait_seconds = 0.0;

    let consumed: Result<()> = std::thread::scope(|scope| {
        scope.spawn(move || {
            for (ci, block) in items.chunks(chunk).enumerate() {
                let prepared: Vec<(usize, Prepared)> = block
                    .par_iter()
                    .enumerate()
                    .map(|(i, item)| (ci * chunk + i, prepare(dataset, item, &settings, &pre)))
                    .collect();
                if tx.send(prepared).is_err() {
                    return; // the consumer stopped on an error
                }
            }
        });
        // Owning the receiver here means an early return drops it, which unblocks the
        // producer's `send` and lets the scope end.
        let rx = rx;
        let mut batch = Batch::new(opts.batch_size, tlen);
        let mut run = |batch: &mut Batch, sink: &mut Sink| -> Result<()> {
            let te = Instant::now();
            let feats = encoder.embed(&batch.tensors, batch.regions.len())?;
            encode_seconds += te.elapsed().as_secs_f64();
            sink.write(std::mem::take(&mut batch.regions), &feats)?;
            batch.tensors.clear();
            Ok(())
        };
        loop {
            let tw = Instant::now();
            let Ok(block) = rx.recv() else { break };
            wait_seconds += tw.elapsed().as_secs_f64();
            for (idx, outcome) in block {
                let item = &items[idx];
                match outcome {
                    Ok((regions, tensors)) => {
                        sink.counts.images += 1;
                        for (r, t) in regions.into_iter().zip(tensors.chunks_exact(tlen)) {
                            batch.regions.push(r);
                            batch.tensors.extend_from_slice(t);
                            if batch.regions.len() == opts.batch_size {
                                run(&mut batch, &mut sink)?;
                            }
                        }
                    }
                    Err(e) => {
                        if opts.strict {
                            return Err(e);
                        }
                        tracing::warn!("skipping {}: {e}", item.image);
                        sink.counts.images_skipped += 1;
                        skipped.push(Skipped {
                            path: item.image.clone(),
                            reason: e.to_string(),
                        });
                    }
                }
                pb.inc(1);
            }
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!(
                "{} regions, {:.1} regions/s",
                sink.counts.regions,
                sink.counts.regions as f64 / secs
            ));
        }
        if !batch.regions.is_empty() {
            run(&mut batch, &mut sink)?;
        }
        Ok(())
    });
    consumed?;
    pb.finish_and_clear();

    let Sink {
        parquet,
        npy,
        counts,
        ..
    } = sink;
    let tf = Instant::now();
    parquet.finish()?;
    for w in npy.into_values() {
        w.finish()?;
    }
    tracing::debug!(
        "closing the region files took {:.3} s",
        tf.elapsed().as_secs_f64()
    );

    let th = Instant::now();
    let mut hnsw = BTreeMap::new();
    if counts.regions > 0 {
        for (f, d) in &dims {
            let m = NpyMatrix::open(feature_path(stage, *f))?;
            let graph = HnswIndex::build_normalizing(m.as_slice(), *d, opts.hnsw);
            let basename = graph.dump(&stage.join("hnsw"), f.as_str())?;
            hnsw.insert(
                f.as_str().to_string(),
                HnswInfo {
                    basename,
                    max_nb_connection: opts.hnsw.max_nb_connection,
                    ef_construction: opts.hnsw.ef_construction,
                },
            );
        }
    }
    let hnsw_seconds = th.elapsed().as_secs_f64();

    let model_abs = std::fs::canonicalize(encoder.path()).unwrap_or(encoder.path().into());
    let root_abs = std::fs::canonicalize(dataset.root()).unwrap_or(dataset.root().into());
    let manifest = Manifest {
        schema_version: crate::store::manifest::SCHEMA_VERSION,
        partlens_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        encoder: EncoderInfo {
            file: model_abs.display().to_string(),
            sha256: encoder.sha256().to_string(),
            spec: encoder.spec().clone(),
            provider: encoder.provider().to_string(),
            dims: dims
                .iter()
                .map(|(f, d)| (f.as_str().to_string(), *d))
                .collect(),
        },
        dataset: DatasetInfo {
            path: root_abs.display().to_string(),
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
    };
    manifest.write_atomic(stage)?;
    Ok(IngestReport {
        path: stage.to_path_buf(),
        manifest,
        seconds: t0.elapsed().as_secs_f64(),
        encode_seconds,
        hnsw_seconds,
        wait_seconds,
    })
}
