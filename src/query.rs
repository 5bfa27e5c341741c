//! The engine behind `partlens query`: embed a crop with the index's own encoder and return the
//! most similar stored regions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;

use crate::encoder::{Encoder, EncoderOptions, Feature, Features};
use crate::error::{Error, Result};
use crate::index::{exact_search, normalize_rows, Hit, HnswIndex};
use crate::preprocess::decode_rgb;
use crate::region::{PixelBox, RegionKind};
use crate::store::IndexDir;

/// Default for [`SearchOptions::exact_below`].
pub const EXACT_BELOW: usize = 2000;

/// What to search for and how.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// Number of hits.
    pub k: usize,
    /// Feature to compare; default `mean`.
    pub feature: Feature,
    /// Force exact (brute-force) search.
    pub exact: bool,
    /// HNSW search width (≥ k).
    pub ef: usize,
    /// Below this many candidate regions (after filters) search is exact: as fast as HNSW
    /// there, and exact.
    pub exact_below: usize,
    /// Only regions whose label name (or numeric id) is this.
    pub label: Option<String>,
    /// Only parts or only objects.
    pub kind: Option<RegionKind>,
    /// Only this split.
    pub split: Option<String>,
    /// Only regions of this object class (name or id).
    pub object: Option<String>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            k: 10,
            feature: Feature::Mean,
            exact: false,
            ef: 64,
            exact_below: EXACT_BELOW,
            label: None,
            kind: None,
            split: None,
            object: None,
        }
    }
}

/// One result, as printed by `query --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryHit {
    /// Region id.
    pub id: u64,
    /// Image path as stored (relative to the dataset root).
    pub image: String,
    /// Split.
    pub split: String,
    /// `part` or `object`.
    pub kind: RegionKind,
    /// Label name.
    pub label: String,
    /// Label id.
    pub label_id: u32,
    /// Object class the region belongs to, when known.
    pub object: Option<String>,
    /// Tight box `[x0, y0, x1, y1]`.
    #[serde(rename = "box")]
    pub bbox: [i64; 4],
    /// The pixels that were embedded `[x0, y0, x1, y1]` (may extend past the image).
    pub crop_box: [i64; 4],
    /// Region area in pixels.
    pub area: u64,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// An opened index with its encoder, ready to answer queries.
pub struct QueryEngine {
    index: IndexDir,
    encoder: Encoder,
    hnsw: BTreeMap<Feature, HnswIndex>,
    normalized: BTreeMap<Feature, OnceLock<Vec<f32>>>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("index", &self.index.path())
            .finish()
    }
}

impl QueryEngine {
    /// Opens the index at `path` with the encoder recorded in its manifest.
    pub fn open(path: impl AsRef<Path>, opts: &EncoderOptions) -> Result<QueryEngine> {
        Self::open_with_model(path, None, opts)
    }

    /// Opens the index, loading `model` instead of the recorded file (it must be the same model:
    /// its SHA-256 is checked).
    pub fn open_with_model(
        path: impl AsRef<Path>,
        model: Option<&Path>,
        opts: &EncoderOptions,
    ) -> Result<QueryEngine> {
        let index = IndexDir::open(path)?;
        let m = index.manifest();
        let model: PathBuf =
            model.map_or_else(|| PathBuf::from(&m.encoder.file), Path::to_path_buf);
        let encoder = Encoder::load(&model, opts)?;
        if encoder.sha256() != m.encoder.sha256 {
            return Err(Error::model(
                &model,
                format!(
                    "this is not the model the index was built with (sha256 {} ≠ {}); embeddings \
                     from another model are not comparable. Pass the original with --model",
                    encoder.sha256(),
                    m.encoder.sha256
                ),
            ));
        }
        let mut hnsw = BTreeMap::new();
        for (name, info) in &m.hnsw {
            if let Some(f) = Feature::parse(name) {
                let g = HnswIndex::load(
                    &index.path().join("hnsw"),
                    &info.basename,
                    index.regions().len(),
                )?;
                hnsw.insert(f, g);
            }
        }
        let normalized = index
            .feature_names()
            .into_iter()
            .map(|f| (f, OnceLock::new()))
            .collect();
        Ok(QueryEngine {
            index,
            encoder,
            hnsw,
            normalized,
        })
    }

    /// The opened index.
    pub fn index(&self) -> &IndexDir {
        &self.index
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Embeds the crop `bbox` of an image file (the whole image when `None`) exactly as ingest
    /// embedded stored regions: square crop around the box with the index's margin.
    pub fn embed_image_file(&self, image: &Path, bbox: Option<PixelBox>) -> Result<Features> {
        let img = decode_rgb(image)?;
        let (w, h) = (img.width() as i64, img.height() as i64);
        let crop = match bbox {
            Some(b) => {
                if b.x1 <= 0 || b.y1 <= 0 || b.x0 >= w || b.y0 >= h {
                    return Err(Error::InvalidArgument(format!(
                        "box {:?} lies outside {} ({w}×{h})",
                        b.to_array(),
                        image.display()
                    )));
                }
                // Only the part inside the image is a region; this also bounds the crop size.
                let inside = PixelBox {
                    x0: b.x0.max(0),
                    y0: b.y0.max(0),
                    x1: b.x1.min(w),
                    y1: b.y1.min(h),
                };
                inside.square_crop(self.index.manifest().settings.margin)
            }
            None => PixelBox {
                x0: 0,
                y0: 0,
                x1: w,
                y1: h,
            }
            .square_crop(0.0),
        };
        let pre = self.encoder.preprocessor();
        let mut t = vec![0f32; pre.tensor_len()];
        pre.region_tensor(&img, crop, &mut t);
        self.encoder.embed(&t, 1)
    }

    /// Embeds and searches in one call.
    pub fn search_image_file(
        &self,
        image: &Path,
        bbox: Option<PixelBox>,
        opts: &SearchOptions,
    ) -> Result<Vec<QueryHit>> {
        let f = self.embed_image_file(image, bbox)?;
        let v = f.values.get(&opts.feature).ok_or_else(|| {
            Error::InvalidArgument(format!("the model has no {} feature", opts.feature))
        })?;
        self.search_vector(v, opts)
    }

    fn allowed(&self, opts: &SearchOptions) -> Option<Vec<usize>> {
        let matches = |filter: &Option<String>, name: Option<&str>, id: Option<u32>| {
            filter.as_ref().is_none_or(|want| {
                name == Some(want.as_str()) || id.is_some_and(|i| want.parse() == Ok(i))
            })
        };
        if opts.label.is_none()
            && opts.kind.is_none()
            && opts.split.is_none()
            && opts.object.is_none()
        {
            return None;
        }
        Some(
            self.index
                .regions()
                .iter()
                .filter(|r| {
                    opts.kind.is_none_or(|k| r.kind == k)
                        && opts.split.as_ref().is_none_or(|s| &r.split == s)
                        && matches(&opts.label, Some(&r.label_name), Some(r.label))
                        && matches(&opts.object, r.object_name.as_deref(), r.object_label)
                })
                .map(|r| r.id as usize)
                .collect(),
        )
    }

    /// Searches stored regions for the `opts.k` nearest to `vector` (a raw, unnormalised
    /// feature of `opts.feature`).
    pub fn search_vector(&self, vector: &[f32], opts: &SearchOptions) -> Result<Vec<QueryHit>> {
        if opts.k == 0 {
            return Err(Error::InvalidArgument("k must be at least 1".into()));
        }
        let f = opts.feature;
        let m = self.index.feature(f).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "index has no {f} feature (it has: {:?})",
                self.index.manifest().features
            ))
        })?;
        if vector.len() != m.cols() {
            return Err(Error::InvalidArgument(format!(
                "query has {} dims, the index's {f} feature has {}",
                vector.len(),
                m.cols()
            )));
        }
        let q = normalize_rows(vector, m.cols());
        let allowed = self.allowed(opts);
        let candidates = allowed.as_ref().map_or(m.rows(), Vec::len);
        let exact = || {
            let norm = self.normalized[&f].get_or_init(|| normalize_rows(m.as_slice(), m.cols()));
            let keep = allowed
                .as_ref()
                .map(|ids| move |i: usize| ids.binary_search(&i).is_ok());
            let keep_ref = keep.as_ref().map(|k| k as &dyn Fn(usize) -> bool);
            exact_search(norm, m.cols(), &q, opts.k, keep_ref)
        };
        let hits: Vec<Hit> = match self.hnsw.get(&f) {
            Some(g) if !opts.exact && candidates >= opts.exact_below => {
                let hits = g.search(&q, opts.k, opts.ef, allowed.as_ref());
                // A selective filter can starve the graph walk; never return fewer hits than
                // exist.
                if hits.len() < opts.k.min(candidates) {
                    exact()
                } else {
                    hits
                }
            }
            _ => exact(),
        };
        Ok(hits
            .into_iter()
            .map(|h| {
                let r = &self.index.regions()[h.id];
                QueryHit {
                    id: r.id,
                    image: r.image.clone(),
                    split: r.split.clone(),
                    kind: r.kind,
                    label: r.label_name.clone(),
                    label_id: r.label,
                    object: r.object_name.clone(),
                    bbox: r.bbox.to_array(),
                    crop_box: r.crop_box.to_array(),
                    area: r.area,
                    score: h.score,
                }
            })
            .collect())
    }
}
