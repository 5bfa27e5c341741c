//! Nearest-neighbour search by cosine similarity: exact (brute force, also the ground truth) and
//! HNSW (hnsw_rs with SIMD L2 on L2-normalised vectors, which ranks exactly like cosine:
//! ‖a − b‖² = 2 − 2 cos(a, b)).

use std::path::Path;

use hnsw_rs::api::AnnT;
use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::{DistL2, Hnsw};

use crate::error::{Error, Result};

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
/// Ties are broken by the smaller id, so results are deterministic. A row whose score is not
/// finite (a damaged row holding NaN or infinity) is never returned: it has no rank.
pub fn exact_search(
    normalized: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    keep: Option<&dyn Fn(usize) -> bool>,
) -> Vec<Hit> {
    let mut hits: Vec<Hit> = normalized
        .chunks_exact(dim)
        .enumerate()
        .filter(|(i, _)| keep.is_none_or(|f| f(*i)))
        .map(|(id, row)| Hit {
            id,
            score: row.iter().zip(query).map(|(a, b)| a * b).sum(),
        })
        .filter(|h| h.score.is_finite())
        .collect();
    let by_score = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id));
    if hits.len() > k {
        hits.select_nth_unstable_by(k, by_score);
        hits.truncate(k);
    }
    hits.sort_by(by_score);
    hits
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

/// hnsw_rs can only dump graphs built with this many layers.
const MAX_LAYER: usize = 16;

type Graph<'a> = Hnsw<'a, f32, DistL2>;

self_cell::self_cell!(
    struct Loaded {
        owner: HnswIo,
        #[not_covariant]
        dependent: Graph,
    }
);

enum Inner {
    Built(Graph<'static>),
    Loaded(Loaded),
}

/// An HNSW graph over unit-norm vectors, built in memory or loaded from an index directory.
pub struct HnswIndex {
    inner: Inner,
    len: usize,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HnswIndex({} points)", self.len)
    }
}

fn to_hits(ns: Vec<hnsw_rs::prelude::Neighbour>) -> Vec<Hit> {
    ns.into_iter()
        .map(|n| Hit {
            id: n.d_id,
            score: 1.0 - n.distance * n.distance / 2.0,
        })
        .collect()
}

/// An empty graph sized for `n` points.
fn empty_graph(n: usize, params: HnswParams) -> Hnsw<'static, f32, DistL2> {
    Hnsw::new(
        params.max_nb_connection,
        n.max(1),
        MAX_LAYER,
        params.ef_construction,
        DistL2 {},
    )
}

impl HnswIndex {
    /// Builds a graph over `normalized` rows of width `dim`; row i gets id i.
    pub fn build(normalized: &[f32], dim: usize, params: HnswParams) -> HnswIndex {
        let n = normalized.len() / dim;
        let graph = empty_graph(n, params);
        let rows: Vec<(&[f32], usize)> = normalized.chunks_exact(dim).zip(0..).collect();
        graph.parallel_insert_slice(&rows);
        HnswIndex {
            inner: Inner::Built(graph),
            len: n,
        }
    }

    /// Builds a graph over raw (not yet normalised) rows, normalising and inserting them a
    /// block at a time: peak memory is the graph's own copy of the vectors plus one block, not
    /// a second normalised copy of the whole matrix (half a gigabyte at 100k × 1280).
    pub fn build_normalizing(raw: &[f32], dim: usize, params: HnswParams) -> HnswIndex {
        const BLOCK_ROWS: usize = 8192;
        let n = raw.len() / dim;
        let graph = empty_graph(n, params);
        for (b, block) in raw.chunks(BLOCK_ROWS * dim).enumerate() {
            let normalized = normalize_rows(block, dim);
            let rows: Vec<(&[f32], usize)> =
                normalized.chunks_exact(dim).zip(b * BLOCK_ROWS..).collect();
            graph.parallel_insert_slice(&rows);
        }
        HnswIndex {
            inner: Inner::Built(graph),
            len: n,
        }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the graph holds no point.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `dir/<basename>.hnsw.{graph,data}`; returns the base name actually used
    /// (hnsw_rs may pick another to avoid overwriting).
    pub fn dump(&self, dir: &Path, basename: &str) -> Result<String> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let res = match &self.inner {
            Inner::Built(g) => g.file_dump(dir, basename),
            Inner::Loaded(l) => l.with_dependent(|_, g| g.file_dump(dir, basename)),
        };
        res.map_err(|e| Error::io(dir, std::io::Error::other(e.to_string())))
    }

    /// Loads a dumped graph and checks it holds `expected_len` points.
    pub fn load(dir: &Path, basename: &str, expected_len: usize) -> Result<HnswIndex> {
        let graph_file = dir.join(format!("{basename}.hnsw.graph"));
        for ext in ["graph", "data"] {
            let p = dir.join(format!("{basename}.hnsw.{ext}"));
            if !p.is_file() {
                return Err(Error::corrupt(&p, "HNSW file missing"));
            }
        }
        let io = HnswIo::new(dir, basename);
        // hnsw_rs may panic on a damaged file rather than return an error.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Loaded::try_new(io, |io| {
                io.load_hnsw_with_dist::<f32, DistL2>(DistL2 {})
                    .map_err(|e| e.to_string())
            })
        }));
        let loaded = match loaded {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return Err(Error::corrupt(&graph_file, format!("cannot load: {e}"))),
            Err(_) => {
                return Err(Error::corrupt(
                    &graph_file,
                    "cannot load: damaged or truncated HNSW file",
                ))
            }
        };
        let len = loaded.with_dependent(|_, g| g.get_nb_point());
        if len != expected_len {
            return Err(Error::corrupt(
                &graph_file,
                format!("graph holds {len} points, the index has {expected_len} regions"),
            ));
        }
        Ok(HnswIndex {
            inner: Inner::Loaded(loaded),
            len,
        })
    }

    /// Approximate top-`k` by cosine; `ef` is the search width (≥ k). With `allowed` (sorted
    /// ids), only those ids are returned (filtered during the walk).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        allowed: Option<&Vec<usize>>,
    ) -> Vec<Hit> {
        let ef = ef.max(k);
        let run = |g: &Graph<'_>| match allowed {
            Some(ids) => g.search_filter(query, k, ef, Some(ids)),
            None => g.search(query, k, ef),
        };
        let ns = match &self.inner {
            Inner::Built(g) => run(g),
            Inner::Loaded(l) => l.with_dependent(|_, g| run(g)),
        };
        to_hits(ns)
    }
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
mod tests {
    use super::*;

    fn data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let v: Vec<f32> = (0..n * dim)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        normalize_rows(&v, dim)
    }

    #[test]
    fn exact_is_sorted_and_filtered() {
        let d = data(50, 8, 1);
        let q = d[8 * 7..8 * 8].to_vec();
        let hits = exact_search(&d, 8, &q, 5, None);
        assert_eq!(hits[0].id, 7);
        assert!((hits[0].score - 1.0).abs() < 1e-5);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        let even = |i: usize| i.is_multiple_of(2);
        let hits = exact_search(&d, 8, &q, 5, Some(&even));
        assert!(hits.iter().all(|h| h.id.is_multiple_of(2)));
    }

    #[test]
    fn damaged_rows_never_rank() {
        let mut d = data(20, 4, 5);
        d[4..8].fill(f32::NAN);
        d[8] = f32::INFINITY;
        let q = d[12..16].to_vec();
        let hits = exact_search(&d, 4, &q, 20, None);
        assert_eq!(hits.len(), 18);
        assert!(hits
            .iter()
            .all(|h| h.score.is_finite() && h.id != 1 && h.id != 2));
    }

    #[test]
    fn hnsw_dump_load_and_recall() {
        let (n, dim) = (2000, 16);
        let d = data(n, dim, 2);
        let idx = HnswIndex::build(&d, dim, HnswParams::default());
        let dir = tempfile::tempdir().unwrap();
        let base = idx.dump(dir.path(), "mean").unwrap();
        let loaded = HnswIndex::load(dir.path(), &base, n).unwrap();
        let mut total = 0.0;
        for qi in 0..50 {
            let q = &d[qi * dim..(qi + 1) * dim];
            let e = exact_search(&d, dim, q, 10, None);
            let a = loaded.search(q, 10, 64, None);
            assert!((a[0].score - e[0].score).abs() < 1e-4);
            total += recall(&e, &a);
        }
        let r = total / 50.0;
        println!("seed 2: recall@10 = {r:.3}");
        assert!(r >= 0.95, "recall@10 {r} (seed 2)");
        assert!(HnswIndex::load(dir.path(), &base, n + 1).is_err());
    }

    #[test]
    fn building_from_raw_rows_block_by_block_keeps_ids_and_recall() {
        // 20,000 rows: three blocks, so ids must carry across block boundaries.
        let (n, dim) = (20_000, 8);
        let unit = data(n, dim, 4);
        let raw: Vec<f32> = unit
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1 + (i / dim) % 7) as f32)
            .collect();
        let idx = HnswIndex::build_normalizing(&raw, dim, HnswParams::default());
        assert_eq!(idx.len(), n);
        let mut total = 0.0;
        for qi in (0..n).step_by(400) {
            let q = &unit[qi * dim..(qi + 1) * dim];
            let e = exact_search(&unit, dim, q, 10, None);
            let a = idx.search(q, 10, 64, None);
            assert_eq!(a[0].id, qi);
            assert!((a[0].score - 1.0).abs() < 1e-5, "{:?} {:?}", a[0], e[0]);
            total += recall(&e, &a);
        }
        let r = total / 50.0;
        assert!(r >= 0.95, "recall@10 {r}");
    }

    #[test]
    fn truncated_graph_is_corruption_not_panic() {
        let d = data(300, 8, 3);
        let idx = HnswIndex::build(&d, 8, HnswParams::default());
        let dir = tempfile::tempdir().unwrap();
        let base = idx.dump(dir.path(), "mean").unwrap();
        let g = dir.path().join(format!("{base}.hnsw.graph"));
        let bytes = std::fs::read(&g).unwrap();
        std::fs::write(&g, &bytes[..bytes.len() / 2]).unwrap();
        let err = HnswIndex::load(dir.path(), &base, 300).unwrap_err();
        assert!(matches!(err, Error::DataCorruption { .. }), "{err}");
    }
}
