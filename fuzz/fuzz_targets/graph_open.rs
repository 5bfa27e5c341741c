//! Any bytes as a graph file: the loader either accepts them (and then a search over vectors
//! of that size stays in bounds) or returns DataCorruption; it never panics, aborts or hangs.
//! The body is `partlens::index::fuzz_graph_bytes`, which the stable tests also run over
//! seeded mutations. Seed corpus: a small valid graph, written to `fuzz/corpus/graph_open/` by
//! `PARTLENS_WRITE_FUZZ_SEED=1 cargo test --release --lib fuzz_body`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    partlens::index::fuzz_graph_bytes(data);
});
