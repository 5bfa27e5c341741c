//! The index directory, an on-disk contract (see ARCHITECTURE.md):
//!
//! ```text
//! manifest.json                 written last, atomically
//! regions/part-00000.parquet    region metadata + one FixedSizeList<f32, D> column per feature
//! features/<feature>.npy        N × D float32, row i = region id i
//! hnsw/<feature>.hnsw.{graph,data}
//! ```

pub mod manifest;
pub mod npy;
pub mod parquet;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::encoder::Feature;
use crate::error::{Error, Result};
use crate::region::Region;
pub use manifest::Manifest;
pub use npy::{NpyMatrix, NpyWriter};
pub use parquet::{read_regions, RegionWriter};

/// An opened index directory: its manifest, region metadata and memory-mapped features.
#[derive(Debug)]
pub struct IndexDir {
    path: PathBuf,
    manifest: Manifest,
    regions: Vec<Region>,
    features: BTreeMap<Feature, NpyMatrix>,
}

/// Path of a feature matrix inside an index directory.
pub fn feature_path(dir: &Path, f: Feature) -> PathBuf {
    dir.join("features").join(format!("{}.npy", f.as_str()))
}

impl IndexDir {
    /// Opens `path`, checking that the manifest, Parquet shards and feature matrices agree on
    /// the number of regions; any disagreement (a truncated or partly copied index) is
    /// [`Error::DataCorruption`].
    pub fn open(path: impl AsRef<Path>) -> Result<IndexDir> {
        let path = path.as_ref().to_path_buf();
        let manifest = Manifest::read(&path)?;
        let mut regions = Vec::new();
        for shard in &manifest.shards {
            regions.extend(read_regions(path.join(shard))?);
        }
        let n = manifest.counts.regions as usize;
        if regions.len() != n {
            return Err(Error::corrupt(
                &path,
                format!(
                    "manifest lists {n} regions, the Parquet files hold {}",
                    regions.len()
                ),
            ));
        }
        if let Some((i, r)) = regions.iter().enumerate().find(|(i, r)| r.id != *i as u64) {
            return Err(Error::corrupt(
                &path,
                format!("region row {i} has id {}; ids must be 0..N in order", r.id),
            ));
        }
        let mut features = BTreeMap::new();
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
            features.insert(f, m);
        }
        Ok(IndexDir {
            path,
            manifest,
            regions,
            features,
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

    /// Features stored in this index.
    pub fn feature_names(&self) -> Vec<Feature> {
        self.features.keys().copied().collect()
    }
}
