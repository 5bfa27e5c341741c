//! The graph built by the hnsw_rs crate instead of [`super::build`], copied into partlens's
//! format (`ingest --graph-builder hnsw_rs`). The search, the file and its validation are the
//! same whichever builder made the lists; this builder is kept as a cross-check of ours and
//! for comparison (it is slower: see README, Benchmarks).

use hnsw_rs::prelude::{DistL2, Hnsw};

use super::build::BuiltGraph;
use super::graph::{GraphHeader, EMPTY, MAX_LAYERS};
use super::HnswParams;

/// Builds with hnsw_rs (its parallel insertion, L2 on the unit rows, which ranks as cosine)
/// and copies each node's level and neighbour lists out of the crate's structure.
pub fn build(data: &[f32], dim: usize, params: HnswParams) -> BuiltGraph {
    let n = data.len() / dim.max(1);
    let m = params.max_nb_connection;
    let m0 = 2 * m;
    let hnsw: Hnsw<'_, f32, DistL2> =
        Hnsw::new(m, n.max(1), MAX_LAYERS, params.ef_construction, DistL2 {});
    let rows: Vec<(&[f32], usize)> = data.chunks_exact(dim.max(1)).zip(0..).collect();
    hnsw.parallel_insert_slice(&rows);
    let mut levels = vec![0u8; n];
    let mut lists: Vec<Vec<Vec<u32>>> = vec![Vec::new(); n];
    let index = hnsw.get_point_indexation();
    let top = hnsw.get_max_level_observed() as usize;
    let mut entry = 0u32;
    for layer in 0..=top.min(MAX_LAYERS - 1) {
        for p in index.get_layer_iterator(layer) {
            let id = p.get_origin_id();
            levels[id] = layer as u8;
            lists[id] = p
                .get_neighborhood_id()
                .into_iter()
                .take(layer + 1)
                .map(|ns| ns.iter().map(|x| x.d_id as u32).collect())
                .collect();
            if layer == top && entry == 0 {
                entry = id as u32;
            }
        }
    }
    if n > 0 && levels[entry as usize] as usize != top {
        entry = levels.iter().position(|&l| l as usize == top).unwrap_or(0) as u32;
    }
    // hnsw_rs can link a node on a layer above its own level (its first point, the initial
    // entry, is linked on every layer a later, higher point searches). Such a link leads
    // nowhere on that layer, and partlens's file refuses it: it is dropped here.
    let fixed = |ids: Option<&Vec<u32>>, layer: usize, width: usize, out: &mut Vec<u32>| {
        let ids: Vec<u32> = ids
            .map_or(&[][..], |v| &v[..])
            .iter()
            .copied()
            .filter(|&i| levels[i as usize] as usize >= layer)
            .take(width)
            .collect();
        out.push(ids.len() as u32);
        out.extend_from_slice(&ids);
        out.extend(std::iter::repeat_n(EMPTY, width - ids.len()));
    };
    let mut layer0 = Vec::with_capacity(n * (m0 + 1));
    for l in &lists {
        fixed(l.first(), 0, m0, &mut layer0);
    }
    let layers = top + 1;
    let mut upper = Vec::new();
    let mut layer_nodes = [0u64; MAX_LAYERS];
    layer_nodes[0] = n as u64;
    for layer in 1..layers {
        let ids: Vec<u32> = (0..n as u32)
            .filter(|&i| levels[i as usize] as usize >= layer)
            .collect();
        let mut ls = Vec::with_capacity(ids.len() * (m + 1));
        for &i in &ids {
            fixed(lists[i as usize].get(layer), layer, m, &mut ls);
        }
        upper.push((ids, ls));
    }
    for (c, (ids, _)) in layer_nodes[1..].iter_mut().zip(&upper) {
        *c = ids.len() as u64;
    }
    BuiltGraph {
        header: GraphHeader {
            n,
            dim,
            m,
            m0,
            ef_construction: params.ef_construction,
            layers,
            entry,
            seed: 0,
            layer_nodes,
        },
        levels,
        layer0,
        upper,
    }
}
