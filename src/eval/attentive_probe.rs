//! `probe attentive` on an index: the attentive probe ([`super::attentive`]) trained on the
//! regions' own patch tokens (`ingest --tokens`, read from the memory-mapped float16
//! `tokens/regions.npy` one region at a time), with the classification probe's splits,
//! held-out choice and accuracy.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::attentive::{train, AttentiveOptions, LrRun, TokenRows};
use super::{
    check_sets, class_warnings, probe_split, stratified_split, Accuracy, LabeledRows, ProbeSplit,
    Selection,
};
use crate::error::{Error, Result};
use crate::store::IndexDir;

/// Settings of `probe attentive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentiveProbeOptions {
    /// The model's and optimiser's settings.
    pub model: AttentiveOptions,
    /// Share of the training regions held out to choose the learning rate.
    pub holdout: f64,
    /// Training split (`None`: `train`, then `training`, then the only split).
    pub train: Option<String>,
    /// Evaluation split (`None`: `val`, `validation`, `test`; else a stratified share of
    /// train).
    pub eval: Option<String>,
    /// Share of train used for evaluation when the split is derived.
    pub eval_fraction: f64,
}

impl Default for AttentiveProbeOptions {
    fn default() -> Self {
        AttentiveProbeOptions {
            model: AttentiveOptions::default(),
            holdout: 0.1,
            train: None,
            eval: None,
            eval_fraction: 0.2,
        }
    }
}

/// The result of `probe attentive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentiveReport {
    /// Kind evaluated (the feature names the matrix whose rows were checked for NaN).
    pub selection: Selection,
    /// The settings.
    pub options: AttentiveProbeOptions,
    /// Which regions trained and which evaluated.
    pub split: ProbeSplit,
    /// Tokens per region and their width.
    pub tokens: usize,
    /// Token width.
    pub dim: usize,
    /// Regions trained on, held out, evaluated.
    pub fit_regions: usize,
    /// Held-out regions.
    pub holdout_regions: usize,
    /// Evaluation regions.
    pub eval_regions: usize,
    /// Class names.
    pub classes: Vec<String>,
    /// Every learning rate.
    pub runs: Vec<LrRun>,
    /// Index into `runs` of the chosen one.
    pub chosen: usize,
    /// The chosen model on the evaluation regions.
    pub accuracy: Accuracy,
    /// Bytes of the probe's state at its peak.
    pub state_bytes: usize,
    /// Things a reader of the numbers should know.
    pub warnings: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// The selected regions' tokens, read from the index's float16 matrix.
struct IndexTokens<'a> {
    tokens: crate::store::TokenRows<'a>,
    rows: &'a LabeledRows<'a>,
}

impl TokenRows for IndexTokens<'_> {
    fn tokens(&self) -> usize {
        self.tokens.shape()[1]
    }
    fn dim(&self) -> usize {
        self.tokens.shape()[2]
    }
    fn nclass(&self) -> usize {
        self.rows.classes.len()
    }
    fn load(&self, pos: usize, out: &mut [f32]) {
        self.tokens.read_region(self.rows.rows[pos], out);
    }
    fn label(&self, pos: usize) -> u32 {
        self.rows.labels[pos]
    }
}

/// Runs the attentive probe on `index`'s regions of `sel.kind`.
pub fn attentive(
    index: &IndexDir,
    sel: &Selection,
    opts: &AttentiveProbeOptions,
) -> Result<AttentiveReport> {
    let start = Instant::now();
    let tokens = index.tokens()?;
    let rows = LabeledRows::select(index, sel)?;
    let (train_pos, eval, split) = probe_split(
        &rows,
        opts.train.as_deref(),
        opts.eval.as_deref(),
        opts.model.seed,
        opts.eval_fraction,
    )?;
    check_sets(&rows, &train_pos, &eval)?;
    let mut warnings = Vec::new();
    if split.derived {
        warnings.push(split.derived_note());
    }
    class_warnings(&rows, &train_pos, &eval, &mut warnings);
    if !(0.0..1.0).contains(&opts.holdout) {
        return Err(Error::InvalidArgument(format!(
            "the held-out share must be in [0, 1), not {}",
            opts.holdout
        )));
    }
    let (fit, holdout) = if opts.holdout > 0.0 {
        stratified_split(
            &rows.labels,
            &train_pos,
            opts.model.seed.wrapping_add(1),
            opts.holdout,
        )
    } else {
        (train_pos.clone(), Vec::new())
    };
    let source = IndexTokens {
        tokens,
        rows: &rows,
    };
    let model = train(&source, &fit, &holdout, &opts.model)?;
    let diverged: Vec<String> = model
        .runs
        .iter()
        .filter(|r| r.final_loss.is_none())
        .map(|r| format!("lr {}", r.lr))
        .collect();
    if !diverged.is_empty() {
        warnings.push(format!(
            "learning rates diverged and were not considered: {}",
            diverged.join(", ")
        ));
    }
    let truth: Vec<u32> = eval.iter().map(|&p| rows.labels[p]).collect();
    let ranked = model.top5(&source, &eval);
    let accuracy = Accuracy::from_rankings(&truth, &ranked, &rows.classes);
    Ok(AttentiveReport {
        selection: sel.clone(),
        options: opts.clone(),
        split,
        tokens: source.tokens(),
        dim: source.dim(),
        fit_regions: fit.len(),
        holdout_regions: holdout.len(),
        eval_regions: eval.len(),
        classes: rows.classes.clone(),
        runs: model.runs.clone(),
        chosen: model.chosen,
        accuracy,
        state_bytes: model.state_bytes,
        warnings,
        seconds: start.elapsed().as_secs_f64(),
    })
}
