//! Weighted k-NN classification as in DINO's evaluation (`eval_knn.py`): features L2-normalised,
//! the training regions are the memory, each evaluation region takes its k most similar
//! training regions by cosine (k = 20), each votes for its class with weight exp(sim / T)
//! (T = 0.07), classes are ranked by total vote. Ties between neighbours go to the smaller
//! region id and ties between classes to the smaller class index, so the result is fixed.

use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::kernel::{inv_norm, scan, unit_rows};
use super::retrieval::TopK;
use super::{
    check_sets, class_warnings, probe_split, Accuracy, LabeledRows, ProbeSplit, Selection,
};
use crate::error::{Error, Result};
use crate::store::IndexDir;

/// Settings of `probe knn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnOptions {
    /// Neighbours per query.
    pub k: usize,
    /// Temperature of the vote weights exp(sim / T).
    pub temperature: f32,
    /// Training split (`None`: `train`, then `training`, then the only split).
    pub train: Option<String>,
    /// Evaluation split (`None`: `val`, then `validation`, then `test`); when the index has
    /// none, a stratified, seeded share of train.
    pub eval: Option<String>,
    /// Seed of the derived split.
    pub seed: u64,
    /// Share of train held out when the split is derived.
    pub eval_fraction: f64,
}

impl Default for KnnOptions {
    fn default() -> Self {
        KnnOptions {
            k: 20,
            temperature: 0.07,
            train: None,
            eval: None,
            seed: 0,
            eval_fraction: 0.2,
        }
    }
}

/// The result of `probe knn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnReport {
    /// What was evaluated (`split` is `None`: the probe's split is in `split`).
    pub selection: Selection,
    /// The settings.
    pub options: KnnOptions,
    /// Which regions trained and which evaluated.
    pub split: ProbeSplit,
    /// Training regions.
    pub train_regions: usize,
    /// Evaluation regions.
    pub eval_regions: usize,
    /// Class names.
    pub classes: Vec<String>,
    /// Top-1, top-5, per class, confusion.
    pub accuracy: Accuracy,
    /// Things a reader of the numbers should know.
    pub warnings: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Runs the k-NN probe on `index`.
pub fn knn(index: &IndexDir, sel: &Selection, opts: &KnnOptions) -> Result<KnnReport> {
    let start = Instant::now();
    if opts.k == 0 || !(opts.temperature.is_finite() && opts.temperature > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "k-NN needs k ≥ 1 and a positive temperature (got k {}, T {})",
            opts.k, opts.temperature
        )));
    }
    let rows = LabeledRows::select(index, sel)?;
    let (train, eval, split) = probe_split(
        &rows,
        opts.train.as_deref(),
        opts.eval.as_deref(),
        opts.seed,
        opts.eval_fraction,
    )?;
    check_sets(&rows, &train, &eval)?;
    let mut warnings = Vec::new();
    if split.derived {
        warnings.push(split.derived_note());
    }
    class_warnings(&rows, &train, &eval, &mut warnings);
    warnings.extend(rows.zero_rows_warning());
    if train.len() < opts.k {
        warnings.push(format!(
            "k = {} but only {} training regions: every query sees all of them",
            opts.k,
            train.len()
        ));
    }
    let k = opts.k.min(train.len());
    let ranked = rank(&rows, &train, &eval, k, opts.temperature);
    let truth: Vec<u32> = eval.iter().map(|&p| rows.labels[p]).collect();
    let accuracy = Accuracy::from_rankings(&truth, &ranked, &rows.classes);
    Ok(KnnReport {
        selection: sel.clone(),
        options: opts.clone(),
        split,
        train_regions: train.len(),
        eval_regions: eval.len(),
        classes: rows.classes.clone(),
        accuracy,
        warnings,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// For each evaluation position, the (up to) five classes with the most weighted votes, best
/// first.
pub fn rank(
    rows: &LabeledRows<'_>,
    train: &[usize],
    eval: &[usize],
    k: usize,
    temperature: f32,
) -> Vec<Vec<u32>> {
    // Each training row is read once per block of queries (as retrieval's blocks).
    const BLOCK: usize = 256;
    let (dim, data) = (rows.dim, &rows.data);
    let train_ids: Vec<usize> = train.iter().map(|&p| rows.rows[p]).collect();
    let train_labels: Vec<u32> = train.iter().map(|&p| rows.labels[p]).collect();
    let inv: Vec<f32> = train_ids
        .par_iter()
        .map(|&i| inv_norm(rows.row(i)))
        .collect();
    let nclass = rows.classes.len();
    let blocks: Vec<&[usize]> = eval.chunks(BLOCK).collect();
    blocks
        .par_iter()
        .flat_map_iter(|block| {
            let ids: Vec<usize> = block.iter().map(|&p| rows.rows[p]).collect();
            let q = unit_rows(data, dim, &ids);
            let mut tops: Vec<TopK> = (0..ids.len()).map(|_| TopK::new(k)).collect();
            scan(&q, dim, data, &train_ids, &inv, |t, tile| {
                let w = tile.len() / ids.len();
                for (qi, top) in tops.iter_mut().enumerate() {
                    for (j, &s) in tile[qi * w..(qi + 1) * w].iter().enumerate() {
                        top.offer(s, train_ids[t + j], train_labels[t + j]);
                    }
                }
            });
            tops.into_iter()
                .map(|top| vote(top.items(), nclass, temperature))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The classes with the largest Σ exp(sim / T) over the neighbours (summed in rank order,
/// float32, as DINO's code sums), best first, ties to the smaller class index: the first
/// min(5, k), as DINO's top-5 counts. When exp(1 / T) could overflow float32 (T below
/// ~0.012), classes are ranked by log Σ exp(sim / T) instead, computed per class from its own
/// best score in float64: the same order, without overflow, and without the underflow that
/// would tie a voted class with classes that got no vote.
pub fn vote(neighbours: &[(f32, usize, u32)], nclass: usize, temperature: f32) -> Vec<u32> {
    let k = neighbours.len();
    let mut top = if 1.0 / temperature + (k.max(1) as f32).ln() > 80.0 {
        let t = f64::from(temperature);
        let mut best = vec![f64::NEG_INFINITY; nclass];
        for &(s, _, label) in neighbours {
            best[label as usize] = best[label as usize].max(f64::from(s));
        }
        let mut sum = vec![0f64; nclass];
        for &(s, _, label) in neighbours {
            sum[label as usize] += ((f64::from(s) - best[label as usize]) / t).exp();
        }
        // log Σ = best / T + ln(Σ exp((s − best) / T)); classes without a vote stay −∞.
        let lse: Vec<f64> = (0..nclass)
            .map(|c| {
                if sum[c] > 0.0 {
                    best[c] / t + sum[c].ln()
                } else {
                    f64::NEG_INFINITY
                }
            })
            .collect();
        super::best5(&lse)
    } else {
        let mut votes = vec![0f32; nclass];
        for &(s, _, label) in neighbours {
            votes[label as usize] += (s / temperature).exp();
        }
        super::best5(&votes)
    };
    top.truncate(k.min(5));
    top
}
