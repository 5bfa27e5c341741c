//! An ingest's staging folder as a list of committed segments: start or resume it, commit a
//! segment (files fsynced, then the manifest replaced atomically), and finish it.
//!
//! The stage is `<parent>/.<name>.ingest` ([`crate::files::StagedDir::resumable`]). While
//! the run lasts its manifest carries an [`IngestProgress`]: the settings a `--resume` must
//! repeat (its fingerprint) and the next dataset item to read. A run killed at any moment
//! leaves the stage as of its last commit plus, perhaps, an uncommitted segment folder or a
//! `manifest.json.tmp`, which the next run deletes before it continues.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::IngestOptions;
use crate::dataset::{Dataset, ImageItem};
use crate::encoder::Encoder;
use crate::error::{Error, IoContext, Result};
use crate::store::manifest::{Counts, IngestProgress, Manifest, SegmentInfo};
use crate::store::{MARKER_FILE, MARKER_TEXT};

/// `--shard i/N`: this run takes the images whose path hashes to `i` modulo `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which share, `0..count`.
    pub index: u32,
    /// How many shares.
    pub count: u32,
}

impl Shard {
    /// Parses `i/N` (0 ≤ i < N, 1 ≤ N ≤ 65536).
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || {
            Error::InvalidArgument(format!(
                "--shard {s:?}: expected i/N with 0 ≤ i < N ≤ 65536, e.g. 0/4"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || count > 65536 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The rule: the first 8 bytes of the SHA-256 of the image's path relative to the dataset
    /// root (as stored, `/`-separated), little-endian, modulo `N`. It depends on nothing but
    /// the path, so adding images never moves another image to another shard.
    pub fn of(image: &str, count: u32) -> u32 {
        use sha2::Digest;
        let h = sha2::Sha256::digest(image.as_bytes());
        let v = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        (v % u64::from(count)) as u32
    }

    /// Whether `image` belongs to this shard.
    pub fn takes(&self, image: &str) -> bool {
        Shard::of(image, self.count) == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Everything that decides an ingest's result, as `--resume` compares it.
pub(super) fn fingerprint(
    dataset: &dyn Dataset,
    items: &[ImageItem],
    encoder: &Encoder,
    opts: &IngestOptions,
) -> BTreeMap<String, Value> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for it in items {
        h.update(it.image.as_bytes());
        h.update([0]);
        h.update(it.split.as_bytes());
        h.update([0]);
    }
    let listing: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("encoder_sha256", json!(encoder.sha256()));
    put(
        "dataset",
        json!(dataset.listing().root.canonical().display().to_string()),
    );
    put("format", json!(dataset.format()));
    put("dataset_options", dataset.options());
    put("items", json!(items.len()));
    put("listing_sha256", json!(listing));
    put(
        "settings",
        serde_json::to_value(opts.settings).unwrap_or(Value::Null),
    );
    put("segment_size", json!(opts.segment_size));
    put("shard", json!(opts.shard.map(|s| s.to_string())));
    put("batch_size", json!(opts.batch_size));
    put("hnsw_m", json!(opts.hnsw.max_nb_connection));
    put("ef_construction", json!(opts.hnsw.ef_construction));
    put("graph_builder", json!(opts.graph_builder.as_str()));
    put(
        "dense",
        json!(opts
            .dense
            .as_ref()
            .map(|d| json!({"size": d.size, "stride": d.stride}))),
    );
    put("tokens", json!(opts.tokens));
    put("strict", json!(opts.strict));
    m
}

/// What the stage held when the run began.
pub(super) enum Start {
    /// Nothing to continue: a new manifest was written.
    Fresh(Manifest),
    /// An interrupted run of the same settings: its manifest (uncommitted files removed).
    Resumed(Manifest),
}

/// Reads the stage's manifest if it is an ingest in progress.
fn in_progress(stage: &Path) -> Option<Manifest> {
    Manifest::read(stage).ok().filter(Manifest::in_progress)
}

/// The manifest of `target` if it is the finished index of this very run (same fingerprint):
/// what `--resume` reports when the run had already finished.
pub(super) fn finished(target: &Path, fingerprint: &BTreeMap<String, Value>) -> Option<Manifest> {
    Manifest::read(target).ok().filter(|m| {
        m.ingest
            .as_ref()
            .is_some_and(|p| p.complete && &p.fingerprint == fingerprint)
    })
}

/// Opens the stage: continues an interrupted run (`resume`, same fingerprint), refuses one
/// without `resume` (with `overwrite`, discards it), or starts afresh with `fresh` (the
/// manifest to write first).
pub(super) fn start(
    stage: &Path,
    target: &Path,
    (resume, overwrite): (bool, bool),
    fingerprint: &BTreeMap<String, Value>,
    fresh: impl FnOnce() -> Manifest,
) -> Result<Start> {
    if let Some(m) = in_progress(stage).filter(|_| resume || !overwrite) {
        let p = m.ingest.as_ref().expect("in progress");
        if !resume {
            return Err(Error::InvalidArgument(format!(
                "an interrupted ingest into {} is waiting in {} ({} segments, {} regions, {} of \
                 {} images committed): continue it with the same command and --resume, or \
                 start over with --overwrite",
                target.display(),
                stage.display(),
                m.segments.len(),
                m.counts.regions,
                p.next_item,
                p.items
            )));
        }
        let diff: Vec<String> = fingerprint
            .iter()
            .filter(|(k, v)| p.fingerprint.get(*k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: {} before, {} now",
                    p.fingerprint.get(k).unwrap_or(&Value::Null),
                    v
                )
            })
            .collect();
        if !diff.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "--resume: the interrupted ingest in {} was run with other settings or data \
                 ({}); resume it with the same command, or delete that folder to start over",
                stage.display(),
                diff.join("; ")
            )));
        }
        clean_uncommitted(stage, &m)?;
        return Ok(Start::Resumed(m));
    }
    if stage.exists() {
        // A stage without an ingest in progress (killed before its first manifest, or the old
        // index a commit swapped out and was killed before deleting), or one --overwrite
        // discards. Only partlens's own entries are removed.
        if !crate::files::is_empty_dir(stage) && crate::store::replaceable(stage).is_err() {
            return Err(Error::InvalidArgument(format!(
                "{} holds files partlens did not write; move it away",
                stage.display()
            )));
        }
        std::fs::remove_dir_all(stage).at(stage)?;
    }
    std::fs::create_dir(stage).at(stage)?;
    std::fs::create_dir(stage.join("segments")).at(stage)?;
    std::fs::write(stage.join(MARKER_FILE), MARKER_TEXT).at(stage)?;
    let m = fresh();
    m.write_atomic(stage)?;
    Ok(Start::Fresh(m))
}

/// Deletes what the manifest does not list: segment folders of an interrupted commit and a
/// half-written `manifest.json.tmp`.
fn clean_uncommitted(stage: &Path, m: &Manifest) -> Result<()> {
    let tmp = stage.join("manifest.json.tmp");
    if tmp.exists() {
        std::fs::remove_file(&tmp).at(&tmp)?;
    }
    let segs = stage.join("segments");
    std::fs::create_dir_all(&segs).at(&segs)?;
    for e in std::fs::read_dir(&segs).at(&segs)?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !m.segments.iter().any(|s| s.name == name) {
            tracing::warn!("removing uncommitted segment {}", e.path().display());
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p).at(&p)?;
            } else {
                std::fs::remove_file(&p).at(&p)?;
            }
        }
    }
    Ok(())
}

/// The folder of segment number `seq` and its name.
pub(super) fn segment_dir(stage: &Path, seq: usize) -> (String, PathBuf) {
    let name = format!("seg-{seq:06}");
    let dir = stage.join("segments").join(&name);
    (name, dir)
}

/// Makes a written segment durable and lists it: every file and folder fsynced, then the
/// manifest (with the segment, its counts and skipped inputs, and the next item) replaced
/// atomically. The segment is committed once this returns.
pub(super) fn commit(
    stage: &Path,
    manifest: &mut Manifest,
    seg: SegmentInfo,
    next_item: u64,
) -> Result<()> {
    let dir = stage.join(seg.dir());
    crate::files::sync_tree(&dir)?;
    crate::files::sync_dir(&stage.join("segments"));
    add_counts(&mut manifest.counts, &seg.counts);
    manifest.segments.push(seg);
    if let Some(p) = manifest.ingest.as_mut() {
        p.next_item = next_item;
    }
    manifest.write_atomic(stage)?;
    crate::files::crash_point("committed");
    Ok(())
}

/// `into += c`.
pub(crate) fn add_counts(into: &mut Counts, c: &Counts) {
    into.regions += c.regions;
    into.parts += c.parts;
    into.objects += c.objects;
    into.images += c.images;
    into.images_skipped += c.images_skipped;
}

/// The progress record of a new run.
pub(super) fn progress(
    fingerprint: BTreeMap<String, Value>,
    items: usize,
    listing_skipped: usize,
) -> IngestProgress {
    IngestProgress {
        fingerprint,
        next_item: 0,
        items: items as u64,
        listing_skipped: listing_skipped as u64,
        complete: false,
    }
}
