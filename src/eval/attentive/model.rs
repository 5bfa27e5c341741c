//! The attentive probe's arithmetic, generic over f32 (training) and f64 (the gradient
//! checks): the forward pass, the hand-derived backward pass (see the parent module's doc) and
//! the optimizers. Per-region work runs in parallel but writes only its own rows; every sum
//! over regions runs in region order; the GEMMs split their output by columns.

use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use rayon::prelude::*;

use super::{AttentiveOptions, Optimizer, Params, BN_EPS, BN_MOMENTUM, DECAYED};

/// The float arithmetic the model needs: f32 for training, f64 for the gradient checks.
pub(super) trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    const ZERO: Self;
    /// The smallest normal value: gradients below it are flushed to 0 (subnormal arithmetic
    /// is ~100× slower on x86; done here, not by a CPU flag, so every platform agrees).
    const TINY: Self;
    fn of(v: f64) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn f64(self) -> f64;
    /// matrixmultiply's gemm: C = A·B + beta·C with strides.
    ///
    /// # Safety
    /// The pointers must be valid for the shapes and strides given.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

macro_rules! real {
    ($t:ty, $gemm:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const TINY: Self = <$t>::MIN_POSITIVE;
            fn of(v: f64) -> Self {
                v as $t
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn f64(self) -> f64 {
                self as f64
            }
            unsafe fn gemm(
                m: usize,
                k: usize,
                n: usize,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                // SAFETY: forwarded from the caller's contract.
                unsafe { $gemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
    };
}
real!(f32, matrixmultiply::sgemm);
real!(f64, matrixmultiply::dgemm);

/// A raw pointer that may cross threads: each task writes disjoint columns.
#[derive(Clone, Copy)]
struct SendPtr<R>(*mut R);
// SAFETY: used only for disjoint column ranges of one buffer, joined before reuse.
unsafe impl<R> Send for SendPtr<R> {}
unsafe impl<R> Sync for SendPtr<R> {}

impl<R> SendPtr<R> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut R {
        self.0
    }
}

/// C (m × n, row-major) = A · B + beta · C, A and B given by (row, column) strides; the
/// columns of C are split across threads, so no sum depends on the thread count.
#[allow(clippy::too_many_arguments)]
fn gemm<R: Real>(
    (m, k, n): (usize, usize, usize),
    a: &[R],
    (rsa, csa): (usize, usize),
    b: &[R],
    (rsb, csb): (usize, usize),
    c: &mut [R],
    beta: R,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= m * n);
    if k > 0 {
        assert!((m - 1) * rsa + (k - 1) * csa < a.len());
        assert!((k - 1) * rsb + (n - 1) * csb < b.len());
    }
    let chunk = n.div_ceil(rayon::current_num_threads().max(1)).max(16);
    let cp = SendPtr(c.as_mut_ptr());
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|t| {
        let c0 = t * chunk;
        let w = chunk.min(n - c0);
        // SAFETY: the asserts above bound every element read; each task writes only columns
        // c0..c0 + w of c.
        unsafe {
            R::gemm(
                m,
                k,
                w,
                a.as_ptr(),
                rsa as isize,
                csa as isize,
                b.as_ptr().add(c0 * csb),
                rsb as isize,
                csb as isize,
                beta,
                cp.get().add(c0),
                n as isize,
                1,
            );
        }
    });
}

// Helpers on `Params` (free functions: `Real` is private and `Params` is not).

/// Parameters of D dimensions and C classes, all 0.
pub(super) fn zeros<R: Real>(d: usize, c: usize) -> Params<R> {
    Params {
        query: vec![R::ZERO; d],
        wk: vec![R::ZERO; d * d],
        wv: vec![R::ZERO; d * d],
        bv: vec![R::ZERO; d],
        w: vec![R::ZERO; c * d],
        b: vec![R::ZERO; c],
    }
}

/// The parameter groups, in [`super::GROUPS`] order.
pub(super) fn groups<R>(p: &Params<R>) -> [&[R]; 6] {
    [&p.query, &p.wk, &p.wv, &p.bv, &p.w, &p.b]
}

/// The parameter groups, mutable, in [`super::GROUPS`] order.
pub(super) fn groups_mut<R>(p: &mut Params<R>) -> [&mut [R]; 6] {
    [
        &mut p.query,
        &mut p.wk,
        &mut p.wv,
        &mut p.bv,
        &mut p.w,
        &mut p.b,
    ]
}

/// (D, C) of `p`.
pub(super) fn shape<R>(p: &Params<R>) -> (usize, usize) {
    (p.query.len(), p.b.len())
}

/// True when no parameter is NaN or infinite.
pub(super) fn all_finite<R: Real>(p: &Params<R>) -> bool {
    groups(p)
        .iter()
        .all(|g| g.iter().all(|v| v.f64().is_finite()))
}

/// u = Wkᵀ q / √D.
pub(super) fn direction<R: Real>(p: &Params<R>) -> Vec<R> {
    let d = p.query.len();
    let mut u = vec![R::ZERO; d];
    gemm((1, d, d), &p.query, (d, 1), &p.wk, (d, 1), &mut u, R::ZERO);
    let s = R::of(1.0 / (d as f64).sqrt());
    u.iter_mut().for_each(|v| *v *= s);
    u
}

/// One region's attention and pooled token: a = softmax(X u), p = Xᵀ a.
pub(super) fn pool<R: Real>(x: &[R], u: &[R], attn: &mut [R], pooled: &mut [R]) {
    let d = u.len();
    for (s, xt) in attn.iter_mut().zip(x.chunks(d)) {
        *s = xt.iter().zip(u).fold(R::ZERO, |acc, (&a, &b)| acc + a * b);
    }
    let max = attn
        .iter()
        .copied()
        .fold(attn[0], |m, v| if v > m { v } else { m });
    let mut sum = R::ZERO;
    for s in attn.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    pooled.iter_mut().for_each(|v| *v = R::ZERO);
    for (s, xt) in attn.iter_mut().zip(x.chunks(d)) {
        *s = *s / sum;
        for (p, &v) in pooled.iter_mut().zip(xt) {
            *p += *s * v;
        }
    }
}

/// A batch's activations and gradients (B regions).
pub(super) struct Scratch<R> {
    /// Attention, B × T.
    attn: Vec<R>,
    /// Gradient of the scores, B × T.
    dscore: Vec<R>,
    /// Pooled tokens P, B × D.
    pooled: Vec<R>,
    /// O, then Z in place, B × D.
    z: Vec<R>,
    /// Batch mean and biased variance of O, 1/√(var + ε), D each.
    mean: Vec<R>,
    var: Vec<R>,
    inv: Vec<R>,
    /// Logits, then their gradient in place, B × C.
    pub(super) logits: Vec<R>,
    /// G_Z, then G_O in place, B × D.
    gz: Vec<R>,
    /// G_P, then each region's du in place, B × D.
    gp: Vec<R>,
}

impl<R: Real> Scratch<R> {
    pub(super) fn new(bs: usize, t: usize, d: usize, c: usize) -> Scratch<R> {
        Scratch {
            attn: vec![R::ZERO; bs * t],
            dscore: vec![R::ZERO; bs * t],
            pooled: vec![R::ZERO; bs * d],
            z: vec![R::ZERO; bs * d],
            mean: vec![R::ZERO; d],
            var: vec![R::ZERO; d],
            inv: vec![R::ZERO; d],
            logits: vec![R::ZERO; bs * c],
            gz: vec![R::ZERO; bs * d],
            gp: vec![R::ZERO; bs * d],
        }
    }
}

/// Per-column sums of a row-major matrix `c` columns wide, in row order.
pub(super) fn column_sums<R: Real>(m: &[R], c: usize) -> Vec<R> {
    let mut s = vec![R::ZERO; c];
    for row in m.chunks(c) {
        for (a, &v) in s.iter_mut().zip(row) {
            *a += v;
        }
    }
    s
}

/// O = P Wvᵀ + bv (B × D).
pub(super) fn values<R: Real>(p: &Params<R>, pooled: &[R], o: &mut [R]) {
    let d = shape(p).0;
    for row in o.chunks_mut(d) {
        row.copy_from_slice(&p.bv);
    }
    gemm(
        (pooled.len() / d, d, d),
        pooled,
        (d, 1),
        &p.wv,
        (1, d),
        o,
        R::of(1.0),
    );
}

/// Logits = Z Wᵀ + b (B × C).
pub(super) fn head<R: Real>(p: &Params<R>, z: &[R], logits: &mut [R]) {
    let (d, c) = shape(p);
    for row in logits.chunks_mut(c) {
        row.copy_from_slice(&p.b);
    }
    gemm(
        (z.len() / d, d, c),
        z,
        (d, 1),
        &p.w,
        (1, d),
        logits,
        R::of(1.0),
    );
}

/// Evaluation-mode BatchNorm in place: (o − mean) / √(var + ε).
pub(super) fn batch_norm_eval<R: Real>(z: &mut [R], mean: &[R], var: &[R]) {
    let inv: Vec<R> = var
        .iter()
        .map(|&v| R::of(1.0) / (v + R::of(BN_EPS)).sqrt())
        .collect();
    for row in z.chunks_mut(mean.len()) {
        for ((v, &m), &s) in row.iter_mut().zip(mean).zip(&inv) {
            *v = (*v - m) * s;
        }
    }
}

/// The training-mode forward pass of a batch (`x`: B × T × D): attention, pooled tokens,
/// values, batch statistics, normalised values and logits, all kept in `s`.
pub(super) fn forward_train<R: Real>(p: &Params<R>, x: &[R], t: usize, s: &mut Scratch<R>) {
    let (d, c) = shape(p);
    let bs = x.len() / (t * d);
    let u = direction(p);
    x.par_chunks(t * d)
        .zip(s.attn[..bs * t].par_chunks_mut(t))
        .zip(s.pooled[..bs * d].par_chunks_mut(d))
        .for_each(|((xr, a), pr)| pool(xr, &u, a, pr));
    let z = &mut s.z[..bs * d];
    values(p, &s.pooled[..bs * d], z);
    // Batch mean and biased variance, summed in row order.
    let n = R::of(bs as f64);
    s.mean = column_sums(z, d).into_iter().map(|v| v / n).collect();
    s.var.iter_mut().for_each(|v| *v = R::ZERO);
    for row in z.chunks(d) {
        for ((v, &o), &m) in s.var.iter_mut().zip(row).zip(&s.mean) {
            *v += (o - m) * (o - m);
        }
    }
    s.var.iter_mut().for_each(|v| *v = *v / n);
    s.inv = s
        .var
        .iter()
        .map(|&v| R::of(1.0) / (v + R::of(BN_EPS)).sqrt())
        .collect();
    for row in z.chunks_mut(d) {
        for ((v, &m), &i) in row.iter_mut().zip(&s.mean).zip(&s.inv) {
            *v = (*v - m) * i;
        }
    }
    head(p, z, &mut s.logits[..bs * c]);
}

/// The backward pass of a batch after [`forward_train`] and [`cross_entropy`] (`s.logits`
/// holds G_L): the gradient of the mean loss with respect to every parameter, into `g`.
pub(super) fn backward<R: Real>(
    p: &Params<R>,
    x: &[R],
    t: usize,
    s: &mut Scratch<R>,
    g: &mut Params<R>,
) {
    let (d, c) = shape(p);
    let bs = x.len() / (t * d);
    let gl = &s.logits[..bs * c];
    let z = &s.z[..bs * d];
    // dW = G_Lᵀ Z, db = Σ_b G_L, G_Z = G_L W.
    gemm((c, bs, d), gl, (1, c), z, (d, 1), &mut g.w, R::ZERO);
    g.b = column_sums(gl, c);
    let gz = &mut s.gz[..bs * d];
    gemm((bs, c, d), gl, (c, 1), &p.w, (d, 1), gz, R::ZERO);
    // BatchNorm (training): G_O = (G_Z − mean G_Z − Z ⊙ mean(G_Z ⊙ Z)) / √(σ² + ε).
    let n = R::of(bs as f64);
    let m1: Vec<R> = column_sums(gz, d).into_iter().map(|v| v / n).collect();
    let mut m2 = vec![R::ZERO; d];
    for (gr, zr) in gz.chunks(d).zip(z.chunks(d)) {
        for ((a, &gv), &zv) in m2.iter_mut().zip(gr).zip(zr) {
            *a += gv * zv;
        }
    }
    m2.iter_mut().for_each(|v| *v = *v / n);
    for (gr, zr) in gz.chunks_mut(d).zip(z.chunks(d)) {
        for j in 0..d {
            gr[j] = (gr[j] - m1[j] - zr[j] * m2[j]) * s.inv[j];
        }
    }
    // dWv = G_Oᵀ P, dbv = Σ_b G_O, G_P = G_O Wv.
    let pooled = &s.pooled[..bs * d];
    gemm((d, bs, d), gz, (1, d), pooled, (d, 1), &mut g.wv, R::ZERO);
    g.bv = column_sums(gz, d);
    let gp = &mut s.gp[..bs * d];
    gemm((bs, d, d), gz, (d, 1), &p.wv, (d, 1), gp, R::ZERO);
    // Per region: g = X G_P[b], ds = a ⊙ (g − aᵀg), du_b = Xᵀ ds (over G_P's row).
    x.par_chunks(t * d)
        .zip(s.attn[..bs * t].par_chunks(t))
        .zip(s.dscore[..bs * t].par_chunks_mut(t))
        .zip(gp.par_chunks_mut(d))
        .for_each(|(((xr, a), ds), gr)| {
            for (e, xt) in ds.iter_mut().zip(xr.chunks(d)) {
                *e = xt
                    .iter()
                    .zip(gr.iter())
                    .fold(R::ZERO, |acc, (&u, &v)| acc + u * v);
            }
            let mean = ds.iter().zip(a).fold(R::ZERO, |acc, (&e, &w)| acc + e * w);
            for (e, &w) in ds.iter_mut().zip(a) {
                *e = w * (*e - mean);
            }
            gr.iter_mut().for_each(|v| *v = R::ZERO);
            for (&e, xt) in ds.iter().zip(xr.chunks(d)) {
                for (v, &xv) in gr.iter_mut().zip(xt) {
                    *v += e * xv;
                }
            }
        });
    // dU = Σ_b du_b (region order); u = Wkᵀq/√D: dq = Wk dU/√D, dWk = q dUᵀ/√D.
    let scale = R::of(1.0 / (d as f64).sqrt());
    let du: Vec<R> = column_sums(gp, d).into_iter().map(|v| v * scale).collect();
    gemm((d, d, 1), &p.wk, (d, 1), &du, (1, 1), &mut g.query, R::ZERO);
    g.wk.par_chunks_mut(d)
        .zip(p.query.par_iter())
        .for_each(|(row, &q)| {
            for (v, &e) in row.iter_mut().zip(&du) {
                *v = q * e;
            }
        });
}

/// One training step's gradients: the training-mode forward pass, the running statistics'
/// update, the cross-entropy and the backward pass. Returns the batch's mean loss.
pub(super) fn batch_gradients<R: Real>(
    p: &Params<R>,
    x: &[R],
    labels: &[u32],
    s: &mut Scratch<R>,
    g: &mut Params<R>,
    running: (&mut [R], &mut [R]),
) -> f64 {
    let (d, n) = (shape(p).0, labels.len());
    let t = x.len() / (n * d);
    forward_train(p, x, t, s);
    let (keep, mom) = (R::of(1.0 - BN_MOMENTUM), R::of(BN_MOMENTUM));
    let unbias = R::of(n as f64 / (n as f64 - 1.0));
    for j in 0..d {
        running.0[j] = keep * running.0[j] + mom * s.mean[j];
        running.1[j] = keep * running.1[j] + mom * s.var[j] * unbias;
    }
    let loss = cross_entropy(&mut s.logits[..n * shape(p).1], labels);
    backward(p, x, t, s, g);
    loss / n as f64
}

/// Softmax cross-entropy of each row of `logits` against `labels`: returns the summed loss
/// (float64) and turns `logits` into the gradient of the mean loss.
pub(super) fn cross_entropy<R: Real>(logits: &mut [R], labels: &[u32]) -> f64 {
    let c = logits.len() / labels.len();
    let inv_n = R::of(1.0 / labels.len() as f64);
    let mut total = 0f64;
    for (row, &y) in logits.chunks_mut(c).zip(labels) {
        let y = y as usize;
        let max = row
            .iter()
            .copied()
            .fold(row[0], |m, v| if v > m { v } else { m });
        let zy = row[y] - max;
        let mut sum = R::ZERO;
        for e in row.iter_mut() {
            *e = (*e - max).exp();
            sum += *e;
        }
        total += (sum.ln() - zy).f64();
        for e in row.iter_mut() {
            *e = *e / sum * inv_n;
            if *e < R::TINY {
                *e = R::ZERO;
            }
        }
        row[y] -= inv_n;
    }
    total
}

/// The optimizer's state: moments (AdamW: first and second; SGD: the momentum buffer in
/// `m`, `v` empty) and the steps taken.
pub(super) struct Optim<R> {
    kind: Optimizer,
    m: Params<R>,
    v: Params<R>,
    steps: u64,
}

/// Elements per parallel task of an update.
const UPDATE_CHUNK: usize = 1 << 14;

impl<R: Real> Optim<R> {
    pub(super) fn new(kind: Optimizer, d: usize, c: usize) -> Optim<R> {
        let v = match kind {
            Optimizer::AdamW => zeros(d, c),
            Optimizer::Sgd => zeros(0, 0),
        };
        Optim {
            kind,
            m: zeros(d, c),
            v,
            steps: 0,
        }
    }

    /// One update of `p` by gradient `g` at learning rate `lr` (PyTorch's formulas).
    pub(super) fn step(
        &mut self,
        p: &mut Params<R>,
        g: &Params<R>,
        lr: f64,
        opts: &AttentiveOptions,
    ) {
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2) = opts.betas;
        let wd = opts.weight_decay;
        let groups = groups_mut(p).into_iter().zip(groups(g)).zip(DECAYED);
        match self.kind {
            Optimizer::AdamW => {
                let step_size = R::of(lr / (1.0 - b1.powi(t)));
                let bc2 = R::of((1.0 - b2.powi(t)).sqrt());
                let (b1r, b2r) = (R::of(b1), R::of(b2));
                let (c1, c2, eps) = (R::of(1.0 - b1), R::of(1.0 - b2), R::of(opts.adam_eps));
                let moments = groups_mut(&mut self.m)
                    .into_iter()
                    .zip(groups_mut(&mut self.v));
                for (((pg, gg), decay), (mg, vg)) in groups.zip(moments) {
                    let keep = R::of(if decay { 1.0 - lr * wd } else { 1.0 });
                    pg.par_chunks_mut(UPDATE_CHUNK)
                        .zip(gg.par_chunks(UPDATE_CHUNK))
                        .zip(mg.par_chunks_mut(UPDATE_CHUNK))
                        .zip(vg.par_chunks_mut(UPDATE_CHUNK))
                        .for_each(|(((pc, gc), mc), vc)| {
                            for i in 0..pc.len() {
                                let gi = gc[i];
                                mc[i] = b1r * mc[i] + c1 * gi;
                                vc[i] = b2r * vc[i] + c2 * gi * gi;
                                let denom = vc[i].sqrt() / bc2 + eps;
                                pc[i] = pc[i] * keep - step_size * mc[i] / denom;
                            }
                        });
                }
            }
            Optimizer::Sgd => {
                let (mu, lr) = (R::of(opts.momentum), R::of(lr));
                for (((pg, gg), decay), mg) in groups.zip(groups_mut(&mut self.m)) {
                    let wd = R::of(if decay { wd } else { 0.0 });
                    pg.par_chunks_mut(UPDATE_CHUNK)
                        .zip(gg.par_chunks(UPDATE_CHUNK))
                        .zip(mg.par_chunks_mut(UPDATE_CHUNK))
                        .for_each(|((pc, gc), mc)| {
                            for i in 0..pc.len() {
                                mc[i] = mu * mc[i] + gc[i] + wd * pc[i];
                                pc[i] -= lr * mc[i];
                            }
                        });
                }
            }
        }
    }
}
