//! The paper's attentive classification probe (after CAE's attentive probing): one learned
//! query cross-attends over a region's frozen patch tokens, the attended value is normalised
//! by a BatchNorm without affine parameters, and a linear layer gives the class logits.
//! Trained on the CPU from tokens read one region at a time ([`TokenRows`]).
//!
//! **Model.** Region tokens X ∈ R^{T×D} (rows x_t). k_t = Wk x_t + bk, v_t = Wv x_t + bv,
//! s_t = qᵀk_t / √D, a = softmax(s), o = Σ_t a_t v_t, z = (o − μ) / √(σ² + 1e-6),
//! logits = W z + b (Wk, Wv: D × D; W: C × D; PyTorch's `Linear` layout, out × in).
//! BatchNorm1d(affine=False) as PyTorch: training uses the batch's mean and biased variance
//! and updates running statistics with momentum 0.1 (the unbiased variance; they start at 0
//! and 1); evaluation uses the running statistics.
//!
//! **Linearity.** qᵀk_t = x_tᵀ(Wkᵀq) + qᵀbk, and qᵀbk is the same for every token, so it
//! cancels in the softmax: bk has no effect on anything and is not kept. With u = Wkᵀq/√D,
//! s = X u; and since Σ_t a_t = 1, o = Wv p + bv with p = Xᵀa. Per region the work is O(T·D)
//! (s and p, and in the backward pass Xg and Xᵀds); the D × D products are batch GEMMs
//! (O = P Wvᵀ forward; dWv = G_Oᵀ P and G_P = G_O Wv backward). No T × D × D product exists.
//! In training mode bv cancels too (o − μ removes it): its gradient is 0 (up to rounding); it
//! only shifts the running mean, and so evaluation not at all.
//!
//! **Backward** (batch of B, loss ℓ = mean cross-entropy; rows b; columns j per feature):
//! G_L = (softmax(L) − onehot(y)) / B; dW = G_Lᵀ Z; db = Σ_b G_L; G_Z = G_L W;
//! BatchNorm (training): G_O = (G_Z − mean_b G_Z − Z ⊙ mean_b(G_Z ⊙ Z)) / √(σ² + ε);
//! dWv = G_Oᵀ P; dbv = Σ_b G_O (= 0); G_P = G_O Wv; per region: g = X · (row b of G_P),
//! ds = a ⊙ (g − aᵀg) (softmax), du_b = Xᵀ ds; dU = Σ_b du_b; dq = Wk dU / √D,
//! dWk = q dUᵀ / √D. The tests check this against central differences (float64, every
//! parameter group) and against complex-step gradients of an independent numpy model.
//!
//! **Training.** AdamW by default (β 0.9 / 0.999, ε 1e-8, PyTorch's decoupled decay
//! p ← p(1 − lr·wd) then the bias-corrected Adam step), or SGD with momentum (PyTorch's:
//! g + wd·p into the momentum buffer). Weight decay applies to the matrices Wk, Wv, W, not to
//! q or the biases (MAE/CAE's parameter groups). The learning rate follows a cosine per step,
//! lr · ½(1 + cos(π t / steps)). Why AdamW, lr 1e-3, wd 0.05, 30 epochs, batch 64: Adam's step
//! is normalised per coordinate, so one learning rate suits features of any scale (SGD's
//! best rate moves with it, which is why the linear probe sweeps five); 1e-3 is the customary
//! Adam rate for a freshly initialised head; 0.05 is the decay MAE and CAE use with AdamW;
//! with region sets of thousands, batches of 64 give enough steps in 30 epochs, and BatchNorm
//! statistics over 64 regions are stable. Batches need two regions or more (batch statistics):
//! a last batch of one region is left out of that epoch (the next permutation includes it).
//!
//! Initialisation from the seed ([`Rng`]): q ~ N(0, 0.02²); Wk, Wv ~ N(0, 0.02²) redrawn
//! beyond 2σ (truncated normal); W ~ N(0, 0.01²); biases 0. Every learning rate starts from
//! the same weights and sees the same batches; the one with the best top-1 on the caller's
//! held-out positions is kept (then lower final loss, then the first). A learning rate whose
//! loss or weights become non-finite is dropped; if all do, training fails.
//!
//! **Determinism.** Per-region work runs in parallel (rayon) but writes only its own rows;
//! every sum over regions runs in region order; the GEMMs split the output by columns, so no
//! sum depends on the thread count. The same seed gives the same weights bit for bit on any
//! number of threads.

use std::borrow::Cow;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{best5, Rng};
use crate::error::{Error, Result};
use model::{
    all_finite, batch_gradients, batch_norm_eval, direction, head, pool, values, zeros, Optim,
    Scratch,
};

/// The BatchNorm variance epsilon.
pub const BN_EPS: f64 = 1e-6;
/// The BatchNorm running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;
/// Regions whose logits are computed together at evaluation.
const EVAL_CHUNK: usize = 256;

/// Regions' patch tokens and their classes, read one region at a time.
pub trait TokenRows: Sync {
    /// Tokens per region (T).
    fn tokens(&self) -> usize;
    /// Width of a token (D).
    fn dim(&self) -> usize;
    /// Number of classes; labels are below it.
    fn nclass(&self) -> usize;
    /// Writes region `pos`'s T × D tokens (row-major, f32) into `out` (T·D long).
    fn load(&self, pos: usize, out: &mut [f32]);
    /// Class of region `pos`.
    fn label(&self, pos: usize) -> u32;
}

/// Tokens held in memory: N × T × D, row-major (tests, small sets).
#[derive(Debug, Clone)]
pub struct TokenMatrix<'a> {
    data: Cow<'a, [f32]>,
    tokens: usize,
    dim: usize,
    labels: Vec<u32>,
    nclass: usize,
}

impl<'a> TokenMatrix<'a> {
    /// `data` holds `labels.len()` regions of `tokens` × `dim` values; every label is below
    /// `nclass`.
    pub fn new(
        data: impl Into<Cow<'a, [f32]>>,
        tokens: usize,
        dim: usize,
        labels: Vec<u32>,
        nclass: usize,
    ) -> Result<TokenMatrix<'a>> {
        let data = data.into();
        let per = tokens.checked_mul(dim).unwrap_or(0);
        if per == 0 || Some(data.len()) != labels.len().checked_mul(per) {
            return Err(Error::InvalidArgument(format!(
                "{} values, {} labels: not whole regions of {tokens} tokens × {dim} dimensions",
                data.len(),
                labels.len()
            )));
        }
        if let Some(l) = labels.iter().find(|&&l| l as usize >= nclass) {
            return Err(Error::InvalidArgument(format!(
                "label {l} is not below the {nclass} classes"
            )));
        }
        Ok(TokenMatrix {
            data,
            tokens,
            dim,
            labels,
            nclass,
        })
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there is no region.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

impl TokenRows for TokenMatrix<'_> {
    fn tokens(&self) -> usize {
        self.tokens
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn nclass(&self) -> usize {
        self.nclass
    }
    fn load(&self, pos: usize, out: &mut [f32]) {
        let n = self.tokens * self.dim;
        out.copy_from_slice(&self.data[pos * n..(pos + 1) * n]);
    }
    fn label(&self, pos: usize) -> u32 {
        self.labels[pos]
    }
}

/// The optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// AdamW (decoupled weight decay), PyTorch's formula.
    AdamW,
    /// SGD with momentum, PyTorch's formula (decay added to the gradient).
    Sgd,
}

/// Settings of the attentive probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentiveOptions {
    /// Base learning rates, trained one after another; the best on the held-out set is kept.
    pub lrs: Vec<f64>,
    /// Weight decay of Wk, Wv and W.
    pub weight_decay: f64,
    /// Passes over the training regions.
    pub epochs: usize,
    /// Regions per mini-batch (≥ 2: BatchNorm needs batch statistics).
    pub batch_size: usize,
    /// AdamW or SGD.
    pub optimizer: Optimizer,
    /// AdamW's β1 and β2.
    pub betas: (f64, f64),
    /// AdamW's ε.
    pub adam_eps: f64,
    /// SGD's momentum.
    pub momentum: f64,
    /// Seed of the initial weights and the epochs' shuffles.
    pub seed: u64,
    /// Bytes the probe's own state (weights, gradients, optimizer moments, a batch's tokens
    /// and activations) may take.
    pub memory_budget: usize,
}

impl Default for AttentiveOptions {
    fn default() -> Self {
        AttentiveOptions {
            lrs: vec![1e-3],
            weight_decay: 0.05,
            epochs: 30,
            batch_size: 64,
            optimizer: Optimizer::AdamW,
            betas: (0.9, 0.999),
            adam_eps: 1e-8,
            momentum: 0.9,
            seed: 0,
            memory_budget: 1 << 30,
        }
    }
}

/// The learned parameters (PyTorch's layouts, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Params<R = f32> {
    /// The query q (D).
    pub query: Vec<R>,
    /// Key weights Wk (D × D, out × in).
    pub wk: Vec<R>,
    /// Value weights Wv (D × D, out × in).
    pub wv: Vec<R>,
    /// Value bias bv (D).
    pub bv: Vec<R>,
    /// Classifier weights W (C × D).
    pub w: Vec<R>,
    /// Classifier bias b (C).
    pub b: Vec<R>,
}

/// Names of the parameter groups, in [`Params`] order.
pub const GROUPS: [&str; 6] = ["q", "Wk", "Wv", "bv", "W", "b"];
/// Which groups weight decay applies to.
const DECAYED: [bool; 6] = [false, true, true, false, true, false];

/// One learning rate's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrRun {
    /// Base learning rate.
    pub lr: f64,
    /// Mean training loss over the last epoch (`None`: it diverged).
    pub final_loss: Option<f64>,
    /// Top-1 on the held-out positions, percent (`None`: it diverged, or none were given).
    pub holdout_top1: Option<f64>,
    /// Wall time of its training.
    pub seconds: f64,
}

/// A trained attentive probe.
#[derive(Debug, Clone)]
pub struct AttentiveModel {
    /// Tokens per region.
    pub tokens: usize,
    /// Token width.
    pub dim: usize,
    /// Classes.
    pub nclass: usize,
    /// The chosen learning rate's weights.
    pub params: Params<f32>,
    /// BatchNorm running mean (D).
    pub running_mean: Vec<f32>,
    /// BatchNorm running (unbiased) variance (D).
    pub running_var: Vec<f32>,
    /// Every learning rate, in the order given.
    pub runs: Vec<LrRun>,
    /// Index into `runs` of the chosen one.
    pub chosen: usize,
    /// Bytes of the probe's state at its peak (as budgeted).
    pub state_bytes: usize,
}

/// The initial weights from `seed` (see the module doc).
pub fn initial_params(seed: u64, dim: usize, nclass: usize) -> Params<f32> {
    let normal = |stream: u64, n: usize, std: f64, trunc: bool| -> Vec<f32> {
        let mut r = Rng::new(seed ^ stream);
        (0..n)
            .map(|_| loop {
                let v = r.normal();
                if !trunc || v.abs() <= 2.0 {
                    break (std * v) as f32;
                }
            })
            .collect()
    };
    Params {
        query: normal(0xA77E_0000_0000_0001, dim, 0.02, false),
        wk: normal(0xA77E_0000_0000_0002, dim * dim, 0.02, true),
        wv: normal(0xA77E_0000_0000_0003, dim * dim, 0.02, true),
        bv: vec![0.0; dim],
        w: normal(0xA77E_0000_0000_0005, nclass * dim, 0.01, false),
        b: vec![0.0; nclass],
    }
}

/// The order in which `n` training regions are visited in `epoch` (positions 0..n).
pub fn epoch_order(seed: u64, n: usize, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ 0xA77E_5EED ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03))
        .shuffle(&mut order);
    order
}

/// Bytes of the probe's state: five parameter-sized sets with AdamW (weights, gradients,
/// two moments, the best learning rate's weights so far; four with SGD), a batch's tokens and
/// activations, and evaluation's buffers. `None` past `usize`.
pub fn state_bytes(
    tokens: usize,
    dim: usize,
    nclass: usize,
    batch: usize,
    optimizer: Optimizer,
) -> Option<usize> {
    let (t, d, c, bs) = (tokens as u128, dim as u128, nclass as u128, batch as u128);
    let params = 2 * d * d + 2 * d + c * d + c;
    let sets = match optimizer {
        Optimizer::AdamW => 5,
        Optimizer::Sgd => 4,
    };
    let batch = bs * t * d + 2 * bs * t + 4 * bs * d + bs * c + 6 * d;
    let threads = rayon::current_num_threads() as u128;
    let eval = threads * (t * d + t) + EVAL_CHUNK as u128 * (2 * d + c);
    usize::try_from(4 * (sets * params + batch + eval)).ok()
}

fn check_options(opts: &AttentiveOptions) -> Result<()> {
    // Finite in float32 too: training computes in float32.
    let finite = |x: f64| x.is_finite() && (x as f32).is_finite();
    let unit = |x: f64| (0.0..1.0).contains(&x);
    if opts.lrs.is_empty()
        || !opts.lrs.iter().all(|&lr| finite(lr) && lr > 0.0)
        || !(finite(opts.weight_decay) && opts.weight_decay >= 0.0)
        || opts.epochs == 0
        || opts.batch_size < 2
        || !unit(opts.betas.0)
        || !unit(opts.betas.1)
        || !(finite(opts.adam_eps) && opts.adam_eps > 0.0)
        || !unit(opts.momentum)
    {
        return Err(Error::InvalidArgument(format!(
            "attentive probe settings out of range: learning rates {:?} (at least one, each \
             finite and > 0), weight decay {} (≥ 0), epochs {} (≥ 1), batch size {} (≥ 2: \
             BatchNorm needs batch statistics), betas {:?} and momentum {} ([0, 1)), Adam ε {} \
             (> 0)",
            opts.lrs,
            opts.weight_decay,
            opts.epochs,
            opts.batch_size,
            opts.betas,
            opts.momentum,
            opts.adam_eps
        )));
    }
    Ok(())
}

fn check_rows(rows: &dyn TokenRows, fit: &[usize], holdout: &[usize]) -> Result<()> {
    let (t, d, c) = (rows.tokens(), rows.dim(), rows.nclass());
    if t == 0 || d == 0 || c < 2 {
        return Err(Error::InvalidArgument(format!(
            "regions of {t} tokens × {d} dimensions in {c} classes: the attentive probe needs \
             tokens, dimensions and two classes or more"
        )));
    }
    if fit.is_empty() {
        return Err(Error::InvalidArgument(
            "no training region: the attentive probe needs some".into(),
        ));
    }
    if let Some(&p) = fit
        .iter()
        .chain(holdout)
        .find(|&&p| rows.label(p) as usize >= c)
    {
        return Err(Error::InvalidArgument(format!(
            "region at position {p} has label {}, not below the {c} classes",
            rows.label(p)
        )));
    }
    let first = rows.label(fit[0]);
    if fit.iter().all(|&p| rows.label(p) == first) {
        return Err(Error::InvalidArgument(format!(
            "every training region has label {first}: a classifier needs two classes or more"
        )));
    }
    Ok(())
}

/// Loads the tokens of the regions at `positions` into `x` (in parallel), refusing any that
/// hold NaN or infinity.
fn load_batch(rows: &dyn TokenRows, positions: &[usize], x: &mut [f32]) -> Result<()> {
    let per = rows.tokens() * rows.dim();
    let bad = x
        .par_chunks_mut(per)
        .zip(positions.par_iter())
        .filter_map(|(out, &p)| {
            rows.load(p, out);
            out.iter().any(|v| !v.is_finite()).then_some(p)
        })
        .min();
    match bad {
        Some(p) => Err(Error::InvalidArgument(format!(
            "the tokens of the region at position {p} hold NaN or infinity"
        ))),
        None => Ok(()),
    }
}

/// One learning rate's training: its weights, running statistics and final loss, or `None`
/// when it diverged.
type Outcome = Option<(Params<f32>, Vec<f32>, Vec<f32>, f64)>;

fn train_lr(
    rows: &dyn TokenRows,
    fit: &[usize],
    opts: &AttentiveOptions,
    lr: f64,
    bs: usize,
) -> Result<Outcome> {
    let (t, d, c) = (rows.tokens(), rows.dim(), rows.nclass());
    let mut p = initial_params(opts.seed, d, c);
    let mut g = zeros(d, c);
    let mut optim = Optim::new(opts.optimizer, d, c);
    let (mut mean, mut var) = (vec![0f32; d], vec![1f32; d]);
    let mut x = vec![0f32; bs * t * d];
    let mut s = Scratch::new(bs, t, d, c);
    let batches = fit.len() / bs + usize::from(fit.len() % bs >= 2);
    let total = (opts.epochs * batches) as f64;
    let mut step = 0usize;
    let mut final_loss = f64::NAN;
    for epoch in 0..opts.epochs {
        let (mut loss_sum, mut seen) = (0f64, 0usize);
        for batch in epoch_order(opts.seed, fit.len(), epoch).chunks(bs) {
            if batch.len() < 2 {
                continue; // BatchNorm needs two regions; the next epoch's order includes it
            }
            let pos: Vec<usize> = batch.iter().map(|&i| fit[i]).collect();
            let n = pos.len();
            let xb = &mut x[..n * t * d];
            load_batch(rows, &pos, xb)?;
            let labels: Vec<u32> = pos.iter().map(|&q| rows.label(q)).collect();
            let loss = batch_gradients(&p, xb, &labels, &mut s, &mut g, (&mut mean, &mut var));
            if !loss.is_finite() {
                tracing::info!("attentive probe: lr {lr} diverged at epoch {}", epoch + 1);
                return Ok(None);
            }
            let scale = 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total).cos());
            optim.step(&mut p, &g, lr * scale, opts);
            loss_sum += loss * n as f64;
            seen += n;
            step += 1;
        }
        final_loss = loss_sum / seen as f64;
        if (epoch + 1) % 5 == 0 || epoch + 1 == opts.epochs {
            tracing::info!(
                "attentive probe: lr {lr}, epoch {}/{}, mean loss {final_loss:.4}",
                epoch + 1,
                opts.epochs
            );
        }
    }
    let stats_finite = mean.iter().chain(&var).all(|v| v.is_finite());
    if !all_finite(&p) || !stats_finite {
        tracing::info!("attentive probe: lr {lr} diverged (non-finite weights)");
        return Ok(None);
    }
    Ok(Some((p, mean, var, final_loss)))
}

/// Trains the attentive probe on the regions at `fit` (positions into `rows`), once per
/// learning rate, and keeps the one with the best top-1 on the regions at `holdout` (then
/// the lower final loss, then the first; with no held-out region, the lowest loss). Refuses
/// settings out of range, regions without tokens or dimensions, fewer than two classes, an
/// empty or one-class training set, labels past `rows.nclass()`, tokens holding NaN or
/// infinity, state past the memory budget, and runs where every learning rate diverged.
pub fn train(
    rows: &dyn TokenRows,
    fit: &[usize],
    holdout: &[usize],
    opts: &AttentiveOptions,
) -> Result<AttentiveModel> {
    check_options(opts)?;
    check_rows(rows, fit, holdout)?;
    let (t, d, c) = (rows.tokens(), rows.dim(), rows.nclass());
    let bs = opts.batch_size.min(fit.len());
    let bytes = state_bytes(t, d, c, bs, opts.optimizer).unwrap_or(usize::MAX);
    if bytes > opts.memory_budget {
        return Err(Error::InvalidArgument(format!(
            "the attentive probe on {t} tokens × {d} dimensions, {c} classes, batches of {bs} \
             needs {} MB of state, over the budget of {} MB: lower the batch size (its tokens \
             take {} MB)",
            bytes >> 20,
            opts.memory_budget >> 20,
            (4 * bs * t * d) >> 20
        )));
    }
    let truth: Vec<u32> = holdout.iter().map(|&p| rows.label(p)).collect();
    let mut runs = Vec::new();
    let mut best: Option<AttentiveModel> = None;
    for &lr in &opts.lrs {
        let start = Instant::now();
        let outcome = train_lr(rows, fit, opts, lr, bs)?;
        let Some((params, running_mean, running_var, loss)) = outcome else {
            runs.push(LrRun {
                lr,
                final_loss: None,
                holdout_top1: None,
                seconds: start.elapsed().as_secs_f64(),
            });
            continue;
        };
        let model = AttentiveModel {
            tokens: t,
            dim: d,
            nclass: c,
            params,
            running_mean,
            running_var,
            runs: Vec::new(),
            chosen: runs.len(),
            state_bytes: bytes,
        };
        let top1 = (!holdout.is_empty()).then(|| {
            let right = model
                .top5(rows, holdout)
                .iter()
                .zip(&truth)
                .filter(|(r, &y)| r.first() == Some(&y))
                .count();
            100.0 * right as f64 / holdout.len() as f64
        });
        tracing::info!(
            "attentive probe: lr {lr}: final loss {loss:.4}, held-out top-1 {}",
            top1.map_or("-".into(), |v| format!("{v:.2} %"))
        );
        let better = best.as_ref().is_none_or(|b| {
            let old = &runs[b.chosen];
            let key = |r: Option<f64>| r.unwrap_or(0.0);
            key(top1) > key(old.holdout_top1)
                || (key(top1) == key(old.holdout_top1) && loss < old.final_loss.unwrap_or(f64::MAX))
        });
        runs.push(LrRun {
            lr,
            final_loss: Some(loss),
            holdout_top1: top1,
            seconds: start.elapsed().as_secs_f64(),
        });
        if better {
            best = Some(model);
        }
    }
    let Some(mut model) = best else {
        return Err(Error::InvalidArgument(format!(
            "every learning rate diverged (a non-finite loss or weights): {:?}; lower them",
            opts.lrs
        )));
    };
    model.runs = runs;
    Ok(model)
}

impl AttentiveModel {
    /// Evaluation-mode logits of the regions at `positions`: N × C, row-major. Tokens are
    /// read a region at a time (in parallel); regions holding NaN get NaN logits.
    ///
    /// # Panics
    /// When `rows` has other tokens, dimensions or classes than the model.
    pub fn logits(&self, rows: &dyn TokenRows, positions: &[usize]) -> Vec<f32> {
        let (t, d, c) = (self.tokens, self.dim, self.nclass);
        assert_eq!(
            (rows.tokens(), rows.dim(), rows.nclass()),
            (t, d, c),
            "regions of another shape than the model's (tokens, dimensions, classes)"
        );
        let u = direction(&self.params);
        let mut out = vec![0f32; positions.len() * c];
        let mut pooled = vec![0f32; EVAL_CHUNK.min(positions.len()) * d];
        let mut z = pooled.clone();
        for (chunk, lo) in positions
            .chunks(EVAL_CHUNK)
            .zip(out.chunks_mut(EVAL_CHUNK * c))
        {
            let n = chunk.len();
            chunk
                .par_iter()
                .zip(pooled[..n * d].par_chunks_mut(d))
                .for_each_init(
                    || (vec![0f32; t * d], vec![0f32; t]),
                    |(x, attn), (&pos, pr)| {
                        rows.load(pos, x);
                        pool(x, &u, attn, pr);
                    },
                );
            values(&self.params, &pooled[..n * d], &mut z[..n * d]);
            batch_norm_eval(&mut z[..n * d], &self.running_mean, &self.running_var);
            head(&self.params, &z[..n * d], lo);
        }
        out
    }

    /// The five best classes (best first, ties to the smaller index) of the regions at
    /// `positions`.
    ///
    /// # Panics
    /// As [`AttentiveModel::logits`].
    pub fn top5(&self, rows: &dyn TokenRows, positions: &[usize]) -> Vec<Vec<u32>> {
        self.logits(rows, positions)
            .chunks(self.nclass)
            .map(best5)
            .collect()
    }
}

mod model;
#[cfg(test)]
mod tests;
