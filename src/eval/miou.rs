//! Semantic-segmentation metrics exactly as mmseg computes them, and the bilinear upsampling
//! of patch logits to label-map size that comes before them.
//!
//! **Metrics** (mmseg's `intersect_and_union`, `total_intersect_and_union`,
//! `total_area_to_metrics`; 1.x `IoUMetric`, the same arithmetic): per image, pixels whose
//! label is 255 are dropped, prediction included; the intersection (pixels where prediction =
//! label), prediction and label areas are per-class histograms, union = prediction + label −
//! intersection; all four are summed over the images. Per class IoU = I / U and Acc = I /
//! label area, NaN where the divisor is 0; aAcc = ΣI / Σlabel; mIoU and mAcc are the means of
//! the per-class values that are not NaN (`np.nanmean`). So a class absent from labels and
//! predictions alike is left out of mIoU, and a class predicted but never labelled has IoU 0
//! (counted) and Acc NaN (left out of mAcc). Results are percentages, unrounded (mmseg prints
//! them rounded to 2 decimals); NaN is `None`.
//!
//! Two deliberate differences: counts are exact `u64` and ratios `f64` (mmseg 1.x sums the
//! float32 histograms of `torch.histc`, which round once a class passes 2²⁴ pixels), and a
//! label that is neither 255 nor a class after reduction, or a prediction that is not a class,
//! is an error (mmseg's `histc` silently drops it).
//!
//! `tests/python/miou_reference.py` is an independent numpy implementation of both halves.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The label value mmseg ignores.
pub const IGNORE: u8 = 255;

/// Per-class pixel counts summed over images: what mmseg's `total_intersect_and_union`
/// returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegAreas {
    /// Pixels where prediction and label are both the class.
    pub intersect: Vec<u64>,
    /// Pixels where either is the class (prediction + label − intersection).
    pub union: Vec<u64>,
    /// Pixels predicted as the class (those with an ignored label excluded).
    pub pred: Vec<u64>,
    /// Pixels labelled as the class.
    pub label: Vec<u64>,
}

/// mmseg's metrics, in percent; `None` where mmseg gives NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegMetrics {
    /// Mean IoU over the classes whose union is not empty.
    pub miou: Option<f64>,
    /// Pixel accuracy over all labelled pixels (`None` when there are none).
    pub aacc: Option<f64>,
    /// Mean per-class accuracy over the classes that have labelled pixels.
    pub macc: Option<f64>,
    /// Every class, in class order.
    pub classes: Vec<ClassIou>,
}

/// One class's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassIou {
    /// Class name.
    pub name: String,
    /// Intersection over union in percent; `None` when neither labelled nor predicted.
    pub iou: Option<f64>,
    /// Share of its labelled pixels predicted right, in percent; `None` when never labelled.
    pub acc: Option<f64>,
    /// Pixels labelled as it.
    pub label_pixels: u64,
    /// Pixels predicted as it (where the label is not ignored).
    pub pred_pixels: u64,
}

impl SegAreas {
    /// Empty counts for `nclass` classes.
    pub fn new(nclass: usize) -> SegAreas {
        SegAreas {
            intersect: vec![0; nclass],
            union: vec![0; nclass],
            pred: vec![0; nclass],
            label: vec![0; nclass],
        }
    }

    /// Number of classes.
    pub fn nclass(&self) -> usize {
        self.intersect.len()
    }

    /// Adds one image. `pred` holds predicted classes in the reduced numbering `0..nclass`;
    /// `label` the raw label map (the dataset's numbering), same length. With
    /// `reduce_zero_label` (as mmseg) label 0 becomes 255 and every other label but 255 is
    /// decremented. Label 255 is ignored. A label that is then neither 255 nor below `nclass`,
    /// a prediction not below `nclass`, or different lengths are an
    /// [`Error::InvalidArgument`] (the caller adds the file name); the counts are then
    /// unchanged.
    pub fn add(&mut self, pred: &[u8], label: &[u8], reduce_zero_label: bool) -> Result<()> {
        if pred.len() != label.len() {
            return Err(Error::InvalidArgument(format!(
                "the prediction has {} pixels but the label map {}",
                pred.len(),
                label.len()
            )));
        }
        let n = self.nclass();
        let mut hist = vec![[0u64; 3]; 256]; // per reduced value: label, pred, intersect
        let mut bad_pred = [0u64; 256];
        for (&p, &l) in pred.iter().zip(label) {
            bad_pred[p as usize] += u64::from(p as usize >= n);
            let l = match (reduce_zero_label, l) {
                (_, IGNORE) | (true, 0) => continue,
                (true, l) => l - 1,
                (false, l) => l,
            };
            hist[l as usize][0] += 1;
            // A prediction ≥ nclass is refused below, so counting it here is harmless.
            hist[p as usize][1] += 1;
            hist[l as usize][2] += u64::from(p == l);
        }
        if let Some(v) = (n..256).find(|&v| v != IGNORE as usize && hist[v][0] > 0) {
            let raw = if reduce_zero_label {
                format!("{} (reduced to {v} by reduce_zero_label)", v + 1)
            } else {
                v.to_string()
            };
            return Err(Error::InvalidArgument(format!(
                "label value {raw} in {} pixels is not a class: the class list has {n} classes \
                 (0..{}) and {IGNORE} is ignored",
                hist[v][0],
                n.saturating_sub(1)
            )));
        }
        if let Some(v) = (n..256).find(|&v| bad_pred[v] > 0) {
            return Err(Error::InvalidArgument(format!(
                "predicted class {v} in {} pixels: the class list has {n} classes",
                bad_pred[v]
            )));
        }
        for (k, h) in hist.iter().take(n).enumerate() {
            let [l, p, i] = *h;
            self.label[k] += l;
            self.pred[k] += p;
            self.intersect[k] += i;
            self.union[k] += p + l - i;
        }
        Ok(())
    }

    /// Adds another set's counts (of other images).
    ///
    /// # Panics
    /// When the two have different numbers of classes (a programming error).
    pub fn merge(&mut self, other: &SegAreas) {
        assert_eq!(
            self.nclass(),
            other.nclass(),
            "SegAreas::merge: counts of different class lists"
        );
        for (a, b) in [
            (&mut self.intersect, &other.intersect),
            (&mut self.union, &other.union),
            (&mut self.pred, &other.pred),
            (&mut self.label, &other.label),
        ] {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
    }

    /// mmseg's metrics, classes named by `classes` (one name per class).
    pub fn metrics(&self, classes: &[String]) -> Result<SegMetrics> {
        if classes.len() != self.nclass() {
            return Err(Error::InvalidArgument(format!(
                "{} class names for counts of {} classes",
                classes.len(),
                self.nclass()
            )));
        }
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let nanmean = |v: &[Option<f64>]| {
            let kept: Vec<f64> = v.iter().flatten().copied().collect();
            (!kept.is_empty()).then(|| 100.0 * kept.iter().sum::<f64>() / kept.len() as f64)
        };
        let iou: Vec<Option<f64>> = (0..self.nclass())
            .map(|k| ratio(self.intersect[k], self.union[k]))
            .collect();
        let acc: Vec<Option<f64>> = (0..self.nclass())
            .map(|k| ratio(self.intersect[k], self.label[k]))
            .collect();
        let total = |v: &[u64]| v.iter().sum::<u64>();
        Ok(SegMetrics {
            miou: nanmean(&iou),
            aacc: ratio(total(&self.intersect), total(&self.label)).map(|a| 100.0 * a),
            macc: nanmean(&acc),
            classes: (0..self.nclass())
                .map(|k| ClassIou {
                    name: classes[k].clone(),
                    iou: iou[k].map(|x| 100.0 * x),
                    acc: acc[k].map(|x| 100.0 * x),
                    label_pixels: self.label[k],
                    pred_pixels: self.pred[k],
                })
                .collect(),
        })
    }
}

/// One axis of PyTorch's bilinear resampling (`align_corners=False`, output size given): per
/// output index the two source indices and their weights.
struct Axis {
    i0: Vec<usize>,
    i1: Vec<usize>,
    w0: Vec<f32>,
    w1: Vec<f32>,
}

impl Axis {
    /// ATen's `compute_source_index_and_lambda`: identity when the sizes are equal; else
    /// scale = f32(n_in) / n_out (0 when n_out = 1, so a single output takes source 0), src =
    /// f32(f64(scale) · (d + 0.5) − 0.5) (the C++ promotes `d + 0.5` to double), negative src
    /// clamped to 0, i0 = min(⌊src⌋, n_in − 1), λ1 = clamp(src − i0, 0, 1) and λ0 = 1 − λ1 in
    /// f32, i1 = i0 + 1 unless i0 is the last index.
    fn new(n_in: usize, n_out: usize) -> Axis {
        let mut a = Axis {
            i0: Vec::with_capacity(n_out),
            i1: Vec::with_capacity(n_out),
            w0: Vec::with_capacity(n_out),
            w1: Vec::with_capacity(n_out),
        };
        let scale = if n_out > 1 {
            n_in as f32 / n_out as f32
        } else {
            0.0
        };
        for d in 0..n_out {
            let (i0, l1) = if n_in == n_out {
                (d, 0.0f32)
            } else {
                let src = (f64::from(scale) * (d as f64 + 0.5) - 0.5) as f32;
                let src = if src < 0.0 { 0.0 } else { src };
                let i0 = (src.floor() as usize).min(n_in - 1);
                (i0, (src - i0 as f32).clamp(0.0, 1.0))
            };
            a.i0.push(i0);
            a.i1.push(if i0 < n_in - 1 && n_in != n_out {
                i0 + 1
            } else {
                i0
            });
            a.w0.push(1.0 - l1);
            a.w1.push(l1);
        }
        a
    }
}

/// Horizontal pass of grid row `gy` into `buf` (out_w × c): for each output column and class
/// v[gy, x0]·wx0 + v[gy, x1]·wx1 in f32.
fn horizontal(logits: &[f32], gw: usize, c: usize, gy: usize, x: &Axis, buf: &mut [f32]) {
    let row = &logits[gy * gw * c..(gy + 1) * gw * c];
    for (ox, out) in buf.chunks_exact_mut(c).enumerate() {
        let (a, b) = (&row[x.i0[ox] * c..][..c], &row[x.i1[ox] * c..][..c]);
        let (w0, w1) = (x.w0[ox], x.w1[ox]);
        for k in 0..c {
            out[k] = a[k] * w0 + b[k] * w1;
        }
    }
}

/// The two horizontally interpolated grid rows an output row needs, kept while consecutive
/// output rows share them.
struct RowCache {
    rows: [Option<usize>; 2],
    bufs: [Vec<f32>; 2],
}

impl RowCache {
    /// The slots holding grid rows `y0` and `y1`, computing those missing.
    fn slots(&mut self, y0: usize, y1: usize, fill: impl Fn(usize, &mut [f32])) -> (usize, usize) {
        let s0 = match self.rows.iter().position(|&r| r == Some(y0)) {
            Some(s) => s,
            None => {
                let s = usize::from(self.rows[0] == Some(y1));
                fill(y0, &mut self.bufs[s]);
                self.rows[s] = Some(y0);
                s
            }
        };
        let s1 = match self.rows.iter().position(|&r| r == Some(y1)) {
            Some(s) => s,
            None => {
                let s = 1 - s0;
                fill(y1, &mut self.bufs[s]);
                self.rows[s] = Some(y1);
                s
            }
        };
        (s0, s1)
    }
}

/// Index of the largest value, as `torch.argmax`: the first maximum wins, and NaN counts as
/// larger than everything (the first NaN wins).
fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (k, v) in values.enumerate() {
        if k == 0 || (!best.1.is_nan() && (v.is_nan() || v > best.1)) {
            best = (k, v);
        }
    }
    best.0
}

/// Resizes logits to `out_w × out_h` as PyTorch's `F.interpolate(logits, size=(out_h, out_w),
/// mode="bilinear", align_corners=False)` (mmseg's `resize` of its segmentation logits), then
/// writes the argmax class of each output pixel into `out` (row-major, `out_w × out_h`): first
/// maximum wins on ties, NaN counts as the maximum (`torch.argmax`).
///
/// `logits` is `gh × gw × c` (grid rows, grid columns, classes), row-major, class last. Weights and indices per axis follow
/// ATen's `compute_source_index_and_lambda` (see `Axis::new`; an output size of 1 takes grid
/// row/column 0, as PyTorch does). Each value is computed in f32 in the order of PyTorch's
/// generic CPU kernel (`upsample_generic_Nd_kernel_impl`, `Interpolate<2, …, 2>`):
/// `(v[y0,x0]·wx0 + v[y0,x1]·wx1)·wy0 + (v[y1,x0]·wx0 + v[y1,x1]·wx1)·wy1`, each product and
/// sum rounded, no fused multiply-add (the source's order; whether a given PyTorch build's
/// compiler fuses them was not checked). That kernel serves contiguous NCHW float logits whose
/// output has out_h + out_w > 128 (any real label map); smaller outputs go through ATen's
/// channels-last kernel, which multiplies the weights first and can differ in the last bit.
/// mmseg 1.x takes the argmax of the resized logits, as here (0.x of their softmax, whose
/// rounding can turn near-ties into ties).
///
/// Memory: the two horizontally interpolated grid rows an output row needs (`out_w × c` f32
/// each) per band of output rows, bands in parallel; never `out_h × out_w × c`.
///
/// # Panics
/// On misuse, with a message: `gh`, `gw` or `c` zero, `c > 255` (classes are `u8`),
/// `logits.len() != gh·gw·c` or `out.len() != out_w·out_h`.
pub fn upsample_argmax(
    logits: &[f32],
    gh: usize,
    gw: usize,
    c: usize,
    out_w: usize,
    out_h: usize,
    out: &mut [u8],
) {
    assert!(
        gh > 0 && gw > 0 && c > 0,
        "upsample_argmax: empty grid {gh}×{gw}×{c}"
    );
    assert!(c <= 255, "upsample_argmax: {c} classes, at most 255 fit u8");
    assert_eq!(
        Some(logits.len()),
        gh.checked_mul(gw).and_then(|n| n.checked_mul(c)),
        "upsample_argmax: logits are not {gh}×{gw}×{c}"
    );
    assert_eq!(
        Some(out.len()),
        out_w.checked_mul(out_h),
        "upsample_argmax: output is not {out_w}×{out_h}"
    );
    upsample_with(
        logits,
        (gh, gw, c),
        (out_w, out_h),
        out,
        1,
        |a, b, wy0, wy1, o| o[0] = argmax(vertical(a, b, wy0, wy1)) as u8,
    );
}

/// The vertical pass for one output pixel: h0[k]·wy0 + h1[k]·wy1 per class, in f32.
fn vertical<'a>(
    h0: &'a [f32],
    h1: &'a [f32],
    wy0: f32,
    wy1: f32,
) -> impl Iterator<Item = f32> + 'a {
    h0.iter().zip(h1).map(move |(a, b)| a * wy0 + b * wy1)
}

/// The resampling loop of [`upsample_argmax`], writing `per` items per output pixel with
/// `pixel(h0, h1, wy0, wy1, items)`, where h0 and h1 are the pixel's `c` horizontally
/// interpolated values of its two grid rows. Sizes are checked by the caller.
fn upsample_with<T: Send>(
    logits: &[f32],
    (gh, gw, c): (usize, usize, usize),
    (out_w, out_h): (usize, usize),
    out: &mut [T],
    per: usize,
    pixel: impl Fn(&[f32], &[f32], f32, f32, &mut [T]) + Sync,
) {
    if out.is_empty() {
        return;
    }
    let (y, x) = (Axis::new(gh, out_h), Axis::new(gw, out_w));
    let band = out_h.div_ceil(4 * rayon::current_num_threads()).max(8);
    out.par_chunks_mut(band * out_w * per)
        .enumerate()
        .for_each(|(b, rows)| {
            let mut cache = RowCache {
                rows: [None, None],
                bufs: [vec![0.0; out_w * c], vec![0.0; out_w * c]],
            };
            for (r, items) in rows.chunks_exact_mut(out_w * per).enumerate() {
                let oy = b * band + r;
                let (s0, s1) = cache.slots(y.i0[oy], y.i1[oy], |gy, buf| {
                    horizontal(logits, gw, c, gy, &x, buf)
                });
                let (h0, h1) = (&cache.bufs[s0], &cache.bufs[s1]);
                for (ox, o) in items.chunks_exact_mut(per).enumerate() {
                    let (a, b) = (&h0[ox * c..][..c], &h1[ox * c..][..c]);
                    pixel(a, b, y.w0[oy], y.w1[oy], o);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        ["a", "b", "c", "d", "e"][..n]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Three images (rows of 5, 5 and 3), classes a..e, reduce_zero_label: raw labels 1, 2, 3
    /// are a, b, c; raw 0 and 255 are ignored. d is predicted only where the label is ignored
    /// (so absent); e is predicted but never labelled. Image C is ignored entirely.
    const CASE: [(&[u8], &[u8]); 3] = [
        (
            &[0, 0, 1, 1, 1, 0, 4, 1, 1, 1, 3, 3, 1, 0, 2, 1, 2, 0, 0, 3],
            &[
                1, 1, 1, 2, 2, 1, 1, 2, 2, 2, 0, 0, 2, 2, 255, 0, 0, 1, 1, 255,
            ],
        ),
        (
            &[2, 2, 0, 3, 3, 2, 4, 1, 2, 3, 0, 1, 1, 1, 4, 0, 0, 0, 2, 3],
            &[
                3, 3, 3, 255, 255, 3, 3, 2, 2, 0, 1, 1, 2, 2, 0, 1, 1, 1, 0, 0,
            ],
        ),
        (&[4, 4, 1, 0, 3, 2], &[0, 255, 0, 0, 0, 255]),
    ];

    #[test]
    fn metrics_match_hand_computed_and_numpy() {
        let mut areas = SegAreas::new(5);
        for (pred, label) in CASE {
            areas.add(pred, label, true).unwrap();
        }
        // By hand (valid pixels: A 14, B 14, C 0):
        //   a: I = 5 + 4, label = 7 + 5, pred = 6 + 5 → U = 11 + 12 − 9 = 14
        //   b: I = 6 + 3, label = 7 + 4, pred = 7 + 4 → U = 11 + 11 − 9 = 13
        //   c: I = 0 + 3, label = 0 + 5, pred = 0 + 4 → U = 4 + 5 − 3 = 6
        //   d: nothing (its predictions are all on ignored pixels) → IoU, Acc NaN
        //   e: pred = 1 + 1 (the one on B's ignored pixel does not count) → IoU 0, Acc NaN
        // (tests/python/miou_reference.py --cases prints the same.)
        assert_eq!(areas.intersect, [9, 9, 3, 0, 0]);
        assert_eq!(areas.union, [14, 13, 6, 0, 2]);
        assert_eq!(areas.pred, [11, 11, 4, 0, 2]);
        assert_eq!(areas.label, [12, 11, 5, 0, 0]);
        let m = areas.metrics(&names(5)).unwrap();
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-12;
        // mIoU = (9/14 + 9/13 + 3/6 + 0) / 4 = 167/364 (d left out, e counted).
        assert!(close(m.miou, 100.0 * 167.0 / 364.0)); // 45.879120879…
        assert!(close(m.miou, 45.87912087912088)); // numpy
                                                   // aAcc = (9 + 9 + 3) / (12 + 11 + 5) = 21/28.
        assert!(close(m.aacc, 75.0));
        // mAcc = (9/12 + 9/11 + 3/5) / 3 = 159/220 (d and e left out).
        assert!(close(m.macc, 100.0 * 159.0 / 220.0)); // 72.727…
        assert!(close(m.macc, 72.27272727272728)); // numpy
        let iou: Vec<Option<f64>> = m.classes.iter().map(|c| c.iou).collect();
        assert!(close(iou[0], 100.0 * 9.0 / 14.0) && close(iou[1], 100.0 * 9.0 / 13.0));
        assert_eq!((iou[2], iou[3], iou[4]), (Some(50.0), None, Some(0.0)));
        let acc: Vec<Option<f64>> = m.classes.iter().map(|c| c.acc).collect();
        assert_eq!(
            (acc[0], acc[2], acc[3], acc[4]),
            (Some(75.0), Some(60.0), None, None)
        );
        assert_eq!(m.classes[4].name, "e");
        assert_eq!(
            (m.classes[4].label_pixels, m.classes[4].pred_pixels),
            (0, 2)
        );

        // Images added to separate counts and merged give the same counts.
        let mut parts = SegAreas::new(5);
        parts.add(CASE[1].0, CASE[1].1, true).unwrap();
        let mut first = SegAreas::new(5);
        first.add(CASE[0].0, CASE[0].1, true).unwrap();
        first.merge(&parts);
        assert_eq!(first, areas);

        // NaN serialises as null and comes back as None.
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""iou":null"#), "{json}");
        assert_eq!(serde_json::from_str::<SegMetrics>(&json).unwrap(), m);
    }

    #[test]
    fn without_reduction_0_is_a_class_and_255_ignored() {
        let mut areas = SegAreas::new(2);
        areas.add(&[0, 1, 1, 0], &[0, 0, 255, 1], false).unwrap();
        assert_eq!(areas.intersect, [1, 0]);
        assert_eq!(areas.label, [2, 1]);
        assert_eq!(areas.pred, [2, 1]);
        assert_eq!(areas.union, [3, 2]);
        let empty = SegAreas::new(2).metrics(&names(2)).unwrap();
        assert_eq!((empty.miou, empty.aacc, empty.macc), (None, None, None));
    }

    #[test]
    fn values_mmseg_would_drop_are_errors_and_leave_counts_alone() {
        let mut areas = SegAreas::new(2);
        areas.add(&[0, 1], &[1, 2], true).unwrap();
        let before = areas.clone();
        let err = |r: Result<()>| r.unwrap_err().to_string();
        // Raw 4 → 3 after reduction: not one of 2 classes.
        let e = err(areas.add(&[0, 0, 1], &[1, 4, 4], true));
        assert!(
            e.contains("label value 4 (reduced to 3") && e.contains("2 pixels"),
            "{e}"
        );
        assert!(e.contains("2 classes"), "{e}");
        let e = err(areas.add(&[0, 0], &[1, 2], false));
        assert!(
            e.contains("label value 2 ") && e.contains("2 classes"),
            "{e}"
        );
        let e = err(areas.add(&[0, 2], &[1, 255], true));
        assert!(e.contains("predicted class 2"), "{e}");
        let e = err(areas.add(&[0, 1, 0], &[1, 2], true));
        assert!(e.contains("3 pixels") && e.contains("2"), "{e}");
        assert_eq!(areas, before);
        assert!(areas.metrics(&names(3)).is_err());
    }

    /// The interpolated values (not the argmax) of every pixel and class.
    fn upsample_values(
        logits: &[f32],
        (gh, gw, c): (usize, usize, usize),
        (out_w, out_h): (usize, usize),
    ) -> Vec<f32> {
        let mut out = vec![0.0; out_w * out_h * c];
        upsample_with(
            logits,
            (gh, gw, c),
            (out_w, out_h),
            &mut out,
            c,
            |a, b, w0, w1, o| {
                o.iter_mut()
                    .zip(vertical(a, b, w0, w1))
                    .for_each(|(o, v)| *o = v)
            },
        );
        out
    }

    fn classes(logits: &[f32], g: (usize, usize, usize), w: usize, h: usize) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; w * h];
        upsample_argmax(logits, g.0, g.1, g.2, w, h, &mut out);
        out.chunks(w).map(|r| r.to_vec()).collect()
    }

    /// tests/python/miou_reference.py --cases: the deterministic logits both build.
    fn generated(n: usize) -> Vec<f32> {
        (0..n as u64)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    }

    /// 2 × 3 grid, 3 classes (row-major, class last).
    const SMALL: [f32; 18] = [
        0.9, 0.1, -0.5, 0.1, 0.8, 0.3, -0.3, 0.2, 0.9, //
        0.2, 0.7, 0.6, 0.5, 0.4, 0.45, 1.1, -0.2, 0.3,
    ];

    #[test]
    fn upsampling_matches_numpy_bit_for_bit() {
        // numpy (float32, the same operation order), 5 × 7 × 3 values as bits.
        #[rustfmt::skip]
        const BITS: [u32; 105] = [
            0x3f666666, 0x3dcccccd, 0xbf000000, 0x3f492493, 0x3e4cccce, 0xbec57c58, 0x3ee2be2b,
            0x3f000000, 0xbd2f8af0, 0x3dcccccd, 0x3f4ccccd, 0x3e99999a, 0xbd924928, 0x3f0af8af,
            0x3f0ea0ea, 0xbe78af8e, 0x3e924924, 0x3f507507, 0xbe99999a, 0x3e4ccccd, 0x3f666666,
            0x3f547ae0, 0x3e23d70a, 0xbec7ae14, 0x3f3b3ee8, 0x3e7b9c88, 0xbe941d41, 0x3edf15f1,
            0x3f00bb3f, 0x3c52a6e4, 0x3e0f5c29, 0x3f428f5c, 0x3ea147ae, 0x3c3b3ee0, 0x3f00bb3e,
            0x3f0a3d70, 0xbdefe89b, 0x3e7b9c85, 0x3f43d70a, 0xbe23d70a, 0x3e23d70a, 0x3f570a3d,
            0x3f0ccccd, 0x3ecccccd, 0x3d4cccd0, 0x3f03a83b, 0x3edb6db8, 0x3dc57c58, 0x3ed07507,
            0x3f03a83a, 0x3e715f16, 0x3e99999a, 0x3f19999a, 0x3ec00000, 0x3eaf8af9, 0x3eaf8af8,
            0x3ef15f16, 0x3ec57c58, 0x3daf8af4, 0x3f115f16, 0x3ecccccd, 0x00000000, 0x3f19999a,
            0x3e8a3d70, 0x3f23d70a, 0x3efae149, 0x3e98231c, 0x3f1c8696, 0x3ef6db70, 0x3ec1d41d,
            0x3f069536, 0x3eeac9df, 0x3eeb851f, 0x3ee147ae, 0x3edeb852, 0x3f2c9dfe, 0x3e3b3ee4,
            0x3ece434a, 0x3f63796c, 0xbd982323, 0x3ebdce44, 0x3f75c291, 0xbe23d70b, 0x3eb851eb,
            0x3e4ccccd, 0x3f333333, 0x3f19999a, 0x3e78af8c, 0x3f283a84, 0x3f141d42, 0x3ebe2be4,
            0x3f075075, 0x3f03a83a, 0x3f000000, 0x3ecccccd, 0x3ee66666, 0x3f41d41e, 0x3e124923,
            0x3ec57c58, 0x3f81d41e, 0xbdea0ea6, 0x3ea4924a, 0x3f8ccccd, 0xbe4ccccd, 0x3e99999a,
        ];
        let bits: Vec<u32> = upsample_values(&SMALL, (2, 3, 3), (7, 5))
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(bits, BITS);
        assert_eq!(
            classes(&SMALL, (2, 3, 3), 7, 5),
            [
                [0, 0, 1, 1, 2, 2, 2],
                [0, 0, 1, 1, 2, 2, 2],
                [0, 0, 1, 1, 2, 2, 2],
                [1, 1, 1, 0, 0, 0, 0],
                [1, 1, 1, 0, 0, 0, 0],
            ]
        );
    }

    #[test]
    fn near_ties_follow_the_rounding_order_and_the_first_maximum() {
        // Classes 0 and 1 equal (0 must win), class 2 the transpose of class 0: equal to it in
        // exact arithmetic on the diagonal, where float32 rounding decides. numpy's map for
        // this order; the y-first order, the channels-last kernel's and float64 give others.
        let tie = [
            0.02, 0.02, 0.02, 0.9, 0.9, -0.71, //
            -0.71, -0.71, 0.9, 0.9, 0.9, 0.9,
        ];
        assert_eq!(
            classes(&tie, (2, 2, 3), 6, 6),
            [
                [0, 0, 0, 0, 0, 0],
                [2, 0, 0, 0, 0, 0],
                [2, 2, 2, 0, 0, 0],
                [2, 2, 2, 0, 0, 0],
                [2, 2, 2, 2, 0, 0],
                [2, 2, 2, 2, 0, 0],
            ]
        );
        assert_eq!(argmax([1.0, 3.0, 3.0].into_iter()), 1);
        assert_eq!(argmax([1.0, f32::NAN, 5.0, f32::NAN].into_iter()), 1);
        assert_eq!(argmax([f32::NEG_INFINITY; 2].into_iter()), 0);
    }

    #[test]
    fn one_by_one_grids_and_downsampling() {
        // A 1 × 1 grid fills everything with its argmax (a tie between 1 and 2: 1).
        let one = [0.25, 0.75, 0.75, -1.0];
        assert_eq!(classes(&one, (1, 1, 4), 4, 3), vec![vec![1; 4]; 3]);
        // Downsampling a 4 × 5 grid (numpy's maps); a single output row or column takes grid
        // row/column 0 (PyTorch's scale is 0 there), not the middle.
        let g = generated(4 * 5 * 3);
        assert_eq!(classes(&g, (4, 5, 3), 3, 2), [[1, 0, 1], [2, 2, 0]]);
        assert_eq!(classes(&g, (4, 5, 3), 1, 1), [[1]]);
        assert_eq!(classes(&g, (4, 5, 3), 1, 3), [[1], [0], [0]]);
        assert_eq!(
            classes(&g, (4, 5, 3), 1, 1)[0][0] as usize,
            argmax(g[..3].iter().copied())
        );
        // Empty outputs are fine.
        upsample_argmax(&g, 4, 5, 3, 0, 7, &mut []);
    }

    #[test]
    fn larger_maps_match_numpy_and_a_plain_per_pixel_loop() {
        let g = generated(7 * 9 * 6);
        let map: Vec<u8> = classes(&g, (7, 9, 6), 37, 50).concat();
        let mut hist = [0usize; 6];
        map.iter().for_each(|&k| hist[k as usize] += 1);
        let checksum: u64 = map
            .iter()
            .enumerate()
            .map(|(i, &k)| (i as u64 + 1) * u64::from(k))
            .sum();
        assert_eq!((hist, checksum), ([438, 311, 316, 319, 250, 216], 3853573)); // numpy

        // Band and row-cache boundaries: every pixel computed on its own, without the cache.
        let (gh, gw, c, ow, oh) = (13, 11, 5, 61, 203);
        let g = generated(gh * gw * c);
        let (y, x) = (Axis::new(gh, oh), Axis::new(gw, ow));
        let fast = classes(&g, (gh, gw, c), ow, oh).concat();
        for oy in 0..oh {
            for ox in 0..ow {
                let v = |gy: usize, gx: usize, k: usize| g[(gy * gw + gx) * c + k];
                let value = |k| {
                    let t0 =
                        v(y.i0[oy], x.i0[ox], k) * x.w0[ox] + v(y.i0[oy], x.i1[ox], k) * x.w1[ox];
                    let t1 =
                        v(y.i1[oy], x.i0[ox], k) * x.w0[ox] + v(y.i1[oy], x.i1[ox], k) * x.w1[ox];
                    t0 * y.w0[oy] + t1 * y.w1[oy]
                };
                assert_eq!(
                    fast[oy * ow + ox] as usize,
                    argmax((0..c).map(value)),
                    "({ox}, {oy})"
                );
            }
        }
    }

    #[test]
    fn axis_weights_are_pytorchs() {
        // 2 → 5: scale 0.4, src = 0.4 (d + 0.5) − 0.5 = −0.3 (→ 0), 0.1, 0.5, 0.9, 1.3.
        let a = Axis::new(2, 5);
        assert_eq!(a.i0, [0, 0, 0, 0, 1]);
        assert_eq!(a.i1, [1, 1, 1, 1, 1]);
        assert_eq!(a.w1[0], 0.0);
        assert_eq!(a.w1[2], 0.5);
        // The last: i0 = i1 = 1 and λ1 = 0.3 kept (both weights fall on the same value).
        assert!((a.w1[4] - 0.3).abs() < 1e-6 && (a.w0[4] - 0.7).abs() < 1e-6);
        let same = Axis::new(3, 3);
        assert_eq!(
            (same.i0, same.i1, same.w0),
            (vec![0, 1, 2], vec![0, 1, 2], vec![1.0; 3])
        );
    }
}
