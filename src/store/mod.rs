//! The index directory, an on-disk contract (see ARCHITECTURE.md):
//!
//! ```text
//! .partlens-index               marker: this folder is a partlens index (and may be replaced)
//! manifest.json                 written last, atomically; sizes and SHA-256 of the files below
//! regions/part-00000.parquet    region metadata + one FixedSizeList<f32, D> column per feature
//! features/<feature>.npy        N × D float32, row i = region id i (as the encoder gave it)
//! features/<feature>.unit.npy   N × D float32, the same rows L2-normalised (what search reads)
//! hnsw/<feature>.graph          the HNSW graph over the unit rows (crate::index::graph)
//! ```

pub mod dense;
pub mod manifest;
pub mod npy;
pub mod parquet;
pub mod upgrade;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::encoder::Feature;
use crate::error::{Error, Result};
use crate::region::{Region, RegionKind};
pub use manifest::Manifest;
pub use npy::{HalfArray, HalfWriter, NpyMatrix, NpyWriter};
pub use parquet::{read_regions, RegionWriter};

/// An opened index directory: its manifest, region metadata and memory-mapped features.
#[derive(Debug)]
pub struct IndexDir {
    path: PathBuf,
    manifest: Manifest,
    regions: Vec<Region>,
    features: BTreeMap<Feature, NpyMatrix>,
    units: BTreeMap<Feature, std::sync::Arc<NpyMatrix>>,
    dense: Option<dense::DenseIndex>,
    tokens: Option<HalfArray>,
}

/// The marker file every index holds; only a folder with it (or, for indexes written before
/// the marker, a complete manifest) is ever replaced by `ingest --overwrite`.
pub const MARKER_FILE: &str = ".partlens-index";

/// The marker's content.
pub const MARKER_TEXT: &str = "partlens index: see manifest.json\n";

/// Entries an index directory may hold; anything else means a user put files there, and the
/// folder is not replaced.
/// (`evals/` holds results cached by `partlens report`.)
pub const INDEX_ENTRIES: [&str; 9] = [
    MARKER_FILE,
    "manifest.json",
    "manifest.json.tmp",
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

impl IndexDir {
    /// Opens `path`, checking that the manifest, Parquet shards and feature matrices agree on
    /// the number of regions, and that every file has the length the manifest recorded; any
    /// disagreement (a truncated or partly copied index) is [`Error::DataCorruption`].
    pub fn open(path: impl AsRef<Path>) -> Result<IndexDir> {
        let path = path.as_ref().to_path_buf();
        let manifest = Manifest::read(&path)?;
        for (name, rec) in &manifest.files {
            let p = path.join(name);
            let len = std::fs::metadata(&p)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        Error::corrupt(&p, "file missing (the manifest lists it)")
                    }
                    _ => Error::io(&p, e),
                })?
                .len();
            if len != rec.bytes {
                return Err(Error::corrupt(
                    &p,
                    format!(
                        "{len} bytes, the manifest recorded {}: truncated or replaced",
                        rec.bytes
                    ),
                ));
            }
        }
        let mut regions = Vec::new();
        for shard in &manifest.shards {
            regions.extend(read_regions(path.join(shard))?);
        }
        let n = manifest.counts.regions;
        if regions.len() as u64 != n {
            return Err(Error::corrupt(
                &path,
                format!(
                    "manifest lists {n} regions, the Parquet files hold {}",
                    regions.len()
                ),
            ));
        }
        let n = regions.len();
        if let Some((i, r)) = regions.iter().enumerate().find(|(i, r)| r.id != *i as u64) {
            return Err(Error::corrupt(
                &path,
                format!("region row {i} has id {}; ids must be 0..N in order", r.id),
            ));
        }
        let mut features = BTreeMap::new();
        let mut units = BTreeMap::new();
        for name in &manifest.features {
            let f = Feature::parse(name).ok_or_else(|| {
                Error::corrupt(&path, format!("manifest names unknown feature {name:?}"))
            })?;
            let fp = feature_path(&path, f);
            let m = NpyMatrix::open(&fp)?;
            let dim = manifest.encoder.dims.get(name).copied().unwrap_or(0);
            if dim == 0 || m.rows() != n || m.cols() != dim {
                return Err(Error::corrupt(
                    &fp,
                    format!(
                        "{} × {} matrix, manifest says {n} × {dim}",
                        m.rows(),
                        m.cols()
                    ),
                ));
            }
            if manifest.schema_version >= 2 {
                let up = unit_path(&path, f);
                let u = NpyMatrix::open(&up)?;
                if u.rows() != n || u.cols() != dim {
                    return Err(Error::corrupt(
                        &up,
                        format!(
                            "{} × {} matrix, manifest says {n} × {dim}",
                            u.rows(),
                            u.cols()
                        ),
                    ));
                }
                units.insert(f, std::sync::Arc::new(u));
            }
            features.insert(f, m);
        }
        let dense = match &manifest.dense {
            Some(info) => Some(dense::DenseIndex::open(&path, info)?),
            None => None,
        };
        let tokens = match &manifest.tokens {
            Some(t) => {
                let tp = path.join(dense::TOKENS_FILE);
                let a = HalfArray::open(&tp)?;
                if a.shape() != [n, t.tokens, t.dim] {
                    return Err(Error::corrupt(
                        &tp,
                        format!(
                            "shape {:?}, the manifest says ({n}, {}, {})",
                            a.shape(),
                            t.tokens,
                            t.dim
                        ),
                    ));
                }
                Some(a)
            }
            None => None,
        };
        Ok(IndexDir {
            path,
            manifest,
            regions,
            features,
            units,
            dense,
            tokens,
        })
    }

    /// Re-reads every file the manifest lists and compares its SHA-256 with the recorded one.
    /// Returns the files that differ, each with what is wrong (empty: all match). Catches what
    /// lengths cannot: flipped bits, a file swapped for another of the same size.
    pub fn verify(&self) -> Result<Vec<String>> {
        let mut bad = Vec::new();
        for (name, rec) in &self.manifest.files {
            let p = self.path.join(name);
            let got = crate::encoder::sha256_file(&p)?;
            if got != rec.sha256 {
                bad.push(format!(
                    "{name}: SHA-256 {got} ≠ {} recorded at ingest: the file changed",
                    rec.sha256
                ));
            }
        }
        Ok(bad)
    }

    /// Regions per label, most frequent first (ties by kind, then name).
    pub fn label_counts(&self) -> Vec<LabelCount> {
        let mut per: BTreeMap<(RegionKind, &str), usize> = BTreeMap::new();
        for r in &self.regions {
            *per.entry((r.kind, r.label_name.as_str())).or_default() += 1;
        }
        let mut v: Vec<LabelCount> = per
            .into_iter()
            .map(|((kind, label), regions)| LabelCount {
                kind,
                label: label.to_string(),
                regions,
            })
            .collect();
        v.sort_by(|a, b| {
            b.regions
                .cmp(&a.regions)
                .then(a.kind.cmp(&b.kind))
                .then(a.label.cmp(&b.label))
        });
        v
    }

    /// Rows of `f` holding a NaN or infinity (a damaged file: ingest never stores one).
    pub fn damaged_rows(&self, f: Feature) -> Vec<usize> {
        self.feature(f).map_or_else(Vec::new, |m| {
            crate::index::nonfinite_rows(m.as_slice(), m.cols())
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// All regions, indexed by id.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The memory-mapped matrix of a feature, if the index has it.
    pub fn feature(&self, f: Feature) -> Option<&NpyMatrix> {
        self.features.get(&f)
    }

    /// The unit-norm rows of a feature (`features/<feature>.unit.npy`), mapped; `None` for
    /// a feature the index lacks or an index written before schema 2.
    pub fn unit(&self, f: Feature) -> Option<&std::sync::Arc<NpyMatrix>> {
        self.units.get(&f)
    }

    /// True for an index in an older layout that `partlens upgrade` converts.
    pub fn needs_upgrade(&self) -> bool {
        self.manifest.schema_version < manifest::SCHEMA_VERSION
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

    /// Maps and validates the HNSW graph of `f` over its unit rows. An index in the older
    /// layout is refused with the command that upgrades it; a damaged graph file is
    /// [`Error::DataCorruption`] naming it.
    pub fn graph(&self, f: Feature) -> Result<crate::index::HnswIndex> {
        self.require_current()?;
        let info = self.manifest.hnsw.get(f.as_str()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "index {} has no HNSW graph for {f}",
                self.path.display()
            ))
        })?;
        let unit = self.units.get(&f).ok_or_else(|| {
            Error::InvalidArgument(format!("index {} has no {f} feature", self.path.display()))
        })?;
        crate::index::HnswIndex::open(self.path.join(info.graph_file()), unit.clone())
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
    pub fn tokens(&self) -> Result<&HalfArray> {
        self.tokens.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "index {} has no region tokens; ingest again with --tokens to keep them \
                 (partlens ingest --dataset … --tokens --out {} --overwrite)",
                self.path.display(),
                self.path.display()
            ))
        })
    }

    /// Features stored in this index.
    pub fn feature_names(&self) -> Vec<Feature> {
        self.features.keys().copied().collect()
    }
}
