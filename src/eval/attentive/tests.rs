//! Tests of the attentive probe: gradients against central differences and an independent
//! numpy model, the forward pass and AdamW against numpy, learning, reproducibility, refusals.

use super::model::*;
use super::*;

// Printed by tests/python/attentive_reference.py (float64, complex-step gradients).
const TRAIN_LOGITS: [f64; 12] = [
    -0.06795638582418681,
    -0.01347749387829917,
    0.13581949217014788,
    0.0927495774230691,
    -0.05559804360243742,
    0.010170195965545456,
    0.0069371251513978965,
    0.041026489177146304,
    0.0155626609390778,
    -0.15173031675028023,
    0.10804904830359036,
    0.11844765092522894,
];
const EVAL_LOGITS: [f64; 12] = [
    -0.09212986962418154,
    0.06809960152199436,
    0.09209687559906943,
    -0.08116398619183321,
    0.06574375247677594,
    0.08309175042182158,
    -0.08739919140469392,
    0.0716860493896778,
    0.08438121951042639,
    -0.09835626708725118,
    0.07561928458670006,
    0.09206468842371027,
];
const LOSS: f64 = 1.0965099691106652;
const GRAD_Q: [f64; 4] = [
    0.0297943556976759,
    -0.037391146399134635,
    0.04066719126327818,
    -0.0392439258818773,
];
const GRAD_WK: [f64; 16] = [
    0.01032023231131239,
    0.0051210815385375206,
    0.0010014665560069155,
    -0.0005949319519218856,
    0.0518166540850864,
    0.02571233889115576,
    0.00502824399151475,
    -0.002987082289137096,
    0.017401556230699736,
    0.008634959530627692,
    0.0016886321995306943,
    -0.0010031500747769472,
    -0.04250686226917231,
    -0.02109265577182854,
    -0.004124829720810252,
    0.0024503993492621394,
];
const GRAD_WV: [f64; 16] = [
    0.16458202367771396,
    0.002929332885781875,
    -0.05710428655608651,
    -0.014503795760440823,
    0.16913738913083093,
    -0.06101491160984167,
    -0.23662497097954996,
    -0.240839003770739,
    0.06036057712929024,
    0.09294734527990492,
    0.19809752186085647,
    0.2287345936271961,
    0.053688824623062084,
    0.14545470802846316,
    0.2067332277024876,
    0.06744523243921259,
];
const GRAD_BV: [f64; 4] = [
    1.666567767323179e-16,
    8.35045481196666e-17,
    1.4499617529278956e-16,
    5.217820243349214e-18,
];
const GRAD_W: [f64; 12] = [
    0.12385359764017552,
    -0.2813342509891024,
    0.3833807506280627,
    -0.20604004467782822,
    -0.10875007331584319,
    0.2221204245973771,
    -0.281037336712486,
    0.13896563898153796,
    -0.015103524324332393,
    0.05921382639172537,
    -0.10234341391557668,
    0.06707440569629021,
];
const GRAD_B: [f64; 3] = [
    0.0674673857479411,
    0.08275664232433584,
    -0.15022402807227694,
];
const ADAMW2_Q: [f64; 4] = [
    0.21958096107348243,
    1.5618215928501693,
    0.43811756779066396,
    -1.167910753706516,
];
const ADAMW2_WK: [f64; 16] = [
    0.6172194031633964,
    0.24152388414055737,
    -0.2799422859780092,
    -0.6423029961869093,
    -0.866874722338703,
    -0.561884587691456,
    -0.030429604047701498,
    0.5401838242832481,
    0.7015166894463508,
    0.6470944095571226,
    0.2541156845822283,
    -0.23199985248275598,
    -0.6078682789547863,
    -0.7404261439497601,
    -0.4888847403439072,
    -0.033038748692522026,
];
const ADAMW2_WV: [f64; 16] = [
    -0.006660472310149462,
    0.22072120135670242,
    0.34849218033133966,
    0.0807811927619215,
    -0.301915554813925,
    -0.1980284129870542,
    -0.064805072134799,
    0.19182404577463202,
    0.18428929698580795,
    0.1598925206196179,
    -0.05529436680477163,
    -0.2997379537596006,
    -0.37418223173967374,
    -0.2520888154212466,
    0.006470719812048033,
    0.19211344834409458,
];
const ADAMW2_BV: [f64; 4] = [
    0.09999999891217339,
    -0.041614684127021295,
    -0.0653643631592069,
    0.0960170284942103,
];
const ADAMW2_W: [f64; 12] = [
    0.12176563393407666,
    0.3472840642281557,
    0.12764569581358357,
    0.24854245183949342,
    0.12331378053799891,
    -0.18694859887885296,
    -0.08844889384402249,
    -0.34182456543874695,
    -0.15623112516617654,
    -0.2677193484308295,
    0.011422628081358036,
    -0.04278220308214786,
];
const ADAMW2_B: [f64; 3] = [
    -0.12984326669836344,
    -0.07972651560146898,
    0.16978253917069477,
];
const ADAMW2_RUNNING_MEAN: [f64; 4] = [
    0.06652174930874583,
    -0.04585583147620166,
    0.008353094171926418,
    0.00520438461331512,
];
const ADAMW2_RUNNING_VAR: [f64; 4] = [
    0.8111590366541565,
    0.8104279028505187,
    0.81032677965583,
    0.810552177045883,
];

const B: usize = 4;
const T: usize = 5;
const D: usize = 4;
const C: usize = 3;
const LABELS: [u32; B] = [0, 2, 1, 2];

/// The numpy script's parameters (the same formulas).
fn fixture_params() -> Params<f64> {
    let f = |n: usize, g: &dyn Fn(f64) -> f64| (0..n).map(|i| g(i as f64)).collect::<Vec<_>>();
    Params {
        query: f(D, &|i| 1.5 * (1.3 * i + 0.2).sin()),
        wk: f(D * D, &|i| 0.8 * (0.7 * i + 0.5).cos()),
        wv: f(D * D, &|i| 0.3 * (0.9 * i + 0.3).sin()),
        bv: f(D, &|i| 0.1 * (2.0 * i).cos()),
        w: f(C * D, &|i| 0.25 * (0.5 * i + 1.0).sin()),
        b: f(C, &|i| 0.05 * i - 0.03),
    }
}

/// The numpy script's tokens (B × T × D).
fn fixture_tokens() -> Vec<f64> {
    (0..B * T * D)
        .map(|n| {
            let n = n as f64;
            (0.37 * n + 0.1).sin() + 0.2 * (1.3 * n).cos()
        })
        .collect()
}

/// The numpy script's running statistics for evaluation mode.
fn fixture_running() -> (Vec<f64>, Vec<f64>) {
    let j = (0..D).map(|j| j as f64);
    (
        j.clone().map(|j| 0.2 * (1.1 * j).sin()).collect(),
        j.map(|j| 0.5 + (0.8 * j).cos().powi(2)).collect(),
    )
}

fn to_f32(p: &Params<f64>) -> Params<f32> {
    let c = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    Params {
        query: c(&p.query),
        wk: c(&p.wk),
        wv: c(&p.wv),
        bv: c(&p.bv),
        w: c(&p.w),
        b: c(&p.b),
    }
}

/// Training-mode logits (B × C) and the mean loss.
fn train_logits<R: Real>(p: &Params<R>, x: &[R]) -> (Vec<R>, f64) {
    let (d, c) = shape(p);
    let n = LABELS.len();
    let mut s = Scratch::new(n, x.len() / (n * d), d, c);
    forward_train(p, x, x.len() / (n * d), &mut s);
    let logits = s.logits.clone();
    let loss = cross_entropy(&mut s.logits, &LABELS) / n as f64;
    (logits, loss)
}

/// Evaluation-mode logits (B × C) with the given running statistics.
fn eval_logits<R: Real>(p: &Params<R>, x: &[R], mean: &[R], var: &[R]) -> Vec<R> {
    let (d, c) = shape(p);
    let t = x.len() / (B * d);
    let u = direction(p);
    let (mut attn, mut pooled) = (vec![R::ZERO; t], vec![R::ZERO; B * d]);
    for (xr, pr) in x.chunks(t * d).zip(pooled.chunks_mut(d)) {
        pool(xr, &u, &mut attn, pr);
    }
    let mut z = vec![R::ZERO; B * d];
    values(p, &pooled, &mut z);
    batch_norm_eval(&mut z, mean, var);
    let mut logits = vec![R::ZERO; B * c];
    head(p, &z, &mut logits);
    logits
}

fn analytic_gradient(p: &Params<f64>, x: &[f64]) -> (Params<f64>, f64) {
    let (d, c) = shape(p);
    let mut s = Scratch::new(B, x.len() / (B * d), d, c);
    let mut g = zeros(d, c);
    let (mut m, mut v) = (vec![0.0; d], vec![1.0; d]);
    let loss = batch_gradients(p, x, &LABELS, &mut s, &mut g, (&mut m, &mut v));
    (g, loss)
}

/// max |a − b| / max |b| over a group (max |b| floored at 1e-300).
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    diff / b.iter().map(|y| y.abs()).fold(1e-300, f64::max)
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn gradients_match_central_differences() {
    let p = fixture_params();
    let x = fixture_tokens();
    let (g, loss) = analytic_gradient(&p, &x);
    assert!((loss - train_logits(&p, &x).1).abs() < 1e-15);
    let h = 1e-5;
    for (k, name) in GROUPS.iter().enumerate() {
        let n = groups(&p)[k].len();
        let numeric: Vec<f64> = (0..n)
            .map(|i| {
                let mut plus = p.clone();
                groups_mut(&mut plus)[k][i] += h;
                let mut minus = p.clone();
                groups_mut(&mut minus)[k][i] -= h;
                (train_logits(&plus, &x).1 - train_logits(&minus, &x).1) / (2.0 * h)
            })
            .collect();
        let analytic = groups(&g)[k];
        if *name == "bv" {
            // Training-mode BatchNorm subtracts the batch mean: the loss ignores bv.
            let worst = analytic
                .iter()
                .chain(&numeric)
                .map(|v| v.abs())
                .fold(0.0, f64::max);
            eprintln!("bv: |gradient| ≤ {worst:.1e} (analytic and numeric; exactly 0 in theory)");
            assert!(worst < 1e-10, "{worst}");
            continue;
        }
        let err = rel_err(analytic, &numeric);
        eprintln!("{name}: max relative error vs central differences {err:.2e}");
        assert!(err < 1e-6, "{name}: {err}");
    }
}

#[test]
fn gradients_match_numpy_complex_step() {
    let (g, loss) = analytic_gradient(&fixture_params(), &fixture_tokens());
    assert!((loss - LOSS).abs() < 1e-14, "{loss} vs {LOSS}");
    let expected: [&[f64]; 6] = [&GRAD_Q, &GRAD_WK, &GRAD_WV, &GRAD_BV, &GRAD_W, &GRAD_B];
    for (k, name) in GROUPS.iter().enumerate() {
        let ours = groups(&g)[k];
        if *name == "bv" {
            assert!(max_abs_diff(ours, expected[k]) < 1e-14);
            continue;
        }
        let err = rel_err(ours, expected[k]);
        eprintln!("{name}: max relative error vs numpy complex step {err:.2e}");
        assert!(err < 1e-12, "{name}: {err}");
    }
}

#[test]
fn forward_matches_numpy() {
    let p = fixture_params();
    let x = fixture_tokens();
    let (mean, var) = fixture_running();
    let (logits, loss) = train_logits(&p, &x);
    let eval = eval_logits(&p, &x, &mean, &var);
    let (d_train, d_eval) = (
        max_abs_diff(&logits, &TRAIN_LOGITS),
        max_abs_diff(&eval, &EVAL_LOGITS),
    );
    eprintln!("float64: train logits ±{d_train:.1e}, eval logits ±{d_eval:.1e}");
    assert!(d_train < 1e-13 && d_eval < 1e-13);
    assert!((loss - LOSS).abs() < 1e-14);
    // The float32 path training uses.
    let p32 = to_f32(&p);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    let (l32, loss32) = train_logits(&p32, &x32);
    let e32 = eval_logits(&p32, &x32, &f32s(&mean), &f32s(&var));
    let (d_train, d_eval) = (
        max_abs_diff(&f(&l32), &TRAIN_LOGITS),
        max_abs_diff(&f(&e32), &EVAL_LOGITS),
    );
    eprintln!("float32: train logits ±{d_train:.1e}, eval logits ±{d_eval:.1e}");
    assert!(d_train < 1e-5 && d_eval < 1e-5 && (loss32 - LOSS).abs() < 1e-5);
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn adamw_matches_numpy() {
    let mut p = fixture_params();
    let x = fixture_tokens();
    let opts = AttentiveOptions {
        weight_decay: 0.05,
        ..AttentiveOptions::default()
    };
    let (d, c) = shape(&p);
    let mut s = Scratch::new(B, T, d, c);
    let mut g = zeros(d, c);
    let mut optim = Optim::new(Optimizer::AdamW, d, c);
    let (mut mean, mut var) = (vec![0.0; d], vec![1.0; d]);
    for _ in 0..2 {
        batch_gradients(&p, &x, &LABELS, &mut s, &mut g, (&mut mean, &mut var));
        optim.step(&mut p, &g, 0.05, &opts);
    }
    let expected: [&[f64]; 6] = [
        &ADAMW2_Q, &ADAMW2_WK, &ADAMW2_WV, &ADAMW2_BV, &ADAMW2_W, &ADAMW2_B,
    ];
    for (k, name) in GROUPS.iter().enumerate() {
        let diff = max_abs_diff(groups(&p)[k], expected[k]);
        eprintln!("{name} after two AdamW steps: ±{diff:.1e}");
        // bv's gradient is rounding noise (~1e-16), which Adam scales to ~1e-9 steps.
        assert!(diff < 1e-8, "{name}: {diff}");
    }
    // The running mean holds bv, and so its ~1e-9 noise.
    let (dm, dv) = (
        max_abs_diff(&mean, &ADAMW2_RUNNING_MEAN),
        max_abs_diff(&var, &ADAMW2_RUNNING_VAR),
    );
    eprintln!("running mean ±{dm:.1e}, running variance ±{dv:.1e}");
    assert!(dm < 1e-8 && dv < 1e-12, "{dm} {dv}");
}

#[test]
fn sgd_step_is_pytorchs() {
    let p0 = fixture_params();
    let g = analytic_gradient(&p0, &fixture_tokens()).0;
    let opts = AttentiveOptions {
        optimizer: Optimizer::Sgd,
        momentum: 0.9,
        weight_decay: 0.1,
        ..AttentiveOptions::default()
    };
    let (d, c) = shape(&p0);
    let mut optim = Optim::new(Optimizer::Sgd, d, c);
    let mut p = p0.clone();
    optim.step(&mut p, &g, 0.5, &opts);
    optim.step(&mut p, &g, 0.5, &opts);
    for (k, decayed) in DECAYED.into_iter().enumerate() {
        let wd = if decayed { 0.1 } else { 0.0 };
        for i in 0..groups(&p)[k].len() {
            // buf1 = g + wd p0; p1 = p0 − lr buf1; buf2 = 0.9 buf1 + g + wd p1; p2 = p1 − lr buf2.
            let (p0, g) = (groups(&p0)[k][i], groups(&g)[k][i]);
            let buf1 = g + wd * p0;
            let p1 = p0 - 0.5 * buf1;
            let p2 = p1 - 0.5 * (0.9 * buf1 + g + wd * p1);
            assert!((groups(&p)[k][i] - p2).abs() < 1e-14);
        }
    }
}

/// Regions of `t` tokens × `d` dimensions whose class is the position of the one token
/// carrying a marker (dimension 0 = 3): every token is its position's fixed embedding plus
/// noise, so the mean of a region's tokens is the same whatever its class (mean pooling is at
/// chance) while attending to the marked token reveals its position.
fn marked_tokens(n: usize, t: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut r = Rng::new(seed);
    let embed: Vec<f64> = (0..t * d).map(|_| r.normal()).collect();
    let mut data = Vec::with_capacity(n * t * d);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let marked = r.below(t);
        labels.push(marked as u32);
        for tok in 0..t {
            for j in 0..d {
                let base = if j == 0 { 0.0 } else { embed[tok * d + j] };
                let mark = if j == 0 && tok == marked { 3.0 } else { 0.0 };
                data.push((base + mark + 0.5 * r.normal()) as f32);
            }
        }
    }
    (data, labels)
}

fn top1(model: &AttentiveModel, rows: &dyn TokenRows, pos: &[usize]) -> f64 {
    let right = model
        .top5(rows, pos)
        .iter()
        .zip(pos)
        .filter(|(r, &p)| r[0] == rows.label(p))
        .count();
    100.0 * right as f64 / pos.len() as f64
}

fn small_opts() -> AttentiveOptions {
    AttentiveOptions {
        lrs: vec![3e-3, 1e-2],
        epochs: 40,
        batch_size: 32,
        ..AttentiveOptions::default()
    }
}

#[test]
fn attention_learns_what_mean_pooling_cannot() {
    let (t, d) = (4, 16);
    let (data, labels) = marked_tokens(800, t, d, 1);
    let rows = TokenMatrix::new(&data[..], t, d, labels.clone(), t).unwrap();
    let fit: Vec<usize> = (0..500).collect();
    let holdout: Vec<usize> = (500..600).collect();
    let test: Vec<usize> = (600..800).collect();
    let model = train(&rows, &fit, &holdout, &small_opts()).unwrap();
    let acc = top1(&model, &rows, &test);
    eprintln!("attentive probe: {:?}; test top-1 {acc:.1} %", model.runs);
    assert!(acc > 95.0, "{acc}");
    assert_eq!(model.runs.len(), 2);
    assert!(model.runs.iter().all(|r| r.final_loss.is_some()));
    // Mean-pooled tokens through the linear probe: chance (25 %) or near it.
    let pooled: Vec<f32> = data
        .chunks(t * d)
        .flat_map(|x| (0..d).map(move |j| x.chunks(d).map(|r| r[j]).sum::<f32>() / t as f32))
        .collect();
    let lin_rows = crate::eval::LabeledRows::from_matrix(&pooled, d, labels).unwrap();
    let lin_opts = crate::eval::linear::LinearOptions {
        epochs: 20,
        ..Default::default()
    };
    let lin = crate::eval::linear::train(&lin_rows, &fit, &lin_opts).unwrap();
    let ranked = lin.top5(&lin_rows, &test);
    let best = ranked
        .iter()
        .map(|head| {
            let right = head
                .iter()
                .zip(&test)
                .filter(|(r, &p)| r[0] == lin_rows.labels[p]);
            100.0 * right.count() as f64 / test.len() as f64
        })
        .fold(0.0, f64::max);
    eprintln!("linear probe on mean-pooled tokens: best head top-1 {best:.1} %");
    assert!(best < 45.0, "{best}");
}

#[test]
fn same_seed_same_bits_on_one_and_two_threads() {
    let (t, d) = (4, 40);
    let (data, labels) = marked_tokens(130, t, d, 2);
    let rows = TokenMatrix::new(data, t, d, labels, t).unwrap();
    let fit: Vec<usize> = (0..100).collect();
    let holdout: Vec<usize> = (100..130).collect();
    let opts = AttentiveOptions {
        epochs: 3,
        batch_size: 16,
        ..small_opts()
    };
    let run = |threads: usize, opts: &AttentiveOptions| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| train(&rows, &fit, &holdout, opts).unwrap())
    };
    let bits = |m: &AttentiveModel| {
        let mut v: Vec<u32> = groups(&m.params)
            .iter()
            .flat_map(|g| g.iter().map(|x| x.to_bits()))
            .collect();
        v.extend(
            m.running_mean
                .iter()
                .chain(&m.running_var)
                .map(|x| x.to_bits()),
        );
        v
    };
    let (a, b, c) = (run(1, &opts), run(2, &opts), run(2, &opts));
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(bits(&b), bits(&c));
    assert_eq!(a.runs[0].final_loss, b.runs[0].final_loss);
    let other = run(2, &AttentiveOptions { seed: 7, ..opts });
    assert_ne!(bits(&a), bits(&other));
}

#[test]
fn diverging_learning_rates_are_dropped() {
    let (t, d) = (4, 8);
    let (data, labels) = marked_tokens(60, t, d, 3);
    let rows = TokenMatrix::new(data, t, d, labels, t).unwrap();
    let fit: Vec<usize> = (0..50).collect();
    let holdout: Vec<usize> = (50..60).collect();
    let opts = AttentiveOptions {
        optimizer: Optimizer::Sgd,
        lrs: vec![1e30, 0.05],
        epochs: 3,
        batch_size: 10,
        ..AttentiveOptions::default()
    };
    let m = train(&rows, &fit, &holdout, &opts).unwrap();
    assert_eq!(m.runs[0].final_loss, None);
    assert_eq!(m.runs[0].holdout_top1, None);
    assert_eq!(m.chosen, 1);
    let all = AttentiveOptions {
        lrs: vec![1e30],
        ..opts
    };
    let err = train(&rows, &fit, &holdout, &all).unwrap_err().to_string();
    assert!(err.contains("every learning rate diverged"), "{err}");
}

#[test]
fn refusals() {
    let (t, d) = (3, 4);
    let (data, labels) = marked_tokens(20, t, d, 4);
    let rows = TokenMatrix::new(&data[..], t, d, labels.clone(), t).unwrap();
    let fit: Vec<usize> = (0..20).collect();
    let bad = |opts: AttentiveOptions, fit: &[usize]| {
        let e = train(&rows, fit, &[], &opts).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        e.to_string()
    };
    let ok = AttentiveOptions {
        epochs: 1,
        ..AttentiveOptions::default()
    };
    assert!(train(&rows, &fit, &[], &ok).is_ok());
    for opts in [
        AttentiveOptions {
            epochs: 0,
            ..ok.clone()
        },
        AttentiveOptions {
            lrs: vec![],
            ..ok.clone()
        },
        AttentiveOptions {
            lrs: vec![0.0],
            ..ok.clone()
        },
        AttentiveOptions {
            lrs: vec![1e-3, -1e-3],
            ..ok.clone()
        },
        AttentiveOptions {
            lrs: vec![f64::NAN],
            ..ok.clone()
        },
        AttentiveOptions {
            lrs: vec![f64::INFINITY],
            ..ok.clone()
        },
        AttentiveOptions {
            lrs: vec![1e300],
            ..ok.clone()
        },
        AttentiveOptions {
            batch_size: 1,
            ..ok.clone()
        },
        AttentiveOptions {
            weight_decay: -0.1,
            ..ok.clone()
        },
        AttentiveOptions {
            betas: (0.9, 1.0),
            ..ok.clone()
        },
        AttentiveOptions {
            adam_eps: 0.0,
            ..ok.clone()
        },
        AttentiveOptions {
            momentum: 1.0,
            ..ok.clone()
        },
    ] {
        assert!(bad(opts, &fit).contains("settings out of range"));
    }
    assert!(bad(ok.clone(), &[]).contains("no training region"));
    let one_class: Vec<usize> = fit.iter().copied().filter(|&p| labels[p] == 0).collect();
    assert!(bad(ok.clone(), &one_class).contains("two classes"));
    // Tokens or dimensions 0, one class in all.
    let empty = TokenMatrix::new(Vec::new(), 0, 4, vec![0, 1], 2);
    assert!(empty.is_err());
    struct Shape(usize, usize, usize);
    impl TokenRows for Shape {
        fn tokens(&self) -> usize {
            self.0
        }
        fn dim(&self) -> usize {
            self.1
        }
        fn nclass(&self) -> usize {
            self.2
        }
        fn load(&self, _: usize, out: &mut [f32]) {
            out.fill(0.0);
        }
        fn label(&self, pos: usize) -> u32 {
            (pos % 2) as u32
        }
    }
    for shape in [Shape(0, 4, 2), Shape(3, 0, 2), Shape(3, 4, 1)] {
        let e = train(&shape, &fit, &[], &ok).unwrap_err().to_string();
        assert!(
            e.contains("needs tokens, dimensions and two classes"),
            "{e}"
        );
    }
    // Labels past the classes, NaN tokens, state over the budget.
    let e = train(&Shape(3, 4, 2), &fit, &[], &ok);
    assert!(e.is_ok());
    let mut nan = data.clone();
    nan[5 * t * d + 2] = f32::NAN;
    let nan_rows = TokenMatrix::new(nan, t, d, labels.clone(), t).unwrap();
    let e = train(&nan_rows, &fit, &[], &ok).unwrap_err().to_string();
    assert!(e.contains("position 5 hold NaN"), "{e}");
    let tight = AttentiveOptions {
        memory_budget: 1000,
        ..ok.clone()
    };
    assert!(bad(tight, &fit).contains("over the budget"));
    struct BadLabel;
    impl TokenRows for BadLabel {
        fn tokens(&self) -> usize {
            2
        }
        fn dim(&self) -> usize {
            2
        }
        fn nclass(&self) -> usize {
            2
        }
        fn load(&self, _: usize, out: &mut [f32]) {
            out.fill(1.0);
        }
        fn label(&self, pos: usize) -> u32 {
            pos as u32
        }
    }
    let e = train(&BadLabel, &[0, 1, 2], &[], &ok)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 2, not below the 2 classes"), "{e}");
}
