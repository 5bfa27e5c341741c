//! Dense features and the segmentation probe, each figure against a baseline measured in the
//! same run. Datasets are written by the library's synthetic generator (`dataset::synth`,
//! variation 1.0: the hard setting) and ingested with `ingest_with_encoder`; nothing is
//! asserted, every figure is printed.
//!
//! 1. **Dense ingest, images/s, against the encoder alone on the same windows.** A synthetic
//!    set (96 images of 256 px) ingested with `--dense` at the defaults (short side 448, stride
//!    half the window in whole cells, batch 32), for MobileNetV2 and the tiny ViT. The figure
//!    is images / `IngestReport::dense_seconds` (the dense pass only: the region pass before
//!    it is not counted). The baseline is `Encoder::embed_tokens` alone on pre-made window
//!    tensors of the same shape, the same count (`dense_windows`) and the same batches (the
//!    pass batches each image's windows separately, `batch_size` at a time, so the baseline
//!    does too): the images/s the encoder alone would allow. Ratio pipeline / encoder alone:
//!    1.0 means no cost beyond the encoder. The dense time is then split into the encoder (as
//!    timed inside the pass) and the rest (waiting for the loader thread, which decodes,
//!    resizes and cuts windows on rayon while the encoder runs, plus averaging tokens per cell
//!    and float16 writes); and, for the record, the loader's steps are timed on one thread per
//!    image (decode, bicubic resize, window tensors) to say where the rest goes.
//! 2. **Segmentation-probe epochs/s.** On the MobileNetV2 dense index from (1) (1,280 values
//!    per cell, 30 epochs; few labelled cells, as parts are small at variation 1.0) and on the
//!    larger tiny-ViT index of (3) (64 values per cell, many more labelled cells, 5 epochs):
//!    `segment` end to end with the default 5 learning rates (cell targets, training,
//!    held-out choice, evaluation). Then the training alone: `eval::linear::train` (the trainer
//!    `segment` calls) on the labelled cells of every `train` image, with the same soft targets
//!    `segment` builds (each cell's label distribution, background and ignore left out), read
//!    from the memory-mapped float16 grid; timed with E epochs and with 1, so that the per-epoch
//!    time (the difference over E − 1 epochs) leaves out the standardisation passes.
//!    Printed: epochs/s and labelled cells/s (cells × epochs / seconds). The baseline is the
//!    same algorithm in numpy, on the same cells: the float16 grid memory-mapped, the cells'
//!    rows gathered per batch of 1,024 in a seeded shuffle, standardised with the cells' mean
//!    and variance, logits of all 5 heads in one matrix multiply, softmax cross-entropy
//!    against the soft targets, one gradient matrix multiply, SGD with momentum 0.9 and a
//!    cosine schedule; each epoch timed, the median taken. That is the honest comparison: the
//!    same work per cell. scikit-learn's `SGDClassifier(loss='log_loss').partial_fit` on the
//!    same standardised cells is printed too, but it does other work (one head, one-vs-rest
//!    binary logistic, one sample per step, hard labels: each cell's majority class), so it
//!    is compared per head-cell (cells × heads / s), as a reference, not as the baseline.
//! 3. **Peak memory training on a dense matrix larger than a budget.** A tiny-ViT dense index
//!    (64 values per cell, float16) of 104 synthetic images of 512 px at short side 2,240,
//!    stride 224 (140 × 140 cells per image), so that `dense/grids.npy` is ~256 MB against a
//!    budget of 64 MB (the upscale only serves to make many cells cheaply). `segment` runs
//!    with `memory_budget` set to the budget and 3 epochs, while a thread samples the
//!    process's `RssAnon` (anonymous pages: the heap, not the mapped grid, whose pages count
//!    in `RssFile`) every 2 ms. Printed: peak anonymous growth against the grid file's size,
//!    against the probe's own `state_bytes` (trainer state, cell targets, scoring buffers) and against the
//!    budget, with the peak `RssFile` growth (the mapped grid's pages) for contrast. The heap
//!    freed by the ingest is handed back first (`malloc_trim`), or the probe would reuse it
//!    and show no growth at all.
//!
//! `cargo bench --bench dense` (a few minutes on 2 cores); `PARTLENS_BENCH_QUICK=1` shrinks
//! every size for a smoke run. The load average is printed: other work on the machine shows
//! in every timing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use partlens::dataset::synth::{generate, SynthOptions};
use partlens::dense::{plan, DenseOptions};
use partlens::eval::linear::{train, LinearOptions, Target, TrainRows};
use partlens::eval::segment::{segment, CellRows, SegmentOptions, SegmentOutputs};
use partlens::ingest::{ingest_with_encoder, IngestOptions, IngestReport};
use partlens::preprocess::{decode_rgb, resample::resize_bicubic_rgb8};
use partlens::setup::{self, SetupOptions};
use partlens::store::dense::LabelSet;
use partlens::store::NpyWriter;
use partlens::{Device, Encoder, EncoderOptions, IndexDir, MmsegDataset};
use serde_json::Value;

/// Sizes of one run.
struct Sizes {
    /// Images of the set of (1) and (2).
    images: usize,
    /// Epochs of (2).
    epochs: usize,
    /// Epochs of the numpy baseline.
    np_epochs: usize,
    /// Epochs of (2) on the index of (3).
    big_epochs: usize,
    /// Images of the set of (3).
    big_images: usize,
    /// Short side of (3)'s dense grids.
    big_size: usize,
    /// Budget of (3), bytes.
    budget: usize,
}

/// Regions (and dense windows) per inference batch: the ingest default.
const BATCH: usize = 32;

fn quick() -> bool {
    std::env::var("PARTLENS_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// A field of `/proc/self/status`, in kB.
fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Samples `RssAnon` and `RssFile` every 2 ms on its own thread; keeps the largest of each.
struct Peaks {
    stop: Arc<AtomicBool>,
    anon: Arc<AtomicU64>,
    file: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<u64>,
}

impl Peaks {
    fn start() -> Peaks {
        let stop = Arc::new(AtomicBool::new(false));
        let anon = Arc::new(AtomicU64::new(0));
        let file = Arc::new(AtomicU64::new(0));
        let (s, a, f) = (stop.clone(), anon.clone(), file.clone());
        let handle = std::thread::spawn(move || {
            let mut samples = 0;
            while !s.load(Ordering::Relaxed) {
                if let Some(kb) = status_kb("RssAnon") {
                    a.fetch_max(kb, Ordering::Relaxed);
                }
                if let Some(kb) = status_kb("RssFile") {
                    f.fetch_max(kb, Ordering::Relaxed);
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            samples
        });
        // Wait for the first sample, so that the thread's own stack is already counted.
        while anon.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        Peaks {
            stop,
            anon,
            file,
            handle,
        }
    }

    /// (peak RssAnon kB, peak RssFile kB, samples taken).
    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.handle.join().expect("sampler");
        let anon = status_kb("RssAnon").unwrap_or(0);
        let file = status_kb("RssFile").unwrap_or(0);
        (
            self.anon.load(Ordering::Relaxed).max(anon),
            self.file.load(Ordering::Relaxed).max(file),
            samples,
        )
    }
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mb(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn encoder(model: &Path) -> Encoder {
    let opts = EncoderOptions {
        device: Device::Cpu,
        ..EncoderOptions::default()
    };
    Encoder::load(model, &opts).expect("model")
}

/// Writes a synthetic set of `images` images of `size` px (variation 1.0) under `dir`.
fn synth(dir: &Path, images: usize, size: u32) -> MmsegDataset {
    let t = Instant::now();
    let s = generate(
        dir,
        &SynthOptions {
            images,
            seed: 0,
            size,
            variation: 1.0,
        },
    )
    .expect("synth");
    println!(
        "dense: synthetic set: {} images of {size} px, {} objects, {} parts (variation 1.0), \
         written in {:.1} s",
        s.images,
        s.objects,
        s.parts,
        t.elapsed().as_secs_f64()
    );
    MmsegDataset::open(dir).expect("open synth set")
}

fn ingest_dense(
    dataset: &MmsegDataset,
    enc: &Encoder,
    out: &Path,
    dense: DenseOptions,
) -> IngestReport {
    let mut o = IngestOptions::new(out);
    o.batch_size = BATCH;
    o.dense = Some(dense);
    ingest_with_encoder(dataset, enc, &o).expect("ingest --dense")
}

/// (1) for one encoder: dense ingest against the encoder alone.
fn bench_ingest(name: &str, enc: &Encoder, dataset: &MmsegDataset, out: &Path) {
    let r = ingest_dense(dataset, enc, out, DenseOptions::default());
    let info = r.manifest.dense.clone().expect("dense info");
    let images = info.images as usize;
    let index = IndexDir::open(out).expect("index");
    let dense = index.dense().expect("dense");
    // Every image's window count, from its plan (the pass's own arithmetic).
    let per_image: Vec<usize> = dense
        .images
        .iter()
        .map(|im| {
            plan(
                (im.width as usize, im.height as usize),
                info.size,
                info.stride,
                info.cell,
                info.window,
            )
            .expect("plan")
            .windows
            .len()
        })
        .collect();
    let planned: usize = per_image.iter().sum();
    assert_eq!(
        planned as u64, r.dense_windows,
        "the bench's windows are the pass's"
    );

    // The encoder alone: the same windows in the same batches, from tensors made beforehand.
    let len = enc.preprocessor().tensor_len();
    let tensors: Vec<f32> = (0..BATCH * len)
        .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
        .collect();
    let t = Instant::now();
    for &w in &per_image {
        let mut done = 0;
        while done < w {
            let n = BATCH.min(w - done);
            std::hint::black_box(enc.embed_tokens(&tensors[..n * len], n).expect("embed"));
            done += n;
        }
    }
    let alone_s = t.elapsed().as_secs_f64();

    let (dense_s, enc_s) = (r.dense_seconds, r.dense_encode_seconds);
    let rate = images as f64 / dense_s;
    let alone = images as f64 / alone_s;
    println!(
        "dense/ingest/{name}: {images} images → {} cells of {} values ({} × {} windows of {} px, \
         stride {}, short side {}; {} windows, {:.1} per image), grids {:.1} MB",
        info.cells,
        info.dim,
        info.window[0],
        info.window[1],
        info.cell,
        info.stride,
        info.size,
        r.dense_windows,
        r.dense_windows as f64 / images as f64,
        mb((info.cells as usize * info.dim * 2) as f64)
    );
    println!(
        "dense/ingest/{name}: dense pass {rate:.2} images/s ({dense_s:.2} s), encoder alone on \
         the same {} windows and batches {alone:.2} images/s ({alone_s:.2} s): ratio {:.3} \
         (1.0 = no cost beyond the encoder)",
        r.dense_windows,
        rate / alone
    );
    println!(
        "dense/ingest/{name}: split of the dense pass: encoder {enc_s:.2} s ({:.0} %; {:.2}× \
         the encoder alone, the loader competing for the cores), the rest {:.2} s ({:.0} %: \
         waiting for the loader, averaging tokens per cell, float16 writes, label maps); \
         region pass before it {:.2} s (not counted)",
        100.0 * enc_s / dense_s,
        enc_s / alone_s,
        dense_s - enc_s,
        100.0 * (dense_s - enc_s) / dense_s,
        r.seconds - dense_s
    );

    // The loader's steps on one thread, per image: where the rest goes.
    let pre = enc.preprocessor();
    let (th, tw) = pre.size;
    let (mut t_dec, mut t_res, mut t_win) = (0.0, 0.0, 0.0);
    let mut out = vec![0f32; len];
    let items = partlens::Dataset::items(dataset);
    for item in items {
        let t = Instant::now();
        let img = decode_rgb(&item.image_path).expect("decode");
        t_dec += t.elapsed().as_secs_f64();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let p = plan((w, h), info.size, info.stride, info.cell, info.window).expect("plan");
        let t = Instant::now();
        let rgb = resize_bicubic_rgb8(img.as_raw(), w, h, p.width, p.height);
        t_res += t.elapsed().as_secs_f64();
        let t = Instant::now();
        // As the pass cuts windows: (v / 255 − mean) / std per channel, CHW.
        let lut: Vec<[f32; 256]> = (0..3)
            .map(|c| std::array::from_fn(|v| (v as f32 / 255.0 - pre.mean[c]) / pre.std[c]))
            .collect();
        for &(x, y) in &p.windows {
            for r in 0..th {
                let row = &rgb[((y + r) * p.width + x) * 3..((y + r) * p.width + x + tw) * 3];
                for (c, table) in lut.iter().enumerate() {
                    let o = &mut out[c * th * tw + r * tw..c * th * tw + (r + 1) * tw];
                    for (k, v) in o.iter_mut().enumerate() {
                        *v = table[row[k * 3 + c] as usize];
                    }
                }
            }
            std::hint::black_box(&out);
        }
        t_win += t.elapsed().as_secs_f64();
    }
    let n = items.len() as f64;
    println!(
        "dense/ingest/{name}: the loader's steps on one thread, per image: decode {:.1} ms, \
         bicubic resize {:.1} ms, window tensors {:.1} ms; the encoder alone {:.1} ms per image",
        1e3 * t_dec / n,
        1e3 * t_res / n,
        1e3 * t_win / n,
        1e3 * alone_s / images as f64
    );
}

/// A 1-D little-endian int64 `.npy` file.
fn write_npy_i64(path: &Path, v: &[u64]) {
    let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    partlens::store::npy::write_raw(path, "<i8", &[v.len()], bytemuck::cast_slice(&v))
        .expect("write .npy");
}

/// The baselines of (2): numpy softmax SGD (the same algorithm) and sklearn's SGDClassifier.
/// Arguments: grids.npy, rows.npy (int64), targets.npy (cells × C float32), epochs, batch,
/// learning rates (comma separated). Prints one JSON line.
const BASELINE_PY: &str = r#"
import json, sys, time
import numpy as np
grids, rows_p, targets_p, epochs, bs, lrs = sys.argv[1:7]
epochs, bs = int(epochs), int(bs)
lrs = np.array([float(x) for x in lrs.split(',')], dtype=np.float32)
G = np.load(grids, mmap_mode='r')
rows = np.load(rows_p)
T = np.load(targets_p)
n, c, d, h = len(rows), T.shape[1], G.shape[1], len(lrs)
t0 = time.perf_counter()
s = np.zeros(d); s2 = np.zeros(d)
for i in range(0, n, 8192):
    x = G[rows[i:i + 8192]].astype(np.float64)
    s += x.sum(0); s2 += (x * x).sum(0)
mean = s / n
inv = (1.0 / np.sqrt(np.maximum(s2 / n - mean ** 2, 0) + 1e-6)).astype(np.float32)
mean = mean.astype(np.float32)
std_s = time.perf_counter() - t0
rng = np.random.default_rng(0)
W = np.tile((0.01 * rng.standard_normal((d, c))).astype(np.float32), (1, h))
b = np.zeros(h * c, np.float32); V = np.zeros_like(W); vb = np.zeros_like(b)
steps = epochs * ((n + bs - 1) // bs); step = 0
lr_col = np.repeat(lrs, c)
times = []
for e in range(epochs):
    t = time.perf_counter()
    order = rng.permutation(n)
    for i in range(0, n, bs):
        p = order[i:i + bs]; m = len(p)
        x = (G[rows[p]].astype(np.float32) - mean) * inv
        z = (x @ W + b).reshape(m, h, c)
        z -= z.max(2, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(2, keepdims=True)
        z -= T[p][:, None, :]
        z = z.reshape(m, h * c) / m
        g = x.T @ z
        scale = 0.5 * (1 + np.cos(np.pi * step / steps))
        V *= 0.9; V += g; W -= (scale * lr_col) * V
        vb *= 0.9; vb += z.sum(0); b -= (scale * lr_col) * vb
        step += 1
    times.append(time.perf_counter() - t)
out = {'cells': int(n), 'dim': int(d), 'classes': int(c), 'heads': int(h),
       'standardise_seconds': std_s, 'epoch_seconds': times}
from sklearn.linear_model import SGDClassifier
X = (G[rows].astype(np.float32) - mean) * inv
y = T.argmax(1)
clf = SGDClassifier(loss='log_loss', random_state=0)
t = time.perf_counter()
clf.partial_fit(X, y, classes=np.arange(c))
out['sklearn_epoch_seconds'] = time.perf_counter() - t
print(json.dumps(out))
"#;

fn python_baseline(args: &[String]) -> Value {
    let out = Command::new(setup::venv_python())
        .arg("-c")
        .arg(BASELINE_PY)
        .args(args)
        .output()
        .expect("start setup's Python");
    if !out.status.success() {
        panic!(
            "baseline failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("baseline output {line:?}: {e}"))
}

/// (2): segmentation-probe epochs/s on the index at `path`, `epochs` epochs (the numpy
/// baseline `np_epochs`).
fn bench_segment(name: &str, path: &Path, dir: &Path, epochs: usize, np_epochs: usize) {
    let index = IndexDir::open(path).expect("index");
    let dense = index.dense().expect("dense");
    let defaults = SegmentOptions::default();
    let opts = SegmentOptions {
        train: LinearOptions {
            epochs,
            ..defaults.train.clone()
        },
        ..defaults
    };
    let t = Instant::now();
    let rep = segment(&index, &opts, &SegmentOutputs::default()).expect("segment");
    let seg_s = t.elapsed().as_secs_f64();
    let chosen = &rep.heads[rep.chosen];
    println!(
        "dense/segment/{name}: {} fit images ({} labelled cells of {} values, {} classes), {} held out, \
         {} eval; {} heads × {} epochs, batch {}, {} threads",
        rep.fit_images,
        rep.fit_cells,
        dense.info.dim,
        rep.classes.len(),
        rep.holdout_images,
        rep.eval_images,
        rep.heads.len(),
        epochs,
        opts.train.batch_size,
        rayon::current_num_threads()
    );
    println!(
        "dense/segment/{name}: segment end to end {seg_s:.2} s: {:.2} epochs/s, {:.0} labelled cells/s \
         (targets, training, held-out choice and evaluation included); chosen lr {} → mIoU {}",
        epochs as f64 / seg_s,
        (rep.fit_cells * epochs) as f64 / seg_s,
        chosen.lr,
        rep.metrics
            .miou
            .map_or("n/a".into(), |m| format!("{m:.2} %"))
    );

    // Training alone, on the labelled cells of every train image.
    let train_images: Vec<usize> = (0..dense.images.len())
        .filter(|&n| {
            dense.images[n].split == rep.split.train && dense.images[n].part_labels.is_some()
        })
        .collect();
    let nclass = dense.classes(LabelSet::Parts).expect("part classes").len() - 1;
    let c = CellRows::build(dense, LabelSet::Parts, nclass, &train_images).expect("cells");
    let all: Vec<usize> = (0..c.cells.len()).collect();
    let time_train = |epochs: usize| {
        let o = LinearOptions {
            epochs,
            ..opts.train.clone()
        };
        let t = Instant::now();
        std::hint::black_box(train(&c, &all, &o).expect("train"));
        t.elapsed().as_secs_f64()
    };
    let t1 = time_train(1);
    let tn = time_train(epochs);
    let per_epoch = if epochs > 1 {
        (tn - t1) / (epochs - 1) as f64
    } else {
        t1
    };
    let n = c.cells.len();
    println!(
        "dense/segment/{name}: trainer alone on the {n} labelled cells of every {} image: {} epochs \
         {tn:.2} s, 1 epoch {t1:.2} s → {per_epoch:.3} s per epoch: {:.2} epochs/s, {:.0} \
         labelled cells/s ({} heads each)",
        rep.split.train,
        epochs,
        1.0 / per_epoch,
        n as f64 / per_epoch,
        opts.train.lrs.len()
    );

    // The baselines on the same cells.
    write_npy_i64(&dir.join("rows.npy"), &c.cells);
    let mut w = NpyWriter::create(dir.join("targets.npy"), nclass).expect("targets.npy");
    let mut row = vec![0f32; nclass];
    for p in 0..n {
        row.iter_mut().for_each(|v| *v = 0.0);
        if let Target::Soft(t) = c.target(p) {
            for &(k, v) in t {
                row[k as usize] = v;
            }
        }
        w.append(&row).expect("targets.npy");
    }
    w.finish().expect("targets.npy");
    let arg = |p: PathBuf| p.to_str().expect("UTF-8 path").to_string();
    let lrs: Vec<String> = opts.train.lrs.iter().map(|l| l.to_string()).collect();
    let py = python_baseline(&[
        arg(path.join("dense/grids.npy")),
        arg(dir.join("rows.npy")),
        arg(dir.join("targets.npy")),
        np_epochs.to_string(),
        opts.train.batch_size.to_string(),
        lrs.join(","),
    ]);
    let np_epochs: Vec<f64> = py["epoch_seconds"]
        .as_array()
        .expect("epoch_seconds")
        .iter()
        .map(|v| v.as_f64().expect("seconds"))
        .collect();
    let np_epoch = median(np_epochs.clone());
    println!(
        "dense/segment/{name}: numpy softmax SGD (same cells, {} heads, batch {}, soft targets, gather \
         from the float16 map): {:.3} s per epoch (median of {}; standardising {:.2} s once): \
         {:.2} epochs/s, {:.0} labelled cells/s",
        py["heads"],
        opts.train.batch_size,
        np_epoch,
        np_epochs.len(),
        py["standardise_seconds"].as_f64().unwrap_or(f64::NAN),
        1.0 / np_epoch,
        n as f64 / np_epoch
    );
    println!(
        "dense/segment/{name}: ratio numpy epoch ({np_epoch:.3} s) / partlens trainer epoch \
         ({per_epoch:.3} s) = {:.2}×",
        np_epoch / per_epoch
    );
    let sk = py["sklearn_epoch_seconds"].as_f64().unwrap_or(f64::NAN);
    let heads = opts.train.lrs.len() as f64;
    println!(
        "dense/segment/{name}: reference, not the same work: sklearn SGDClassifier(log_loss) \
         partial_fit, one epoch, one head (one-vs-rest, 1 cell per step, hard labels): \
         {sk:.3} s, {:.0} head-cells/s; partlens {:.0} head-cells/s ({:.1}×)",
        n as f64 / sk,
        n as f64 * heads / per_epoch,
        (n as f64 * heads / per_epoch) / (n as f64 / sk)
    );
}

/// (3): peak memory of `segment` on a dense matrix larger than the budget.
fn bench_memory(dir: &Path, s: &Sizes) -> PathBuf {
    let dataset = synth(&dir.join("big"), s.big_images, 512);
    let enc = encoder(&setup::vit_tiny_path());
    let out = dir.join("big_index");
    let r = ingest_dense(
        &dataset,
        &enc,
        &out,
        DenseOptions {
            size: s.big_size,
            stride: Some(224),
        },
    );
    drop(enc);
    let info = r.manifest.dense.clone().expect("dense info");
    let grid_bytes = std::fs::metadata(out.join("dense/grids.npy"))
        .expect("grids.npy")
        .len() as f64;
    println!(
        "dense/memory: tiny ViT index: {} images → {} cells of {} values (short side {}, stride \
         {}): dense/grids.npy {:.1} MB, {:.1}× the budget of {:.0} MB; ingest {:.1} s (dense \
         pass {:.1} s)",
        info.images,
        info.cells,
        info.dim,
        info.size,
        info.stride,
        mb(grid_bytes),
        grid_bytes / s.budget as f64,
        mb(s.budget as f64),
        r.seconds,
        r.dense_seconds
    );
    let index = IndexDir::open(&out).expect("index");
    index.dense().expect("dense");
    let defaults = SegmentOptions::default();
    let opts = SegmentOptions {
        train: LinearOptions {
            epochs: 3,
            memory_budget: s.budget,
            ..defaults.train.clone()
        },
        ..defaults
    };
    rayon::broadcast(|_| ());
    // Hand the heap freed by the ingest back to the system first: otherwise the probe reuses
    // it and its growth does not show in RssAnon.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; nothing else is running.
    unsafe {
        libc::malloc_trim(0);
    }
    let peaks = Peaks::start();
    let anon_before = status_kb("RssAnon").unwrap_or(0);
    let file_before = status_kb("RssFile").unwrap_or(0);
    let t = Instant::now();
    let rep = segment(&index, &opts, &SegmentOutputs::default()).expect("segment");
    let seg_s = t.elapsed().as_secs_f64();
    let (anon_peak, file_peak, samples) = peaks.finish();
    let anon = (anon_peak.saturating_sub(anon_before) * 1024) as f64;
    let file = (file_peak.saturating_sub(file_before) * 1024) as f64;
    println!(
        "dense/memory: segment ({} fit images, {} labelled cells, {} heads × 3 epochs, budget \
         {:.0} MB) in {seg_s:.1} s; probe state_bytes {:.1} MB (trainer, cell targets, scoring buffers)",
        rep.fit_images,
        rep.fit_cells,
        rep.heads.len(),
        mb(s.budget as f64),
        mb(rep.state_bytes as f64)
    );
    println!(
        "dense/memory: peak anonymous growth {:.1} MB (RssAnon peak − before, {samples} samples \
         at 2 ms) = {:.3}× the grid file ({:.1} MB), {:.2}× state_bytes; {} the {:.0} MB budget; \
         RssAnon before {:.1} MB (after malloc_trim); peak RssFile growth {:.1} MB (the mapped \
         grid's pages, for contrast; RssFile before {:.1} MB)",
        mb(anon),
        anon / grid_bytes,
        mb(grid_bytes),
        anon / rep.state_bytes as f64,
        if anon <= s.budget as f64 {
            "within"
        } else {
            "OVER"
        },
        mb(s.budget as f64),
        anon_before as f64 / 1024.0,
        mb(file),
        file_before as f64 / 1024.0
    );
    out
}

fn main() {
    let quick = quick();
    let s = if quick {
        Sizes {
            images: 10,
            epochs: 3,
            np_epochs: 1,
            big_epochs: 2,
            big_images: 12,
            big_size: 1120,
            budget: 4 << 20,
        }
    } else {
        Sizes {
            images: 96,
            epochs: 30,
            np_epochs: 3,
            big_epochs: 5,
            big_images: 104,
            big_size: 2240,
            budget: 64 << 20,
        }
    };
    setup::ensure(&SetupOptions {
        test_tools: true,
        ..SetupOptions::default()
    })
    .expect("partlens setup --test-tools (scikit-learn)");
    let t = Instant::now();
    println!(
        "dense: {} CPUs, load average {}{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        if quick { " (PARTLENS_BENCH_QUICK)" } else { "" }
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let dataset = synth(&d.join("set"), s.images, 256);
    let mobilenet = d.join("mobilenet_index");
    bench_ingest(
        "mobilenet_v2",
        &encoder(&setup::default_model_path()),
        &dataset,
        &mobilenet,
    );
    bench_ingest(
        "vit_tiny",
        &encoder(&setup::vit_tiny_path()),
        &dataset,
        &d.join("vit_index"),
    );
    bench_segment("mobilenet_v2", &mobilenet, d, s.epochs, s.np_epochs);
    let big = bench_memory(d, &s);
    bench_segment("vit_tiny_big", &big, d, s.big_epochs, s.np_epochs);
    println!(
        "dense: done in {:.0} s; load average {}",
        t.elapsed().as_secs_f64(),
        loadavg()
    );
}
