//! Builds an HNSW graph (Malkov & Yashunin, algorithms 1 and 4, as hnswlib implements them)
//! over unit-norm rows, in parallel, with the search kernel of [`super::search`].
//!
//! - **Levels** are drawn up front from a seeded generator (level = ⌊−ln U · 1/ln M⌋, at most
//!   15), so the entry point is known before any insertion: the first node of the top level is
//!   linked first and never changes, and no global lock is needed.
//! - **Insertion**: the other nodes, in id order, are taken by the threads from one shared
//!   counter. Each descends greedily to its own top layer, then on each layer below searches
//!   with width `ef_construction`, keeps at most M neighbours chosen by the heuristic (a
//!   candidate is kept only if it is nearer to the new node than to every neighbour kept
//!   before it), and links back: a full list is shrunk to its width (M above layer 0, 2 M on
//!   layer 0) by the same heuristic.
//! - **Storage** is flat: fixed-width lists (count, then ids) in one array per layer kind, one
//!   mutex per node guarding its lists. Lists are read under the node's lock, copied into the
//!   searching thread's buffer, so a search never sees a half-written list.
//!
//! With one thread the graph is a function of (vectors, M, ef_construction, seed); with more,
//! insertion order between threads varies, as in hnswlib.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use super::graph::{GraphHeader, GraphView, EMPTY, MAX_LAYERS};
use super::search::{greedy, search_layer, Links, Near, Scratch, Vectors};
use super::HnswParams;

/// Default seed of the level draw.
pub const DEFAULT_SEED: u64 = 0x5eed_9a27_1e75;

/// A finished graph in memory.
#[derive(Debug, Clone)]
pub struct BuiltGraph {
    /// What the file header records.
    pub header: GraphHeader,
    /// Each node's top layer.
    pub levels: Vec<u8>,
    /// Layer 0 lists, `1 + m0` per node.
    pub layer0: Vec<u32>,
    /// Layers ≥ 1: (ascending node ids, lists of `1 + m` each).
    pub upper: Vec<(Vec<u32>, Vec<u32>)>,
}

impl BuiltGraph {
    /// The structure as a view (for search and for writing).
    pub fn view(&self) -> GraphView<'_> {
        GraphView::new(
            self.header.m,
            self.header.m0,
            self.header.entry,
            &self.levels,
            &self.layer0,
            self.upper.iter().map(|(a, b)| (a.as_slice(), b.as_slice())),
        )
    }
}

/// splitmix64: a small seeded generator, the same on every platform.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Each node's level: ⌊−ln U · mL⌋ with mL = 1/ln M, U uniform in (0, 1], at most 15.
pub fn draw_levels(n: usize, m: usize, seed: u64) -> Vec<u8> {
    let ml = 1.0 / (m.max(2) as f64).ln();
    let mut state = seed;
    (0..n)
        .map(|_| {
            let u = ((splitmix(&mut state) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            ((-u.ln() * ml) as usize).min(MAX_LAYERS - 1) as u8
        })
        .collect()
}

/// The graph under construction.
struct Building {
    m: usize,
    m0: usize,
    levels: Vec<u8>,
    layer0: Vec<AtomicU32>,
    /// Start of each node's upper lists in `upper` (its layers 1..=level, `1 + m` each).
    upper_at: Vec<usize>,
    upper: Vec<AtomicU32>,
    locks: Vec<Mutex<()>>,
}

impl Building {
    fn slot(&self, layer: usize, node: u32) -> (&[AtomicU32], usize) {
        if layer == 0 {
            let w = self.m0 + 1;
            (&self.layer0[node as usize * w..][..w], self.m0)
        } else {
            let w = self.m + 1;
            (
                &self.upper[self.upper_at[node as usize] + (layer - 1) * w..][..w],
                self.m,
            )
        }
    }

    fn set(&self, layer: usize, node: u32, ids: &[u32]) {
        let (s, width) = self.slot(layer, node);
        debug_assert!(ids.len() <= width);
        s[0].store(ids.len() as u32, Relaxed);
        for (j, a) in s[1..].iter().enumerate() {
            a.store(ids.get(j).copied().unwrap_or(EMPTY), Relaxed);
        }
    }
}

impl Links for Building {
    fn nodes(&self) -> usize {
        self.levels.len()
    }
    fn each_neighbour(&self, layer: usize, node: u32, f: impl FnMut(u32)) {
        if (self.levels[node as usize] as usize) < layer {
            return;
        }
        // Copied under the node's lock, then handed out: `f` never runs under a lock.
        let mut copy = [0u32; 64];
        let (s, _) = self.slot(layer, node);
        let c;
        let mut spill = Vec::new();
        {
            let _g = self.locks[node as usize]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            c = s[0].load(Relaxed) as usize;
            if c <= copy.len() {
                for (d, a) in copy.iter_mut().zip(&s[1..1 + c]) {
                    *d = a.load(Relaxed);
                }
            } else {
                spill.extend(s[1..1 + c].iter().map(|a| a.load(Relaxed)));
            }
        }
        if c <= copy.len() {
            copy[..c].iter().copied().for_each(f);
        } else {
            spill.into_iter().for_each(f);
        }
    }
}

/// hnswlib's `getNeighborsByHeuristic2`: from `cands` (nearest first, distances to the base
/// node), keep up to `width`, each only if it is nearer to the base than to every one kept.
fn heuristic(v: &Vectors<'_>, cands: &[Near], width: usize, out: &mut Vec<Near>) {
    out.clear();
    if cands.len() <= width {
        out.extend_from_slice(cands);
        return;
    }
    for &c in cands {
        if out.len() >= width {
            break;
        }
        let cv = v.row(c.id);
        if out.iter().all(|r| v.dist(cv, r.id) >= c.d) {
            out.push(c);
        }
    }
}

/// Builds the graph over `data` (`dim`-wide unit rows; row i is node i) on rayon's threads.
pub fn build(data: &[f32], dim: usize, params: HnswParams, seed: u64) -> BuiltGraph {
    let n = data.len() / dim.max(1);
    let m = params.max_nb_connection;
    let m0 = 2 * m;
    let v = Vectors::new(data, dim, super::simd::Dot::detect());
    let levels = draw_levels(n, m, seed);
    let mut upper_at = Vec::with_capacity(n);
    let mut total = 0usize;
    for &l in &levels {
        upper_at.push(total);
        total += l as usize * (m + 1);
    }
    let empty = |len: usize, w: usize| -> Vec<AtomicU32> {
        (0..len)
            .map(|i| AtomicU32::new(if i % w == 0 { 0 } else { EMPTY }))
            .collect()
    };
    let g = Building {
        m,
        m0,
        layer0: empty(n * (m0 + 1), m0 + 1),
        upper: empty(total, m + 1),
        upper_at,
        locks: (0..n).map(|_| Mutex::new(())).collect(),
        levels,
    };
    let top = g.levels.iter().copied().max().unwrap_or(0) as usize;
    let entry = g
        .levels
        .iter()
        .position(|&l| l as usize == top)
        .unwrap_or(0) as u32;
    if n > 1 {
        let next = AtomicUsize::new(0);
        let ef = params.ef_construction.max(m);
        rayon::broadcast(|_| {
            let mut chosen = Vec::new();
            let mut cands = Vec::new();
            Scratch::with(|s| loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= n {
                    break;
                }
                if i as u32 != entry {
                    insert(&g, &v, i as u32, entry, top, ef, s, &mut cands, &mut chosen);
                }
            });
        });
    }
    finish(g, dim, params, seed, entry, top + 1)
}

/// Algorithm 1 for node `q`.
#[allow(clippy::too_many_arguments)]
fn insert(
    g: &Building,
    v: &Vectors<'_>,
    q: u32,
    entry: u32,
    top: usize,
    ef: usize,
    s: &mut Scratch,
    cands: &mut Vec<Near>,
    chosen: &mut Vec<Near>,
) {
    let qv = v.row(q);
    let lq = g.levels[q as usize] as usize;
    let mut ep = Near {
        d: v.dist(qv, entry),
        id: entry,
    };
    for layer in (lq + 1..=top).rev() {
        ep = greedy(g, v, qv, layer, ep, s);
    }
    // First every layer's own list, then the links back: until the lists of all its layers
    // are set, no other node links to `q`, so no other thread can reach it, append to a list
    // that is about to be overwritten, or start a layer's search from a node not yet linked
    // on that layer (which would leave its node with one neighbour and, if that link is
    // later overwritten, unreachable).
    let mut own: Vec<(usize, Vec<u32>)> = Vec::with_capacity(lq.min(top) + 1);
    for layer in (0..=lq.min(top)).rev() {
        search_layer(g, v, qv, layer, ep, ef, None, s);
        cands.clear();
        cands.extend(s.top.drain().filter(|c| c.id != q));
        cands.sort_unstable();
        if let Some(&nearest) = cands.first() {
            ep = nearest;
        }
        heuristic(v, cands, g.m, chosen);
        let ids: Vec<u32> = chosen.iter().map(|c| c.id).collect();
        {
            let _l = g.locks[q as usize]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            g.set(layer, q, &ids);
        }
        own.push((layer, ids));
    }
    let mut back = Vec::with_capacity(g.m0 + 1);
    let mut kept = Vec::with_capacity(g.m0);
    for (layer, ids) in own {
        let width = if layer == 0 { g.m0 } else { g.m };
        for &e in &ids {
            let _l = g.locks[e as usize]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let (slot, _) = g.slot(layer, e);
            let c = slot[0].load(Relaxed) as usize;
            if slot[1..1 + c].iter().any(|a| a.load(Relaxed) == q) {
                continue;
            }
            if c < width {
                slot[1 + c].store(q, Relaxed);
                slot[0].store(c as u32 + 1, Relaxed);
                continue;
            }
            let ev = v.row(e);
            back.clear();
            back.extend(slot[1..1 + c].iter().map(|a| {
                let id = a.load(Relaxed);
                Near {
                    d: v.dist(ev, id),
                    id,
                }
            }));
            back.push(Near {
                d: v.dist(ev, q),
                id: q,
            });
            back.sort_unstable();
            heuristic(v, &back, width, cands);
            kept.clear();
            kept.extend(cands.iter().map(|c| c.id));
            g.set(layer, e, &kept);
        }
    }
}

/// Moves the lists into plain arrays, upper layers grouped per layer.
fn finish(
    g: Building,
    dim: usize,
    params: HnswParams,
    seed: u64,
    entry: u32,
    layers: usize,
) -> BuiltGraph {
    let n = g.levels.len();
    let mut layer_nodes = [0u64; MAX_LAYERS];
    for &l in &g.levels {
        for c in &mut layer_nodes[..=l as usize] {
            *c += 1;
        }
    }
    let mut upper = Vec::with_capacity(layers.saturating_sub(1));
    for layer in 1..layers {
        let ids: Vec<u32> = (0..n as u32)
            .filter(|&i| g.levels[i as usize] as usize >= layer)
            .collect();
        let mut lists = Vec::with_capacity(ids.len() * (g.m + 1));
        for &i in &ids {
            let (s, _) = g.slot(layer, i);
            lists.extend(s.iter().map(|a| a.load(Relaxed)));
        }
        upper.push((ids, lists));
    }
    let header = GraphHeader {
        n,
        dim,
        m: g.m,
        m0: g.m0,
        ef_construction: params.ef_construction,
        layers: layers.max(1),
        entry,
        seed,
        layer_nodes,
    };
    BuiltGraph {
        header,
        layer0: g.layer0.into_iter().map(AtomicU32::into_inner).collect(),
        levels: g.levels,
        upper,
    }
}
