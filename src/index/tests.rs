use super::*;
use std::path::PathBuf;

pub(super) fn data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
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

/// Writes `d` as the unit matrix and a graph over it into `dir`; opens both.
fn built(dir: &Path, d: &[f32], dim: usize, params: HnswParams) -> HnswIndex {
    let up = dir.join("v.unit.npy");
    let mut w = NpyWriter::create(&up, dim).unwrap();
    w.append(d).unwrap();
    w.finish().unwrap();
    let gp = dir.join("v.graph");
    build_graph_file(&gp, d, dim, params, DEFAULT_SEED, GraphBuilder::Partlens).unwrap();
    HnswIndex::open(&gp, Arc::new(NpyMatrix::open(&up).unwrap())).unwrap()
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
fn graph_file_search_has_recall_and_exact_scores() {
    let (n, dim) = (3000, 24);
    let d = data(n, dim, 2);
    let dir = tempfile::tempdir().unwrap();
    let g = built(dir.path(), &d, dim, HnswParams::default());
    assert_eq!(g.len(), n);
    let h = *g.header();
    assert_eq!((h.m, h.m0, h.ef_construction, h.dim), (24, 48, 200, dim));
    let mut total = 0.0;
    for qi in 0..100 {
        let q = &d[qi * dim..(qi + 1) * dim];
        let e = exact_search(&d, dim, q, 10, None);
        let a = g.search(q, 10, 64, None);
        assert_eq!(a.len(), 10);
        assert_eq!(a[0].id, qi);
        // The same kernel scores both: a pair found by both has the same bits.
        for x in &a {
            if let Some(y) = e.iter().find(|y| y.id == x.id) {
                assert_eq!(x.score.to_bits(), y.score.to_bits());
            }
        }
        assert!(a.windows(2).all(|w| w[0].score >= w[1].score));
        total += recall(&e, &a);
    }
    let r = total / 100.0;
    assert!(r >= 0.95, "recall@10 {r} (seed 2)");
}

#[test]
fn filters_apply_during_the_walk() {
    let (n, dim) = (2500, 16);
    let d = data(n, dim, 9);
    let dir = tempfile::tempdir().unwrap();
    let g = built(dir.path(), &d, dim, HnswParams::default());
    let keep = |i: u32| i.is_multiple_of(3);
    let mut total = 0.0;
    for qi in 0..40 {
        let q = &d[qi * dim..(qi + 1) * dim];
        let a = g.search(q, 10, 64, Some(&keep));
        assert!(a.iter().all(|h| h.id % 3 == 0));
        let k = |i: usize| i.is_multiple_of(3);
        let e = exact_search(&d, dim, q, 10, Some(&k));
        total += recall(&e, &a);
    }
    assert!(total / 40.0 >= 0.9, "filtered recall {}", total / 40.0);
    // A filter nothing passes: no hits, and the walk ends.
    assert!(g.search(&d[..dim], 10, 64, Some(&|_| false)).is_empty());
}

#[test]
fn tiny_graphs_and_k_beyond_n() {
    for n in [1, 2, 3, 30] {
        let d = data(n, 8, 11);
        let dir = tempfile::tempdir().unwrap();
        let g = built(dir.path(), &d, 8, HnswParams::default());
        let a = g.search(&d[..8], 50, 10, None);
        assert_eq!(a.len(), n, "n {n}");
        assert_eq!(a[0].id, 0);
    }
}

#[test]
fn one_thread_builds_are_reproducible() {
    let d = data(1500, 12, 3);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let a = pool.install(|| build::build(&d, 12, HnswParams::default(), 7));
    let b = pool.install(|| build::build(&d, 12, HnswParams::default(), 7));
    assert_eq!(a.layer0, b.layer0);
    assert_eq!(a.upper, b.upper);
    let c = pool.install(|| build::build(&d, 12, HnswParams::default(), 8));
    assert_ne!(a.levels, c.levels);
}

#[test]
fn graph_of_other_vectors_is_refused() {
    let d = data(200, 8, 3);
    let dir = tempfile::tempdir().unwrap();
    built(dir.path(), &d, 8, HnswParams::default());
    let other = dir.path().join("w.unit.npy");
    let mut w = NpyWriter::create(&other, 8).unwrap();
    w.append(&d[..8 * 199]).unwrap();
    w.finish().unwrap();
    let err = HnswIndex::open(
        dir.path().join("v.graph"),
        Arc::new(NpyMatrix::open(&other).unwrap()),
    )
    .unwrap_err();
    assert!(matches!(err, Error::DataCorruption { .. }), "{err}");
    assert!(err.to_string().contains("v.graph"), "{err}");
}

/// A small graph with several layers (M = 3), its file bytes, the vectors and a few queries'
/// results on the intact file.
fn small_graph(dir: &Path) -> (PathBuf, Vec<u8>, Arc<NpyMatrix>, Vec<Vec<Hit>>) {
    let (n, dim) = (80, 6);
    let d = data(n, dim, 21);
    let params = HnswParams {
        max_nb_connection: 3,
        ef_construction: 20,
    };
    let g = built(dir, &d, dim, params);
    assert!(
        g.header().layers >= 3,
        "want several layers: {:?}",
        g.header()
    );
    let results = queries(&g, &d, dim);
    let gp = dir.join("v.graph");
    let bytes = std::fs::read(&gp).unwrap();
    (gp, bytes, g.vectors().clone(), results)
}

fn queries(g: &HnswIndex, d: &[f32], dim: usize) -> Vec<Vec<Hit>> {
    (0..8)
        .map(|i| g.search(&d[i * 7 * dim..(i * 7 + 1) * dim], 5, 10, None))
        .collect()
}

fn open_bytes(path: &Path, bytes: &[u8], v: &Arc<NpyMatrix>) -> Result<HnswIndex> {
    std::fs::write(path, bytes).unwrap();
    HnswIndex::open(path, v.clone())
}

fn fix_crc(b: &mut [u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..248]);
    h.update(&b[graph::HEADER_LEN..]);
    b[248..252].copy_from_slice(&h.finalize().to_le_bytes());
}

#[test]
fn every_flipped_byte_and_every_truncation_is_refused_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let (gp, bytes, v, want) = small_graph(dir.path());
    let d = v.as_slice().to_vec();
    let p = dir.path().join("t.graph");
    let (mut refused, mut loaded) = (0, 0);
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            match open_bytes(&p, &b, &v) {
                Err(Error::DataCorruption { path, .. }) => {
                    assert_eq!(path, p);
                    refused += 1;
                }
                Err(e) => panic!("byte {i}: not DataCorruption: {e}"),
                Ok(g) => {
                    assert_eq!(queries(&g, &d, 6), want, "byte {i} ^ {mask:#x} loaded");
                    loaded += 1;
                }
            }
        }
    }
    for len in 0..bytes.len() {
        let e = open_bytes(&p, &bytes[..len], &v).unwrap_err();
        assert!(matches!(e, Error::DataCorruption { .. }), "{len}: {e}");
    }
    println!(
        "{} bytes × 3 flips: {refused} refused, {loaded} loaded",
        bytes.len()
    );
    // The checksum covers every byte: nothing damaged loads.
    assert_eq!(loaded, 0);
    // The original still opens.
    assert!(HnswIndex::open(&gp, v).is_ok());
}

#[test]
fn huge_or_inconsistent_header_values_with_a_valid_checksum_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes, v, _) = small_graph(dir.path());
    let p = dir.path().join("t.graph");
    // (offset, width) of every header field that sizes something.
    let fields = [
        (16, 8),
        (24, 4),
        (28, 4),
        (32, 4),
        (36, 4),
        (40, 4),
        (44, 4),
        (56, 8),
        (64, 8),
        (72, 8),
        (80, 8),
        (88, 8),
        (184, 8),
    ];
    for (at, w) in fields {
        for value in [0u64, 1, 2, 0x7fff_ffff, u32::MAX as u64, u64::MAX, 1 << 40] {
            let mut b = bytes.clone();
            b[at..at + w].copy_from_slice(&value.to_le_bytes()[..w]);
            if b == bytes {
                continue;
            }
            fix_crc(&mut b);
            match open_bytes(&p, &b, &v) {
                Err(Error::DataCorruption { .. }) => {}
                // ef_construction is provenance only: any value loads.
                Ok(_) if at == 36 => {}
                other => panic!("field at {at} = {value}: {other:?}"),
            }
        }
    }
}

#[test]
fn random_damage_behind_a_valid_checksum_never_panics_a_load_or_a_search() {
    // The checksum stops accidents; this checks the structural validation stands alone: any
    // file it accepts is safe to search (ids in range, lists within width, levels consistent).
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes, v, _) = small_graph(dir.path());
    let d = v.as_slice().to_vec();
    let p = dir.path().join("t.graph");
    let mut s = 0x9e37_79b9u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let (mut refused, mut loaded) = (0, 0);
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = match next() % 4 {
                0 => 0,
                1 => 0xff,
                _ => next() as u8,
            };
        }
        fix_crc(&mut b);
        match open_bytes(&p, &b, &v) {
            Err(Error::DataCorruption { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
            Ok(g) => {
                // Whatever it links, a search stays in bounds and returns real rows.
                for r in queries(&g, &d, 6) {
                    assert!(r.iter().all(|h| h.id < 80));
                }
                loaded += 1;
            }
        }
    }
    println!("3000 random damages behind a valid checksum: {refused} refused, {loaded} loaded");
    assert!(refused > 0 && loaded > 0);
}

#[test]
fn parallel_builds_leave_every_node_reachable() {
    // A node another thread can reach before its own lists are set once lost its only in-link
    // (42 of 20,000 real embeddings were unreachable on 2 threads); now its links back are
    // added only after all its layers are linked. Four threads on two cores interleave more.
    let (n, dim) = (6000, 16);
    let d = data(n, dim, 31);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    for seed in [1, 2] {
        let g = pool.install(|| build::build(&d, dim, HnswParams::default(), seed));
        let v = g.view();
        let mut seen = vec![false; n];
        let mut stack = vec![v.entry];
        seen[v.entry as usize] = true;
        while let Some(x) = stack.pop() {
            for &y in v.neighbours(0, x) {
                if !std::mem::replace(&mut seen[y as usize], true) {
                    stack.push(y);
                }
            }
        }
        let lost = seen.iter().filter(|s| !**s).count();
        assert_eq!(lost, 0, "seed {seed}: {lost} nodes unreachable on layer 0");
    }
}

#[test]
fn fuzz_body_on_stable_mutations() {
    // The libFuzzer target's body over seeded mutations of a valid small graph, with and
    // without a repaired checksum (cargo-fuzz itself needs nightly).
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes, _, _) = small_graph(dir.path());
    if std::env::var_os("PARTLENS_WRITE_FUZZ_SEED").is_some() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/graph_open");
        std::fs::create_dir_all(&corpus).unwrap();
        std::fs::write(corpus.join("small.graph"), &bytes).unwrap();
    }
    fuzz_graph_bytes(&bytes);
    fuzz_graph_bytes(&[]);
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for round in 0..4000 {
        let mut b = bytes.clone();
        match next() % 3 {
            0 => b.truncate((next() % b.len() as u64) as usize),
            1 => b.extend((0..next() % 64).map(|_| next() as u8)),
            _ => {}
        }
        for _ in 0..1 + next() % 6 {
            if !b.is_empty() {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
        }
        if round % 2 == 0 && b.len() >= graph::HEADER_LEN {
            fix_crc(&mut b);
        }
        fuzz_graph_bytes(&b);
    }
}

#[test]
fn hnsw_rs_lists_copied_into_our_format_load_and_search() {
    let (n, dim) = (2000, 16);
    let d = data(n, dim, 41);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("v.unit.npy");
    let mut w = NpyWriter::create(&up, dim).unwrap();
    w.append(&d).unwrap();
    w.finish().unwrap();
    let gp = dir.path().join("v.graph");
    let params = HnswParams::default();
    let h = build_graph_file(&gp, &d, dim, params, 0, GraphBuilder::HnswRs).unwrap();
    // The file validates (levels, layers, every id) like one of ours.
    let g = HnswIndex::open(&gp, Arc::new(NpyMatrix::open(&up).unwrap())).unwrap();
    assert_eq!(*g.header(), h);
    let mut total = 0.0;
    for qi in 0..50 {
        let q = &d[qi * dim..(qi + 1) * dim];
        total += recall(
            &exact_search(&d, dim, q, 10, None),
            &g.search(q, 10, 64, None),
        );
    }
    assert!(total / 50.0 >= 0.95, "recall@10 {}", total / 50.0);
}
