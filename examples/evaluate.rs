//! Using partlens's evaluation protocols as a library: part retrieval, the linear probe and
//! k-NN on an existing index, parts next to objects.
//!
//! ```text
//! cargo run --release --example evaluate -- INDEX
//! ```
//! (Build an index first, e.g. `cargo run --release -- demo` writes `indexes/demo`.)

use partlens::eval::knn::{knn, KnnOptions};
use partlens::eval::linear::{classify, LinearOptions};
use partlens::eval::retrieval::{retrieval, RetrievalOptions};
use partlens::eval::Selection;
use partlens::{IndexDir, RegionKind};

fn main() -> partlens::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "indexes/demo".into());
    let index = IndexDir::open(&path)?;
    for feature in index.feature_names() {
        for kind in RegionKind::ALL {
            let sel = Selection {
                feature,
                kind,
                split: None,
            };
            // Each protocol says why it cannot run (one class, no second split, …).
            let map = retrieval(&index, &sel, &RetrievalOptions::default())
                .map(|r| format!("{:.1}", r.map.unwrap_or(f64::NAN)));
            let linear = LinearOptions {
                epochs: 30,
                ..LinearOptions::default()
            };
            let top1 =
                classify(&index, &sel, &linear).map(|(r, _)| format!("{:.1}", r.accuracy.top1));
            let nn = knn(&index, &sel, &KnnOptions::default())
                .map(|r| format!("{:.1}", r.accuracy.top1));
            let show = |r: partlens::Result<String>| r.unwrap_or_else(|e| format!("n/a ({e})"));
            println!(
                "{feature} {}s: retrieval mAP {}, linear top-1 {}, k-NN top-1 {}",
                kind.as_str(),
                show(map),
                show(top1),
                show(nn)
            );
        }
    }
    Ok(())
}
