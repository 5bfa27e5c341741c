//! Cosine scores of a block of queries against rows of a memory-mapped matrix, without
//! normalising or copying the matrix: score(q, x) = ⟨q̂, x⟩ · (1 / ‖x‖), q̂ = q / ‖q‖.
//!
//! **Every score is the same function of (q, x) wherever it is computed**: each dot product
//! accumulates eight lanes in the order of the dimensions, reduces them in one fixed order and
//! adds the tail last, in every tile shape, so a score computed in one pass (the positives of
//! a retrieval query) equals the same pair's score in another pass bit for bit. Retrieval's
//! tie grouping relies on it. On x86-64 with AVX2 and FMA (checked at run time) the lanes are
//! one register and each step one fused multiply-add; elsewhere a portable loop computes the
//! same lane structure with separate multiply and add (the two paths differ in the last bit;
//! one process always uses one).

/// 1 / ‖row‖ (computed in f64), 0 for an all-zero row.
pub fn inv_norm(row: &[f32]) -> f32 {
    let n = crate::index::l2_norm(row);
    if n > 0.0 {
        (1.0 / n) as f32
    } else {
        0.0
    }
}

/// Unit-norm copies of `rows` (ids into `data`, `dim` wide), contiguous, in order.
pub fn unit_rows(data: &[f32], dim: usize, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * dim);
    for &r in rows {
        let row = &data[r * dim..(r + 1) * dim];
        let s = inv_norm(row);
        out.extend(row.iter().map(|&v| v * s));
    }
    out
}

/// Scores `queries` (`nq` unit-norm rows, contiguous) against `items` (ids into `data`),
/// scaling each by `inv[j]` (the item's inverse norm, by position in `items`): `out[q ×
/// items.len() + j]`. `out` is resized to fit.
pub fn score_tile(
    queries: &[f32],
    dim: usize,
    data: &[f32],
    items: &[usize],
    inv: &[f32],
    out: &mut Vec<f32>,
) {
    let nq = queries.len() / dim;
    let ni = items.len();
    out.clear();
    out.resize(nq * ni, 0.0);
    let row = |j: usize| &data[items[j] * dim..(items[j] + 1) * dim];
    let mut j = 0;
    while j < ni {
        let nr = (ni - j).min(NR);
        let xs: [&[f32]; NR] = std::array::from_fn(|t| row(j + t.min(nr - 1)));
        let mut i = 0;
        while i < nq {
            let mr = (nq - i).min(MR);
            let qs: [&[f32]; MR] =
                std::array::from_fn(|t| &queries[(i + t.min(mr - 1)) * dim..][..dim]);
            let dots = dot_block(qs, xs, dim);
            for a in 0..mr {
                for b in 0..nr {
                    out[(i + a) * ni + j + b] = dots[a][b] * inv[j + b];
                }
            }
            i += mr;
        }
        j += nr;
    }
}

/// Items per tile of [`scan`]: a tile of 64 queries × 384 items is 96 KB of scores.
pub const TILE_ITEMS: usize = 384;

/// Scores `queries` against `items` (with their inverse norms `inv`, by position) a tile of
/// [`TILE_ITEMS`] at a time, calling `visit(first, tile)` with the position in `items` of the
/// tile's first item and its scores (`queries × width`, row-major).
pub fn scan(
    queries: &[f32],
    dim: usize,
    data: &[f32],
    items: &[usize],
    inv: &[f32],
    mut visit: impl FnMut(usize, &[f32]),
) {
    let mut tile = Vec::new();
    for t in (0..items.len()).step_by(TILE_ITEMS) {
        let te = (t + TILE_ITEMS).min(items.len());
        score_tile(queries, dim, data, &items[t..te], &inv[t..te], &mut tile);
        visit(t, &tile);
    }
}

/// Queries per micro-tile.
const MR: usize = 4;
/// Items per micro-tile.
const NR: usize = 3;
/// Lanes per accumulator.
const LANES: usize = 8;

/// The MR × NR dot products of a micro-tile (rows may repeat at the edges; their results are
/// discarded). Each dot product's arithmetic does not depend on the others.
fn dot_block(qs: [&[f32]; MR], xs: [&[f32]; NR], dim: usize) -> [[f32; NR]; MR] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked above); every row is `dim` long.
            return unsafe { avx::dot_block(qs, xs, dim) };
        }
    }
    portable_dot_block(qs, xs, dim)
}

/// Sum of eight lanes in the one fixed order both paths use.
#[inline(always)]
fn reduce(l: [f32; LANES]) -> f32 {
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

fn portable_dot_block(qs: [&[f32]; MR], xs: [&[f32]; NR], dim: usize) -> [[f32; NR]; MR] {
    let body = dim - dim % LANES;
    let mut acc = [[[0f32; LANES]; NR]; MR];
    for d in (0..body).step_by(LANES) {
        for a in 0..MR {
            for b in 0..NR {
                for l in 0..LANES {
                    acc[a][b][l] += qs[a][d + l] * xs[b][d + l];
                }
            }
        }
    }
    let mut out = [[0f32; NR]; MR];
    for a in 0..MR {
        for b in 0..NR {
            let mut s = reduce(acc[a][b]);
            for d in body..dim {
                s += qs[a][d] * xs[b][d];
            }
            out[a][b] = s;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{reduce, LANES, MR, NR};
    use std::arch::x86_64::*;

    /// AVX2 + FMA micro-kernel: 12 accumulators of 8 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; every slice must hold at least `dim` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_block(
        qs: [&[f32]; MR],
        xs: [&[f32]; NR],
        dim: usize,
    ) -> [[f32; NR]; MR] {
        let body = dim - dim % LANES;
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let mut d = 0;
        while d < body {
            let x: [__m256; NR] = std::array::from_fn(|b| _mm256_loadu_ps(xs[b].as_ptr().add(d)));
            for a in 0..MR {
                let q = _mm256_loadu_ps(qs[a].as_ptr().add(d));
                for b in 0..NR {
                    acc[a][b] = _mm256_fmadd_ps(q, x[b], acc[a][b]);
                }
            }
            d += LANES;
        }
        let mut out = [[0f32; NR]; MR];
        for a in 0..MR {
            for b in 0..NR {
                let mut l = [0f32; LANES];
                _mm256_storeu_ps(l.as_mut_ptr(), acc[a][b]);
                let mut s = reduce(l);
                for t in body..dim {
                    s = qs[a][t].mul_add(xs[b][t], s);
                }
                out[a][b] = s;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, dim: usize) -> Vec<f32> {
        let mut r = crate::eval::Rng::new(3);
        (0..n * dim).map(|_| r.normal() as f32).collect()
    }

    #[test]
    fn scores_are_cosines_and_independent_of_tile_position() {
        let dim = 37;
        let m = data(23, dim);
        let all: Vec<usize> = (0..23).collect();
        let inv: Vec<f32> = all
            .iter()
            .map(|&i| inv_norm(&m[i * dim..][..dim]))
            .collect();
        let q = unit_rows(&m, dim, &all);
        let mut full = Vec::new();
        score_tile(&q, dim, &m, &all, &inv, &mut full);
        for a in 0..23 {
            for b in 0..23 {
                let (x, y) = (&m[a * dim..][..dim], &m[b * dim..][..dim]);
                let cos = x
                    .iter()
                    .zip(y)
                    .map(|(u, v)| f64::from(*u) * f64::from(*v))
                    .sum::<f64>()
                    / (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt()
                        * y.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt());
                assert!((f64::from(full[a * 23 + b]) - cos).abs() < 1e-5);
            }
        }
        // One query against a shuffled subset: the same bits.
        let items = [17usize, 2, 9, 22, 0];
        let inv2: Vec<f32> = items.iter().map(|&i| inv[i]).collect();
        let mut part = Vec::new();
        score_tile(&q[5 * dim..6 * dim], dim, &m, &items, &inv2, &mut part);
        for (j, &it) in items.iter().enumerate() {
            assert_eq!(part[j].to_bits(), full[5 * 23 + it].to_bits());
        }
    }
}
