//! One segment of an index, opened (`Segment`), and views across segments: a feature's rows
//! by global id (`Rows`) and region tokens (`TokenRows`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{dense, feature_path, manifest, parquet, unit_path, HalfArray, Manifest, NpyMatrix};
use crate::encoder::Feature;
use crate::error::{Error, Result};
use crate::region::Region;

/// One opened segment: its files mapped, its regions `first_id .. first_id + len`.
#[derive(Debug)]
pub struct Segment {
    name: String,
    dir: PathBuf,
    pub(super) first_id: usize,
    pub(super) len: usize,
    pub(super) parquet: Vec<parquet::RegionFile>,
    features: BTreeMap<Feature, NpyMatrix>,
    units: BTreeMap<Feature, Arc<NpyMatrix>>,
    tokens: Option<HalfArray>,
    files: BTreeMap<String, manifest::FileRecord>,
}

impl Segment {
    /// Opens the segment `info` of `manifest` in `dir` (its Parquet files `shards`): every
    /// listed file's length checked, footers read, matrices mapped and their shapes checked.
    pub(super) fn open(
        manifest: &Manifest,
        info: manifest::SegmentInfo,
        dir: PathBuf,
        shards: &[String],
    ) -> Result<Segment> {
        for (name, rec) in &info.files {
            let p = dir.join(name);
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
        let n = info.counts.regions as usize;
        let mut parquet = Vec::new();
        for shard in shards {
            parquet.push(parquet::RegionFile::open(&dir.join(shard))?);
        }
        let held: usize = parquet.iter().map(|p| p.rows()).sum();
        if held != n {
            return Err(Error::corrupt(
                &dir,
                format!("manifest lists {n} regions, the Parquet files hold {held}"),
            ));
        }
        let mut features = BTreeMap::new();
        let mut units = BTreeMap::new();
        for name in &manifest.features {
            let f = Feature::parse(name).ok_or_else(|| {
                Error::corrupt(&dir, format!("manifest names unknown feature {name:?}"))
            })?;
            let dim = manifest.encoder.dims.get(name).copied().unwrap_or(0);
            let check = |m: &NpyMatrix, p: &Path| {
                if dim == 0 || m.rows() != n || m.cols() != dim {
                    return Err(Error::corrupt(
                        p,
                        format!(
                            "{} × {} matrix, manifest says {n} × {dim}",
                            m.rows(),
                            m.cols()
                        ),
                    ));
                }
                Ok(())
            };
            let fp = feature_path(&dir, f);
            let m = NpyMatrix::open(&fp)?;
            check(&m, &fp)?;
            if manifest.schema_version >= 2 {
                let up = unit_path(&dir, f);
                let u = NpyMatrix::open(&up)?;
                check(&u, &up)?;
                units.insert(f, Arc::new(u));
            }
            features.insert(f, m);
        }
        let tokens = match &manifest.tokens {
            Some(t) => {
                let tp = dir.join(dense::TOKENS_FILE);
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
        Ok(Segment {
            name: info.name,
            dir,
            first_id: info.first_id as usize,
            len: n,
            parquet,
            features,
            units,
            tokens,
            files: info.files,
        })
    }

    /// Its name (`""` for an index of schema 1 or 2, which is one segment).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Global id of its first region.
    pub fn first_id(&self) -> usize {
        self.first_id
    }

    /// Its number of regions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no region (never, once committed).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its rows of feature `f` (local row i = region `first_id + i`), mapped.
    pub fn feature(&self, f: Feature) -> Option<&NpyMatrix> {
        self.features.get(&f)
    }

    /// Its unit-norm rows of `f` (schema ≥ 2), mapped.
    pub fn unit(&self, f: Feature) -> Option<&Arc<NpyMatrix>> {
        self.units.get(&f)
    }

    /// Its region tokens (`--tokens`), mapped.
    pub fn tokens(&self) -> Option<&HalfArray> {
        self.tokens.as_ref()
    }

    /// Its files and the lengths and SHA-256 recorded at commit.
    pub fn files(&self) -> &BTreeMap<String, manifest::FileRecord> {
        &self.files
    }

    /// Its Parquet files (footers read), in row order.
    pub fn parquet(&self) -> &[parquet::RegionFile] {
        &self.parquet
    }

    /// The metadata of its local rows `local` (ascending), ids checked.
    pub(super) fn regions_at(&self, local: &[usize], masks: bool) -> Result<Vec<Region>> {
        let mut out = Vec::with_capacity(local.len());
        let mut base = 0;
        let mut rest = local;
        for pf in &self.parquet {
            let (p, rows) = (pf.path(), pf.rows());
            let cut = rest.partition_point(|&i| i < base + rows);
            let (mine, later) = rest.split_at(cut);
            if !mine.is_empty() {
                let in_file: Vec<usize> = mine.iter().map(|&i| i - base).collect();
                let got = pf.read_at(&in_file, masks)?;
                for (r, &i) in got.iter().zip(mine) {
                    let want = (self.first_id + i) as u64;
                    if r.id != want {
                        return Err(Error::corrupt(
                            p,
                            format!("row {} has id {}, expected {want}", i - base, r.id),
                        ));
                    }
                }
                if got.len() != mine.len() {
                    return Err(Error::corrupt(p, "fewer rows than its footer says"));
                }
                out.extend(got);
            }
            rest = later;
            base += rows;
        }
        Ok(out)
    }

    /// Maps and validates its HNSW graph of `f`.
    pub fn graph(&self, f: Feature, info: &manifest::HnswInfo) -> Result<crate::index::HnswIndex> {
        let unit = self.units.get(&f).ok_or_else(|| {
            Error::InvalidArgument(format!("segment {} has no {f} unit rows", self.name))
        })?;
        crate::index::HnswIndex::open(self.dir.join(info.graph_file()), unit.clone())
    }
}

/// A feature's rows across segments, read through the maps: row `id` = region `id`.
#[derive(Debug, Clone)]
pub struct Rows<'a> {
    pub(super) dim: usize,
    pub(super) starts: Vec<usize>,
    pub(super) parts: Vec<&'a [f32]>,
    pub(super) len: usize,
}

impl<'a> Rows<'a> {
    /// One contiguous matrix (`data.len() / dim` rows).
    pub fn contiguous(data: &'a [f32], dim: usize) -> Rows<'a> {
        Rows {
            dim,
            starts: vec![0],
            len: data.len() / dim.max(1),
            parts: vec![data],
        }
    }

    /// Width of a row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is no row.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Row `id`.
    #[inline]
    pub fn row(&self, id: usize) -> &'a [f32] {
        let (p, base) = if self.parts.len() == 1 {
            (0, 0)
        } else {
            let p = self.starts.partition_point(|&s| s <= id) - 1;
            (p, self.starts[p])
        };
        let i = id - base;
        &self.parts[p][i * self.dim..(i + 1) * self.dim]
    }

    /// Number of rows (as [`NpyMatrix::rows`]).
    pub fn rows(&self) -> usize {
        self.len
    }

    /// Width of a row (as [`NpyMatrix::cols`]).
    pub fn cols(&self) -> usize {
        self.dim
    }

    /// All rows, contiguous (a copy).
    pub fn to_vec(&self) -> Vec<f32> {
        self.parts.concat()
    }

    /// The pieces, each with the id of its first row.
    pub fn parts(&self) -> impl Iterator<Item = (usize, &'a [f32])> + '_ {
        self.starts.iter().copied().zip(self.parts.iter().copied())
    }
}

/// Region tokens across segments: region `id`'s `tokens × dim` float16 values.
#[derive(Debug, Clone)]
pub struct TokenRows<'a> {
    pub(super) parts: Vec<(usize, &'a HalfArray)>,
    pub(super) shape: [usize; 3],
}

impl TokenRows<'_> {
    /// `[regions, tokens, dim]`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Region `id`'s tokens as float32 into `out` (`tokens × dim` values).
    pub fn read_region(&self, id: usize, out: &mut [f32]) {
        let p = self.parts.partition_point(|(s, _)| *s <= id) - 1;
        let (first, a) = self.parts[p];
        a.read_rows(id - first, 1, out);
    }
}
