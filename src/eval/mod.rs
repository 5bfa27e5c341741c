//! The paper's evaluation protocols on stored region features: part and object retrieval
//! (`retrieval`: scikit-learn's average precision, mAP over classes, recall@k), the linear
//! classification probe (`linear`), DINO's weighted k-NN (`knn`), and the side-by-side report
//! (`report`). Everything reads `features/<feature>.npy` through its memory map, a block of
//! rows at a time: no evaluation copies the whole matrix or builds an N × N one.
//!
//! Shared here: which regions take part ([`Selection`] → [`LabeledRows`]: the rows of one kind
//! and split, their classes by label name, checked for NaN, infinity and norms past float32),
//! the train/eval split of a probe ([`ProbeSplit`]), what the probes share about their sets
//! and rankings ([`check_sets`], [`best5`], [`Accuracy`]), and a small seeded random generator
//! so that every result is reproducible bit for bit.

pub mod ap;
pub mod attentive;
pub mod attentive_probe;
pub mod chart;
pub mod kernel;
pub mod knn;
pub mod linear;
pub mod miou;
pub mod npz;
pub mod report;
pub mod retrieval;
pub mod segment;
mod segment_out;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::encoder::Feature;
use crate::error::{Error, Result};
use crate::region::RegionKind;
use crate::store::{IndexDir, Rows};

/// Which regions of an index an evaluation uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// The feature whose vectors are evaluated.
    pub feature: Feature,
    /// Parts or objects (the paper evaluates them separately).
    pub kind: RegionKind,
    /// Only regions of this split (`None`: every split).
    pub split: Option<String>,
}

/// The selected rows of a feature matrix, with their classes.
#[derive(Debug, Clone)]
pub struct LabeledRows<'a> {
    /// The feature matrix (all rows of the index, row-major, `dim` wide), memory-mapped.
    pub data: Rows<'a>,
    /// Width of a row.
    pub dim: usize,
    /// Region ids (= rows) taking part, ascending.
    pub rows: Vec<usize>,
    /// Class of each selected row: an index into `classes`.
    pub labels: Vec<u32>,
    /// Class names (the regions' label names), sorted.
    pub classes: Vec<String>,
    /// Split of each selected row.
    pub splits: Vec<String>,
}

/// Ids shown when an error or warning names rows.
const SHOWN_ROWS: usize = 10;

/// `ids` as text for a message: the first few and how many in all.
pub fn name_rows(ids: &[usize]) -> String {
    let shown: Vec<String> = ids.iter().take(SHOWN_ROWS).map(|i| i.to_string()).collect();
    if ids.len() > SHOWN_ROWS {
        format!("{} … ({} in all)", shown.join(", "), ids.len())
    } else {
        shown.join(", ")
    }
}

impl<'a> LabeledRows<'a> {
    /// The rows of `index` that `sel` names. Refuses, with a message saying what the index
    /// has, a feature the index lacks, a kind or split with no region, and rows holding NaN
    /// or infinity (named: a metric over them would be silently meaningless).
    pub fn select(index: &'a IndexDir, sel: &Selection) -> Result<LabeledRows<'a>> {
        let m = index.feature(sel.feature).ok_or_else(|| {
            let have: Vec<&str> = index.feature_names().iter().map(|f| f.as_str()).collect();
            Error::InvalidArgument(format!(
                "index {} has no feature {:?}; it has {} (the encoder decides which features exist)",
                index.path().display(),
                sel.feature.as_str(),
                have.join(", ")
            ))
        })?;
        // One pass over the filterable columns: the chosen rows' ids, labels and splits, and
        // the splits of the kind (for the message when none is chosen).
        let mut chosen: Vec<usize> = Vec::new();
        let mut chosen_labels: Vec<String> = Vec::new();
        let mut chosen_splits: Vec<String> = Vec::new();
        let mut kind_splits = std::collections::BTreeSet::new();
        index.scan(&mut |b| {
            for i in 0..b.len() {
                if b.kind(i) != Some(sel.kind) {
                    continue;
                }
                let split = b.split.value(i);
                if !kind_splits.contains(split) {
                    kind_splits.insert(split.to_string());
                }
                if sel.split.as_ref().is_none_or(|s| s == split) {
                    chosen.push(b.id.value(i) as usize);
                    chosen_labels.push(b.label_name.value(i).to_string());
                    chosen_splits.push(split.to_string());
                }
            }
            Ok(())
        })?;
        if chosen.is_empty() {
            let splits: Vec<&str> = kind_splits.iter().map(String::as_str).collect();
            let what = match &sel.split {
                Some(s) if !splits.is_empty() => format!(
                    "no {} region in split {s:?} (its {} regions are in {})",
                    sel.kind.as_str(),
                    sel.kind.as_str(),
                    splits.join(", ")
                ),
                _ => format!("no {} region", sel.kind.as_str()),
            };
            return Err(Error::InvalidArgument(format!(
                "index {}: {what}",
                index.path().display()
            )));
        }
        let dim = m.dim();
        let data = m;
        // NaN, infinity, or a norm past float32's range (its dot products would overflow).
        let bad: Vec<usize> = chosen
            .iter()
            .copied()
            .filter(|&i| {
                let row = data.row(i);
                row.iter().any(|v| !v.is_finite())
                    || crate::index::l2_norm(row) > f64::from(f32::MAX)
            })
            .collect();
        if !bad.is_empty() {
            return Err(Error::corrupt(
                index.feature_file(sel.feature, bad[0]),
                format!(
                    "rows {} hold NaN or infinity, or values too large to compare (ingest never \
                     writes one: the file is damaged; `partlens info --verify` checks it)",
                    name_rows(&bad)
                ),
            ));
        }
        let mut names: Vec<&str> = chosen_labels.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        let class_of: BTreeMap<&str, u32> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, i as u32))
            .collect();
        let labels = chosen_labels.iter().map(|n| class_of[n.as_str()]).collect();
        let splits = chosen_splits;
        Ok(LabeledRows {
            data,
            dim,
            rows: chosen,
            labels,
            classes: names.into_iter().map(str::to_string).collect(),
            splits,
        })
    }

    /// Builds a selection from raw parts (tests and callers with their own matrices): `data`
    /// holds `data.len() / dim` rows, all of which take part.
    pub fn from_matrix(data: &'a [f32], dim: usize, labels: Vec<u32>) -> Result<LabeledRows<'a>> {
        let rows = Rows::contiguous(data, dim);
        let n = data.len() / dim.max(1);
        if dim == 0 || n * dim != data.len() || labels.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{} values, {} labels: not whole rows of {dim} with one label each",
                data.len(),
                labels.len()
            )));
        }
        let classes = (0..labels.iter().max().map_or(0, |m| m + 1))
            .map(|c| c.to_string())
            .collect();
        Ok(LabeledRows {
            data: rows,
            dim,
            rows: (0..n).collect(),
            labels,
            classes,
            splits: vec![String::new(); n],
        })
    }

    /// Row of region id `id`.
    pub fn row(&self, id: usize) -> &'a [f32] {
        self.data.row(id)
    }

    /// Number of selected rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Members per class.
    pub fn class_sizes(&self) -> Vec<usize> {
        let mut n = vec![0; self.classes.len()];
        for &l in &self.labels {
            n[l as usize] += 1;
        }
        n
    }

    /// Selected ids whose vector has no usable direction: all zeros, or so close to zero
    /// that 1/‖x‖ overflows float32 (cosine treats them as scoring 0 against everything).
    pub fn zero_rows(&self) -> Vec<usize> {
        self.rows
            .iter()
            .copied()
            .filter(|&i| kernel::inv_norm(self.row(i)) == 0.0)
            .collect()
    }

    /// The warning [`LabeledRows::zero_rows`] gives, if any.
    pub fn zero_rows_warning(&self) -> Option<String> {
        let zero = self.zero_rows();
        (!zero.is_empty()).then(|| {
            format!(
                "regions {} have all-zero (or vanishing) features: they score 0 against everything",
                name_rows(&zero)
            )
        })
    }
}

/// How a probe's regions are divided into training and evaluation sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSplit {
    /// Training split name.
    pub train: String,
    /// Evaluation split name.
    pub eval: String,
    /// True when the dataset has no such pair of splits and the regions were divided by
    /// [`stratified_split`] instead.
    pub derived: bool,
    /// The fraction sent to evaluation when `derived`.
    pub eval_fraction: f64,
    /// The evaluation split that was asked for (or the default `val`) when it was not used.
    pub missing: Option<String>,
}

impl ProbeSplit {
    /// The warning a derived split gives.
    pub fn derived_note(&self) -> String {
        match self.missing.as_deref() {
            Some(m) if m == self.train => format!(
                "the evaluation split is the training split: evaluating on {} instead",
                self.eval
            ),
            Some(_) => format!(
                "no evaluation split ({}): evaluating on {}",
                EVAL_SPLITS.join(", "),
                self.eval
            ),
            None => format!("evaluating on {}", self.eval),
        }
    }
}

/// Training splits tried, in order, when none is named.
pub const TRAIN_SPLITS: [&str; 2] = ["train", "training"];
/// Evaluation splits tried, in order, when none is named.
pub const EVAL_SPLITS: [&str; 3] = ["val", "validation", "test"];

/// Positions (into `rows.rows`) of the training and evaluation sets.
///
/// Training: the split named `train`; by default the first of [`TRAIN_SPLITS`] present, or
/// the only split when the regions have one. Evaluation: the split named `eval` (it must
/// exist; naming the training split asks for a derived division); by default the first of
/// [`EVAL_SPLITS`] present. When there is none (keypoint crops often come as one split), a
/// deterministic stratified share of the training regions: per class, sorted by id, shuffled
/// with `seed`, `ceil(fraction × n)` (at least one when the class has two or more members,
/// none when it has one) go to evaluation.
pub fn probe_split(
    rows: &LabeledRows<'_>,
    train: Option<&str>,
    eval: Option<&str>,
    seed: u64,
    fraction: f64,
) -> Result<(Vec<usize>, Vec<usize>, ProbeSplit)> {
    let has = |s: &str| rows.splits.iter().any(|x| x == s);
    let mut names: Vec<&str> = rows.splits.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let train = match train {
        Some(t) if has(t) => t,
        Some(t) => {
            return Err(Error::InvalidArgument(format!(
                "no region in training split {t:?}; the splits are {} (choose with --train)",
                names.join(", ")
            )))
        }
        None => match TRAIN_SPLITS.iter().find(|t| has(t)) {
            Some(t) => t,
            None if names.len() == 1 => names[0],
            None => {
                return Err(Error::InvalidArgument(format!(
                    "no split named train or training; the splits are {}: choose one with --train",
                    names.join(", ")
                )))
            }
        },
    };
    let pos_of =
        |s: &str| -> Vec<usize> { (0..rows.len()).filter(|&p| rows.splits[p] == s).collect() };
    let chosen = match eval {
        Some(e) if e == train => None,
        Some(e) if has(e) => Some(e),
        Some(e) => {
            return Err(Error::InvalidArgument(format!(
                "no region in evaluation split {e:?}; the splits are {} (choose with --eval, or \
                 name the training split to hold out a stratified share of it)",
                names.join(", ")
            )))
        }
        None => EVAL_SPLITS.iter().copied().find(|e| *e != train && has(e)),
    };
    if let Some(e) = chosen {
        let info = ProbeSplit {
            train: train.into(),
            eval: e.into(),
            derived: false,
            eval_fraction: 0.0,
            missing: None,
        };
        return Ok((pos_of(train), pos_of(e), info));
    }
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::InvalidArgument(format!(
            "the evaluation fraction must be between 0 and 1 (exclusive), not {fraction}"
        )));
    }
    let (fit, held) = stratified_split(&rows.labels, &pos_of(train), seed, fraction);
    let info = ProbeSplit {
        train: train.into(),
        eval: format!(
            "{:.0} % of {train} (stratified, seed {seed})",
            fraction * 100.0
        ),
        derived: true,
        eval_fraction: fraction,
        missing: Some(match eval {
            Some(e) => e.into(),
            None if EVAL_SPLITS.contains(&train) => train.into(),
            None => "val".into(),
        }),
    };
    Ok((fit, held, info))
}

/// Divides `positions` (into `labels`) per class: each class's positions, shuffled with
/// `seed`, give `ceil(fraction × n)` to the second set (at least one when the class has two or
/// more members, none when it has one). Returns both sets sorted.
pub fn stratified_split(
    labels: &[u32],
    positions: &[usize],
    seed: u64,
    fraction: f64,
) -> (Vec<usize>, Vec<usize>) {
    let mut per: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &p in positions {
        per.entry(labels[p]).or_default().push(p);
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (class, mut ps) in per {
        ps.sort_unstable();
        Rng::new(seed ^ u64::from(class).wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut ps);
        let take = if ps.len() < 2 {
            0
        } else {
            ((fraction * ps.len() as f64).ceil() as usize).clamp(1, ps.len() - 1)
        };
        b.extend_from_slice(&ps[..take]);
        a.extend_from_slice(&ps[take..]);
    }
    a.sort_unstable();
    b.sort_unstable();
    (a, b)
}

/// SplitMix64: a small, fast generator whose sequence is fixed by its seed on every platform
/// (the probes' shuffles and initial weights depend on nothing else).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0), without modulo bias worth speaking of (n ≪ 2^64).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// A standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Top-1 / top-5 and per-class accuracy of predictions, shared by the probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Percentage of evaluation regions whose best class is right.
    pub top1: f64,
    /// Percentage whose right class is among the best five.
    pub top5: f64,
    /// Mean over classes present in the evaluation set of their recall (scikit-learn's
    /// `balanced_accuracy_score`, in percent).
    pub balanced: f64,
    /// Per class present in the evaluation set: name, regions, percentage right.
    pub per_class: Vec<ClassAccuracy>,
    /// The confusion matrix, sparse: `(true class, predicted class, regions)` for every
    /// non-zero cell, class indices in `classes` order, sorted (at most one entry per
    /// evaluation region, whatever the number of classes).
    pub confusion: Vec<(u32, u32, u64)>,
}

/// One class's accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// Class name.
    pub class: String,
    /// Evaluation regions of it.
    pub regions: usize,
    /// Percentage of them classified right.
    pub accuracy: f64,
}

impl Accuracy {
    /// From each evaluation region's true class and its classes ranked best first (at least
    /// one; top-5 counts a hit among the first five).
    pub fn from_rankings(truth: &[u32], ranked: &[Vec<u32>], classes: &[String]) -> Accuracy {
        let c = classes.len();
        let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(truth.len());
        let (mut top1, mut top5) = (0usize, 0usize);
        let (mut total, mut right) = (vec![0u64; c], vec![0u64; c]);
        for (t, r) in truth.iter().zip(ranked) {
            total[*t as usize] += 1;
            if let Some(&p) = r.first() {
                pairs.push((*t, p));
                top1 += usize::from(p == *t);
                right[*t as usize] += u64::from(p == *t);
            }
            top5 += usize::from(r.iter().take(5).any(|p| p == t));
        }
        pairs.sort_unstable();
        let mut confusion: Vec<(u32, u32, u64)> = Vec::new();
        for (t, p) in pairs {
            match confusion.last_mut() {
                Some(last) if (last.0, last.1) == (t, p) => last.2 += 1,
                _ => confusion.push((t, p, 1)),
            }
        }
        let n = truth.len().max(1) as f64;
        let per_class: Vec<ClassAccuracy> = (0..c)
            .filter(|&k| total[k] > 0)
            .map(|k| ClassAccuracy {
                class: classes[k].clone(),
                regions: total[k] as usize,
                accuracy: 100.0 * right[k] as f64 / total[k] as f64,
            })
            .collect();
        let balanced = if per_class.is_empty() {
            0.0
        } else {
            per_class.iter().map(|p| p.accuracy).sum::<f64>() / per_class.len() as f64
        };
        Accuracy {
            top1: 100.0 * top1 as f64 / n,
            top5: 100.0 * top5 as f64 / n,
            balanced,
            per_class,
            confusion,
        }
    }
}

/// Refuses sets a probe cannot use: an empty one, or training data of a single class.
pub fn check_sets(rows: &LabeledRows<'_>, train: &[usize], eval: &[usize]) -> Result<()> {
    if train.is_empty() || eval.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} training and {} evaluation regions: a probe needs both",
            train.len(),
            eval.len()
        )));
    }
    let first = rows.labels[train[0]];
    if train.iter().all(|&p| rows.labels[p] == first) {
        return Err(Error::InvalidArgument(format!(
            "every training region has the label {:?}: a classifier needs two classes or more",
            rows.classes[first as usize]
        )));
    }
    Ok(())
}

/// The (up to) five largest entries' indices, best first, ties to the smaller index; NaN
/// ranks below everything.
pub fn best5<T: Copy + Into<f64>>(scores: &[T]) -> Vec<u32> {
    let key = |i: u32| {
        let v: f64 = scores[i as usize].into();
        if v.is_nan() {
            f64::NEG_INFINITY
        } else {
            v
        }
    };
    let better = |a: u32, b: u32| key(b).total_cmp(&key(a)).then(a.cmp(&b));
    let mut top: Vec<u32> = Vec::with_capacity(6);
    for i in 0..scores.len() as u32 {
        let at = top.partition_point(|&t| better(t, i).is_lt());
        if at < 5 {
            top.insert(at, i);
            top.truncate(5);
        }
    }
    top
}

/// Warnings every probe gives about its classes: those with one member (they can be neither
/// retrieved nor learned from), and those in one set but not the other.
pub fn class_warnings(
    rows: &LabeledRows<'_>,
    train: &[usize],
    eval: &[usize],
    warnings: &mut Vec<String>,
) {
    let count = |set: &[usize]| {
        let mut n = vec![0usize; rows.classes.len()];
        for &p in set {
            n[rows.labels[p] as usize] += 1;
        }
        n
    };
    let (nt, ne) = (count(train), count(eval));
    let only_eval: Vec<&str> = (0..rows.classes.len())
        .filter(|&c| nt[c] == 0 && ne[c] > 0)
        .map(|c| rows.classes[c].as_str())
        .collect();
    if !only_eval.is_empty() {
        warnings.push(format!(
            "{} classes have evaluation regions but none to train on; they count as errors: {}",
            only_eval.len(),
            shorten(&only_eval)
        ));
    }
    let single: Vec<&str> = (0..rows.classes.len())
        .filter(|&c| nt[c] == 1)
        .map(|c| rows.classes[c].as_str())
        .collect();
    if !single.is_empty() {
        warnings.push(format!(
            "{} classes have one training region: {}",
            single.len(),
            shorten(&single)
        ));
    }
}

/// A list of names for a message: the first few and how many in all.
pub fn shorten(names: &[&str]) -> String {
    if names.len() > SHOWN_ROWS {
        format!(
            "{} … ({} in all)",
            names[..SHOWN_ROWS].join(", "),
            names.len()
        )
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_split_is_deterministic_and_stratified() {
        let labels: Vec<u32> = (0..100).map(|i| (i % 3) as u32).chain([7]).collect();
        let pos: Vec<usize> = (0..labels.len()).collect();
        let (a, b) = stratified_split(&labels, &pos, 5, 0.2);
        let (a2, b2) = stratified_split(&labels, &pos, 5, 0.2);
        assert_eq!((&a, &b), (&a2, &b2));
        assert_eq!(a.len() + b.len(), labels.len());
        for c in 0..3 {
            let held = b.iter().filter(|&&p| labels[p] == c).count();
            let n = labels.iter().filter(|&&l| l == c).count();
            assert_eq!(held, (0.2 * n as f64).ceil() as usize);
        }
        // A one-member class stays in training.
        assert!(a.contains(&100) && !b.contains(&100));
        let (_, b3) = stratified_split(&labels, &pos, 6, 0.2);
        assert_ne!(b, b3, "another seed, another division");
    }

    #[test]
    fn accuracy_from_rankings() {
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let truth = [0, 0, 1, 2];
        let ranked = vec![vec![0, 1], vec![1, 0], vec![1, 2], vec![0, 1]];
        let a = Accuracy::from_rankings(&truth, &ranked, &classes);
        assert_eq!(a.top1, 50.0);
        assert_eq!(a.top5, 75.0);
        // Recalls 50 %, 100 %, 0 % → balanced 50 %.
        assert!((a.balanced - 50.0).abs() < 1e-12);
        assert_eq!(
            a.confusion,
            vec![(0, 0, 1), (0, 1, 1), (1, 1, 1), (2, 0, 1)]
        );
    }

    #[test]
    fn best5_orders_by_score_then_index() {
        assert_eq!(
            best5(&[0.1, 0.5, 0.5, -1.0, 0.2, 0.9, 0.5]),
            vec![5, 1, 2, 6, 4]
        );
        assert_eq!(best5(&[0.0, 0.0]), vec![0, 1]);
        assert_eq!(best5(&[f32::NAN, -5.0, 1.0]), vec![2, 1, 0]);
        assert!(best5::<f32>(&[]).is_empty());
    }
}
