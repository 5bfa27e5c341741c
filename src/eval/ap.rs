//! Average precision exactly as scikit-learn's `average_precision_score` computes it for one
//! binary ranking: the step integral Σ (Rₙ − Rₙ₋₁) Pₙ over the distinct score thresholds taken
//! in decreasing order, where items with equal scores enter together (one threshold), Pₙ =
//! TPₙ / (TPₙ + FPₙ) and Rₙ = TPₙ / P, in float64.
//!
//! Only thresholds at which a positive enters change the recall, so the sum needs just the
//! positives' scores and, for each, how many negatives score at least as high:
//! [`Thresholds`] holds the first, [`Thresholds::count`] accumulates the second in one pass
//! over the negatives (no sort of the whole ranking, O(log P) per negative).

/// The distinct positive scores of one query, best first, with the positives and negatives
/// scoring at least each (12 bytes per positive; counts fit u32: a ranking of under 2^32).
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    /// Distinct positive scores, decreasing.
    values: Vec<f32>,
    /// Positives scoring ≥ values[j] (cumulative).
    tp: Vec<u32>,
    /// Negatives whose score first reaches threshold j (cumulated in `ap`).
    fp: Vec<u32>,
}

impl Thresholds {
    /// From the positives' scores (any order; not NaN).
    pub fn new(mut positives: Vec<f32>) -> Thresholds {
        positives.sort_unstable_by(|a, b| b.total_cmp(a));
        let mut values: Vec<f32> = Vec::new();
        let mut tp: Vec<u32> = Vec::new();
        for (i, &s) in positives.iter().enumerate() {
            // -0.0 and 0.0 are one threshold, as numpy's comparison makes them.
            if values.last() == Some(&s) {
                *tp.last_mut().expect("pushed with values") = i as u32 + 1;
            } else {
                values.push(s);
                tp.push(i as u32 + 1);
            }
        }
        let fp = vec![0; values.len()];
        Thresholds { values, tp, fp }
    }

    /// The lowest positive score (−∞ without positives): a negative below it changes nothing.
    #[inline]
    pub fn lowest(&self) -> f32 {
        self.values.last().copied().unwrap_or(f32::NEG_INFINITY)
    }

    /// Counts a negative scoring `s`: it precedes every threshold ≤ s.
    #[inline]
    pub fn count(&mut self, s: f32) {
        match self.values.last() {
            Some(&low) if s >= low => {
                let j = self.values.partition_point(|&t| t > s);
                self.fp[j] += 1;
            }
            _ => {}
        }
    }

    /// The average precision (scikit-learn's value; 0 when there is no positive).
    pub fn ap(&self) -> f64 {
        let Some(&p) = self.tp.last() else {
            return 0.0;
        };
        let p = f64::from(p);
        let (mut fp, mut prev_recall, mut sum) = (0u64, 0.0f64, 0.0f64);
        for j in 0..self.values.len() {
            fp += u64::from(self.fp[j]);
            let tp = f64::from(self.tp[j]);
            let recall = tp / p;
            let precision = tp / (tp + fp as f64);
            sum += (recall - prev_recall) * precision;
            prev_recall = recall;
        }
        sum.max(0.0)
    }
}

/// scikit-learn's `average_precision_score(relevant, scores)` for one ranking (0 when nothing
/// is relevant, where scikit-learn warns and returns the same).
pub fn average_precision(relevant: &[bool], scores: &[f32]) -> f64 {
    let pos: Vec<f32> = relevant
        .iter()
        .zip(scores)
        .filter(|(r, _)| **r)
        .map(|(_, s)| *s)
        .collect();
    let mut t = Thresholds::new(pos);
    for (_, &s) in relevant.iter().zip(scores).filter(|(r, _)| !**r) {
        t.count(s);
    }
    t.ap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values computed with scikit-learn 1.9.1:
    /// `sklearn.metrics.average_precision_score(y, s)` on these arrays (float32 scores).
    #[test]
    fn equals_scikit_learn() {
        let cases: &[(&[u8], &[f32], f64)] = &[
            // No ties.
            (
                &[1, 0, 1, 0, 0, 1],
                &[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                0.7222222222222222,
            ),
            // A positive tied with two negatives: one threshold.
            (&[1, 0, 1, 0, 1], &[0.9, 0.5, 0.5, 0.5, 0.1], 0.7),
            // All scores equal: precision = prevalence.
            (&[1, 0, 0, 1], &[0.3, 0.3, 0.3, 0.3], 0.5),
            // Single positive, ranked third.
            (&[0, 0, 1, 0], &[0.9, 0.8, 0.7, 0.6], 0.3333333333333333),
            // Positives tied with each other at the top.
            (&[1, 1, 0, 1], &[0.5, 0.5, 0.5, 0.2], 0.6944444444444444),
            // Everything relevant.
            (&[1, 1, 1], &[0.1, 0.2, 0.3], 1.0),
            // Negative scores, -0.0 and 0.0 one threshold.
            (
                &[0, 1, 1, 0, 1],
                &[-0.0, 0.0, -0.5, 0.2, -1.0],
                0.4777777777777778,
            ),
        ];
        for (i, (y, s, want)) in cases.iter().enumerate() {
            let rel: Vec<bool> = y.iter().map(|&v| v == 1).collect();
            let got = average_precision(&rel, s);
            assert!((got - want).abs() < 1e-12, "case {i}: {got} vs {want}");
        }
        assert_eq!(average_precision(&[false, false], &[0.1, 0.2]), 0.0);
    }
}
