//! `partlens merge` and `partlens compact`: segments moved between indexes without
//! re-embedding.
//!
//! **merge** adopts every segment of each input, in input order: its files are hard-linked
//! (copied across file systems), its Parquet file rewritten with ids renumbered to follow the
//! segments before it; its graphs are kept. The output is built beside `--out` and swapped
//! into place in one step ([`crate::files::StagedDir`]).
//!
//! **compact** replaces each run of consecutive small segments by one: rows concatenated in
//! id order (so ids do not change), its graph rebuilt. The new segment is written and fsynced
//! under a new name, then the manifest is replaced atomically, then the old folders are
//! deleted: a crash at any moment leaves the old or the new list, and an unlisted folder,
//! which the next `compact` removes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::dense::{DenseImage, GRIDS_FILE, IMAGES_FILE, TOKENS_FILE};
use super::manifest::{FileRecord, Manifest, SegmentInfo, SegmentOrigin};
use super::{feature_path, unit_path, HalfWriter, IndexDir, NpyWriter, SEGMENT_REGIONS};
use crate::error::{Error, IoContext, Result};
use crate::files::{PathLock, StagedDir};
use crate::index::{GraphBuilder, HnswParams};
use crate::ingest::add_counts;

/// What `merge` or `compact` did.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    /// The index written.
    pub path: PathBuf,
    /// Segments in it now.
    pub segments: usize,
    /// Regions in it.
    pub regions: u64,
    /// Segments written (merge: adopted; compact: new ones).
    pub written: Vec<String>,
    /// Segments removed (compact).
    pub removed: Vec<String>,
    /// Seconds building graphs (compact).
    pub hnsw_seconds: f64,
    /// Wall time.
    pub seconds: f64,
}

/// Entries of a schema-2 index's folder that belong to its one segment.
const SEGMENT_ENTRIES: [&str; 5] = ["regions", "features", "hnsw", "tokens", "dense"];

/// Why two indexes cannot be one: a different encoder, features, region settings, graph
/// parameters, dataset or dense/token layout.
fn incompatible(a: &Manifest, b: &Manifest) -> Option<String> {
    let hnsw = |m: &Manifest| -> Vec<(usize, usize)> {
        m.hnsw
            .values()
            .map(|h| (h.max_nb_connection, h.ef_construction))
            .collect()
    };
    let dense_key = |m: &Manifest| {
        m.dense
            .as_ref()
            .map(|d| (d.size, d.stride, d.window, d.cell, d.dim, d.source))
    };
    if a.encoder.sha256 != b.encoder.sha256 {
        return Some(format!(
            "encoders differ ({} vs {}): their vectors are not comparable",
            a.encoder.file, b.encoder.file
        ));
    }
    if a.encoder.dims != b.encoder.dims || a.features != b.features {
        return Some("their features differ".into());
    }
    if a.settings != b.settings {
        return Some("their region settings (min area, margin, objects) differ".into());
    }
    if hnsw(a) != hnsw(b) {
        return Some("their HNSW parameters (M, ef_construction) differ".into());
    }
    if (a.dataset.path.as_str(), a.dataset.format.as_str())
        != (b.dataset.path.as_str(), b.dataset.format.as_str())
    {
        return Some(format!(
            "they come from different datasets ({} {} vs {} {})",
            a.dataset.format, a.dataset.path, b.dataset.format, b.dataset.path
        ));
    }
    if dense_key(a) != dense_key(b) || a.tokens != b.tokens {
        return Some(
            "their dense features or region tokens differ (one has them, or other settings)".into(),
        );
    }
    None
}

/// Hard-links `src` to `dst`, or copies it where links cannot be made.
fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).at(dst)?;
    }
    Ok(())
}

/// Every regular file under `dir` (for a schema-2 index, under its segment entries only), as
/// paths relative to `dir`.
fn segment_files(dir: &Path, legacy: bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).follow_links(false).min_depth(1) {
        let e = e.map_err(|e| Error::io(dir, std::io::Error::other(e.to_string())))?;
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e.path().strip_prefix(dir).unwrap_or(e.path()).to_path_buf();
        let top = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if legacy && !SEGMENT_ENTRIES.contains(&top.as_str()) {
            continue;
        }
        out.push(rel);
    }
    out.sort();
    Ok(out)
}

/// Joins the complete indexes `inputs` into a new index at `out` (see the module doc).
pub fn merge(out: &Path, inputs: &[PathBuf], overwrite: bool) -> Result<MergeReport> {
    let start = Instant::now();
    if inputs.is_empty() {
        return Err(Error::InvalidArgument(
            "merge needs at least one index".into(),
        ));
    }
    let mut opened = Vec::new();
    for p in inputs {
        let idx = IndexDir::open(p)?;
        idx.require_current()?;
        if let Some((_, first)) = opened.first() {
            let first: &IndexDir = first;
            if let Some(why) = incompatible(first.manifest(), idx.manifest()) {
                return Err(Error::InvalidArgument(format!(
                    "{} and {} cannot be merged: {why}",
                    inputs[0].display(),
                    p.display()
                )));
            }
        }
        opened.push((p.clone(), idx));
    }
    let staged = StagedDir::begin(out, "index")?;
    crate::ingest::check_target(staged.target(), overwrite)?;
    let stage = staged.path().to_path_buf();
    let mut m = opened[0].1.manifest().clone();
    m.schema_version = super::manifest::SCHEMA_VERSION;
    m.created_unix = crate::ingest::now_unix();
    m.counts = Default::default();
    m.skipped = Vec::new();
    m.segments = Vec::new();
    m.shards = Vec::new();
    m.files = BTreeMap::new();
    m.dense = None;
    m.ingest = None;
    let mut splits: Vec<String> = Vec::new();
    let mut written = Vec::new();
    for (p, idx) in &opened {
        let im = idx.manifest();
        let legacy = im.schema_version < 3;
        m.skipped.extend(im.skipped.iter().cloned());
        for s in &im.dataset.splits {
            if !splits.contains(s) {
                splits.push(s.clone());
            }
        }
        if let Some(d) = &im.dense {
            m.dense = Some(match m.dense.take() {
                None => d.clone(),
                Some(prev) => super::dense::merge_info(&prev, d),
            });
        }
        let infos: Vec<SegmentInfo> = if legacy {
            let mut one = super::legacy_segment(im);
            one.dense = im.dense.as_ref().map(|d| [d.images, d.cells]);
            vec![one]
        } else {
            im.segments.clone()
        };
        let canonical = std::fs::canonicalize(p).unwrap_or(p.clone());
        for (info, seg) in infos.into_iter().zip(idx.segments()) {
            let name = format!("seg-{:06}", m.segments.len());
            let dir = stage.join("segments").join(&name);
            std::fs::create_dir_all(&dir).at(&dir)?;
            let parquet: Vec<PathBuf> = seg
                .parquet()
                .iter()
                .map(|p| p.path().to_path_buf())
                .collect();
            for rel in segment_files(seg.dir(), legacy)? {
                let src = seg.dir().join(&rel);
                if parquet.contains(&src) {
                    continue;
                }
                link_or_copy(&src, &dir.join(&rel))?;
            }
            // One Parquet file per segment, ids renumbered.
            let first_id = m.counts.regions;
            let dst = dir.join(SEGMENT_REGIONS);
            std::fs::create_dir_all(dir.join("regions")).at(&dir)?;
            super::parquet::concat_renumbered(&parquet, &dst, first_id)?;
            let mut files: BTreeMap<String, FileRecord> = info
                .files
                .iter()
                .filter(|(k, _)| !k.ends_with(".parquet") || k.starts_with("dense/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            files.insert(SEGMENT_REGIONS.to_string(), FileRecord::of(&dst)?);
            let new = SegmentInfo {
                name: name.clone(),
                first_id,
                counts: info.counts.clone(),
                origin: Some(SegmentOrigin {
                    shard: info.origin.as_ref().and_then(|o| o.shard.clone()),
                    index: Some(canonical.display().to_string()),
                    segment: (!info.name.is_empty()).then(|| info.name.clone()),
                }),
                items: None,
                dense: info.dense,
                files,
            };
            add_counts(&mut m.counts, &new.counts);
            m.segments.push(new);
            written.push(name);
        }
    }
    m.dataset.splits = splits;
    m.validate()
        .map_err(|e| Error::InvalidArgument(format!("merged manifest: {e}")))?;
    crate::files::sync_tree(&stage.join("segments"))?;
    std::fs::write(stage.join(super::MARKER_FILE), super::MARKER_TEXT).at(&stage)?;
    m.write_atomic(&stage)?;
    staged.commit(&|old| crate::ingest::check_target(old, overwrite).is_ok())?;
    Ok(MergeReport {
        path: out.to_path_buf(),
        segments: m.segments.len(),
        regions: m.counts.regions,
        written,
        removed: Vec::new(),
        hnsw_seconds: 0.0,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Merges each run of consecutive segments with fewer than `below` regions (all segments
/// with `all`) into one, rebuilding its graph (see the module doc). Segments of an index of
/// schema 2 cannot be compacted (it is one segment already).
pub fn compact(path: &Path, below: usize, all: bool) -> Result<MergeReport> {
    let start = Instant::now();
    let lock = PathLock::try_acquire(path)?.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} is locked by another partlens process; try again when it has finished",
            path.display()
        ))
    })?;
    let idx = IndexDir::open(path)?;
    idx.require_current()?;
    let mut m = idx.manifest().clone();
    if m.schema_version < 3 {
        return Err(Error::InvalidArgument(format!(
            "{} is one segment already (an index of schema {})",
            path.display(),
            m.schema_version
        )));
    }
    remove_orphans(path, &m)?;
    // Runs of consecutive small segments.
    let small = |s: &SegmentInfo| all || (s.counts.regions as usize) < below;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < m.segments.len() {
        let mut j = i;
        while j < m.segments.len() && small(&m.segments[j]) {
            j += 1;
        }
        if j - i >= 2 {
            runs.push((i, j));
        }
        i = j.max(i + 1);
    }
    let next_seq = m
        .segments
        .iter()
        .filter_map(|s| {
            s.name
                .strip_prefix("seg-")
                .and_then(|n| n.parse::<usize>().ok())
        })
        .max()
        .map_or(0, |n| n + 1);
    let params = m.hnsw_params();
    let dims = m.feature_dims();
    let mut written = Vec::new();
    let mut removed = Vec::new();
    let mut hnsw_seconds = 0.0;
    let mut new_segments = Vec::new();
    let mut last = 0;
    for (k, &(a, b)) in runs.iter().enumerate() {
        new_segments.extend(m.segments[last..a].iter().cloned());
        let name = format!("seg-{:06}", next_seq + k);
        let dir = path.join("segments").join(&name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).at(&dir)?;
        }
        let segs = &idx.segments()[a..b];
        let th = Instant::now();
        write_concatenated(&dir, segs, &dims, idx.manifest(), params)?;
        hnsw_seconds += th.elapsed().as_secs_f64();
        let mut counts = super::manifest::Counts::default();
        let mut dense: Option<[u64; 2]> = None;
        for s in &m.segments[a..b] {
            add_counts(&mut counts, &s.counts);
            if let Some([i, c]) = s.dense {
                let d = dense.get_or_insert([0, 0]);
                d[0] += i;
                d[1] += c;
            }
            removed.push(s.name.clone());
        }
        let shards: Vec<&str> = m.segments[a..b]
            .iter()
            .filter_map(|s| s.origin.as_ref().and_then(|o| o.shard.as_deref()))
            .collect();
        let same_shard = shards.len() == b - a && shards.windows(2).all(|w| w[0] == w[1]);
        crate::files::sync_tree(&dir)?;
        new_segments.push(SegmentInfo {
            name: name.clone(),
            first_id: m.segments[a].first_id,
            counts,
            origin: same_shard.then(|| SegmentOrigin {
                shard: shards.first().map(|s| s.to_string()),
                index: None,
                segment: None,
            }),
            items: None,
            dense,
            files: crate::ingest::record_files(&dir)?,
        });
        written.push(name);
        last = b;
    }
    new_segments.extend(m.segments[last..].iter().cloned());
    drop(idx);
    if !runs.is_empty() {
        m.segments = new_segments;
        m.validate()
            .map_err(|e| Error::InvalidArgument(format!("compacted manifest: {e}")))?;
        crate::files::sync_dir(&path.join("segments"));
        m.write_atomic(path)?;
        for r in &removed {
            let d = path.join("segments").join(r);
            std::fs::remove_dir_all(&d).at(&d)?;
        }
    }
    lock.release();
    Ok(MergeReport {
        path: path.to_path_buf(),
        segments: m.segments.len(),
        regions: m.counts.regions,
        written,
        removed,
        hnsw_seconds,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Removes folders under `segments/` the manifest does not list (a compact killed before its
/// manifest was replaced, or after it but before the old folders were deleted).
fn remove_orphans(path: &Path, m: &Manifest) -> Result<()> {
    let segs = path.join("segments");
    let Ok(rd) = std::fs::read_dir(&segs) else {
        return Ok(());
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !m.segments.iter().any(|s| s.name == name) && e.file_type().is_ok_and(|t| t.is_dir()) {
            tracing::warn!("removing unlisted segment folder {}", e.path().display());
            std::fs::remove_dir_all(e.path()).at(e.path())?;
        }
    }
    Ok(())
}

/// Writes segments `segs` (consecutive) as one segment in `dir`: region files, raw and unit
/// rows, tokens and dense grids concatenated in order; graphs built anew.
fn write_concatenated(
    dir: &Path,
    segs: &[super::Segment],
    dims: &BTreeMap<crate::encoder::Feature, usize>,
    m: &Manifest,
    params: HnswParams,
) -> Result<()> {
    for sub in ["regions", "features", "hnsw"] {
        std::fs::create_dir_all(dir.join(sub)).at(dir.join(sub))?;
    }
    let parquet: Vec<PathBuf> = segs
        .iter()
        .flat_map(|s| s.parquet().iter().map(|p| p.path().to_path_buf()))
        .collect();
    super::parquet::concat_renumbered(
        &parquet,
        &dir.join(SEGMENT_REGIONS),
        segs[0].first_id() as u64,
    )?;
    for (f, d) in dims {
        for (path, unit) in [(feature_path(dir, *f), false), (unit_path(dir, *f), true)] {
            let mut w = NpyWriter::create(&path, *d)?;
            for s in segs {
                let x = if unit {
                    s.unit(*f).map(|a| &**a)
                } else {
                    s.feature(*f)
                };
                let x = x.ok_or_else(|| Error::corrupt(s.dir(), format!("no {f} rows")))?;
                for block in x.as_slice().chunks(4096 * d) {
                    w.append(block)?;
                }
            }
            w.finish()?;
        }
    }
    if let Some(t) = &m.tokens {
        std::fs::create_dir_all(dir.join("tokens")).at(dir)?;
        let mut w = HalfWriter::create(dir.join(TOKENS_FILE), &[t.tokens, t.dim])?;
        let mut buf = vec![0f32; t.tokens * t.dim];
        for s in segs {
            let a = s
                .tokens()
                .ok_or_else(|| Error::corrupt(s.dir(), "no region tokens"))?;
            for r in 0..a.rows() {
                a.read_rows(r, 1, &mut buf);
                w.append(&buf)?;
            }
        }
        w.finish()?;
    }
    if let Some(info) = &m.dense {
        concat_dense(dir, segs, info)?;
    }
    for (f, d) in dims {
        let unit = super::NpyMatrix::open(unit_path(dir, *f))?;
        let h = &m.hnsw[f.as_str()];
        crate::index::build_graph_file(
            &dir.join(h.graph_file()),
            unit.as_slice(),
            *d,
            params,
            h.seed.unwrap_or(crate::index::DEFAULT_SEED),
            GraphBuilder::Partlens,
        )?;
    }
    Ok(())
}

/// The dense grids, image tables and label maps of `segs` as one segment's.
fn concat_dense(dir: &Path, segs: &[super::Segment], info: &super::dense::DenseInfo) -> Result<()> {
    for d in ["dense/labels/parts", "dense/labels/objects"] {
        std::fs::create_dir_all(dir.join(d)).at(dir.join(d))?;
    }
    let mut grids = HalfWriter::create(dir.join(GRIDS_FILE), &[info.dim])?;
    let mut rows: Vec<DenseImage> = Vec::new();
    let mut buf = Vec::new();
    for s in segs {
        let gp = s.dir().join(GRIDS_FILE);
        if !gp.exists() {
            continue;
        }
        let g = super::HalfArray::open(&gp)?;
        let images = super::dense::read_images(&s.dir().join(IMAGES_FILE))?;
        for mut im in images {
            let n = rows.len();
            buf.resize(im.cells() * info.dim, 0.0);
            g.read_rows(im.offset as usize, im.cells(), &mut buf);
            im.offset = grids.rows() as u64;
            grids.append(&buf)?;
            for (labels, sub) in [
                (&mut im.part_labels, "parts"),
                (&mut im.object_labels, "objects"),
            ] {
                if let Some(rel) = labels.as_mut() {
                    let new = format!("dense/labels/{sub}/{n:07}.png");
                    link_or_copy(&s.dir().join(&*rel), &dir.join(&new))?;
                    *rel = new;
                }
            }
            rows.push(im);
        }
    }
    grids.finish()?;
    super::dense::write_images(&dir.join(IMAGES_FILE), &rows)
}
