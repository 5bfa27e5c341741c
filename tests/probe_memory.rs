//! The evaluations read the feature matrix through its memory map and never copy it: with a
//! mapped matrix larger than the memory budget, the heap they allocate stays within the budget.
//! (Its own test binary: the counting allocator below sees every allocation of the process.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use partlens::encoder::Feature;
use partlens::eval::linear::{classify_rows, LinearOptions};
use partlens::eval::retrieval::{exact, RetrievalOptions};
use partlens::eval::{LabeledRows, Rng, Selection};
use partlens::region::RegionKind;
use partlens::store::{NpyMatrix, NpyWriter};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = NOW.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Heap bytes allocated at the peak of `f`, beyond what was live when it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

#[test]
fn probes_stay_within_their_budget_on_a_larger_mapped_matrix() {
    let (n, dim) = (20_000, 256);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.npy");
    let mut r = Rng::new(1);
    let mut labels = Vec::with_capacity(n);
    {
        let mut w = NpyWriter::create(&path, dim).unwrap();
        let centres: Vec<f32> = (0..10 * dim).map(|_| r.normal() as f32).collect();
        for _ in 0..n {
            let c = r.below(10);
            labels.push(c as u32);
            let row: Vec<f32> = (0..dim)
                .map(|d| centres[c * dim + d] + 2.0 * r.normal() as f32)
                .collect();
            w.append(&row).unwrap();
        }
        w.finish().unwrap();
    }
    let m = NpyMatrix::open(&path).unwrap();
    let matrix_bytes = n * dim * 4;
    let budget = 4 << 20;
    assert!(
        matrix_bytes > 4 * budget,
        "the matrix (20 MB) is well over the budget"
    );
    let mut rows = LabeledRows::from_matrix(m.as_slice(), dim, labels).unwrap();
    rows.splits = (0..n)
        .map(|i| if i % 5 == 0 { "val" } else { "train" }.to_string())
        .collect();
    // Linear probe: state within the budget; the matrix is read a batch at a time.
    let sel = Selection {
        feature: Feature::Mean,
        kind: RegionKind::Part,
        split: None,
    };
    let opts = LinearOptions {
        epochs: 2,
        memory_budget: budget,
        ..LinearOptions::default()
    };
    let ((rep, _), peak) = peak_during(|| classify_rows(&rows, &sel, &opts).unwrap());
    // Bookkeeping proportional to N (positions, labels, split names) is allowed on top.
    let per_region = 96 * n;
    eprintln!(
        "linear probe: peak heap {} KB (state {} KB), matrix {} KB",
        peak >> 10,
        rep.state_bytes >> 10,
        matrix_bytes >> 10
    );
    assert!(rep.state_bytes <= budget);
    assert!(peak < budget + per_region, "peak heap {peak} B");
    assert!(
        peak < matrix_bytes / 2,
        "peak heap {peak} B: a copy of the matrix?"
    );
    // A budget the state cannot fit is refused, saying what to change.
    let tiny = LinearOptions {
        memory_budget: 1 << 16,
        ..opts
    };
    let err = classify_rows(&rows, &sel, &tiny).unwrap_err().to_string();
    assert!(err.contains("fewer learning rates"), "{err}");
    // Exact retrieval over all 20,000 × 20,000 pairs within the same budget.
    let ropts = RetrievalOptions {
        memory_budget: budget,
        ..RetrievalOptions::default()
    };
    let (r, peak) = peak_during(|| exact(&rows, &ropts).unwrap());
    eprintln!(
        "retrieval: peak heap {} KB, mAP {:.2}",
        peak >> 10,
        r.map.unwrap()
    );
    assert_eq!(r.queries, n);
    assert!(peak < budget + per_region, "peak heap {peak} B");
}
