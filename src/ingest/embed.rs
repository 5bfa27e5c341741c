//! The embedding stage: a producer thread reads and preprocesses images a few ahead of
//! inference; the calling thread makes batches of the producer's pieces and sends each to one
//! of the encoder's sessions (a thread per session, [`Pipeline`]), writes the results in batch
//! order to the open segment ([`Sink`]), and closes a segment at the first image boundary at
//! or past `--segment-size` regions ([`Segmenter`]: dense pass, graphs, commit).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::{
    add_counts, build_graphs, progress_bar, record_files, segments, strict_stop, IngestOptions,
    MAX_CROP_FACTOR,
};
use crate::dataset::{Dataset, ImageItem, RegionSettings, Skipped};
use crate::encoder::{Encoder, Feature, Features};
use crate::error::{Error, IoContext, Result};
use crate::region::{Region, RegionKind};
use crate::store::dense::{TokensInfo, TOKENS_FILE};
use crate::store::manifest::{Counts, Manifest, SegmentInfo};
use crate::store::{feature_path, HalfWriter, NpyWriter, RegionWriter};

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
/// regions' tensors in pieces of at most [`PIECE`], made in parallel. The next block is
/// decoded while the current one's tensors are made, so no core waits at a block's end (a
/// block is one image per thread: two blocks in memory at most). Stops when the receiver is
/// gone.
fn produce(
    dataset: &dyn Dataset,
    items: &[ImageItem],
    settings: &RegionSettings,
    pre: &crate::preprocess::Preprocessor,
    tx: &std::sync::mpsc::SyncSender<Msg>,
) {
    let chunk = rayon::current_num_threads().max(2);
    let len = pre.tensor_len();
    let piece_len = (PIECE_BYTES / (len * 4).max(1)).clamp(1, PIECE);
    let load_block = |block: &[ImageItem]| -> Vec<Result<crate::dataset::ImageRegions>> {
        block
            .par_iter()
            .map(|item| load(dataset, item, settings))
            .collect()
    };
    let blocks: Vec<&[ImageItem]> = items.chunks(chunk).collect();
    let mut next = blocks.first().map(|b| load_block(b));
    for ci in 0..blocks.len() {
        let Some(loaded) = next.take() else { return };
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
        let send_pieces = || -> bool {
            let mut work = work.into_iter().peekable();
            while work.peek().is_some() {
                let piece: Vec<(usize, Region)> = work.by_ref().take(piece_len).collect();
                let mut tensors = vec![0f32; piece.len() * len];
                tensors
                    .par_chunks_mut(len)
                    .zip(&piece)
                    .for_each(|(out, (slot, r))| {
                        pre.region_tensor(&images[*slot], r.crop_box, out)
                    });
                let regions = piece.into_iter().map(|(_, r)| r).collect();
                if tx.send(Msg::Regions(regions, tensors)).is_err() {
                    return false;
                }
            }
            true
        };
        // The next block decodes on a thread of its own (its work goes to rayon's pool) while
        // this one sends: a send that blocks must never block a rayon worker, or the graph
        // build's broadcast (which needs every worker) would wait on it forever.
        let (sent, loaded) = std::thread::scope(|s| {
            let decode = s.spawn(|| blocks.get(ci + 1).map(|b| load_block(b)));
            let sent = send_pieces();
            (sent, decode.join())
        });
        let Ok(loaded) = loaded else {
            return; // a decode panicked: the consumer sees the channel close
        };
        if !sent {
            return;
        }
        next = loaded;
    }
}

/// Regions waiting for inference and where their tensors lie: runs of the producer's pieces,
/// shared, never copied into one buffer here (the encoder copies them once, into its input).
#[derive(Default)]
struct Batch {
    regions: Vec<Region>,
    parts: Vec<(Arc<Vec<f32>>, Range<usize>)>,
}

impl Batch {
    /// Adds region `r`, whose tensor is the `i`-th of `piece` (`tlen` floats each).
    fn push(&mut self, r: Region, piece: &Arc<Vec<f32>>, i: usize, tlen: usize) {
        let range = i * tlen..(i + 1) * tlen;
        match self.parts.last_mut() {
            Some((a, run)) if Arc::ptr_eq(a, piece) && run.end == range.start => {
                run.end = range.end
            }
            _ => self.parts.push((Arc::clone(piece), range)),
        }
        self.regions.push(r);
    }
}

/// A batch handed to an encoder session.
struct Job {
    regions: Vec<Region>,
    parts: Vec<(Arc<Vec<f32>>, Range<usize>)>,
}

/// A batch's features, and how long its session worked on it and had waited for it.
struct Done {
    regions: Vec<Region>,
    features: Features,
    tokens: Option<Vec<f32>>,
    busy: f64,
    idle: f64,
}

/// Runs jobs on one of the encoder's sessions until the job channel closes.
fn encode_jobs(
    encoder: &Encoder,
    tokens: bool,
    jobs: Receiver<Job>,
    done: SyncSender<Result<Done>>,
) {
    let mut free = Instant::now();
    while let Ok(Job { regions, parts }) = jobs.recv() {
        let idle = free.elapsed().as_secs_f64();
        let t = Instant::now();
        let slices: Vec<&[f32]> = parts.iter().map(|(a, r)| &a[r.clone()]).collect();
        let res = encoder
            .embed_parts(&slices, regions.len(), tokens)
            .map(|(features, tokens)| Done {
                regions,
                features,
                tokens,
                busy: t.elapsed().as_secs_f64(),
                idle,
            });
        drop(slices);
        drop(parts);
        if done.send(res).is_err() {
            return;
        }
        free = Instant::now();
    }
}

/// The batches in flight: each sent to a session of its own (round robin, one per session
/// at most), their results written to the segment in the order the batches were made.
struct Pipeline {
    jobs: Vec<SyncSender<Job>>,
    done: Vec<Receiver<Result<Done>>>,
    order: std::collections::VecDeque<usize>,
    next: usize,
    /// Regions sent and not yet written.
    regions: u64,
}

impl Pipeline {
    /// Sends `batch` to the next session, first writing the oldest result if every session
    /// is busy.
    fn submit(&mut self, batch: &mut Batch, seg: &mut Segmenter<'_>) -> Result<()> {
        if batch.regions.is_empty() {
            return Ok(());
        }
        if self.order.len() == self.jobs.len() {
            self.collect(seg)?;
        }
        let w = self.next;
        self.next = (w + 1) % self.jobs.len();
        let job = Job {
            regions: std::mem::take(&mut batch.regions),
            parts: std::mem::take(&mut batch.parts),
        };
        self.regions += job.regions.len() as u64;
        self.jobs[w]
            .send(job)
            .map_err(|_| Error::Runtime("an encoder session stopped".into()))?;
        self.order.push_back(w);
        Ok(())
    }

    /// Waits for the oldest batch in flight and writes it.
    fn collect(&mut self, seg: &mut Segmenter<'_>) -> Result<()> {
        let Some(w) = self.order.pop_front() else {
            return Ok(());
        };
        let done = self.done[w]
            .recv()
            .map_err(|_| Error::Runtime("an encoder session stopped".into()))??;
        self.regions -= done.regions.len() as u64;
        seg.timing.encode_seconds += done.busy;
        seg.timing.wait_seconds += done.idle;
        seg.sink()?
            .write(done.regions, &done.features, done.tokens.as_deref())
    }

    /// Writes every batch in flight.
    fn drain(&mut self, seg: &mut Segmenter<'_>) -> Result<()> {
        while !self.order.is_empty() {
            self.collect(seg)?;
        }
        Ok(())
    }
}

/// Where embedded regions go, and the one place region ids are assigned.
///
/// **The id contract:** regions get ids `first_id`, `first_id + 1`, … (continuing the
/// segments before) in the order they are written here, and each is written at once to all
/// the segment's files, so region id − `first_id` = Parquet row = row of every
/// `features/<feature>.npy` = node of every HNSW graph (built from those `.npy` files in row
/// order). Readers rely on it (every metadata read checks the ids it gets).
pub(super) struct Sink {
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

/// Writes segments: the open one's [`Sink`], and what closing one takes (dense pass, graphs,
/// commit).
pub(super) struct Segmenter<'a> {
    pub(super) dataset: &'a dyn Dataset,
    pub(super) encoder: &'a Encoder,
    pub(super) opts: &'a IngestOptions,
    pub(super) stage: &'a Path,
    pub(super) items: &'a [ImageItem],
    pub(super) tokens: Option<TokensInfo>,
    pub(super) manifest: &'a mut Manifest,
    pub(super) sink: Option<Sink>,
    /// First item of the open segment.
    pub(super) start_item: usize,
    pub(super) timing: Timing,
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
    pub(super) fn close(&mut self, end: usize) -> Result<()> {
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

/// Seconds spent in each stage.
#[derive(Debug, Clone, Default)]
pub(super) struct Timing {
    pub(super) encode_seconds: f64,
    pub(super) wait_seconds: f64,
    pub(super) hnsw_seconds: f64,
    pub(super) dense_seconds: f64,
    pub(super) dense_encode_seconds: f64,
    pub(super) dense_windows: u64,
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
pub(super) fn embed_all(seg: &mut Segmenter<'_>, first: usize) -> Result<()> {
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
        // producer's `send` and lets the scope end; dropping the job senders ends the
        // sessions' threads the same way.
        let rx = rx;
        let mut pipe = Pipeline {
            jobs: Vec::new(),
            done: Vec::new(),
            order: Default::default(),
            next: 0,
            regions: 0,
        };
        for _ in 0..encoder.sessions() {
            let (job_tx, job_rx) = sync_channel::<Job>(1);
            let (done_tx, done_rx) = sync_channel::<Result<Done>>(1);
            scope.spawn(move || encode_jobs(encoder, want_tokens, job_rx, done_tx));
            pipe.jobs.push(job_tx);
            pipe.done.push(done_rx);
        }
        let mut batch = Batch::default();
        // Images in order whose regions are still arriving; a finished one is counted in the
        // open segment, which closes after it once it holds --segment-size regions (written,
        // in flight or batched).
        let mut pending: std::collections::VecDeque<Pending> = Default::default();
        let finish_images = |pending: &mut std::collections::VecDeque<Pending>,
                             batch: &mut Batch,
                             pipe: &mut Pipeline,
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
                let held = seg.regions() + pipe.regions + batch.regions.len() as u64;
                if held >= opts.segment_size as u64 {
                    pipe.submit(batch, seg)?;
                    pipe.drain(seg)?;
                    seg.close(first + p.item + 1)?;
                }
            }
            Ok(())
        };
        while let Ok(msg) = rx.recv() {
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
                    let piece = Arc::new(tensors);
                    for (i, r) in regions.into_iter().enumerate() {
                        finish_images(&mut pending, &mut batch, &mut pipe, seg)?;
                        let Some(p) = pending.front_mut() else {
                            return Err(Error::InvalidArgument(
                                "internal: a region arrived before its image".into(),
                            ));
                        };
                        p.remaining -= 1;
                        batch.push(r, &piece, i, tlen);
                        if batch.regions.len() == opts.batch_size {
                            pipe.submit(&mut batch, seg)?;
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
            finish_images(&mut pending, &mut batch, &mut pipe, seg)?;
        }
        finish_images(&mut pending, &mut batch, &mut pipe, seg)?;
        pipe.submit(&mut batch, seg)?;
        pipe.drain(seg)?;
        Ok(())
    })?;
    pb.finish_and_clear();
    Ok(())
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
