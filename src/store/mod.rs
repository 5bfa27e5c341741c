//! The index directory, an on-disk contract (see ARCHITECTURE.md):
//!
//! ```text
//! .partlens-index                        marker: this folder is a partlens index (and may be replaced)
//! manifest.json                          replaced atomically at each commit; lists the segments
//! segments/<name>/                       one immutable segment, regions first_id .. first_id + n:
//!   regions/part-00000.parquet           region metadata + one FixedSizeList<f32, D> column per feature
//!   features/<feature>.npy               n × D float32, local row i = region first_id + i (raw)
//!   features/<feature>.unit.npy          n × D float32, the same rows L2-normalised (what search reads)
//!   hnsw/<feature>.graph                 the HNSW graph over the unit rows (crate::index::graph)
//!   tokens/regions.npy, dense/…          with --tokens / --dense
//! ```
//!
//! An index of schema 2 is that layout at the top level: it opens as one segment.

pub mod dense;
pub mod manifest;
pub mod merge;
pub mod npy;
pub mod parquet;
mod segment;
pub mod upgrade;
pub mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::encoder::Feature;
use crate::error::{Error, Result};
use crate::region::{Region, RegionKind};
pub use manifest::Manifest;
pub use npy::{HalfArray, HalfWriter, NpyMatrix, NpyWriter};
pub use parquet::{read_regions, RegionWriter};
pub use segment::{Rows, Segment, TokenRows};

/// An opened index directory: its manifest, its segments' memory-mapped features, and region
/// metadata read lazily from the segments' Parquet files (only the rows asked for, or the
/// filterable columns streamed), so opening costs a few `stat`s and footers, whatever the
/// number of regions.
#[derive(Debug)]
pub struct IndexDir {
    path: PathBuf,
    manifest: Manifest,
    segments: Vec<Segment>,
    dense: Option<dense::DenseIndex>,
    summary: std::sync::OnceLock<Summary>,
}

/// The region file of a segment, relative to its folder.
pub const SEGMENT_REGIONS: &str = "regions/part-00000.parquet";

/// Distinct values and label counts of an index's regions (one pass over the filterable
/// columns; cached).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Regions per label, most frequent first.
    pub labels: Vec<LabelCount>,
    /// Splits present, sorted.
    pub splits: Vec<String>,
    /// Object class names present, sorted.
    pub objects: Vec<String>,
    /// Kinds present.
    pub kinds: Vec<RegionKind>,
}

/// The marker file every index holds; only a folder with it (or, for indexes written before
/// the marker, a complete manifest) is ever replaced by `ingest --overwrite`.
pub const MARKER_FILE: &str = ".partlens-index";

/// The marker's content.
pub const MARKER_TEXT: &str = "partlens index: see manifest.json\n";

/// Entries an index directory may hold; anything else means a user put files there, and the
/// folder is not replaced.
/// (`evals/` holds results cached by `partlens report`.)
pub const INDEX_ENTRIES: [&str; 10] = [
    MARKER_FILE,
    "manifest.json",
    "manifest.json.tmp",
    "segments",
    "regions",
    "features",
    "hnsw",
    "evals",
    "dense",
    "tokens",
];

/// Whether `path` may be replaced by a new index: `Ok(true)` for a partlens index, `Ok(false)`
/// for an empty folder, otherwise the reason it must be left alone (it is not a folder, it
/// holds files partlens did not write, or it has neither the marker nor a partlens manifest).
pub fn replaceable(path: &Path) -> std::result::Result<bool, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("it is not a folder".into());
    }
    let names: Vec<String> = std::fs::read_dir(path)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(false);
    }
    let mut foreign: Vec<&String> = names
        .iter()
        .filter(|n| !INDEX_ENTRIES.contains(&n.as_str()))
        .collect();
    if !foreign.is_empty() {
        foreign.sort();
        let shown: Vec<&str> = foreign.iter().take(5).map(|s| s.as_str()).collect();
        return Err(format!(
            "it holds files partlens did not write ({}{})",
            shown.join(", "),
            if foreign.len() > 5 { ", …" } else { "" }
        ));
    }
    let marker = crate::files::read_limited(&path.join(MARKER_FILE), 256).ok();
    if marker.as_deref() == Some(MARKER_TEXT.as_bytes()) {
        return Ok(true);
    }
    // Written before the marker existed: only a manifest that parses as ours counts.
    let manifest =
        crate::files::read_limited(&path.join("manifest.json"), manifest::MAX_MANIFEST_BYTES)
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
    match manifest {
        Some(_) => Ok(true),
        None => Err("it has no partlens marker and no partlens manifest".into()),
    }
}

/// Number of stored regions of one label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelCount {
    /// Part or object.
    pub kind: RegionKind,
    /// Label name.
    pub label: String,
    /// Regions with it.
    pub regions: usize,
}

/// Path of a feature matrix inside an index directory.
pub fn feature_path(dir: &Path, f: Feature) -> PathBuf {
    dir.join("features").join(format!("{}.npy", f.as_str()))
}

/// A feature's unit-norm rows, relative to the index directory (schema 2):
/// `features/<feature>.unit.npy`.
pub fn unit_file(f: Feature) -> String {
    format!("features/{}.unit.npy", f.as_str())
}

/// Path of a feature's unit-norm rows inside an index directory (schema 2).
pub fn unit_path(dir: &Path, f: Feature) -> PathBuf {
    dir.join(unit_file(f))
}

/// An index of an older layout as one segment: its own folder, its top-level file list.
pub(crate) fn legacy_segment(m: &Manifest) -> manifest::SegmentInfo {
    manifest::SegmentInfo {
        name: String::new(),
        first_id: 0,
        counts: m.counts.clone(),
        origin: None,
        items: None,
        dense: None,
        files: m.files.clone(),
    }
}

impl IndexDir {
    /// Opens `path`, checking that the manifest, every segment's Parquet footer and feature
    /// matrices agree on the number of regions, and that every listed file has the length the
    /// manifest recorded; any disagreement (a truncated or partly copied index) is
    /// [`Error::DataCorruption`]. Region metadata is not read (see [`IndexDir::regions_at`]).
    pub fn open(path: impl AsRef<Path>) -> Result<IndexDir> {
        let path = path.as_ref().to_path_buf();
        let manifest = Manifest::read(&path)?;
        if manifest.in_progress() {
            return Err(Error::InvalidArgument(format!(
                "{} is an ingest that has not finished ({} segments committed); continue it \
                 with the same `partlens ingest …` command and --resume",
                path.display(),
                manifest.segments.len()
            )));
        }
        let infos: Vec<(manifest::SegmentInfo, PathBuf, Vec<String>)> =
            if manifest.schema_version >= 3 {
                manifest
                    .segments
                    .iter()
                    .map(|s| {
                        (
                            s.clone(),
                            path.join(s.dir()),
                            vec![SEGMENT_REGIONS.to_string()],
                        )
                    })
                    .collect()
            } else {
                vec![(
                    legacy_segment(&manifest),
                    path.clone(),
                    manifest.shards.clone(),
                )]
            };
        let mut segments = Vec::with_capacity(infos.len());
        for (info, dir, shards) in infos {
            segments.push(Segment::open(&manifest, info, dir, &shards)?);
        }
        let dense = match &manifest.dense {
            Some(info) if manifest.schema_version >= 3 => {
                let parts: Vec<(PathBuf, [u64; 2])> = manifest
                    .segments
                    .iter()
                    .filter_map(|s| s.dense.map(|d| (path.join(s.dir()), d)))
                    .collect();
                Some(dense::DenseIndex::open_segments(&parts, info)?)
            }
            Some(info) => Some(dense::DenseIndex::open(&path, info)?),
            None => None,
        };
        Ok(IndexDir {
            path,
            manifest,
            segments,
            dense,
            summary: std::sync::OnceLock::new(),
        })
    }

    /// Re-reads every file each segment lists and compares its SHA-256 with the one recorded
    /// at commit. Returns the files that differ, each named inside the index with what is
    /// wrong (empty: all match). Catches what lengths cannot: flipped bits, a file swapped for
    /// another of the same size.
    pub fn verify(&self) -> Result<Vec<String>> {
        let mut bad = Vec::new();
        for s in &self.segments {
            let rel = s.dir().strip_prefix(&self.path).unwrap_or(Path::new(""));
            let shown = |name: &str| rel.join(name).display().to_string();
            bad.extend(verify::check_files(s.dir(), s.files(), &shown));
        }
        Ok(bad)
    }

    /// Streams the filterable columns of every region, in id order, checking ids run
    /// 0..N without a gap.
    pub fn scan(&self, f: &mut dyn FnMut(&parquet::LightBatch) -> Result<()>) -> Result<()> {
        let mut next = 0u64;
        for s in &self.segments {
            for pf in &s.parquet {
                let p = pf.path();
                parquet::scan_light(p, &mut |b| {
                    let ids = b.id.values();
                    if let Some((i, &id)) = ids
                        .iter()
                        .enumerate()
                        .find(|(i, &id)| id != next + *i as u64)
                    {
                        return Err(Error::corrupt(
                            p,
                            format!(
                                "region row {} has id {id}; ids must be 0..N in order",
                                next + i as u64
                            ),
                        ));
                    }
                    next += ids.len() as u64;
                    f(b)
                })?;
            }
        }
        if next != self.len() as u64 {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "the region files hold {next} rows, the manifest {}",
                    self.len()
                ),
            ));
        }
        Ok(())
    }

    /// Distinct splits, kinds and object classes and the regions per label (one pass over
    /// the filterable columns the first time; then cached).
    pub fn summary(&self) -> Result<&Summary> {
        if let Some(s) = self.summary.get() {
            return Ok(s);
        }
        let mut per: BTreeMap<(RegionKind, String), usize> = BTreeMap::new();
        let mut splits = std::collections::BTreeSet::new();
        let mut objects = std::collections::BTreeSet::new();
        let mut kinds = std::collections::BTreeSet::new();
        self.scan(&mut |b| {
            for i in 0..b.len() {
                let kind = b.kind(i).ok_or_else(|| {
                    Error::corrupt(
                        &self.path,
                        format!("region {}: unknown kind", b.id.value(i)),
                    )
                })?;
                kinds.insert(kind);
                let label = b.label_name.value(i);
                match per.get_mut(&(kind, label.to_string())) {
                    Some(c) => *c += 1,
                    None => {
                        per.insert((kind, label.to_string()), 1);
                    }
                }
                if !splits.contains(b.split.value(i)) {
                    splits.insert(b.split.value(i).to_string());
                }
                if let Some(o) = b.object_name(i).filter(|o| !objects.contains(*o)) {
                    objects.insert(o.to_string());
                }
            }
            Ok(())
        })?;
        let mut labels: Vec<LabelCount> = per
            .into_iter()
            .map(|((kind, label), regions)| LabelCount {
                kind,
                label,
                regions,
            })
            .collect();
        labels.sort_by(|a, b| {
            b.regions
                .cmp(&a.regions)
                .then(a.kind.cmp(&b.kind))
                .then(a.label.cmp(&b.label))
        });
        let s = Summary {
            labels,
            splits: splits.into_iter().collect(),
            objects: objects.into_iter().collect(),
            kinds: kinds.into_iter().collect(),
        };
        Ok(self.summary.get_or_init(|| s))
    }

    /// Regions per label, most frequent first (ties by kind, then name).
    pub fn label_counts(&self) -> Result<Vec<LabelCount>> {
        Ok(self.summary()?.labels.clone())
    }

    /// Rows of `f` holding a NaN or infinity (a damaged file: ingest never stores one), as
    /// region ids.
    pub fn damaged_rows(&self, f: Feature) -> Vec<usize> {
        let mut out = Vec::new();
        for s in &self.segments {
            if let Some(m) = s.feature(f) {
                out.extend(
                    crate::index::nonfinite_rows(m.as_slice(), m.cols())
                        .into_iter()
                        .map(|i| s.first_id + i),
                );
            }
        }
        out
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.manifest.counts.regions as usize
    }

    /// True when the index holds no region.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segments, in id order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The segment holding region `id` and the row inside it.
    pub fn locate(&self, id: usize) -> Option<(&Segment, usize)> {
        let p = self.segments.partition_point(|s| s.first_id <= id);
        let s = self.segments.get(p.checked_sub(1)?)?;
        (id < s.first_id + s.len).then(|| (s, id - s.first_id))
    }

    /// The metadata of region `id`, read from its segment's Parquet file.
    pub fn region(&self, id: usize) -> Result<Region> {
        self.regions_at(&[id], true)?
            .pop()
            .ok_or_else(|| Error::InvalidArgument(format!("no region {id} of {}", self.len())))
    }

    /// The metadata of the regions `ids` (any order, repeats allowed), in that order, reading
    /// only the pages of the Parquet files that hold them; without `masks` the masks are not
    /// read (`mask_rle` empty: what a query's hits need).
    pub fn regions_at(&self, ids: &[usize], masks: bool) -> Result<Vec<Region>> {
        if let Some(&bad) = ids.iter().find(|&&i| i >= self.len()) {
            return Err(Error::InvalidArgument(format!(
                "no region {bad}: this index has regions 0 to {}",
                self.len().saturating_sub(1)
            )));
        }
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        // Per segment holding some of them, its local rows; the segments read in parallel.
        let mut work: Vec<(&Segment, Vec<usize>)> = Vec::new();
        let mut rest = &sorted[..];
        for s in &self.segments {
            let cut = rest.partition_point(|&i| i < s.first_id + s.len);
            let (mine, later) = rest.split_at(cut);
            if !mine.is_empty() {
                work.push((s, mine.iter().map(|&i| i - s.first_id).collect()));
            }
            rest = later;
        }
        let read = |(s, local): &(&Segment, Vec<usize>)| s.regions_at(local, masks);
        let parts: Vec<Vec<Region>> = if work.len() > 1 {
            use rayon::prelude::*;
            work.par_iter().map(read).collect::<Result<_>>()?
        } else {
            work.iter().map(read).collect::<Result<_>>()?
        };
        let found: BTreeMap<usize, Region> = parts
            .into_iter()
            .flatten()
            .map(|r| (r.id as usize, r))
            .collect();
        ids.iter()
            .map(|i| {
                found.get(i).cloned().ok_or_else(|| {
                    Error::corrupt(
                        &self.path,
                        format!("region {i} is missing from its segment"),
                    )
                })
            })
            .collect()
    }

    /// Every region's metadata, in id order. Memory grows with the index: for a few regions'
    /// use [`IndexDir::regions_at`], for filters [`IndexDir::scan`].
    pub fn read_all_regions(&self) -> Result<Vec<Region>> {
        let mut out = Vec::with_capacity(self.len());
        for s in &self.segments {
            for p in &s.parquet {
                out.extend(read_regions(p.path())?);
            }
        }
        if let Some((i, r)) = out.iter().enumerate().find(|(i, r)| r.id != *i as u64) {
            return Err(Error::corrupt(
                &self.path,
                format!("region row {i} has id {}; ids must be 0..N in order", r.id),
            ));
        }
        Ok(out)
    }

    /// The rows of feature `f` across segments (raw, as the encoder gave them), mapped.
    pub fn feature(&self, f: Feature) -> Option<Rows<'_>> {
        self.rows_of(f, |s| s.feature(f))
    }

    /// The unit-norm rows of `f` across segments; `None` for a feature the index lacks or an
    /// index written before schema 2.
    pub fn unit(&self, f: Feature) -> Option<Rows<'_>> {
        self.rows_of(f, |s| s.unit(f).map(|a| &**a))
    }

    fn rows_of<'a>(
        &'a self,
        f: Feature,
        get: impl Fn(&'a Segment) -> Option<&'a NpyMatrix>,
    ) -> Option<Rows<'a>> {
        let dim = *self.manifest.encoder.dims.get(f.as_str())?;
        let mut rows = Rows {
            dim,
            starts: Vec::new(),
            parts: Vec::new(),
            len: 0,
        };
        for s in &self.segments {
            let m = get(s)?;
            rows.starts.push(s.first_id);
            rows.parts.push(m.as_slice());
            rows.len += m.rows();
        }
        if rows.parts.is_empty() {
            rows.starts.push(0);
            rows.parts.push(&[]);
        }
        Some(rows)
    }

    /// Region `id`'s stored row of `f`, read from its file (not through the map; see
    /// [`NpyMatrix::read_row`]).
    pub fn read_feature_row(&self, f: Feature, id: usize) -> Result<Vec<f32>> {
        let (s, i) = self
            .locate(id)
            .ok_or_else(|| Error::InvalidArgument(format!("no region {id} of {}", self.len())))?;
        s.feature(f)
            .ok_or_else(|| Error::InvalidArgument(format!("index has no {f} feature")))?
            .read_row(i)
    }

    /// The path of feature `f`'s file holding region `id` (for messages).
    pub fn feature_file(&self, f: Feature, id: usize) -> PathBuf {
        match self.locate(id) {
            Some((s, _)) => feature_path(s.dir(), f),
            None => feature_path(&self.path, f),
        }
    }

    /// True for an index in an older layout whose graphs `partlens upgrade` must convert
    /// before graph search (schema 1).
    pub fn needs_upgrade(&self) -> bool {
        self.manifest.schema_version < manifest::SEARCHABLE_SCHEMA_VERSION
    }

    /// Refuses an index in an older layout, with the command that upgrades it.
    pub fn require_current(&self) -> Result<()> {
        if !self.needs_upgrade() {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "index {} was written by an earlier partlens (schema {}, hnsw_rs graphs); \
             upgrade it in place, without re-embedding (seconds): partlens upgrade {}",
            self.path.display(),
            self.manifest.schema_version,
            self.path.display()
        )))
    }

    /// Maps and validates every segment's HNSW graph of `f` over its unit rows, in segment
    /// order. An index in the older layout is refused with the command that upgrades it; a
    /// damaged graph file is [`Error::DataCorruption`] naming it.
    pub fn graphs(&self, f: Feature) -> Result<Vec<crate::index::HnswIndex>> {
        self.require_current()?;
        let info = self.manifest.hnsw.get(f.as_str()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "index {} has no HNSW graph for {f}",
                self.path.display()
            ))
        })?;
        self.segments.iter().map(|s| s.graph(f, info)).collect()
    }

    /// Every segment's graph of `f`, searched as one ([`crate::index::SegmentGraphs`]).
    pub fn segment_graphs(&self, f: Feature) -> Result<crate::index::SegmentGraphs> {
        let graphs = self.graphs(f)?;
        Ok(crate::index::SegmentGraphs::new(
            self.segments
                .iter()
                .map(|s| s.first_id)
                .zip(graphs)
                .collect(),
        ))
    }

    /// The dense features, or an error saying how to add them.
    pub fn dense(&self) -> Result<&dense::DenseIndex> {
        self.dense.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "index {} has no dense features; ingest again with --dense to add them \
                 (partlens ingest --dataset … --dense --out {} --overwrite)",
                self.path.display(),
                self.path.display()
            ))
        })
    }

    /// Each region's own patch tokens (`regions × tokens × dim`, float16), or an error
    /// saying how to add them.
    pub fn tokens(&self) -> Result<TokenRows<'_>> {
        let parts: Option<Vec<(usize, &HalfArray)>> = self
            .segments
            .iter()
            .map(|s| s.tokens().map(|t| (s.first_id, t)))
            .collect();
        match (&self.manifest.tokens, parts) {
            (Some(t), Some(parts)) => Ok(TokenRows {
                parts,
                shape: [self.len(), t.tokens, t.dim],
            }),
            _ => Err(Error::InvalidArgument(format!(
                "index {} has no region tokens; ingest again with --tokens to keep them \
                 (partlens ingest --dataset … --tokens --out {} --overwrite)",
                self.path.display(),
                self.path.display()
            ))),
        }
    }

    /// Features stored in this index.
    pub fn feature_names(&self) -> Vec<Feature> {
        self.manifest
            .features
            .iter()
            .filter_map(|n| Feature::parse(n))
            .collect()
    }
}
