//! Cosine scores of a block of queries against rows of a memory-mapped matrix, without
//! normalising or copying the matrix: score(q, x) = ⟨q̂, x⟩ · (1 / ‖x‖), q̂ = q / ‖q‖.
//!
//! **Every score is the same function of (q, x) wherever it is computed**: each dot product
//! accumulates eight lanes in the order of the dimensions, reduces them in one fixed order and
//! adds the tail last, in every tile shape, so a score computed in one pass (the positives of
//! a retrieval query) equals the same pair's score in another pass bit for bit. Retrieval's
//! tie grouping relies on it. On x86-64 with AVX2 and FMA (checked at run time) the lanes are
//! one register and each step one fused multiply-add; elsewhere a portable loop computes the
//! same lane structure with separate multiply and add; with AVX-512 (checked first) the lanes
//! are sixteen, reduced to eight and then in the same order. The paths differ in the last bits;
//! one process always uses one.

use crate::store::Rows;

/// 1 / ‖row‖ (computed in f64), 0 for a row without a usable direction: all zeros, or so
/// small that the inverse overflows float32 (it would score +∞ against everything).
pub fn inv_norm(row: &[f32]) -> f32 {
    let n = crate::index::l2_norm(row);
    let inv = (1.0 / n) as f32;
    if n > 0.0 && inv.is_finite() {
        inv
    } else {
        0.0
    }
}

/// Unit-norm copies of `rows` (ids into `data`, `dim` wide), contiguous, in order.
pub fn unit_rows(data: &Rows<'_>, dim: usize, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * dim);
    for &r in rows {
        let row = data.row(r);
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
    data: &Rows<'_>,
    items: &[usize],
    inv: &[f32],
    out: &mut Vec<f32>,
) {
    let t = Tile {
        queries,
        dim,
        data,
        items,
        inv,
    };
    out.clear();
    out.resize(queries.len() / dim * items.len(), 0.0);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked above); every row is `dim` long.
            return t.run::<6, 4>(out, |q, x, d| unsafe { avx512::dot_block(q, x, d) });
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked above); every row is `dim` long.
            return t.run::<4, 3>(out, |q, x, d| unsafe { avx2::dot_block(q, x, d) });
        }
    }
    t.run::<4, 3>(out, portable_dot_block)
}

/// One tile's inputs.
struct Tile<'a> {
    queries: &'a [f32],
    dim: usize,
    data: &'a Rows<'a>,
    items: &'a [usize],
    inv: &'a [f32],
}

impl Tile<'_> {
    /// Walks the tile in micro-tiles of MR queries × NR items (rows repeat at the edges; their
    /// results are discarded), items outer so each group of item rows stays in L1 while every
    /// query passes over it.
    #[inline(always)]
    fn run<const MR: usize, const NR: usize>(
        &self,
        out: &mut [f32],
        dot: impl Fn([&[f32]; MR], [&[f32]; NR], usize) -> [[f32; NR]; MR],
    ) {
        let dim = self.dim;
        let (nq, ni) = (self.queries.len() / dim, self.items.len());
        let row = |j: usize| self.data.row(self.items[j]);
        let mut j = 0;
        while j < ni {
            let nr = (ni - j).min(NR);
            let xs: [&[f32]; NR] = std::array::from_fn(|t| row(j + t.min(nr - 1)));
            let mut i = 0;
            while i < nq {
                let mr = (nq - i).min(MR);
                let qs: [&[f32]; MR] =
                    std::array::from_fn(|t| &self.queries[(i + t.min(mr - 1)) * dim..][..dim]);
                let dots = dot(qs, xs, dim);
                for a in 0..mr {
                    for b in 0..nr {
                        out[(i + a) * ni + j + b] = dots[a][b] * self.inv[j + b];
                    }
                }
                i += mr;
            }
            j += nr;
        }
    }
}

/// Items per tile of [`scan`]: a tile of 256 queries × 384 items is 384 KB of scores.
pub const TILE_ITEMS: usize = 384;

/// Scores `queries` against `items` (with their inverse norms `inv`, by position) a tile of
/// [`TILE_ITEMS`] at a time, calling `visit(first, tile)` with the position in `items` of the
/// tile's first item and its scores (`queries × width`, row-major).
pub fn scan(
    queries: &[f32],
    dim: usize,
    data: &Rows<'_>,
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

/// Lanes per accumulator of the portable and AVX2 paths.
const LANES: usize = 8;

/// Sum of eight lanes in the one fixed order.
#[inline(always)]
fn reduce(l: [f32; LANES]) -> f32 {
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

fn portable_dot_block<const MR: usize, const NR: usize>(
    qs: [&[f32]; MR],
    xs: [&[f32]; NR],
    dim: usize,
) -> [[f32; NR]; MR] {
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
mod avx2 {
    use super::{reduce, LANES};
    use std::arch::x86_64::*;

    /// AVX2 + FMA micro-kernel: MR × NR accumulators of 8 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; every slice must hold at least `dim` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_block<const MR: usize, const NR: usize>(
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::reduce;
    use std::arch::x86_64::*;

    /// AVX-512 micro-kernel: MR × NR accumulators of 16 lanes, reduced 16 → 8 (lane i plus
    /// lane i + 8) and then in the fixed eight-lane order.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; every slice must hold at least `dim` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_block<const MR: usize, const NR: usize>(
        qs: [&[f32]; MR],
        xs: [&[f32]; NR],
        dim: usize,
    ) -> [[f32; NR]; MR] {
        const W: usize = 16;
        let body = dim - dim % W;
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        let mut d = 0;
        while d < body {
            let x: [__m512; NR] = std::array::from_fn(|b| _mm512_loadu_ps(xs[b].as_ptr().add(d)));
            for a in 0..MR {
                let q = _mm512_loadu_ps(qs[a].as_ptr().add(d));
                for b in 0..NR {
                    acc[a][b] = _mm512_fmadd_ps(q, x[b], acc[a][b]);
                }
            }
            d += W;
        }
        let mut out = [[0f32; NR]; MR];
        for a in 0..MR {
            for b in 0..NR {
                let mut l = [0f32; W];
                _mm512_storeu_ps(l.as_mut_ptr(), acc[a][b]);
                let mut s = reduce(std::array::from_fn(|i| l[i] + l[i + 8]));
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
        let rows = Rows::contiguous(&m, dim);
        let q = unit_rows(&rows, dim, &all);
        let mut full = Vec::new();
        score_tile(&q, dim, &rows, &all, &inv, &mut full);
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
        score_tile(&q[5 * dim..6 * dim], dim, &rows, &items, &inv2, &mut part);
        for (j, &it) in items.iter().enumerate() {
            assert_eq!(part[j].to_bits(), full[5 * 23 + it].to_bits());
        }
    }
}
