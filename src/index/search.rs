//! The HNSW search kernel (Malkov & Yashunin, algorithms 2 and 5), shared by queries and by
//! the graph builder: greedy descent through the upper layers, then a best-first walk of
//! width `ef` on layer 0.
//!
//! Per thread, one [`Scratch`] is reused by every search: an epoch-stamped visited array (a
//! new search bumps the epoch instead of clearing N entries; the array is cleared only when
//! the epoch wraps), the two binary heaps and a neighbour buffer, so a search allocates only
//! its result. While the distances to one node's neighbours are computed, the next
//! neighbour's vector is prefetched. A filter is applied during the walk (filtered-out nodes
//! are walked through but never returned), as hnswlib does.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::simd::{prefetch, Dot};

/// A node at a distance: `d` = −⟨q, x⟩ on unit vectors (smaller is nearer; ranks as L2 and
/// as cosine do). Ordered by distance, then id, so heaps and results are deterministic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Near {
    /// −cosine similarity.
    pub d: f32,
    /// Node id.
    pub id: u32,
}

impl Eq for Near {}

impl Ord for Near {
    fn cmp(&self, o: &Self) -> Ordering {
        self.d.total_cmp(&o.d).then(self.id.cmp(&o.id))
    }
}

impl PartialOrd for Near {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Where the search reads a node's neighbours: a finished graph or one being built.
pub trait Links {
    /// Number of nodes.
    fn nodes(&self) -> usize;
    /// Calls `f` with each neighbour of `node` on `layer`, in list order.
    fn each_neighbour(&self, layer: usize, node: u32, f: impl FnMut(u32));
    /// Hints the CPU to fetch the list of `node` on layer 0 (no-op by default).
    fn prefetch_list(&self, _node: u32) {}
}

impl Links for super::graph::GraphView<'_> {
    fn nodes(&self) -> usize {
        self.len()
    }
    #[inline(always)]
    fn each_neighbour(&self, layer: usize, node: u32, f: impl FnMut(u32)) {
        self.neighbours(layer, node).iter().copied().for_each(f);
    }
    #[inline(always)]
    fn prefetch_list(&self, node: u32) {
        let w = self.m0 + 1;
        if let Some(s) = self.layer0.get(node as usize * w..) {
            prefetch(s.as_ptr() as *const u8, w * 4);
        }
    }
}

/// Unit-norm rows, `dim` wide, and the kernel that scores them.
#[derive(Debug, Clone, Copy)]
pub struct Vectors<'a> {
    /// Row-major data.
    pub data: &'a [f32],
    /// Row width.
    pub dim: usize,
    /// Dot-product kernel.
    pub dot: Dot,
    /// How many rows ahead a search fetches whole ([`Vectors::ahead_for`]).
    pub ahead: usize,
}

/// Bytes of vectors a search keeps in flight ahead of its arithmetic.
const PREFETCH_BYTES: usize = 24 << 10;

impl<'a> Vectors<'a> {
    /// Rows `dim` wide scored with `dot`.
    pub fn new(data: &'a [f32], dim: usize, dot: Dot) -> Vectors<'a> {
        Vectors {
            data,
            dim,
            dot,
            ahead: Self::ahead_for(dim),
        }
    }

    /// Rows fetched whole ahead of the one being scored: about [`PREFETCH_BYTES`] worth.
    pub fn ahead_for(dim: usize) -> usize {
        (PREFETCH_BYTES / (dim * 4).max(1)).clamp(1, 64)
    }

    /// Row `id`.
    #[inline(always)]
    pub fn row(&self, id: u32) -> &[f32] {
        let at = id as usize * self.dim;
        &self.data[at..at + self.dim]
    }

    /// −⟨q, row id⟩.
    #[inline(always)]
    pub fn dist(&self, q: &[f32], id: u32) -> f32 {
        -self.dot.dot(q, self.row(id))
    }

    /// Prefetches all of row `id`.
    #[inline(always)]
    fn prefetch(&self, id: u32) {
        let at = (id as usize * self.dim).min(self.data.len().saturating_sub(1));
        prefetch(self.data[at..].as_ptr() as *const u8, self.dim * 4);
    }

    /// Prefetches the first two cache lines of row `id`.
    #[inline(always)]
    fn prefetch_head(&self, id: u32) {
        let at = (id as usize * self.dim).min(self.data.len().saturating_sub(1));
        prefetch(
            self.data[at..].as_ptr() as *const u8,
            (self.dim * 4).min(128),
        );
    }
}

/// Per-thread search state, reused.
#[derive(Debug, Default)]
pub struct Scratch {
    visited: Vec<u32>,
    epoch: u32,
    /// Candidates to expand, nearest first.
    cand: BinaryHeap<Reverse<Near>>,
    /// The best `ef` found, farthest on top.
    pub top: BinaryHeap<Near>,
    buf: Vec<u32>,
}

impl Scratch {
    /// Starts a walk over `n` nodes: a new epoch (nothing visited).
    fn begin(&mut self, n: usize) {
        if self.visited.len() < n {
            self.visited.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited.fill(0);
            self.epoch = 1;
        }
        self.cand.clear();
        self.top.clear();
    }

    /// Marks `id` visited; false if it already was in this walk.
    #[inline(always)]
    fn visit(&mut self, id: u32) -> bool {
        let v = &mut self.visited[id as usize];
        if *v == self.epoch {
            false
        } else {
            *v = self.epoch;
            true
        }
    }

    /// Runs `f` with this thread's scratch.
    pub fn with<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
        thread_local! {
            static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
        }
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => f(&mut s),
            // Re-entered on this thread (never by partlens itself): a fresh one.
            Err(_) => f(&mut Scratch::default()),
        })
    }
}

/// Greedy descent on `layer` from `ep` (algorithm 2 with ef = 1): moves to a nearer
/// neighbour until none is nearer.
pub fn greedy<L: Links>(
    links: &L,
    v: &Vectors<'_>,
    q: &[f32],
    layer: usize,
    mut ep: Near,
    s: &mut Scratch,
) -> Near {
    loop {
        let mut moved = false;
        s.buf.clear();
        links.each_neighbour(layer, ep.id, |id| s.buf.push(id));
        for i in 0..s.buf.len() {
            if let Some(&next) = s.buf.get(i + 1) {
                v.prefetch(next);
            }
            let c = s.buf[i];
            let d = v.dist(q, c);
            if (Near { d, id: c }) < ep {
                ep = Near { d, id: c };
                moved = true;
            }
        }
        if !moved {
            return ep;
        }
    }
}

/// Best-first search of width `ef` on `layer` from `ep` (algorithm 2). Leaves the best `ef`
/// nodes that pass `keep` in `s.top` (farthest on top); nodes that fail `keep` are walked
/// through but not kept. The walk goes on past `ef` kept nodes only while a filter leaves
/// fewer than `ef`.
#[allow(clippy::too_many_arguments)]
pub fn search_layer<L: Links>(
    links: &L,
    v: &Vectors<'_>,
    q: &[f32],
    layer: usize,
    ep: Near,
    ef: usize,
    keep: Option<&dyn Fn(u32) -> bool>,
    s: &mut Scratch,
) {
    s.begin(links.nodes());
    s.visit(ep.id);
    s.cand.push(Reverse(ep));
    let kept = |id: u32| keep.is_none_or(|f| f(id));
    if kept(ep.id) {
        s.top.push(ep);
    }
    let mut bound = s.top.peek().map_or(f32::INFINITY, |t| t.d);
    while let Some(Reverse(c)) = s.cand.pop() {
        if c.d > bound && (s.top.len() >= ef || keep.is_none()) {
            break;
        }
        // The list expanded next is fetched while this one is scored.
        if layer == 0 {
            if let Some(Reverse(next)) = s.cand.peek() {
                links.prefetch_list(next.id);
            }
        }
        // Pass 1: keep the neighbours not yet visited (marking them) and start fetching
        // their vectors: whole for the first `ahead` (a few tens of KB in all), the first
        // lines of the others. Pass 2: their distances, fetching the vector `ahead` places
        // on whole meanwhile, so loads overlap arithmetic.
        let ahead = v.ahead;
        s.buf.clear();
        let (visited, epoch, buf) = (&mut s.visited, s.epoch, &mut s.buf);
        links.each_neighbour(layer, c.id, |id| {
            let mark = &mut visited[id as usize];
            if *mark != epoch {
                *mark = epoch;
                if buf.len() < ahead {
                    v.prefetch(id);
                } else {
                    v.prefetch_head(id);
                }
                buf.push(id);
            }
        });
        let fresh = s.buf.len();
        for i in 0..fresh {
            let id = s.buf[i];
            if let Some(&later) = s.buf[..fresh].get(i + ahead) {
                v.prefetch(later);
            }
            let d = v.dist(q, id);
            if s.top.len() < ef || d < bound {
                let n = Near { d, id };
                s.cand.push(Reverse(n));
                if kept(id) {
                    s.top.push(n);
                    if s.top.len() > ef {
                        s.top.pop();
                    }
                }
                if let Some(t) = s.top.peek() {
                    bound = t.d;
                }
            }
        }
    }
}

/// A whole query: descent from `entry` through the layers above 0, then the layer-0 walk of
/// width `max(ef, k)`; the `k` nearest kept nodes, nearest first.
#[allow(clippy::too_many_arguments)]
pub fn search<L: Links>(
    links: &L,
    layers: usize,
    entry: u32,
    v: &Vectors<'_>,
    q: &[f32],
    k: usize,
    ef: usize,
    keep: Option<&dyn Fn(u32) -> bool>,
) -> Vec<Near> {
    if links.nodes() == 0 || k == 0 {
        return Vec::new();
    }
    Scratch::with(|s| {
        let mut ep = Near {
            d: v.dist(q, entry),
            id: entry,
        };
        for layer in (1..layers).rev() {
            ep = greedy(links, v, q, layer, ep, s);
        }
        search_layer(links, v, q, 0, ep, ef.max(k), keep, s);
        let mut out: Vec<Near> = s.top.drain().collect();
        out.sort_unstable();
        out.truncate(k);
        out
    })
}
