//! The linear classification probe: a softmax head on a frozen feature, the feature
//! standardised with the statistics of the training regions (the paper's BatchNorm without
//! affine parameters, as it acts at evaluation: (x − mean) / √(var + 1e-6), biased variance),
//! trained by mini-batch SGD with momentum 0.9 and a cosine learning-rate schedule.
//!
//! Several heads — every pair of the learning rates and weight decays asked for — train in
//! the same pass: one matrix multiply computes all their logits for a batch, one computes all
//! their gradients. The head with the best top-1 on a held-out 10 % of the training regions
//! (stratified, seeded) is the one reported on the evaluation split.
//!
//! Per step t of T (all epochs), head h: g = ∇(mean cross-entropy over the batch) + wd_h · W
//! (no decay on the bias), v ← 0.9 v + g, W ← W − lr_h · ½(1 + cos(π t / T)) · v — PyTorch's
//! `SGD(momentum=0.9)` with a per-step cosine schedule. Weights start N(0, 0.01²) from the
//! seed (the same start for every head), biases 0. Batches follow one seeded permutation per
//! epoch; the last, smaller batch of an epoch is kept. Gradient entries below float32's normal
//! range (1.2e-38) are set to 0 (subnormal arithmetic is ~100× slower on x86). Rows are read
//! from the memory map a batch at a time and standardised on the fly: the matrix is never
//! copied. The result is the same bit for bit for the same seed (the matrix multiplies split
//! the output by columns, so no sum depends on the thread count).

use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    best5, check_sets, class_warnings, probe_split, stratified_split, Accuracy, LabeledRows,
    ProbeSplit, Rng, Selection,
};
use crate::error::{Error, Result};
use crate::store::IndexDir;

/// The variance epsilon of the standardisation (MAE's linear-probe BatchNorm).
pub const BN_EPS: f64 = 1e-6;

/// Settings of `probe classify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearOptions {
    /// Base learning rates, one head each (× every weight decay).
    pub lrs: Vec<f64>,
    /// Weight decays.
    pub weight_decays: Vec<f64>,
    /// Passes over the training regions.
    pub epochs: usize,
    /// Regions per mini-batch.
    pub batch_size: usize,
    /// SGD momentum.
    pub momentum: f64,
    /// Seed of the held-out division, the shuffles and the initial weights.
    pub seed: u64,
    /// Share of the training regions held out to choose the head.
    pub holdout: f64,
    /// Training split (`None`: `train`, then `training`, then the only split).
    pub train: Option<String>,
    /// Evaluation split (`None`: `val`, then `validation`, then `test`); when the index has
    /// none, a stratified, seeded share of train.
    pub eval: Option<String>,
    /// Share of train used for evaluation when the split is derived.
    pub eval_fraction: f64,
    /// Bytes the probe's own state (weights, momenta, gradients, batch buffers) may take.
    pub memory_budget: usize,
    /// Keep every step's loss per head (for tests against a reference implementation).
    #[serde(skip)]
    pub trace: bool,
}

impl Default for LinearOptions {
    fn default() -> Self {
        LinearOptions {
            lrs: vec![0.01, 0.03, 0.1, 0.3, 1.0],
            weight_decays: vec![0.0],
            epochs: 90,
            batch_size: 256,
            momentum: 0.9,
            seed: 0,
            holdout: 0.1,
            train: None,
            eval: None,
            eval_fraction: 0.2,
            memory_budget: 1 << 30,
            trace: false,
        }
    }
}

/// One head's settings and how it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadResult {
    /// Base learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Mean training loss over the last epoch (`None` when the head diverged).
    pub final_loss: Option<f64>,
    /// Top-1 on the held-out regions, percent (`None` when it diverged).
    pub holdout_top1: Option<f64>,
}

/// The result of `probe classify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearReport {
    /// What was evaluated (`split` is `None`: the probe's split is in `split`).
    pub selection: Selection,
    /// The settings.
    pub options: LinearOptions,
    /// Which regions trained and which evaluated.
    pub split: ProbeSplit,
    /// Regions the heads trained on.
    pub fit_regions: usize,
    /// Held-out training regions that chose the head.
    pub holdout_regions: usize,
    /// Evaluation regions.
    pub eval_regions: usize,
    /// Class names.
    pub classes: Vec<String>,
    /// Every head.
    pub heads: Vec<HeadResult>,
    /// Index into `heads` of the chosen one.
    pub chosen: usize,
    /// The chosen head on the evaluation regions.
    pub accuracy: Accuracy,
    /// Bytes of the probe's own state at its peak (the mapped feature matrix is not copied).
    pub state_bytes: usize,
    /// Things a reader of the numbers should know.
    pub warnings: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Trained heads.
#[derive(Debug, Clone)]
pub struct Trained {
    /// Feature width.
    pub dim: usize,
    /// Classes.
    pub nclass: usize,
    /// (lr, weight decay) per head.
    pub heads: Vec<(f64, f64)>,
    /// D × (heads · classes), row-major; head h's classes are columns h·C .. (h+1)·C.
    pub weights: Vec<f32>,
    /// heads · classes.
    pub bias: Vec<f32>,
    /// Standardisation: per-dimension mean.
    pub mean: Vec<f32>,
    /// Standardisation: 1 / √(var + ε).
    pub inv_std: Vec<f32>,
    /// Per head: a non-finite loss was seen (its weights were reset and frozen).
    pub diverged: Vec<bool>,
    /// Per head: mean loss of the last epoch.
    pub final_loss: Vec<f64>,
    /// With `trace`: per step, per head, the batch's mean loss.
    pub losses: Vec<Vec<f32>>,
    /// Peak bytes of the state.
    pub state_bytes: usize,
}

/// What one training row should predict.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// One class.
    Hard(u32),
    /// A distribution: `(class, weight)` pairs, weights summing to 1 (the segmentation probe's
    /// patch targets: the label distribution of the pixels a patch covers).
    Soft(&'a [(u32, f32)]),
}

/// Rows the probe trains on, addressed by position: the classification probe's selected
/// regions ([`LabeledRows`]), or the segmentation probe's labelled grid cells.
pub trait TrainRows: Sync {
    /// Width of a row.
    fn dim(&self) -> usize;
    /// Number of classes.
    fn nclass(&self) -> usize;
    /// Writes position `p`'s raw row (`dim` values) into `out`.
    fn read(&self, p: usize, out: &mut [f32]);
    /// Position `p`'s target.
    fn target(&self, p: usize) -> Target<'_>;
}

impl TrainRows for LabeledRows<'_> {
    fn dim(&self) -> usize {
        self.dim
    }
    fn nclass(&self) -> usize {
        self.classes.len()
    }
    fn read(&self, p: usize, out: &mut [f32]) {
        out.copy_from_slice(self.row(self.rows[p]));
    }
    fn target(&self, p: usize) -> Target<'_> {
        Target::Hard(self.labels[p])
    }
}

/// The initial weights (D × C, row-major): N(0, 0.01²) from `seed`.
pub fn initial_weights(seed: u64, dim: usize, nclass: usize) -> Vec<f32> {
    let mut r = Rng::new(seed ^ 0x5EED_0000_0000_0001);
    (0..dim * nclass)
        .map(|_| (0.01 * r.normal()) as f32)
        .collect()
}

/// The order in which `n` training regions are visited in `epoch` (positions 0..n).
pub fn epoch_order(seed: u64, n: usize, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)).shuffle(&mut order);
    order
}

/// Per-dimension mean and 1/√(var + ε) of the rows at `positions`, in float64.
pub fn standardisation<R: TrainRows + ?Sized>(
    rows: &R,
    positions: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let d = rows.dim();
    let n = positions.len().max(1) as f64;
    let mut sum = vec![0f64; d];
    let mut row = vec![0f32; d];
    for &p in positions {
        rows.read(p, &mut row);
        for (s, &v) in sum.iter_mut().zip(&row) {
            *s += f64::from(v);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let mut var = vec![0f64; d];
    for &p in positions {
        rows.read(p, &mut row);
        for ((s, &v), m) in var.iter_mut().zip(&row).zip(&mean) {
            *s += (f64::from(v) - m).powi(2);
        }
    }
    let inv_std = var
        .iter()
        .map(|v| (1.0 / (v / n + BN_EPS).sqrt()) as f32)
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), inv_std)
}

/// A raw pointer that may cross threads: each thread writes disjoint columns.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for disjoint column ranges of one buffer, joined before reuse.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// C[:, cols] (+)= A · B[:, cols] for column chunks in parallel. A: m × k with strides
/// (rsa, csa); B: k × n row-major; C: m × n row-major.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_cols(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[f32],
    c: &mut [f32],
    beta: f32,
) {
    assert!(b.len() >= k * n && c.len() >= m * n);
    let chunk = n.div_ceil(rayon::current_num_threads().max(1)).max(16);
    let cp = SendPtr(c.as_mut_ptr());
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|t| {
        let c0 = t * chunk;
        let w = chunk.min(n - c0);
        // SAFETY: a, b, c are large enough for the given shapes and strides (asserted above
        // and by the callers); each task writes only columns c0..c0+w of c.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                w,
                1.0,
                a.as_ptr(),
                rsa,
                csa,
                b.as_ptr().add(c0),
                n as isize,
                1,
                beta,
                cp.get().add(c0),
                n as isize,
                1,
            );
        }
    });
}

/// Fills `x` with the standardised rows at `positions`.
fn load_batch<R: TrainRows + ?Sized>(
    rows: &R,
    positions: &[usize],
    mean: &[f32],
    inv_std: &[f32],
    x: &mut Vec<f32>,
) {
    let d = rows.dim();
    x.clear();
    x.resize(positions.len() * d, 0.0);
    for (&p, out) in positions.iter().zip(x.chunks_exact_mut(d)) {
        rows.read(p, out);
        for ((v, m), s) in out.iter_mut().zip(mean).zip(inv_std) {
            *v = (*v - m) * s;
        }
    }
}

/// Trains every head on the rows at `fit` (positions into `rows`).
pub fn train<R: TrainRows + ?Sized>(
    rows: &R,
    fit: &[usize],
    opts: &LinearOptions,
) -> Result<Trained> {
    check_options(opts)?;
    let d = rows.dim();
    let c = rows.nclass();
    let heads: Vec<(f64, f64)> = opts
        .lrs
        .iter()
        .flat_map(|&lr| opts.weight_decays.iter().map(move |&wd| (lr, wd)))
        .collect();
    let h = heads.len();
    let hc = h * c;
    let bs = opts.batch_size.min(fit.len().max(1));
    // W, V, dW (D × HC); bias and its momentum; a batch (bs × D); logits/gradients (bs × HC).
    let state_bytes = 4 * (3 * d * hc + 3 * hc + bs * d + bs * hc + 2 * d);
    if state_bytes > opts.memory_budget {
        return Err(Error::InvalidArgument(format!(
            "{h} heads × {c} classes × {d} dimensions need {} MB of probe state, over the \
             budget of {} MB: train fewer learning rates / weight decays at once",
            state_bytes >> 20,
            opts.memory_budget >> 20
        )));
    }
    let (mean, inv_std) = standardisation(rows, fit);
    let init = initial_weights(opts.seed, d, c);
    let mut w = vec![0f32; d * hc];
    for row in 0..d {
        for head in 0..h {
            w[row * hc + head * c..row * hc + (head + 1) * c]
                .copy_from_slice(&init[row * c..(row + 1) * c]);
        }
    }
    let mut v = vec![0f32; d * hc];
    let mut grad = vec![0f32; d * hc];
    let mut b = vec![0f32; hc];
    let mut vb = vec![0f32; hc];
    let mut x = Vec::with_capacity(bs * d);
    let mut z = vec![0f32; bs * hc];
    let mut diverged = vec![false; h];
    let steps_per_epoch = fit.len().div_ceil(bs);
    let total = (opts.epochs * steps_per_epoch).max(1) as f64;
    let mut losses = Vec::new();
    let mut epoch_loss = vec![0f64; h];
    let momentum = opts.momentum as f32;
    let wds: Vec<f32> = heads.iter().map(|&(_, wd)| wd as f32).collect();
    let mut step = 0usize;
    for epoch in 0..opts.epochs {
        epoch_loss.iter_mut().for_each(|l| *l = 0.0);
        let order = epoch_order(opts.seed, fit.len(), epoch);
        for batch in order.chunks(bs) {
            let pos: Vec<usize> = batch.iter().map(|&i| fit[i]).collect();
            let n = pos.len();
            load_batch(rows, &pos, &mean, &inv_std, &mut x);
            // Logits of every head: z = x · W + b.
            for r in 0..n {
                z[r * hc..(r + 1) * hc].copy_from_slice(&b);
            }
            gemm_cols(n, d, hc, &x, d as isize, 1, &w, &mut z[..n * hc], 1.0);
            // Softmax cross-entropy per head; z becomes the gradient of the mean loss.
            let mut step_loss = vec![0f64; h];
            for r in 0..n {
                let target = rows.target(pos[r]);
                for (head, loss) in step_loss.iter_mut().enumerate() {
                    let zz = &mut z[r * hc + head * c..r * hc + (head + 1) * c];
                    let max = zz.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    // Σ t_k (z_k − max): for a hard target, z_y − max.
                    let zy = match target {
                        Target::Hard(y) => zz[y as usize] - max,
                        Target::Soft(t) => t.iter().map(|&(k, w)| w * (zz[k as usize] - max)).sum(),
                    };
                    let mut sum = 0f32;
                    for e in zz.iter_mut() {
                        *e = (*e - max).exp();
                        sum += *e;
                    }
                    *loss += f64::from(sum.ln() - zy);
                    for e in zz.iter_mut() {
                        *e /= sum * n as f32;
                        // Below float32's normal range a gradient is noise, and x86 computes
                        // with subnormals ~100× slower: a confident head's gradient matrix is
                        // mostly subnormal by the last epochs. Flushed to zero here, not by a
                        // CPU flag, so every platform computes the same.
                        if *e < f32::MIN_POSITIVE {
                            *e = 0.0;
                        }
                    }
                    match target {
                        Target::Hard(y) => zz[y as usize] -= 1.0 / n as f32,
                        Target::Soft(t) => {
                            for &(k, w) in t {
                                zz[k as usize] -= w / n as f32;
                            }
                        }
                    }
                }
            }
            let lr_scale = 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total).cos());
            // Gradient of every head at once: dW = xᵀ · z.
            gemm_cols(d, n, hc, &x, 1, d as isize, &z[..n * hc], &mut grad, 0.0);
            let mut trace_row = Vec::with_capacity(h);
            for head in 0..h {
                let loss = step_loss[head] / n as f64;
                trace_row.push(loss as f32);
                if !loss.is_finite() && !diverged[head] {
                    diverged[head] = true;
                }
                epoch_loss[head] += loss * n as f64;
            }
            let lrs: Vec<f32> = heads
                .iter()
                .map(|&(lr, _)| (lr * lr_scale) as f32)
                .collect();
            update(
                &mut w, &mut v, &grad, hc, c, &lrs, &wds, momentum, &diverged,
            );
            for col in 0..hc {
                let head = col / c;
                if diverged[head] {
                    b[col] = 0.0;
                    vb[col] = 0.0;
                    continue;
                }
                let g: f32 = (0..n).map(|r| z[r * hc + col]).sum();
                vb[col] = momentum * vb[col] + g;
                b[col] -= lrs[head] * vb[col];
            }
            if opts.trace {
                losses.push(trace_row);
            }
            step += 1;
        }
        if (epoch + 1) % 10 == 0 || epoch + 1 == opts.epochs {
            let n = fit.len().max(1) as f64;
            let losses: Vec<String> = epoch_loss.iter().map(|l| format!("{:.4}", l / n)).collect();
            tracing::info!(
                "linear probe: epoch {}/{}, mean loss per head {}",
                epoch + 1,
                opts.epochs,
                losses.join(" ")
            );
        }
    }
    // Weights that became non-finite on the last updates (after the last loss was seen).
    for (head, d) in diverged.iter_mut().enumerate() {
        let cols = head * c..(head + 1) * c;
        let finite = b[cols.clone()].iter().all(|v| v.is_finite())
            && w.chunks(hc)
                .all(|row| row[cols.clone()].iter().all(|v| v.is_finite()));
        *d |= !finite;
    }
    let final_loss = epoch_loss
        .iter()
        .map(|l| l / fit.len().max(1) as f64)
        .collect();
    Ok(Trained {
        dim: d,
        nclass: c,
        heads,
        weights: w,
        bias: b,
        mean,
        inv_std,
        diverged,
        final_loss,
        losses,
        state_bytes,
    })
}

/// v ← μ v + (g + wd · W); W ← W − lr · v, per head's columns; diverged heads are zeroed.
#[allow(clippy::too_many_arguments)]
fn update(
    w: &mut [f32],
    v: &mut [f32],
    grad: &[f32],
    hc: usize,
    c: usize,
    lrs: &[f32],
    wds: &[f32],
    momentum: f32,
    diverged: &[bool],
) {
    w.par_chunks_mut(hc)
        .zip(v.par_chunks_mut(hc))
        .zip(grad.par_chunks(hc))
        .for_each(|((wr, vr), gr)| {
            for col in 0..hc {
                let head = col / c;
                if diverged[head] {
                    wr[col] = 0.0;
                    vr[col] = 0.0;
                    continue;
                }
                let g = gr[col] + wds[head] * wr[col];
                vr[col] = momentum * vr[col] + g;
                wr[col] -= lrs[head] * vr[col];
            }
        });
}

fn check_options(opts: &LinearOptions) -> Result<()> {
    // Finite in float32 too: the updates compute in float32.
    let ok_list = |v: &[f64]| {
        !v.is_empty()
            && v.iter()
                .all(|&x| x.is_finite() && x >= 0.0 && (x as f32).is_finite())
    };
    if !ok_list(&opts.lrs)
        || opts.lrs.contains(&0.0)
        || !ok_list(&opts.weight_decays)
        || opts.epochs == 0
        || opts.batch_size == 0
        || !(0.0..1.0).contains(&opts.momentum)
        || !(0.0..0.5).contains(&opts.holdout)
    {
        return Err(Error::InvalidArgument(format!(
            "linear probe settings out of range: learning rates {:?} (> 0), weight decays {:?} \
             (≥ 0), epochs {} and batch size {} (≥ 1), momentum {} ([0, 1)), holdout {} ([0, 0.5))",
            opts.lrs, opts.weight_decays, opts.epochs, opts.batch_size, opts.momentum, opts.holdout
        )));
    }
    Ok(())
}

impl Trained {
    /// Each head's five best classes (best first, ties to the smaller index) for the
    /// regions at `positions`: `[head][position]`. Logits are computed a batch at a time
    /// from the memory map, for all heads with one matrix multiply; only the rankings are
    /// kept.
    pub fn top5<R: TrainRows + ?Sized>(&self, rows: &R, positions: &[usize]) -> Vec<Vec<Vec<u32>>> {
        let (d, c, h) = (self.dim, self.nclass, self.heads.len());
        let hc = h * c;
        let mut out: Vec<Vec<Vec<u32>>> = vec![Vec::with_capacity(positions.len()); h];
        let (mut x, mut z) = (Vec::new(), Vec::new());
        for chunk in positions.chunks(256) {
            load_batch(rows, chunk, &self.mean, &self.inv_std, &mut x);
            z.clear();
            for _ in chunk {
                z.extend_from_slice(&self.bias);
            }
            gemm_cols(
                chunk.len(),
                d,
                hc,
                &x,
                d as isize,
                1,
                &self.weights,
                &mut z,
                1.0,
            );
            for zr in z.chunks(hc) {
                for (head, ranked) in out.iter_mut().enumerate() {
                    ranked.push(best5(&zr[head * c..(head + 1) * c]));
                }
            }
        }
        out
    }

    /// Head `head` as (C × D weight, C bias) in PyTorch's layout.
    pub fn head(&self, head: usize) -> (Vec<f32>, Vec<f32>) {
        let (d, c, hc) = (self.dim, self.nclass, self.heads.len() * self.nclass);
        let mut w = vec![0f32; c * d];
        for k in 0..c {
            for i in 0..d {
                w[k * d + i] = self.weights[i * hc + head * c + k];
            }
        }
        (w, self.bias[head * c..(head + 1) * c].to_vec())
    }
}

/// The head to report: the best held-out score, then the lowest loss, then the first; `None`
/// when every head diverged.
pub fn choose_head(results: &[HeadResult]) -> Option<usize> {
    (0..results.len())
        .filter(|&i| results[i].final_loss.is_some())
        .min_by(|&a, &b| {
            let (ra, rb) = (&results[a], &results[b]);
            rb.holdout_top1
                .unwrap_or(0.0)
                .total_cmp(&ra.holdout_top1.unwrap_or(0.0))
                .then(
                    ra.final_loss
                        .unwrap_or(f64::MAX)
                        .total_cmp(&rb.final_loss.unwrap_or(f64::MAX)),
                )
                .then(a.cmp(&b))
        })
}

/// Runs the linear probe on `index`.
pub fn classify(
    index: &IndexDir,
    sel: &Selection,
    opts: &LinearOptions,
) -> Result<(LinearReport, Trained)> {
    let rows = LabeledRows::select(index, sel)?;
    classify_rows(&rows, sel, opts)
}

/// The linear probe on a selection: split, hold out, train, choose, evaluate.
pub fn classify_rows(
    rows: &LabeledRows<'_>,
    sel: &Selection,
    opts: &LinearOptions,
) -> Result<(LinearReport, Trained)> {
    let start = Instant::now();
    check_options(opts)?;
    let (train_pos, eval, split) = probe_split(
        rows,
        opts.train.as_deref(),
        opts.eval.as_deref(),
        opts.seed,
        opts.eval_fraction,
    )?;
    check_sets(rows, &train_pos, &eval)?;
    let mut warnings = Vec::new();
    if split.derived {
        warnings.push(split.derived_note());
    }
    class_warnings(rows, &train_pos, &eval, &mut warnings);
    let (fit, holdout) = if opts.holdout > 0.0 {
        stratified_split(
            &rows.labels,
            &train_pos,
            opts.seed.wrapping_add(1),
            opts.holdout,
        )
    } else {
        (train_pos.clone(), Vec::new())
    };
    let trained = train(rows, &fit, opts)?;
    let held_truth: Vec<u32> = holdout.iter().map(|&p| rows.labels[p]).collect();
    let held = trained.top5(rows, &holdout);
    let mut results = Vec::new();
    for (i, &(lr, wd)) in trained.heads.iter().enumerate() {
        let ok = !trained.diverged[i];
        let top1 = (ok && !holdout.is_empty()).then(|| {
            let ranked = &held[i];
            Accuracy::from_rankings(&held_truth, ranked, &rows.classes).top1
        });
        results.push(HeadResult {
            lr,
            weight_decay: wd,
            final_loss: ok.then_some(trained.final_loss[i]),
            holdout_top1: top1,
        });
    }
    let diverged: Vec<String> = results
        .iter()
        .filter(|r| r.final_loss.is_none())
        .map(|r| format!("lr {} wd {}", r.lr, r.weight_decay))
        .collect();
    if diverged.len() == results.len() {
        return Err(Error::InvalidArgument(format!(
            "every head diverged (a non-finite loss or weights): {}; lower the learning rates",
            diverged.join(", ")
        )));
    }
    if !diverged.is_empty() {
        warnings.push(format!(
            "heads diverged (a non-finite loss or weights) and were not considered: {}",
            diverged.join(", ")
        ));
    }
    if holdout.is_empty() && results.len() > 1 {
        warnings
            .push("no held-out regions: the head with the lowest training loss is chosen".into());
    }
    let chosen = choose_head(&results).expect("at least one head converged");
    let truth: Vec<u32> = eval.iter().map(|&p| rows.labels[p]).collect();
    let ranked = trained.top5(rows, &eval).swap_remove(chosen);
    let accuracy = Accuracy::from_rankings(&truth, &ranked, &rows.classes);
    let report = LinearReport {
        selection: sel.clone(),
        options: opts.clone(),
        split,
        fit_regions: fit.len(),
        holdout_regions: holdout.len(),
        eval_regions: eval.len(),
        classes: rows.classes.clone(),
        heads: results,
        chosen,
        accuracy,
        state_bytes: trained.state_bytes,
        warnings,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((report, trained))
}
