//! Nearest-neighbour search by cosine similarity: exact (brute force, also the ground truth) and
//! HNSW over L2-normalised vectors (on unit vectors, cosine = inner product, and ranks as L2:
//! ‖a − b‖² = 2 − 2 cos(a, b)). The graph is built by [`build`], written in partlens's own
//! format ([`graph`]) and searched in place by [`search`] with the SIMD kernel of [`simd`].

use std::path::Path;
use std::sync::Arc;

pub mod build;
pub mod graph;
pub mod hnsw_rs_build;
pub mod search;
pub mod simd;

pub use build::DEFAULT_SEED;
pub use graph::{GraphFile, GraphHeader};
pub use simd::Dot;

use crate::error::{Error, Result};
use crate::store::{NpyMatrix, NpyWriter};
use search::Vectors;

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Region id (row of the feature matrix).
    pub id: usize,
    /// Cosine similarity to the query, in [-1, 1].
    pub score: f32,
}

/// The L2 norm of a row, accumulated in float64.
pub fn l2_norm(row: &[f32]) -> f64 {
    row.iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// Scales each `dim`-wide row to unit L2 norm (zero rows stay zero).
pub fn normalize_rows(data: &[f32], dim: usize) -> Vec<f32> {
    let mut out = data.to_vec();
    for row in out.chunks_exact_mut(dim) {
        let n = l2_norm(row);
        if n > 0.0 {
            for v in row.iter_mut() {
                *v = (f64::from(*v) / n) as f32;
            }
        }
    }
    out
}

/// Rows of a `dim`-wide matrix holding a NaN or an infinity (a damaged file: ingest never
/// stores one).
pub fn nonfinite_rows(data: &[f32], dim: usize) -> Vec<usize> {
    data.chunks_exact(dim.max(1))
        .enumerate()
        .filter(|(_, r)| r.iter().any(|v| !v.is_finite()))
        .map(|(i, _)| i)
        .collect()
}

/// Exact top-`k` by cosine over unit-norm rows, keeping only ids for which `keep` is true.
/// Scores are the same kernel's as graph search ([`Dot`]), so a pair scores the same bits in
/// both.
/// Ties are broken by the smaller id, so results are deterministic. A row whose score is not
/// finite (a damaged row holding NaN or infinity) is never returned: it has no rank.
pub fn exact_search(
    normalized: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    keep: Option<&dyn Fn(usize) -> bool>,
) -> Vec<Hit> {
    let dot = Dot::detect();
    let mut hits: Vec<Hit> = normalized
        .chunks_exact(dim)
        .enumerate()
        .filter(|(i, _)| keep.is_none_or(|f| f(*i)))
        .map(|(id, row)| Hit {
            id,
            score: dot.dot(row, query),
        })
        .filter(|h| h.score.is_finite())
        .collect();
    merge_top(&mut hits, k);
    hits
}

/// A set of region ids as one flag per row: what a filtered graph walk tests for each node it
/// reaches, in O(1).
#[derive(Debug, Clone)]
pub struct IdSet(Vec<bool>);

impl IdSet {
    /// The ids of `ids` among `n` rows (ids ≥ `n` are ignored).
    pub fn new(ids: &[usize], n: usize) -> IdSet {
        let mut flags = vec![false; n];
        for &i in ids {
            if let Some(f) = flags.get_mut(i) {
                *f = true;
            }
        }
        IdSet(flags)
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: u32) -> bool {
        self.0.get(id as usize).copied().unwrap_or(false)
    }
}

/// The HNSW graphs of every segment of an index, searched as one: each segment's graph is
/// walked (in parallel) and the top hits merged, ids made global (`first_id + local`).
#[derive(Debug)]
pub struct SegmentGraphs {
    graphs: Vec<(usize, HnswIndex)>,
}

impl SegmentGraphs {
    /// The graphs with the global id of each one's first node, in id order.
    pub fn new(graphs: Vec<(usize, HnswIndex)>) -> SegmentGraphs {
        SegmentGraphs { graphs }
    }

    /// The graphs, each with its first id.
    pub fn graphs(&self) -> &[(usize, HnswIndex)] {
        &self.graphs
    }

    /// The `k` best of every graph's `k` best (`ef` wide walks), ids global; `keep` filters by
    /// global id during each walk. Ties rank the smaller id first, as [`exact_search`].
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&(dyn Fn(usize) -> bool + Sync)>,
    ) -> Vec<Hit> {
        let one = |(first, g): &(usize, HnswIndex)| -> Vec<Hit> {
            let first = *first;
            let local = keep.map(|f| move |i: u32| f(first + i as usize));
            let local_ref = local.as_ref().map(|f| f as &dyn Fn(u32) -> bool);
            g.search(query, k, ef, local_ref)
                .into_iter()
                .map(|h| Hit {
                    id: first + h.id,
                    score: h.score,
                })
                .collect()
        };
        let mut hits: Vec<Hit> = if self.graphs.len() > 1 {
            use rayon::prelude::*;
            self.graphs.par_iter().flat_map_iter(one).collect()
        } else {
            self.graphs.iter().flat_map(one).collect()
        };
        merge_top(&mut hits, k);
        hits
    }
}

/// Keeps the `k` best of `hits` (score descending, then smaller id), sorted.
pub fn merge_top(hits: &mut Vec<Hit>, k: usize) {
    let by_score = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id));
    if hits.len() > k {
        hits.select_nth_unstable_by(k, by_score);
        hits.truncate(k);
    }
    hits.sort_by(by_score);
}

/// HNSW construction and search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Maximum links per node (M).
    pub max_nb_connection: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
}

impl HnswParams {
    /// Checks the parameters are in range (M 1..=4096, ef_construction 1..=2^20); the error
    /// says which ranges. Parameters read back from a manifest are checked again.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if (1..=4096).contains(&self.max_nb_connection)
            && (1..=1 << 20).contains(&self.ef_construction)
        {
            Ok(())
        } else {
            Err(format!(
                "HNSW parameters out of range: M {} (1..=4096), ef_construction {} (1..=2^20)",
                self.max_nb_connection, self.ef_construction
            ))
        }
    }
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            max_nb_connection: 24,
            ef_construction: 200,
        }
    }
}

/// An HNSW graph file mapped with the unit-norm vectors it links: opening is two maps and a
/// validation pass (no rebuild, no copy), searching reads both in place.
pub struct HnswIndex {
    graph: GraphFile,
    vectors: Arc<NpyMatrix>,
    dot: Dot,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HnswIndex({:?})", self.graph)
    }
}

impl HnswIndex {
    /// Maps and validates the graph at `path` and checks it was built on `vectors` (same
    /// number of rows and width). Any mismatch or damage is [`Error::DataCorruption`].
    pub fn open(path: impl AsRef<Path>, vectors: Arc<NpyMatrix>) -> Result<HnswIndex> {
        let graph = GraphFile::open(path.as_ref())?;
        let h = graph.header();
        if h.n != vectors.rows() || h.dim != vectors.cols() {
            return Err(Error::corrupt(
                path.as_ref(),
                format!(
                    "graph of {} points × {} dims, but {} holds {} × {}",
                    h.n,
                    h.dim,
                    vectors.path().display(),
                    vectors.rows(),
                    vectors.cols()
                ),
            ));
        }
        Ok(HnswIndex {
            graph,
            vectors,
            dot: Dot::detect(),
        })
    }

    /// The graph's header: points, dimensions, M, M0, ef_construction, layers, entry, seed.
    pub fn header(&self) -> &GraphHeader {
        self.graph.header()
    }

    /// The unit-norm vectors the graph links.
    pub fn vectors(&self) -> &Arc<NpyMatrix> {
        &self.vectors
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.graph.header().n
    }

    /// True when the graph holds no point.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate top-`k` by cosine for a unit-norm `query`; `ef` is the search width
    /// (raised to `k`). With `keep`, only ids it accepts are returned (filtered during the
    /// walk; fewer than `k` hits means the filter starved the walk).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<Hit> {
        let view = self.graph.view();
        let v = Vectors::new(self.vectors.as_slice(), self.vectors.cols(), self.dot);
        let layers = view.layers();
        search::search(&view, layers, view.entry, &v, query, k, ef, keep)
            .into_iter()
            .map(|n| Hit {
                id: n.id as usize,
                score: -n.d,
            })
            .collect()
    }
}

/// The fuzz target's body (`fuzz/fuzz_targets/graph_open.rs`), also run on stable by the
/// tests: `bytes` as a graph file must load or be [`Error::DataCorruption`]; a graph that
/// loads is searched over seeded vectors of its size (up to 4,096 × 64), which must neither
/// panic nor return an id out of range.
#[doc(hidden)]
pub fn fuzz_graph_bytes(bytes: &[u8]) {
    let g = match GraphFile::from_bytes("fuzz.graph", bytes) {
        Ok(g) => g,
        Err(Error::DataCorruption { .. }) => return,
        Err(e) => panic!("not DataCorruption: {e}"),
    };
    let h = *g.header();
    if h.n > 4096 || h.dim > 64 {
        return;
    }
    let mut s = 7u64;
    let data: Vec<f32> = (0..h.n * h.dim)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let data = normalize_rows(&data, h.dim);
    let view = g.view();
    let v = Vectors::new(&data, h.dim, Dot::detect());
    for qi in 0..h.n.min(4) {
        let q = &data[qi * h.dim..(qi + 1) * h.dim];
        for keep in [
            None,
            Some(&(|i: u32| i.is_multiple_of(2)) as &dyn Fn(u32) -> bool),
        ] {
            let hits = search::search(&view, view.layers(), view.entry, &v, q, 5, 16, keep);
            assert!(hits.iter().all(|n| (n.id as usize) < h.n));
        }
    }
}

/// Which code links the graph; the file and the search are the same either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GraphBuilder {
    /// partlens's own parallel builder ([`build`]): the default, faster.
    #[default]
    Partlens,
    /// The hnsw_rs crate, its lists copied into partlens's format ([`hnsw_rs_build`]).
    HnswRs,
}

impl GraphBuilder {
    /// Every builder.
    pub const ALL: [GraphBuilder; 2] = [GraphBuilder::Partlens, GraphBuilder::HnswRs];

    /// `partlens` or `hnsw_rs`.
    pub fn as_str(&self) -> &'static str {
        match self {
            GraphBuilder::Partlens => "partlens",
            GraphBuilder::HnswRs => "hnsw_rs",
        }
    }
}

/// Builds a graph over `dim`-wide unit rows with `builder` and writes it to `path` (see
/// [`graph`] for the format); returns its header.
pub fn build_graph_file(
    path: &Path,
    unit: &[f32],
    dim: usize,
    params: HnswParams,
    seed: u64,
    builder: GraphBuilder,
) -> Result<GraphHeader> {
    let g = match builder {
        GraphBuilder::Partlens => build::build(unit, dim, params, seed),
        GraphBuilder::HnswRs => hnsw_rs_build::build(unit, dim, params),
    };
    graph::write(path, &g.header, &g.view())?;
    Ok(g.header)
}

/// Writes the unit-norm copy of the `.npy` matrix `raw` to `out` (zero rows stay zero), a
/// block of rows at a time.
pub fn write_unit_npy(raw: &NpyMatrix, out: &Path) -> Result<()> {
    const BLOCK_ROWS: usize = 4096;
    let dim = raw.cols();
    let mut w = NpyWriter::create(out, dim)?;
    for block in raw.as_slice().chunks(BLOCK_ROWS * dim.max(1)) {
        w.append(&normalize_rows(block, dim))?;
    }
    w.finish()?;
    Ok(())
}

/// recall@k of `approx` against `exact` (fraction of the exact top-k ids found).
pub fn recall(exact: &[Hit], approx: &[Hit]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let found = exact
        .iter()
        .filter(|e| approx.iter().any(|a| a.id == e.id))
        .count();
    found as f64 / exact.len() as f64
}

#[cfg(test)]
mod tests;
