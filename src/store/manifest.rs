//! `manifest.json`: what an index holds and how it was made. Replaced atomically (temp file,
//! fsync, rename), so a crash never leaves a manifest that opens wrong.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dataset::RegionSettings;
pub use crate::dataset::Skipped;
use crate::encoder::{Feature, ModelSpec};
use crate::error::{Error, IoContext, Result};

/// Version of the index directory layout this build writes. Version 3 is a list of immutable
/// segments (`segments/<name>/`, each laid out as a whole version-2 index); version 2 (one
/// folder: `regions/`, `features/<feature>.unit.npy`, `hnsw/<basename>.graph`) opens as one
/// segment; version 1 (hnsw_rs dumps, `hnsw/<basename>.hnsw.{graph,data}`) still opens for
/// everything but graph search, which asks for `partlens upgrade`.
pub const SCHEMA_VERSION: u32 = 3;

/// Oldest layout whose graphs partlens searches (schema 1's hnsw_rs dumps need `upgrade`).
pub const SEARCHABLE_SCHEMA_VERSION: u32 = 2;

/// Default regions per segment (`ingest --segment-size`, `import --segment-size`).
pub const DEFAULT_SEGMENT_SIZE: usize = 100_000;

/// Oldest layout version this build opens.
pub const OLDEST_SCHEMA_VERSION: u32 = 1;

/// Largest feature dimension accepted from a manifest.
pub const MAX_DIM: usize = 1 << 16;

/// Largest manifest read, in bytes (the skipped list of a huge dataset fits many times over).
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// The encoder an index was built with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderInfo {
    /// Absolute path of the ONNX file at ingest time.
    pub file: String,
    /// SHA-256 of the ONNX file; queries refuse a model with another hash.
    pub sha256: String,
    /// The spec the model ran with.
    pub spec: ModelSpec,
    /// Execution provider used at ingest (`cpu` or `cuda`).
    pub provider: String,
    /// Dimension of each stored feature.
    pub dims: BTreeMap<String, usize>,
}

/// The dataset an index was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Absolute path of the dataset root at ingest time.
    pub path: String,
    /// Reader used, e.g. `mmseg`.
    pub format: String,
    /// Splits ingested.
    pub splits: Vec<String>,
    /// Reader options (e.g. keypoint classes and distance rule), if the reader has any.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub options: serde_json::Value,
}

/// Row and image counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Regions stored (= rows of every feature matrix).
    pub regions: u64,
    /// Of which parts.
    pub parts: u64,
    /// Of which objects.
    pub objects: u64,
    /// Images that gave regions or were read without error.
    pub images: u64,
    /// Images skipped because of an error.
    pub images_skipped: u64,
}

/// One HNSW graph in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswInfo {
    /// Base name of the graph file: `hnsw/<basename>.graph` (schema 1:
    /// `hnsw/<basename>.hnsw.{graph,data}`, hnsw_rs's dump).
    pub basename: String,
    /// Maximum links per node (M; 2 M on layer 0).
    pub max_nb_connection: usize,
    /// Search width used while building.
    pub ef_construction: usize,
    /// Seed of the level draw (absent in schema 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// What linked the graph: `partlens` or `hnsw_rs` (absent in schema 1: hnsw_rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
}

impl HnswInfo {
    /// The graph file inside the index (schema 2).
    pub fn graph_file(&self) -> String {
        format!("hnsw/{}.graph", self.basename)
    }
}

/// Size and checksum of one file of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Length in bytes ([`crate::IndexDir::open`] checks it).
    pub bytes: u64,
    /// SHA-256, lowercase hex ([`crate::IndexDir::verify`] checks it).
    pub sha256: String,
}

impl FileRecord {
    /// The length and SHA-256 of the file at `path` as it is now.
    pub fn of(path: &Path) -> Result<FileRecord> {
        Ok(FileRecord {
            bytes: std::fs::metadata(path).at(path)?.len(),
            sha256: crate::encoder::sha256_file(path)?,
        })
    }
}

/// One committed segment: a folder `segments/<name>/` laid out as a schema-2 index
/// (`regions/part-00000.parquet`, `features/<f>.npy`, `features/<f>.unit.npy`,
/// `hnsw/<f>.graph`, optionally `tokens/regions.npy` and `dense/`), immutable once listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Folder name under `segments/`.
    pub name: String,
    /// Global id of its first region; its regions are `first_id .. first_id + counts.regions`.
    pub first_id: u64,
    /// Its row and image counts.
    pub counts: Counts,
    /// Where it came from (a shard of `ingest --shard`, adopted by `merge`), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<SegmentOrigin>,
    /// For ingest: the dataset items `[start, end)` (in listing order, after `--shard`) whose
    /// regions it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<[u64; 2]>,
    /// Dense images and cells it holds (`--dense`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<[u64; 2]>,
    /// Every file of the segment, relative to its folder, with length and SHA-256 recorded at
    /// commit (`partlens verify` checks them).
    pub files: BTreeMap<String, FileRecord>,
}

impl SegmentInfo {
    /// Its folder, relative to the index: `segments/<name>`.
    pub fn dir(&self) -> String {
        format!("segments/{}", self.name)
    }

    /// One past its last region id.
    pub fn end_id(&self) -> u64 {
        self.first_id + self.counts.regions
    }
}

/// Where an adopted segment came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentOrigin {
    /// The shard, `i/N`, when it was written by `ingest --shard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The index it was adopted from (absolute path at merge time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// Its name there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

/// An ingest in progress: the settings a `--resume` must repeat, and the next item to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestProgress {
    /// Everything that decides the result (encoder hash, dataset root, format and listing hash,
    /// region settings, segment size, shard, batch size, graph parameters, dense and token
    /// options), compared field by field on resume.
    pub fingerprint: BTreeMap<String, serde_json::Value>,
    /// Items (in listing order, after `--shard`) already committed.
    pub next_item: u64,
    /// Items in the run.
    pub items: u64,
    /// Problems of the dataset's listing (reported once, at the start).
    #[serde(default)]
    pub listing_skipped: u64,
    /// True once the run finished: the record stays, so a `--resume` of a run that had
    /// already finished (killed after its last step) recognises it.
    #[serde(default)]
    pub complete: bool,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// partlens version that wrote the index.
    pub partlens_version: String,
    /// Seconds since the Unix epoch when ingest finished.
    pub created_unix: u64,
    /// The encoder.
    pub encoder: EncoderInfo,
    /// The dataset.
    pub dataset: DatasetInfo,
    /// How regions were cut.
    pub settings: RegionSettings,
    /// Counts.
    pub counts: Counts,
    /// Features stored, in `features/<name>.npy` and as Parquet columns.
    pub features: Vec<String>,
    /// Schema 1 and 2: Parquet files under the index directory, in row order (schema 3: each
    /// segment's `regions/part-00000.parquet`; empty here).
    #[serde(default)]
    pub shards: Vec<String>,
    /// HNSW graph per feature.
    pub hnsw: BTreeMap<String, HnswInfo>,
    /// Inputs skipped, with reasons.
    pub skipped: Vec<Skipped>,
    /// Schema 1 and 2: every other file of the index (`regions/…`, `features/…`, `hnsw/…`)
    /// with its length and SHA-256 (indexes written before this field have none). Schema 3:
    /// empty; each segment lists its own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileRecord>,
    /// Schema 3: the committed segments, in id order.
    #[serde(default)]
    pub segments: Vec<SegmentInfo>,
    /// Written by `ingest`: what a `--resume` must match and where it continues; not
    /// `complete` while the run lasts (only in its staging folder `.<name>.ingest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestProgress>,
    /// Dense features (`ingest --dense`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<super::dense::DenseInfo>,
    /// Region tokens (`ingest --tokens`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<super::dense::TokensInfo>,
}

impl Manifest {
    /// Writes `dir/manifest.json` atomically.
    pub fn write_atomic(&self, dir: &Path) -> Result<()> {
        let path = dir.join("manifest.json");
        let tmp = dir.join("manifest.json.tmp");
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::InvalidArgument(format!("manifest: {e}")))?;
        {
            let mut f = std::fs::File::create(&tmp).at(&tmp)?;
            f.write_all(&json).at(&tmp)?;
            f.write_all(b"\n").at(&tmp)?;
            f.sync_all().at(&tmp)?;
        }
        crate::files::crash_point("manifest-tmp");
        std::fs::rename(&tmp, &path).at(&path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads and checks `dir/manifest.json`: its schema version and every value that names a
    /// file or sizes a computation (see [`Manifest::validate`]).
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join("manifest.json");
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such index directory"),
            ));
        }
        if !path.exists() {
            return Err(Error::corrupt(
                &path,
                "missing: not an index directory, or its ingest did not finish",
            ));
        }
        let bytes = crate::files::read_limited(&path, MAX_MANIFEST_BYTES)?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(&path, format!("unreadable manifest: {e}")))?;
        if !(OLDEST_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&m.schema_version) {
            return Err(Error::corrupt(
                &path,
                format!(
                    "schema version {} (this partlens reads {OLDEST_SCHEMA_VERSION} to \
                     {SCHEMA_VERSION}); it was written by a newer partlens, or damaged",
                    m.schema_version
                ),
            ));
        }
        m.validate()
            .map_err(|message| Error::corrupt(&path, message))?;
        Ok(m)
    }

    /// Checks what the rest of partlens trusts: region settings (the margin sizes query
    /// crops), the encoder spec (its input size sizes tensors), feature names and dimensions,
    /// counts that must add up, and that every file name stays inside the index directory.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.settings
            .validate()
            .map_err(|e| format!("settings: {e}"))?;
        self.encoder
            .spec
            .check(Path::new(&self.encoder.file))
            .map_err(|e| format!("encoder spec: {e}"))?;
        let c = &self.counts;
        if c.parts.checked_add(c.objects) != Some(c.regions) {
            return Err(format!(
                "counts: {} parts + {} objects ≠ {} regions",
                c.parts, c.objects, c.regions
            ));
        }
        if self.features.is_empty() {
            return Err("no features listed".into());
        }
        for (i, name) in self.features.iter().enumerate() {
            if Feature::parse(name).is_none() {
                return Err(format!("unknown feature {name:?}"));
            }
            if self.features[..i].contains(name) {
                return Err(format!("feature {name:?} listed twice"));
            }
            match self.encoder.dims.get(name) {
                Some(&d) if (1..=MAX_DIM).contains(&d) => {}
                other => {
                    return Err(format!(
                        "feature {name:?} has dimension {other:?}; expected 1..={MAX_DIM}"
                    ))
                }
            }
        }
        if self.schema_version < 3 && self.shards.is_empty() {
            return Err("no region files listed".into());
        }
        if self.schema_version >= 3 {
            self.validate_segments()?;
        }
        if let Some(d) = &self.dense {
            let ok = (1..=MAX_DIM).contains(&d.dim)
                && d.cell >= 1
                && d.stride >= 1
                && d.window.iter().all(|&w| (1..=4096).contains(&w))
                && (1..=1 << 16).contains(&d.size)
                && [&d.part_classes, &d.object_classes]
                    .iter()
                    .all(|c| c.as_ref().is_none_or(|c| (1..=255).contains(&c.len())));
            if !ok {
                return Err(format!(
                    "dense: size {}, stride {}, window {:?}, cell {}, dim {} or its class lists \
                     (1 to 255 names) are out of range",
                    d.size, d.stride, d.window, d.cell, d.dim
                ));
            }
        }
        if let Some(t) = &self.tokens {
            if !(1..=MAX_DIM).contains(&t.dim) || t.tokens == 0 || t.tokens != t.rows * t.cols {
                return Err(format!(
                    "tokens: {} tokens of {} values in a {} × {} grid",
                    t.tokens, t.dim, t.rows, t.cols
                ));
            }
        }
        for shard in self.shards.iter().chain(self.files.keys()) {
            check_inner_path(shard)?;
        }
        for (f, h) in &self.hnsw {
            if !self.features.contains(f) {
                return Err(format!("HNSW graph for unlisted feature {f:?}"));
            }
            crate::dataset::root::check_component(&h.basename, "HNSW base name")
                .map_err(|e| e.to_string())?;
            crate::index::HnswParams {
                max_nb_connection: h.max_nb_connection,
                ef_construction: h.ef_construction,
            }
            .validate()
            .map_err(|e| format!("{f:?}: {e}"))?;
        }
        Ok(())
    }
}

impl Manifest {
    /// Schema 3: segments with plain, distinct names, ids contiguous from 0, counts that add
    /// up to the index's, files inside their folders.
    fn validate_segments(&self) -> std::result::Result<(), String> {
        if !self.shards.is_empty() || !self.files.is_empty() {
            return Err("schema 3 lists files per segment, not at the top".into());
        }
        let mut next = 0u64;
        let mut total = Counts::default();
        let mut names = std::collections::BTreeSet::new();
        for s in &self.segments {
            crate::dataset::root::check_component(&s.name, "segment name")
                .map_err(|e| e.to_string())?;
            if !names.insert(s.name.as_str()) {
                return Err(format!("segment {:?} listed twice", s.name));
            }
            let c = &s.counts;
            if s.first_id != next
                || c.regions == 0
                || c.parts.checked_add(c.objects) != Some(c.regions)
            {
                return Err(format!(
                    "segment {:?}: first id {}, {} regions ({} parts + {} objects); ids must \
                     continue from {next} and a segment holds at least one region",
                    s.name, s.first_id, c.regions, c.parts, c.objects
                ));
            }
            for f in s.files.keys() {
                check_inner_path(f)?;
            }
            if !s.files.contains_key(super::SEGMENT_REGIONS) {
                return Err(format!("segment {:?} lists no region file", s.name));
            }
            next = s.end_id();
            total.regions += c.regions;
            total.parts += c.parts;
            total.objects += c.objects;
            total.images += c.images;
            total.images_skipped += c.images_skipped;
        }
        let c = &self.counts;
        if (total.regions, total.parts, total.objects) != (c.regions, c.parts, c.objects) {
            return Err(format!(
                "segments hold {} regions ({} parts, {} objects), the index says {} ({}, {})",
                total.regions, total.parts, total.objects, c.regions, c.parts, c.objects
            ));
        }
        if self.segments.is_empty() && !self.in_progress() {
            return Err("no segment listed".into());
        }
        Ok(())
    }

    /// The graph parameters the index's graphs were built with (the defaults if it has none).
    pub fn hnsw_params(&self) -> crate::index::HnswParams {
        self.hnsw
            .values()
            .next()
            .map(|h| crate::index::HnswParams {
                max_nb_connection: h.max_nb_connection,
                ef_construction: h.ef_construction,
            })
            .unwrap_or_default()
    }

    /// Each stored feature and its dimension.
    pub fn feature_dims(&self) -> BTreeMap<Feature, usize> {
        self.features
            .iter()
            .filter_map(|n| Some((Feature::parse(n)?, *self.encoder.dims.get(n)?)))
            .collect()
    }

    /// True while an ingest is writing this index (an unfinished one, if read elsewhere than
    /// by the ingest itself).
    pub fn in_progress(&self) -> bool {
        self.ingest.as_ref().is_some_and(|p| !p.complete)
    }

    /// True for an index imported from vectors (`partlens import` without `--model`): it has
    /// no encoder to embed a query image with.
    pub fn imported(&self) -> bool {
        self.encoder.sha256.is_empty()
    }
}

/// A file name inside the index directory: relative, `/`-separated plain components.
fn check_inner_path(p: &str) -> std::result::Result<(), String> {
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && p.split('/')
            .all(|c| crate::dataset::root::check_component(c, "file name").is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "file name {p:?} is not a plain path inside the index"
        ))
    }
}
