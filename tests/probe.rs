//! The evaluation protocols against independent implementations: retrieval AP/mAP against
//! scikit-learn (expected numbers from `tests/python/retrieval_expected.py`, written in), the
//! linear probe's SGD against a numpy implementation of the same update rule step for step,
//! its accuracy against scikit-learn's `LogisticRegression`, k-NN against numpy, and
//! reproducibility.

mod common;

use std::path::Path;

use partlens::encoder::Feature;
use partlens::eval::knn::rank;
use partlens::eval::linear::{classify_rows, epoch_order, initial_weights, train, LinearOptions};
use partlens::eval::retrieval::{exact, RetrievalOptions};
use partlens::eval::{LabeledRows, Rng, Selection};
use partlens::region::RegionKind;
use partlens::store::NpyWriter;

fn write_npy(path: &Path, cols: usize, values: &[f32]) {
    let mut w = NpyWriter::create(path, cols).unwrap();
    w.append(values).unwrap();
    w.finish().unwrap();
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Prototype rows (many exact ties, across classes too), a one-member class, and a case where
/// every score ties; expected values from scikit-learn 1.9.1 (`retrieval_expected.py`).
#[test]
fn retrieval_equals_scikit_learn_with_ties_and_one_member_classes() {
    let protos: [[f32; 4]; 6] = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [1.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 1.0, 0.0],
        [0.2, 0.9, 0.1, 0.3],
    ];
    let rows: [(usize, u32); 16] = [
        (0, 0),
        (0, 0),
        (2, 0),
        (1, 1),
        (1, 0),
        (2, 1),
        (3, 2),
        (4, 3),
        (4, 3),
        (5, 3),
        (0, 1),
        (3, 4),
        (3, 4),
        (5, 1),
        (2, 4),
        (1, 3),
    ];
    let data: Vec<f32> = rows.iter().flat_map(|&(p, _)| protos[p]).collect();
    let labels: Vec<u32> = rows.iter().map(|&(_, l)| l).collect();
    let sel = LabeledRows::from_matrix(&data, 4, labels).unwrap();
    let run = |min_members| {
        exact(
            &sel,
            &RetrievalOptions {
                min_members,
                ..RetrievalOptions::default()
            },
        )
        .unwrap()
    };
    let r1 = run(1);
    assert!(
        close(r1.mean_ap.unwrap(), 40.91783216783217),
        "{:?}",
        r1.mean_ap
    );
    assert!(close(r1.map.unwrap(), 39.81759906759907), "{:?}", r1.map);
    let want = [
        40.15151515151515,
        34.59353146853147,
        33.33333333333333,
        49.34294871794872,
        41.66666666666667,
    ];
    for (c, w) in r1.per_class.iter().zip(want) {
        assert!(
            close(c.ap.unwrap(), w),
            "class {}: {:?} vs {w}",
            c.class,
            c.ap
        );
    }
    let recall: Vec<f64> = r1.recall.iter().map(|r| r.recall).collect();
    for (g, w) in recall
        .iter()
        .zip([26.666666666666668, 93.33333333333333, 93.33333333333333])
    {
        assert!(close(*g, w), "{recall:?}");
    }
    assert_eq!(r1.queries, 16);
    assert!(
        r1.warnings.iter().any(|w| w.contains("one region")),
        "{:?}",
        r1.warnings
    );
    // Default: the one-member class is not queried (but stays in the ranking).
    let r2 = run(2);
    assert!(
        close(r2.mean_ap.unwrap(), 41.42346542346543),
        "{:?}",
        r2.mean_ap
    );
    assert!(close(r2.map.unwrap(), 41.4386655011655), "{:?}", r2.map);
    assert_eq!(r2.queries, 15);
    assert_eq!(r2.per_class[2].ap, None);
    assert!(
        r2.warnings
            .iter()
            .any(|w| w.contains("not queried") && w.contains('2')),
        "{:?}",
        r2.warnings
    );
    // Every score equal: AP is each class's share.
    let equal = vec![1f32; 24];
    let sel = LabeledRows::from_matrix(&equal, 4, vec![0, 0, 1, 1, 1, 2]).unwrap();
    let r = exact(
        &sel,
        &RetrievalOptions {
            min_members: 1,
            ..RetrievalOptions::default()
        },
    )
    .unwrap();
    assert!(
        close(r.mean_ap.unwrap(), 38.888888888888886),
        "{:?}",
        r.mean_ap
    );
    assert!(close(r.map.unwrap(), 33.33333333333333), "{:?}", r.map);
    assert!(close(r.recall[0].recall, 40.0), "{:?}", r.recall);
}

/// Retrieval refuses what has no answer, and says why.
#[test]
fn retrieval_refuses_data_without_shared_labels() {
    let data = vec![1f32, 0.0, 0.0, 1.0];
    let sel = LabeledRows::from_matrix(&data, 2, vec![0, 1]).unwrap();
    let err = exact(&sel, &RetrievalOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no class has 2 or more regions"), "{err}");
    let one = LabeledRows::from_matrix(&data, 2, vec![0, 0]).unwrap();
    let err = exact(&one, &RetrievalOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("one class only"), "{err}");
}

/// Seeded Gaussian classes: `n` rows of `dim`, `classes` centres at distance `spread`.
fn blobs(n: usize, dim: usize, classes: u32, spread: f64, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut r = Rng::new(seed);
    let centres: Vec<f64> = (0..classes as usize * dim)
        .map(|_| spread * r.normal())
        .collect();
    let mut data = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let c = r.below(classes as usize);
        labels.push(c as u32);
        data.extend((0..dim).map(|d| (centres[c * dim + d] + r.normal() + 3.0) as f32));
    }
    (data, labels)
}

#[test]
fn linear_sgd_matches_numpy_step_for_step() {
    let (n, dim, classes) = (600, 16, 4u32);
    let (data, labels) = blobs(n, dim, classes, 0.6, 7);
    let rows = LabeledRows::from_matrix(&data, dim, labels.clone()).unwrap();
    let opts = LinearOptions {
        lrs: vec![0.05, 0.5],
        weight_decays: vec![0.0, 0.01],
        epochs: 15,
        batch_size: 32,
        seed: 3,
        trace: true,
        ..LinearOptions::default()
    };
    let fit: Vec<usize> = (0..n).collect();
    let t = train(&rows, &fit, &opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_npy(&dir.path().join("X.npy"), dim, &data);
    let y: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    write_npy(&dir.path().join("y.npy"), 1, &y);
    write_npy(
        &dir.path().join("init.npy"),
        classes as usize,
        &initial_weights(3, dim, classes as usize),
    );
    let order: Vec<f32> = (0..15)
        .flat_map(|e| epoch_order(3, n, e))
        .map(|i| i as f32)
        .collect();
    write_npy(&dir.path().join("order.npy"), n, &order);
    let out = common::run_python(
        "linear_reference.py",
        &[
            dir.path().as_os_str(),
            "0.05,0.5".as_ref(),
            "0,0.01".as_ref(),
            "32".as_ref(),
            "0.9".as_ref(),
        ],
    );
    let want: Vec<Vec<f64>> = serde_json::from_str(&out).unwrap();
    assert_eq!(want.len(), t.losses.len(), "steps");
    assert!(want.len() >= 250, "a few hundred steps: {}", want.len());
    let mut worst = 0f64;
    for (w, g) in want.iter().zip(&t.losses) {
        for (a, b) in w.iter().zip(g) {
            worst = worst.max((a - f64::from(*b)).abs());
        }
    }
    eprintln!(
        "{} steps × {} heads, largest loss difference {worst:e}",
        want.len(),
        want[0].len()
    );
    assert!(worst < 1e-5, "largest loss difference {worst}");
    // The losses fell.
    assert!(t.losses.last().unwrap()[0] < t.losses[0][0] / 2.0);
}

#[test]
fn linear_probe_is_within_one_point_of_logistic_regression() {
    let (dim, classes) = (32, 6u32);
    let (data, labels) = blobs(3000, dim, classes, 0.35, 21);
    let mut rows = LabeledRows::from_matrix(&data, dim, labels.clone()).unwrap();
    rows.splits = (0..3000)
        .map(|i| if i < 2400 { "train" } else { "val" }.to_string())
        .collect();
    let sel = Selection {
        feature: Feature::Mean,
        kind: RegionKind::Part,
        split: None,
    };
    let (rep, _) = classify_rows(&rows, &sel, &LinearOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let y: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    write_npy(&dir.path().join("train.npy"), dim, &data[..2400 * dim]);
    write_npy(&dir.path().join("test.npy"), dim, &data[2400 * dim..]);
    write_npy(&dir.path().join("train_y.npy"), 1, &y[..2400]);
    write_npy(&dir.path().join("test_y.npy"), 1, &y[2400..]);
    let out = common::run_python("logreg_reference.py", &[dir.path().as_os_str()]);
    let sk: f64 = out.trim().parse().unwrap();
    let ours = rep.accuracy.top1;
    assert!(
        sk > 40.0 && sk < 99.0,
        "a problem with room either way: {sk}"
    );
    eprintln!("linear probe top-1 {ours:.2} %, LogisticRegression {sk:.2} %");
    assert!(
        (ours - sk).abs() <= 1.0,
        "linear probe {ours} vs LogisticRegression {sk}"
    );
}

#[test]
fn linear_probe_is_reproducible_bit_for_bit() {
    // 5 heads × 10 classes = 50 columns: two column chunks on two threads, one on one.
    let (data, labels) = blobs(500, 12, 10, 0.5, 9);
    let rows = LabeledRows::from_matrix(&data, 12, labels).unwrap();
    let fit: Vec<usize> = (0..500).collect();
    let opts = LinearOptions {
        epochs: 5,
        ..LinearOptions::default()
    };
    let a = train(&rows, &fit, &opts).unwrap();
    let b = train(&rows, &fit, &opts).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.weights), bits(&b.weights));
    assert_eq!(bits(&a.bias), bits(&b.bias));
    // On one thread too: the column split of the matrix multiplies changes no sum.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let c = pool.install(|| train(&rows, &fit, &opts).unwrap());
    assert_eq!(bits(&a.weights), bits(&c.weights));
    let other = train(&rows, &fit, &LinearOptions { seed: 1, ..opts }).unwrap();
    assert_ne!(bits(&a.weights), bits(&other.weights));
}

#[test]
fn knn_matches_numpy_exactly() {
    let (dim, classes) = (24, 7u32);
    let (data, labels) = blobs(500, dim, classes, 0.4, 13);
    let rows = LabeledRows::from_matrix(&data, dim, labels.clone()).unwrap();
    let train_pos: Vec<usize> = (0..400).collect();
    let eval_pos: Vec<usize> = (400..500).collect();
    let got = rank(&rows, &train_pos, &eval_pos, 20, 0.07);
    let dir = tempfile::tempdir().unwrap();
    let y: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    write_npy(&dir.path().join("train.npy"), dim, &data[..400 * dim]);
    write_npy(&dir.path().join("test.npy"), dim, &data[400 * dim..]);
    write_npy(&dir.path().join("train_y.npy"), 1, &y[..400]);
    let out = common::run_python(
        "knn_reference.py",
        &[
            dir.path().as_os_str(),
            "20".as_ref(),
            "0.07".as_ref(),
            "7".as_ref(),
        ],
    );
    let want: Vec<Vec<u32>> = serde_json::from_str(&out).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(&g[..5], &w[..], "eval row {i}");
    }
    eprintln!(
        "k-NN: {} eval rows, top-5 rankings equal numpy's",
        want.len()
    );
    let right = got
        .iter()
        .zip(&labels[400..])
        .filter(|(g, l)| g[0] == **l)
        .count();
    assert!(
        right > 30 && right < 100,
        "a problem with room either way: {right} of 100"
    );
}

#[test]
fn knn_top5_counts_only_k_neighbours_and_tiny_temperatures_stay_finite() {
    let (data, labels) = blobs(300, 16, 8, 0.4, 5);
    let rows = LabeledRows::from_matrix(&data, 16, labels).unwrap();
    let train_pos: Vec<usize> = (0..250).collect();
    let eval_pos: Vec<usize> = (250..300).collect();
    // k = 1: one vote, one class (DINO's top-5 counts min(5, k) predictions).
    let one = rank(&rows, &train_pos, &eval_pos, 1, 0.07);
    assert!(one.iter().all(|r| r.len() == 1));
    // T = 0.001: exp(1/T) overflows float32; the ranking is computed shifted, and the nearest
    // neighbour's class dominates as it must.
    for t in [0.001, 1e-30] {
        let tiny = rank(&rows, &train_pos, &eval_pos, 20, t);
        let same = tiny.iter().zip(&one).filter(|(a, b)| a[0] == b[0]).count();
        assert!(same >= 45, "T {t}: {same} of 50 agree with 1-NN");
        // Every voted class ranks above the classes without a vote.
        assert!(tiny.iter().all(|r| r.len() == 5));
    }
}

#[test]
fn diverging_heads_and_vanishing_rows_are_named_not_used() {
    let (dim, classes) = (16, 4u32);
    let (mut data, labels) = blobs(400, dim, classes, 0.5, 3);
    let mut rows = LabeledRows::from_matrix(&data, dim, labels.clone()).unwrap();
    rows.splits = (0..400)
        .map(|i| if i < 320 { "train" } else { "val" }.to_string())
        .collect();
    let sel = Selection {
        feature: Feature::Mean,
        kind: RegionKind::Part,
        split: None,
    };
    let opts = LinearOptions {
        lrs: vec![0.1, 1e38],
        epochs: 3,
        ..LinearOptions::default()
    };
    let (rep, _) = classify_rows(&rows, &sel, &opts).unwrap();
    assert!(rep.heads[1].final_loss.is_none(), "{:?}", rep.heads);
    assert_eq!(rep.chosen, 0);
    assert!(
        rep.warnings
            .iter()
            .any(|w| w.contains("diverged")
                && w.contains("lr 1000000000000000000000000000000000000")),
        "{:?}",
        rep.warnings
    );
    // A row so small that 1/‖x‖ overflows float32 scores 0, not +∞, and is named.
    for v in &mut data[7 * dim..8 * dim] {
        *v = 1e-41;
    }
    let rows = LabeledRows::from_matrix(&data, dim, labels).unwrap();
    let r = exact(&rows, &RetrievalOptions::default()).unwrap();
    assert!(r.map.unwrap().is_finite());
    assert!(
        r.warnings.iter().any(|w| w.contains("regions 7 ")),
        "{:?}",
        r.warnings
    );
    assert!(r.recall[0].recall > 50.0, "{:?}", r.recall);
}
