//! The engine behind `partlens query`: embed a crop with the index's own encoder and return the
//! most similar stored regions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;

use crate::encoder::precision::fp32_sha256;
use crate::encoder::{Device, Encoder, EncoderOptions, Feature, Features, Precision};
use crate::error::{Error, Result};
use crate::index::{exact_search, merge_top, normalize_rows, Hit, IdSet, SegmentGraphs};
use crate::preprocess::decode_rgb;
use crate::region::{PixelBox, RegionKind};
use crate::store::{IndexDir, Rows};

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
    /// `None` for an index imported from vectors without a model: it answers "more like this"
    /// and vector queries, not images.
    encoder: Option<Encoder>,
    hnsw: BTreeMap<Feature, SegmentGraphs>,
    /// Per feature, the rows holding NaN or infinity (found on the first exact search).
    damaged: BTreeMap<Feature, OnceLock<Vec<usize>>>,
    /// The last few filters' matching ids (a filter is one pass over the filterable columns).
    filters: std::sync::Mutex<Vec<(String, std::sync::Arc<Filtered>)>>,
}

/// The regions a filter keeps, as sorted ids and as a set.
#[derive(Debug)]
struct Filtered {
    ids: Vec<usize>,
    set: IdSet,
}

/// Filters remembered by a [`QueryEngine`].
const FILTER_CACHE: usize = 8;

/// Levenshtein distance in characters (for "did you mean").
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The names a user who typed `want` most likely meant: every `object/part` name whose part
/// is `want` (`torso` → `bird/torso`, `person/torso`), else the one closest by case-insensitive
/// edit distance if it is close enough to be a typo. Empty when nothing is close.
pub fn closest<'a>(want: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let w = want.to_lowercase();
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let tails: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|c| {
            c.rsplit_once('/')
                .is_some_and(|(_, tail)| tail.to_lowercase() == w)
        })
        .collect();
    if !tails.is_empty() {
        return tails;
    }
    candidates
        .into_iter()
        .map(|c| (edit_distance(&w, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.chars().count().max(w.chars().count()) / 2).max(1))
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
        .into_iter()
        .collect()
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
        let encoder = if m.imported() && model.is_none() {
            None
        } else {
            let model: PathBuf =
                model.map_or_else(|| PathBuf::from(&m.encoder.file), Path::to_path_buf);
            // An index built in fp16 (CUDA) is queried with its fp32 twin unless CUDA is asked
            // for: the features of the two agree to the cosine scripts/models/fp16.py states.
            let mut opts = opts.clone();
            if opts.precision.is_none()
                && m.encoder.spec.precision == Precision::Fp16
                && opts.device != Device::Cuda
            {
                opts.precision = Some(Precision::Fp32);
            }
            let encoder = Encoder::load(&model, &opts)?;
            let built_with = fp32_sha256(&m.encoder.spec, &m.encoder.sha256);
            if encoder.fp32_sha256() != built_with {
                return Err(Error::model(
                    &model,
                    format!(
                        "this is not the model the index was built with (sha256 {} ≠ {}); \
                         embeddings from another model are not comparable. Pass the original \
                         with --model",
                        encoder.sha256(),
                        if m.imported() {
                            "none: imported vectors"
                        } else {
                            &m.encoder.sha256
                        }
                    ),
                ));
            }
            Some(encoder)
        };
        // Graph search and exact search both read the unit rows of schema ≥ 2.
        index.require_current()?;
        let mut hnsw = BTreeMap::new();
        for name in m.hnsw.keys() {
            if let Some(f) = Feature::parse(name) {
                hnsw.insert(f, index.segment_graphs(f)?);
            }
        }
        let damaged = index
            .feature_names()
            .into_iter()
            .map(|f| (f, OnceLock::new()))
            .collect();
        Ok(QueryEngine {
            index,
            encoder,
            hnsw,
            damaged,
            filters: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The opened index.
    pub fn index(&self) -> &IndexDir {
        &self.index
    }

    /// The encoder, or why there is none (an index imported from vectors without a model).
    pub fn encoder(&self) -> Result<&Encoder> {
        self.encoder.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "index {} was imported from vectors without a model, so it cannot embed an \
                 image; search it by a stored region (\"more like this\") or by a vector, or \
                 import again with --model M.onnx (the model that made the vectors)",
                self.index.path().display()
            ))
        })
    }

    /// Embeds the crop `bbox` of an image file (the whole image when `None`) exactly as ingest
    /// embedded stored regions: square crop around the box with the index's margin.
    pub fn embed_image_file(&self, image: &Path, bbox: Option<PixelBox>) -> Result<Features> {
        let img = decode_rgb(image)?;
        let t = self.crop_tensor(&img, bbox, &image.display().to_string())?;
        self.encoder()?.embed(&t, 1)
    }

    /// The encoder's input tensor for the crop `bbox` of a decoded image (the whole image when
    /// `None`), made as ingest made stored regions' (square crop around the box with the
    /// index's margin). `what` names the image in errors. Every query path (CLI, library,
    /// server) goes through here.
    pub fn crop_tensor(
        &self,
        img: &image::RgbImage,
        bbox: Option<PixelBox>,
        what: &str,
    ) -> Result<Vec<f32>> {
        let (w, h) = (img.width() as i64, img.height() as i64);
        let crop = match bbox {
            Some(b) => {
                if b.x1 <= 0 || b.y1 <= 0 || b.x0 >= w || b.y0 >= h {
                    return Err(Error::InvalidArgument(format!(
                        "box {:?} lies outside {what} ({w}×{h})",
                        b.to_array(),
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
        if crop.width().max(crop.height()) > crate::preprocess::MAX_CROP_SIDE {
            return Err(Error::InvalidArgument(format!(
                "the crop of {what} is {}×{} pixels, over the {} limit",
                crop.width(),
                crop.height(),
                crate::preprocess::MAX_CROP_SIDE
            )));
        }
        let pre = self.encoder()?.preprocessor();
        let mut t = vec![0f32; pre.tensor_len()];
        pre.region_tensor(img, crop, &mut t);
        Ok(t)
    }

    /// "More like this": the regions nearest to stored region `id`'s own vector (no encoder
    /// run; the region itself comes first, at score 1).
    pub fn similar(&self, id: usize, opts: &SearchOptions) -> Result<Vec<QueryHit>> {
        let m = self.index.feature(opts.feature).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "index has no {} feature (it has: {:?})",
                opts.feature,
                self.index.manifest().features
            ))
        })?;
        if id >= m.len() {
            return Err(Error::InvalidArgument(format!(
                "no region {id}: this index has regions 0 to {}",
                m.len().saturating_sub(1)
            )));
        }
        self.search_vector(m.row(id), opts)
    }

    /// Stored region `id` as a hit of score `score`.
    pub fn hit(&self, id: usize, score: f32) -> Result<QueryHit> {
        Ok(self.hits(&[Hit { id, score }])?.remove(0))
    }

    /// Stored regions as hits, reading only their rows' metadata.
    pub fn hits(&self, hits: &[Hit]) -> Result<Vec<QueryHit>> {
        let ids: Vec<usize> = hits.iter().map(|h| h.id).collect();
        let regions = self.index.regions_at(&ids, false)?;
        Ok(regions
            .into_iter()
            .zip(hits)
            .map(|(r, h)| QueryHit {
                id: r.id,
                image: r.image,
                split: r.split,
                kind: r.kind,
                label: r.label_name,
                label_id: r.label,
                object: r.object_name,
                bbox: r.bbox.to_array(),
                crop_box: r.crop_box.to_array(),
                area: r.area,
                score: h.score,
            })
            .collect())
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

    /// The regions `opts`' filters keep (`None`: no filter), from one pass over the
    /// filterable columns (remembered for the next queries with the same filters). A filter
    /// value no stored region has is refused, naming the closest one and the values that
    /// exist; filters that each match but match nothing together keep nothing.
    fn filtered(&self, opts: &SearchOptions) -> Result<Option<std::sync::Arc<Filtered>>> {
        if opts.label.is_none()
            && opts.kind.is_none()
            && opts.split.is_none()
            && opts.object.is_none()
        {
            return Ok(None);
        }
        let key = format!(
            "{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}",
            opts.label, opts.kind, opts.split, opts.object
        );
        if let Ok(cache) = self.filters.lock() {
            if let Some((_, f)) = cache.iter().find(|(k, _)| *k == key) {
                return Ok(Some(f.clone()));
            }
        }
        let matches = |want: &Option<String>, name: Option<&str>, id: Option<u32>| {
            want.as_ref()
                .is_none_or(|w| name == Some(w.as_str()) || id.is_some_and(|i| w.parse() == Ok(i)))
        };
        // Per named filter (label, object, split): whether any region matches it alone, and
        // the distinct values of its column (for the message when none does).
        let wants = [&opts.label, &opts.object, &opts.split];
        let mut any = [false; 3];
        let mut names: [std::collections::BTreeSet<String>; 3] = Default::default();
        let mut ids = Vec::new();
        self.index.scan(&mut |b| {
            for i in 0..b.len() {
                let cols: [(Option<&str>, Option<u32>); 3] = [
                    (Some(b.label_name.value(i)), Some(b.label.value(i))),
                    (b.object_name(i), b.object_label(i)),
                    (Some(b.split.value(i)), None),
                ];
                let mut all = opts.kind.is_none_or(|k| b.kind(i) == Some(k));
                for (j, ((name, id), want)) in cols.iter().zip(wants).enumerate() {
                    if want.is_none() {
                        continue;
                    }
                    let ok = matches(want, *name, *id);
                    all &= ok;
                    any[j] |= ok;
                    if !any[j] {
                        if let Some(n) = name.filter(|n| !names[j].contains(*n)) {
                            names[j].insert(n.to_string());
                        }
                    }
                }
                if all {
                    ids.push(b.id.value(i) as usize);
                }
            }
            Ok(())
        })?;
        let what = [
            ("label", "--label"),
            ("object", "--object"),
            ("split", "--split"),
        ];
        for (j, want) in wants.iter().enumerate() {
            let (Some(want), false) = (want, any[j]) else {
                continue;
            };
            let (what, flag) = what[j];
            let names: Vec<&str> = names[j].iter().map(String::as_str).collect();
            let hint = match closest(want, names.iter().copied())[..] {
                [] => String::new(),
                [one] => format!(" Did you mean {one:?}?"),
                ref several => format!(" Did you mean one of {several:?}?"),
            };
            let shown: Vec<String> = names.iter().take(30).map(|n| format!("{n:?}")).collect();
            let values = if names.is_empty() {
                format!("no region of this index has an {what}")
            } else {
                format!(
                    "{what}s in this index: {}{}",
                    shown.join(", "),
                    if names.len() > 30 {
                        format!(" … ({} in all; `partlens info` lists them)", names.len())
                    } else {
                        String::new()
                    }
                )
            };
            return Err(Error::InvalidArgument(format!(
                "{flag} {want:?} matches no region.{hint} {values}"
            )));
        }
        let f = std::sync::Arc::new(Filtered {
            set: IdSet::new(&ids, self.index.len()),
            ids,
        });
        if let Ok(mut cache) = self.filters.lock() {
            if cache.len() >= FILTER_CACHE {
                cache.remove(0);
            }
            cache.push((key, f.clone()));
        }
        Ok(Some(f))
    }

    /// Rows of `f` that hold NaN or infinity (a damaged index file; ingest never stores one),
    /// as far as known: they are looked for (one pass over the stored rows, with a warning)
    /// the first time a search's hits include one, and never returned.
    pub fn damaged_rows(&self, f: Feature) -> &[usize] {
        self.damaged
            .get(&f)
            .and_then(|n| n.get())
            .map_or(&[], |n| n.as_slice())
    }

    /// Finds (once) and returns the rows of `f` holding NaN or infinity, warning about them.
    fn find_damaged(&self, f: Feature) -> &[usize] {
        self.damaged[&f].get_or_init(|| {
            // The same rows `partlens info` reports: stored rows holding NaN or infinity.
            let damaged = self.index.damaged_rows(f);
            if !damaged.is_empty() {
                tracing::warn!(
                    "{} rows of {} hold NaN or infinity (damaged index file): never returned; \
                     `partlens info {}` lists them",
                    damaged.len(),
                    self.index.feature_file(f, damaged[0]).display(),
                    self.index.path().display()
                );
            }
            damaged
        })
    }

    /// Searches stored regions for the `opts.k` nearest to `vector` (a raw, unnormalised
    /// feature of `opts.feature`). A filter value that no region has is an error naming the
    /// closest existing one; filters that each match but match nothing together give no hits.
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
        if vector.len() != m.dim() {
            return Err(Error::InvalidArgument(format!(
                "query has {} dims, the index's {f} feature has {}",
                vector.len(),
                m.dim()
            )));
        }
        if vector.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(
                "the query vector holds NaN or infinity".into(),
            ));
        }
        let filtered = self.filtered(opts)?;
        let q = normalize_rows(vector, m.dim());
        let n = m.len();
        let candidates = filtered.as_ref().map_or(n, |a| a.ids.len());
        // k and the search width never exceed what exists: `-k 1000000000` asks for every
        // region, not for a billion-entry heap.
        let k = opts.k.min(candidates.max(1));
        let ef = opts.ef.clamp(k, n.max(k));
        let unit = self
            .index
            .unit(f)
            .ok_or_else(|| Error::InvalidArgument(format!("index has no unit rows for {f}")))?;
        let mut hits = self.fan_out(
            &unit,
            &q,
            k,
            ef,
            opts,
            filtered.as_deref(),
            self.damaged_rows(f),
        );
        // A stored row holding NaN or infinity has no rank, whatever its unit copy says: the
        // first time one shows up, find them all and search again without them. (The hits'
        // raw rows are read from the file, so the check maps no pages.)
        let mut raw_bad = false;
        if self.damaged[&f].get().is_none() {
            for h in &hits {
                let row = self.index.read_feature_row(f, h.id)?;
                raw_bad |= row.iter().any(|v| !v.is_finite());
            }
        }
        if raw_bad {
            let damaged = self.find_damaged(f);
            hits = self.fan_out(&unit, &q, k, ef, opts, filtered.as_deref(), damaged);
        }
        self.hits(&hits)
    }

    /// Searches every segment (in parallel) and merges their top `k`: per segment exact over
    /// its mapped unit rows when few of its regions are candidates (or `--exact`), else its
    /// graph. `filtered` and `damaged` (sorted ids) leave rows out.
    #[allow(clippy::too_many_arguments)]
    fn fan_out(
        &self,
        unit: &Rows<'_>,
        q: &[f32],
        k: usize,
        ef: usize,
        opts: &SearchOptions,
        filtered: Option<&Filtered>,
        damaged: &[usize],
    ) -> Vec<Hit> {
        let dim = unit.dim();
        let keep = |i: usize| {
            filtered.is_none_or(|a| a.set.contains(i as u32)) && damaged.binary_search(&i).is_err()
        };
        let filtering = filtered.is_some() || !damaged.is_empty();
        let exact_in = |seg: usize| -> Vec<Hit> {
            let (first, rows) = unit.parts().nth(seg).expect("segment");
            let local_keep = |i: usize| keep(first + i);
            let keep_ref = filtering.then_some(&local_keep as &dyn Fn(usize) -> bool);
            exact_search(rows, dim, q, k, keep_ref)
                .into_iter()
                .map(|h| Hit {
                    id: first + h.id,
                    score: h.score,
                })
                .collect()
        };
        let segs = self.index.segments();
        let in_segment = |s: &crate::store::Segment| match filtered {
            Some(a) => {
                let lo = a.ids.partition_point(|&i| i < s.first_id());
                let hi = a.ids.partition_point(|&i| i < s.first_id() + s.len());
                hi - lo
            }
            None => s.len(),
        };
        let graphs = self.hnsw.get(&opts.feature).filter(|_| !opts.exact);
        let one = |si: usize| -> Vec<Hit> {
            let s = &segs[si];
            let cand = in_segment(s);
            if cand == 0 {
                return Vec::new();
            }
            let Some(g) = graphs.filter(|_| cand >= opts.exact_below) else {
                return exact_in(si);
            };
            let (first, graph) = &g.graphs()[si];
            let local_keep = |i: u32| keep(first + i as usize);
            let keep_ref = filtering.then_some(&local_keep as &dyn Fn(u32) -> bool);
            let hits: Vec<Hit> = graph
                .search(q, k.min(cand), ef, keep_ref)
                .into_iter()
                .filter(|h| h.score.is_finite())
                .map(|h| Hit {
                    id: first + h.id,
                    score: h.score,
                })
                .collect();
            // A selective filter can starve the graph walk; never return fewer hits than
            // exist.
            if hits.len() < k.min(cand) {
                exact_in(si)
            } else {
                hits
            }
        };
        let mut hits: Vec<Hit> = if segs.len() > 1 {
            use rayon::prelude::*;
            (0..segs.len()).into_par_iter().flat_map_iter(one).collect()
        } else {
            (0..segs.len()).flat_map(one).collect()
        };
        merge_top(&mut hits, k);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_names_typos_only() {
        let names = ["wheel", "window", "head", "torso"];
        assert_eq!(closest("whel", names), ["wheel"]);
        assert_eq!(closest("Head", names), ["head"]);
        assert!(closest("xyzzy", names).is_empty());
        let parts = ["bird/torso", "horse", "person/torso", "person/head"];
        assert_eq!(closest("torso", parts), ["bird/torso", "person/torso"]);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
