//! The segmentation probe (`probe segment`): a linear 1×1 head on the frozen dense grids,
//! scored with mmseg's mIoU.
//!
//! - **Targets.** Every grid cell of a training image gets the label distribution of the
//!   label-map pixels it covers (pixel `(x, y)` of a `W × H` map falls in cell
//!   `(⌊y · rows / H⌋, ⌊x · cols / W⌋)`); with `reduce_zero_label`, 0 (background) and 255
//!   (ignore) are left out and class `v` becomes `v − 1`. Cells with no labelled pixel are not
//!   trained on.
//! - **Training.** The classification probe's trainer ([`super::linear::train`]): the cells
//!   standardised with the training cells' mean and variance (BatchNorm without affine, its
//!   statistics from train), softmax cross-entropy against the soft targets, SGD with momentum
//!   0.9 and a cosine schedule, every learning rate × weight decay a head of one pass. Cells are
//!   read from the memory-mapped float16 grid a batch at a time.
//! - **Choice.** A seeded 10 % of the training images is held out; the head with the best
//!   held-out mIoU is reported.
//! - **Prediction.** Per image: logits for every cell, upsampled bilinearly (PyTorch's
//!   `align_corners=False`, as mmseg's `resize`) to the label map's full size, argmax.
//! - **Metrics** ([`super::miou`]): mmseg's `intersect_and_union` summed over the evaluation
//!   images; mIoU, per-class IoU, aAcc and mAcc.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::linear::{
    choose_head, gemm_cols, train, HeadResult, LinearOptions, Target, TrainRows, Trained,
};
use super::miou::{upsample_argmax, SegAreas, SegMetrics};
use super::{probe_split, LabeledRows, ProbeSplit};
use crate::dataset::LabelMap;
use crate::error::{Error, Result};
use crate::store::dense::{DenseIndex, LabelSet};
use crate::store::IndexDir;

/// The label value every map uses for "not annotated".
const IGNORE: u8 = 255;

/// Settings of `probe segment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentOptions {
    /// Part or object label maps.
    pub labels: LabelSet,
    /// The trainer's settings (learning rates, weight decays, epochs, cells per batch, seed,
    /// held-out share of the training images, splits, memory budget).
    pub train: LinearOptions,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            labels: LabelSet::Parts,
            train: LinearOptions {
                epochs: 30,
                batch_size: 1024,
                ..LinearOptions::default()
            },
        }
    }
}

/// The result of `probe segment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentReport {
    /// The settings.
    pub options: SegmentOptions,
    /// Which images trained and which evaluated.
    pub split: ProbeSplit,
    /// Images the heads trained on, and their labelled cells.
    pub fit_images: usize,
    /// Labelled cells of the fit images.
    pub fit_cells: usize,
    /// Held-out training images that chose the head.
    pub holdout_images: usize,
    /// Evaluation images.
    pub eval_images: usize,
    /// Class names (background dropped: class k is label value k + 1).
    pub classes: Vec<String>,
    /// Every head (`holdout_top1` holds its held-out mIoU).
    pub heads: Vec<HeadResult>,
    /// Index into `heads` of the chosen one.
    pub chosen: usize,
    /// The chosen head on the evaluation images.
    pub metrics: SegMetrics,
    /// Bytes of the probe's state at its peak: the trainer's, the training cells' targets, and
    /// the scoring buffers of the largest image (its grid as float32, its logits, two
    /// upsampled rows, its label map and prediction) times the threads scoring at once.
    pub state_bytes: usize,
    /// Things a reader of the numbers should know.
    pub warnings: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// One image's labelled cells: grid rows, each cell's cumulative end in the targets, targets.
type ImageCells = (Vec<u64>, Vec<u32>, Vec<(u32, f32)>);

/// Labelled cells of some images, with their soft targets: what the trainer reads.
pub struct CellRows<'a> {
    dense: &'a DenseIndex,
    /// Classes (background dropped).
    pub nclass: usize,
    /// Row of each cell in the grid matrix.
    pub cells: Vec<u64>,
    /// Targets of cell i: `targets[starts[i]..starts[i + 1]]`.
    pub starts: Vec<u32>,
    /// `(class, weight)` pairs, each cell's weights summing to 1.
    pub targets: Vec<(u32, f32)>,
}

impl TrainRows for CellRows<'_> {
    fn dim(&self) -> usize {
        self.dense.info.dim
    }
    fn nclass(&self) -> usize {
        self.nclass
    }
    fn read(&self, p: usize, out: &mut [f32]) {
        self.dense.read_cells(self.cells[p] as usize, 1, out);
    }
    fn target(&self, p: usize) -> Target<'_> {
        Target::Soft(&self.targets[self.starts[p] as usize..self.starts[p + 1] as usize])
    }
}

/// The label value of `v` after mmseg's `reduce_zero_label`: `None` for background and
/// ignore.
fn reduced(v: u8) -> Option<usize> {
    (v != 0 && v != IGNORE).then(|| v as usize - 1)
}

/// Checks every value of `map` names a class (1..=nclass after reduction, or 0/255).
fn check_values(map: &LabelMap, nclass: usize, path: &str) -> Result<()> {
    if let Some(&v) = map
        .data
        .iter()
        .find(|&&v| v != IGNORE && v as usize > nclass)
    {
        return Err(Error::InvalidArgument(format!(
            "{path}: label value {v} has no class; the class list has {} entries (0 = \
             background, 1..={nclass}) and 255 means ignore",
            nclass + 1
        )));
    }
    Ok(())
}

impl<'a> CellRows<'a> {
    /// The labelled cells of `images` (indices into `dense.images`) with their label
    /// distributions in `set`'s maps, `nclass` classes after dropping background. Refuses a
    /// map with a value outside the class list and a grid holding NaN.
    pub fn build(
        dense: &'a DenseIndex,
        set: LabelSet,
        nclass: usize,
        images: &[usize],
    ) -> Result<Self> {
        let per_image: Vec<Result<ImageCells>> = images
            .par_iter()
            .map(|&n| {
                let map = dense.label_map(n, set)?.ok_or_else(|| {
                    Error::InvalidArgument(format!("{}: no label map", dense.images[n].image))
                })?;
                check_values(&map, nclass, &dense.images[n].image)?;
                dense.read_grid_checked(n, &mut Vec::new())?;
                Ok(cell_targets(dense, n, &map, nclass))
            })
            .collect();
        let mut rows = CellRows {
            dense,
            nclass,
            cells: Vec::new(),
            starts: vec![0],
            targets: Vec::new(),
        };
        for r in per_image {
            let (cells, counts, targets) = r?;
            let base = u32::try_from(rows.targets.len() + targets.len())
                .map(|_| rows.targets.len() as u32)
                .map_err(|_| {
                    Error::InvalidArgument(
                        "more than 4 billion cell targets: train on fewer images (--train)".into(),
                    )
                })?;
            rows.cells.extend(cells);
            rows.starts.extend(counts.iter().map(|&c| base + c));
            rows.targets.extend(targets);
        }
        Ok(rows)
    }

    /// Bytes of the cells' rows and targets.
    pub fn bytes(&self) -> usize {
        self.cells.len() * 8 + self.starts.len() * 4 + self.targets.len() * 8
    }
}

/// One image's labelled cells: their grid rows, the cumulative end of each cell's targets
/// (relative to the image), and the targets.
fn cell_targets(dense: &DenseIndex, n: usize, map: &LabelMap, nclass: usize) -> ImageCells {
    let im = &dense.images[n];
    let (rows, cols) = (im.rows as usize, im.cols as usize);
    let (w, h) = (map.width, map.height);
    let col_of: Vec<usize> = (0..w).map(|x| x * cols / w).collect();
    let mut hist = vec![0u32; rows * cols * nclass];
    for y in 0..h {
        let r = y * rows / h;
        for (x, &v) in map.data[y * w..(y + 1) * w].iter().enumerate() {
            if let Some(k) = reduced(v) {
                hist[(r * cols + col_of[x]) * nclass + k] += 1;
            }
        }
    }
    let (mut cells, mut ends, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    for (cell, hc) in hist.chunks(nclass).enumerate() {
        let total: u32 = hc.iter().sum();
        if total == 0 {
            continue;
        }
        for (k, &c) in hc.iter().enumerate().filter(|(_, &c)| c > 0) {
            targets.push((k as u32, (f64::from(c) / f64::from(total)) as f32));
        }
        cells.push(im.offset + cell as u64);
        ends.push(targets.len() as u32);
    }
    (cells, ends, targets)
}

/// A chosen head ready to predict: its standardisation and its D × C weights.
struct Head<'a> {
    trained: &'a Trained,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl<'a> Head<'a> {
    fn new(trained: &'a Trained, head: usize) -> Self {
        let (d, c) = (trained.dim, trained.nclass);
        let hc = trained.heads.len() * c;
        let mut weights = vec![0f32; d * c];
        for i in 0..d {
            weights[i * c..(i + 1) * c]
                .copy_from_slice(&trained.weights[i * hc + head * c..i * hc + (head + 1) * c]);
        }
        Head {
            trained,
            weights,
            bias: trained.bias[head * c..(head + 1) * c].to_vec(),
        }
    }

    /// Image `n`'s predicted classes (reduced numbering), `width × height`.
    fn predict(&self, dense: &DenseIndex, n: usize, (w, h): (usize, usize)) -> Result<Vec<u8>> {
        let im = &dense.images[n];
        let (d, c) = (self.trained.dim, self.trained.nclass);
        let mut x = Vec::new();
        dense.read_grid_checked(n, &mut x)?;
        for row in x.chunks_exact_mut(d) {
            for ((v, m), s) in row
                .iter_mut()
                .zip(&self.trained.mean)
                .zip(&self.trained.inv_std)
            {
                *v = (*v - m) * s;
            }
        }
        let cells = im.cells();
        let mut z: Vec<f32> = self.bias.iter().copied().cycle().take(cells * c).collect();
        gemm_cols(cells, d, c, &x, d as isize, 1, &self.weights, &mut z, 1.0);
        let mut out = vec![0u8; w * h];
        upsample_argmax(&z, im.rows as usize, im.cols as usize, c, w, h, &mut out);
        Ok(out)
    }
}

/// The images of `dense` that have a label map of `set`, as rows for [`probe_split`] (one
/// "class", so a derived split is a plain seeded share).
fn image_rows<'a>(dense: &DenseIndex, set: LabelSet) -> (Vec<usize>, LabeledRows<'a>) {
    let with: Vec<usize> = (0..dense.images.len())
        .filter(|&n| match set {
            LabelSet::Parts => dense.images[n].part_labels.is_some(),
            LabelSet::Objects => dense.images[n].object_labels.is_some(),
        })
        .collect();
    let rows = LabeledRows {
        data: crate::store::Rows::contiguous(&[], 1),
        dim: 1,
        rows: (0..with.len()).collect(),
        labels: vec![0; with.len()],
        classes: vec!["image".into()],
        splits: with
            .iter()
            .map(|&n| dense.images[n].split.clone())
            .collect(),
    };
    (with, rows)
}

/// Where predictions and overlays go.
#[derive(Debug, Clone, Default)]
pub struct SegmentOutputs {
    /// Every evaluated image's predicted label map (8-bit PNG, the dataset's numbering).
    pub predictions: Option<PathBuf>,
    /// Image | truth | prediction overlays for the first few evaluation images.
    pub overlays: Option<PathBuf>,
    /// How many overlays.
    pub overlay_count: usize,
    /// The dataset root the overlays read images from (set by [`segment`] from the manifest).
    pub dataset_root: PathBuf,
}

/// Runs the segmentation probe on `index`.
pub fn segment(
    index: &IndexDir,
    opts: &SegmentOptions,
    outputs: &SegmentOutputs,
) -> Result<SegmentReport> {
    let start = Instant::now();
    let dense = index.dense()?;
    check_outputs(outputs)?;
    let set = opts.labels;
    let names = dense.classes(set).ok_or_else(|| {
        let other = match set {
            LabelSet::Parts => LabelSet::Objects,
            LabelSet::Objects => LabelSet::Parts,
        };
        let format = &index.manifest().dataset.format;
        let why = if dense.classes(other).is_some() {
            format!(
                "its dataset ({format}) has {} maps only; try --labels {}",
                other.as_str(),
                other.as_str()
            )
        } else {
            format!(
                "its dataset's format ({format}) gives no whole-image label maps; segmentation \
                 reads the mmseg layout (img/ ann/ [obj/]), ADEChallengeData2016 or Pascal-Part \
                 .mat files (the ADE20K full release: `partlens convert --from ade20k` first)"
            )
        };
        Error::InvalidArgument(format!(
            "index {} has no {} label maps: {why}",
            index.path().display(),
            set.as_str(),
        ))
    })?;
    if names.len() < 3 {
        return Err(Error::InvalidArgument(format!(
            "the {} label maps have {} class(es) besides background; a classifier needs two or \
             more",
            set.as_str(),
            names.len().saturating_sub(1)
        )));
    }
    let nclass = names.len() - 1;
    let classes: Vec<String> = names[1..].to_vec();
    let t = &opts.train;
    let (with, rows) = image_rows(dense, set);
    let (train_pos, eval_pos, split) = probe_split(
        &rows,
        t.train.as_deref(),
        t.eval.as_deref(),
        t.seed,
        t.eval_fraction,
    )
    .map_err(|e| Error::InvalidArgument(e.to_string().replace("region", "image")))?;
    let mut warnings = Vec::new();
    if split.derived {
        warnings.push(split.derived_note());
    }
    // Held-out images: a seeded share of train (none when train has one image).
    let (fit_pos, held_pos) = if t.holdout > 0.0 && train_pos.len() >= 2 {
        super::stratified_split(&rows.labels, &train_pos, t.seed.wrapping_add(1), t.holdout)
    } else {
        (train_pos.clone(), Vec::new())
    };
    let img = |ps: &[usize]| -> Vec<usize> { ps.iter().map(|&p| with[p]).collect() };
    let (fit, held, eval) = (img(&fit_pos), img(&held_pos), img(&eval_pos));
    if eval.is_empty() || fit.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} training and {} evaluation images with {} maps: each needs one or more (name \
             the splits with --train / --eval)",
            fit.len() + held.len(),
            eval.len(),
            set.as_str()
        )));
    }
    let cells = CellRows::build(dense, set, nclass, &fit)?;
    if cells.cells.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the training images ({}) have no labelled pixel in their {} maps",
            split.train,
            set.as_str()
        )));
    }
    let mut seen = vec![false; nclass];
    for &(k, _) in &cells.targets {
        seen[k as usize] = true;
    }
    let unseen: Vec<&str> = (0..nclass)
        .filter(|&k| !seen[k])
        .map(|k| classes[k].as_str())
        .collect();
    if !unseen.is_empty() {
        warnings.push(format!(
            "{} of {nclass} classes have no labelled pixel in the training images and cannot be \
             learned: {}",
            unseen.len(),
            super::shorten(&unseen)
        ));
    }
    let all: Vec<usize> = (0..cells.cells.len()).collect();
    let trained = train(&cells, &all, t)?;
    // Every head on the held-out images.
    let mut results = Vec::new();
    for (h, &(lr, wd)) in trained.heads.iter().enumerate() {
        let ok = !trained.diverged[h];
        let miou = if ok && !held.is_empty() {
            let head = Head::new(&trained, h);
            score(dense, set, nclass, &head, &held, None)?
                .0
                .metrics(&classes)?
                .miou
        } else {
            None
        };
        results.push(HeadResult {
            lr,
            weight_decay: wd,
            final_loss: ok.then_some(trained.final_loss[h]),
            holdout_top1: miou,
        });
    }
    if results.iter().all(|r| r.final_loss.is_none()) {
        return Err(Error::InvalidArgument(
            "every head diverged (a non-finite loss or weights); lower the learning rates".into(),
        ));
    }
    let diverged: Vec<String> = results
        .iter()
        .filter(|r| r.final_loss.is_none())
        .map(|r| format!("lr {} wd {}", r.lr, r.weight_decay))
        .collect();
    if !diverged.is_empty() {
        warnings.push(format!(
            "heads diverged (a non-finite loss or weights) and were not considered: {}",
            diverged.join(", ")
        ));
    }
    if held.is_empty() && results.len() > 1 {
        warnings.push(
            "no held-out images (train has one): the head with the lowest training loss is chosen"
                .into(),
        );
    }
    let chosen = choose_head(&results).expect("at least one head converged");
    let head = Head::new(&trained, chosen);
    let outputs = SegmentOutputs {
        dataset_root: PathBuf::from(&index.manifest().dataset.path),
        ..outputs.clone()
    };
    let (areas, written) = score(dense, set, nclass, &head, &eval, Some(&outputs))?;
    if let Some(w) = written {
        warnings.extend(w);
    }
    let metrics = areas.metrics(&classes)?;
    Ok(SegmentReport {
        options: opts.clone(),
        split,
        fit_images: fit.len(),
        fit_cells: cells.cells.len(),
        holdout_images: held.len(),
        eval_images: eval.len(),
        classes,
        heads: results,
        chosen,
        metrics,
        state_bytes: trained.state_bytes
            + cells.bytes()
            + scoring_bytes(dense, nclass, held.iter().chain(&eval)),
        warnings,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Refuses, before any training, output folders that are in use or that coincide or nest
/// (each is staged and swapped in on its own: one inside the other could not be).
fn check_outputs(outputs: &SegmentOutputs) -> Result<()> {
    let dirs: Vec<&Path> = [&outputs.predictions, &outputs.overlays]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect();
    for d in &dirs {
        crate::files::check_absent_or_empty(d)?;
    }
    if let [a, b] = dirs[..] {
        let abs = |p: &Path| std::path::absolute(p).map_err(|e| Error::io(p, e));
        let (aa, ab) = (abs(a)?, abs(b)?);
        if aa.starts_with(&ab) || ab.starts_with(&aa) {
            return Err(Error::InvalidArgument(format!(
                "--predictions {} and --overlays {} must be two separate folders, neither \
                 inside the other",
                a.display(),
                b.display()
            )));
        }
    }
    Ok(())
}

/// Scoring memory: the largest image's buffers times the threads that score images at once.
fn scoring_bytes<'a>(
    dense: &DenseIndex,
    nclass: usize,
    images: impl Iterator<Item = &'a usize>,
) -> usize {
    let d = dense.info.dim;
    let per = images
        .map(|&n| {
            let im = &dense.images[n];
            let (cells, w, h) = (im.cells(), im.width as usize, im.height as usize);
            4 * cells * (d + nclass) + 2 * 4 * w * nclass + 2 * w * h
        })
        .max()
        .unwrap_or(0);
    per * rayon::current_num_threads()
}

/// Predicts `images` with `head` and sums mmseg's areas; with `outputs`, writes predictions
/// and overlays (staged, so a failure leaves nothing half-written) and returns its notes.
fn score(
    dense: &DenseIndex,
    set: LabelSet,
    nclass: usize,
    head: &Head<'_>,
    images: &[usize],
    outputs: Option<&SegmentOutputs>,
) -> Result<(SegAreas, Option<Vec<String>>)> {
    let out = super::segment_out::Writer::begin(dense, set, outputs)?;
    let per: Vec<Result<SegAreas>> = images
        .par_iter()
        .enumerate()
        .map(|(i, &n)| {
            let im = &dense.images[n];
            let map = dense
                .label_map(n, set)?
                .ok_or_else(|| Error::InvalidArgument(format!("{}: no label map", im.image)))?;
            check_values(&map, nclass, &im.image)?;
            let pred = head.predict(dense, n, (map.width, map.height))?;
            let mut a = SegAreas::new(nclass);
            a.add(&pred, &map.data, true)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", im.image)))?;
            if let Some(o) = &out {
                o.write(n, i, &pred, &map)?;
            }
            Ok(a)
        })
        .collect();
    let mut total = SegAreas::new(nclass);
    for a in per {
        total.merge(&a?);
    }
    if outputs.is_some() && total.label.iter().all(|&n| n == 0) {
        // Dropping the writer removes what it staged.
        return Err(Error::InvalidArgument(format!(
            "the {} evaluation images have no labelled pixel in their {} maps: nothing to score",
            images.len(),
            set.as_str()
        )));
    }
    let notes = match out {
        Some(o) => Some(o.commit()?),
        None => None,
    };
    Ok((total, notes))
}

/// Where a prediction of `image` goes under `dir`: named like its annotation (the image's own
/// name when the format has none), always `.png`. A path that could leave `dir` (absolute, as
/// files outside the dataset folder are recorded, or holding `..`, `.`, empty components or
/// backslashes) keeps only its file name, so every prediction stays inside `dir`.
pub fn prediction_path(dir: &Path, annotation: Option<&str>, image: &str) -> PathBuf {
    let rel = annotation.unwrap_or(image);
    let safe = !rel.is_empty()
        && !rel.contains('\\')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    let rel = if safe {
        Path::new(rel)
    } else {
        Path::new(rel.rsplit('/').next().unwrap_or_default())
    };
    let name = match rel.file_name() {
        Some(_) => rel.with_extension("png"),
        None => PathBuf::from("prediction.png"),
    };
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::prediction_path;
    use std::path::Path;

    #[test]
    fn predictions_are_named_like_annotations_and_never_leave_their_folder() {
        let d = Path::new("/out");
        let p = |a: Option<&str>, i: &str| prediction_path(d, a, i);
        assert_eq!(
            p(Some("ann/val/x.png"), "img/val/x.jpg"),
            d.join("ann/val/x.png")
        );
        assert_eq!(p(Some("a/b.mat"), "a/b.jpg"), d.join("a/b.png"));
        assert_eq!(p(None, "img/x.jpg"), d.join("img/x.png"));
        // Absolute (outside the dataset folder) or climbing paths keep their file name only.
        assert_eq!(p(Some("/data/ann/x.png"), "i.jpg"), d.join("x.png"));
        assert_eq!(p(Some("../../etc/y.png"), "i.jpg"), d.join("y.png"));
        assert_eq!(p(Some("a/./z.png"), "i.jpg"), d.join("z.png"));
        assert_eq!(p(Some("a/.."), "i.jpg"), d.join("prediction.png"));
        assert_eq!(p(Some(""), "i.jpg"), d.join("prediction.png"));
    }
}
