//! What `probe segment` writes besides its numbers: every evaluated image's predicted label
//! map (`--predictions`) and image | truth | prediction overlays (`--overlays`). Both are
//! built in a staging folder beside the target and swapped in only when the run succeeds, so a
//! failed run leaves nothing half-written; a target folder that exists must be empty.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use super::segment::{prediction_path, SegmentOutputs};
use crate::dataset::LabelMap;
use crate::error::{Error, IoContext, Result};
use crate::files::StagedDir;
use crate::store::dense::{DenseIndex, LabelSet};

/// The staged output folders of one run.
pub(crate) struct Writer<'a> {
    dense: &'a DenseIndex,
    set: LabelSet,
    predictions: Option<StagedDir>,
    overlays: Option<StagedDir>,
    overlay_count: usize,
    root: PathBuf,
    notes: std::sync::Mutex<Vec<String>>,
    /// Prediction files written so far, and by which image: two images whose annotations
    /// share a name would otherwise overwrite each other's prediction silently.
    written: std::sync::Mutex<std::collections::HashMap<PathBuf, usize>>,
}

fn stage(dir: &Option<PathBuf>, what: &str) -> Result<Option<StagedDir>> {
    let Some(d) = dir else { return Ok(None) };
    crate::files::check_absent_or_empty(d)?;
    Ok(Some(StagedDir::begin(d, what)?))
}

/// A distinct, stable colour for class `k` (reduced numbering): hues a golden angle apart.
pub fn class_colour(k: usize) -> [u8; 3] {
    let h = (k as f64 * 0.618_033_988_75).fract() * 6.0;
    let (s, v) = (0.75, 0.95);
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r, g, b].map(|u| ((u + m) * 255.0).round() as u8)
}

impl<'a> Writer<'a> {
    /// Stages the folders `outputs` names; `None` when it names none.
    pub(crate) fn begin(
        dense: &'a DenseIndex,
        set: LabelSet,
        outputs: Option<&SegmentOutputs>,
    ) -> Result<Option<Writer<'a>>> {
        let Some(o) = outputs.filter(|o| o.predictions.is_some() || o.overlays.is_some()) else {
            return Ok(None);
        };
        Ok(Some(Writer {
            dense,
            set,
            predictions: stage(&o.predictions, "predictions")?,
            overlays: stage(&o.overlays, "overlays")?,
            overlay_count: o.overlay_count,
            root: o.dataset_root.clone(),
            notes: Default::default(),
            written: Default::default(),
        }))
    }

    /// Writes image `n`'s prediction (`pred`, reduced numbering) and, for the first
    /// `overlay_count` evaluation images (`i` = its place among them), its overlay.
    pub(crate) fn write(&self, n: usize, i: usize, pred: &[u8], truth: &LabelMap) -> Result<()> {
        let im = &self.dense.images[n];
        let (w, h) = (truth.width as u32, truth.height as u32);
        if let Some(st) = &self.predictions {
            let ann = match self.set {
                LabelSet::Parts => im.part_annotation.as_deref(),
                LabelSet::Objects => im.object_annotation.as_deref(),
            };
            let p = prediction_path(st.path(), ann, &im.image);
            let first = *self
                .written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(p.clone())
                .or_insert(n);
            if first != n {
                return Err(Error::InvalidArgument(format!(
                    "--predictions: {} and {} would both be written as {} (their annotations \
                     share a name); nothing was written",
                    self.dense.images[first].image,
                    im.image,
                    p.strip_prefix(st.path()).unwrap_or(&p).display()
                )));
            }
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).at(parent)?;
            }
            // Back to the dataset's numbering: class k is label value k + 1.
            let data: Vec<u8> = pred.iter().map(|&k| k + 1).collect();
            image::GrayImage::from_raw(w, h, data)
                .ok_or_else(|| Error::InvalidArgument("prediction size mismatch".into()))?
                .save(&p)
                .map_err(|e| Error::io(&p, std::io::Error::other(e)))?;
        }
        if let (Some(st), true) = (&self.overlays, i < self.overlay_count) {
            let src = Path::new(&self.root).join(&im.image);
            let photo = match crate::preprocess::decode_rgb(&src) {
                Ok(p) if p.dimensions() == (w, h) => p,
                Ok(_) | Err(_) => {
                    self.notes.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                        "overlay of {}: the image is not readable at {} any more; its panel is grey",
                        im.image,
                        src.display()
                    ));
                    RgbImage::from_pixel(w, h, Rgb([128, 128, 128]))
                }
            };
            let mut out = RgbImage::new(w * 3, h);
            for y in 0..h {
                for x in 0..w {
                    let px = photo.get_pixel(x, y).0;
                    let grey = px.map(|v| v / 3);
                    let t = truth.data[(y * w + x) as usize];
                    let blend = |c: [u8; 3]| {
                        Rgb([0, 1, 2].map(|k| ((u16::from(px[k]) + u16::from(c[k]) * 2) / 3) as u8))
                    };
                    out.put_pixel(x, y, Rgb(px));
                    let truth_px = match t {
                        0 | 255 => Rgb(grey),
                        v => blend(class_colour(v as usize - 1)),
                    };
                    out.put_pixel(w + x, y, truth_px);
                    // Only what is scored: unlabelled pixels stay grey as in the truth panel.
                    let pred_px = match t {
                        0 | 255 => Rgb(grey),
                        _ => blend(class_colour(pred[(y * w + x) as usize] as usize)),
                    };
                    out.put_pixel(2 * w + x, y, pred_px);
                }
            }
            let stem = Path::new(&im.image)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let p = st.path().join(format!("{i:03}_{stem}.png"));
            out.save(&p)
                .map_err(|e| Error::io(&p, std::io::Error::other(e)))?;
        }
        Ok(())
    }

    /// Swaps the staged folders in; returns the notes gathered while writing.
    pub(crate) fn commit(self) -> Result<Vec<String>> {
        let empty = |p: &Path| crate::files::is_empty_dir(p);
        if let Some(st) = self.predictions {
            st.commit(&empty)?;
        }
        if let Some(st) = self.overlays {
            st.commit(&empty)?;
        }
        Ok(self.notes.into_inner().unwrap_or_else(|e| e.into_inner()))
    }
}
