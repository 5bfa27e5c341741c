//! Dense features (`ingest --dense`): each whole image's token grid at the model's patch
//! resolution, for the segmentation probe.
//!
//! Per image:
//! 1. **resize** (Pillow's bicubic, as everywhere) so the short side is `--dense-size` (default
//!    [`DEFAULT_SIZE`]) and the long side is its proportional length rounded to the nearest
//!    multiple of the grid's cell (the patch size, or a CNN's stride), so cells tile the image
//!    exactly (the aspect ratio changes by at most half a cell);
//! 2. **slide** windows of the model's input size over it, `--dense-stride` apart (default: half
//!    the window, rounded down to whole cells), placed as mmseg's `slide_inference` places them:
//!    `n = max(L − win + stride − 1, 0) / stride + 1` windows per axis, window `i` at
//!    `min(i · stride, L − win)`, so the last window ends on the image's edge;
//! 3. **encode** the windows and **average** the tokens of every cell over the windows that
//!    cover it → one `rows × cols × D` grid (`rows = H' / cell`, `cols = W' / cell`).
//!
//! The grids go to `dense/grids.npy` as float16 rows, the image's part and object label maps
//! (checked, or resized with `--resize-labels nearest`, exactly as for regions) to
//! `dense/labels/`, and one row per image to `dense/images.parquet` ([`crate::store::dense`]).
//! Images stream through a bounded channel: a few resized images are in memory at a time, and
//! window tensors are made one batch at a time, whatever the dataset's or an image's size.

use std::path::Path;
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;

use crate::dataset::{Dataset, ImageItem, LabelMap, RegionSettings, Skipped};
use crate::encoder::{Encoder, TokenGrid};
use crate::error::{Error, IoContext, Result};
use crate::preprocess::{decode_rgb, Preprocessor};
use crate::store::dense::{DenseImage, DenseInfo, GRIDS_FILE, IMAGES_FILE};
use crate::store::HalfWriter;

/// Default short side of the resized image: twice a 224-px input, so an image is seen at the
/// paper's ViT resolution over a 2 × 2-or-more window layout (a multiple of 16 and 32).
pub const DEFAULT_SIZE: usize = 448;

/// Longest resized side accepted, pixels (an extreme panorama would otherwise take thousands
/// of windows).
pub const MAX_SIDE: usize = 8192;

/// How dense grids are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseOptions {
    /// Short side of the resized image, pixels: a multiple of the cell, at least the window.
    pub size: usize,
    /// Step between windows; `None`: half the window rounded down to whole cells.
    pub stride: Option<usize>,
}

impl Default for DenseOptions {
    fn default() -> Self {
        DenseOptions {
            size: DEFAULT_SIZE,
            stride: None,
        }
    }
}

impl DenseOptions {
    /// The stride used with `grid` and a `[h, w]` input, after checking every setting.
    pub fn check(&self, grid: &TokenGrid, input: [usize; 2]) -> Result<usize> {
        let cell = grid.cell;
        let win = input[0].max(input[1]);
        if self.size < win || !self.size.is_multiple_of(cell) || self.size > MAX_SIDE {
            return Err(Error::InvalidArgument(format!(
                "--dense-size {}: must be a multiple of the model's cell ({cell} px) between its \
                 input ({win} px) and {MAX_SIDE}, e.g. {}",
                self.size,
                (win * 2).div_ceil(cell) * cell
            )));
        }
        let short = input[0].min(input[1]);
        let stride = self
            .stride
            .unwrap_or_else(|| ((short / 2) / cell * cell).max(cell));
        if stride == 0 || !stride.is_multiple_of(cell) || stride > short {
            return Err(Error::InvalidArgument(format!(
                "--dense-stride {stride}: must be a multiple of the model's cell ({cell} px) and at \
                 most its input's side ({short} px)"
            )));
        }
        Ok(stride)
    }
}

/// Where one image's windows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Resized width and height.
    pub width: usize,
    /// Resized height.
    pub height: usize,
    /// Grid rows and columns.
    pub rows: usize,
    /// Grid columns.
    pub cols: usize,
    /// Top-left corners `(x, y)` of the windows, pixels of the resized image.
    pub windows: Vec<(usize, usize)>,
}

/// Window starts along one axis of `len` pixels (mmseg's `slide_inference`).
fn starts(len: usize, win: usize, stride: usize) -> Vec<usize> {
    let n = len.saturating_sub(win).div_ceil(stride) + 1;
    (0..n).map(|i| (i * stride).min(len - win)).collect()
}

/// The resize and windows of a `w × h` image (see the module doc).
pub fn plan(
    (w, h): (usize, usize),
    size: usize,
    stride: usize,
    cell: usize,
    input: [usize; 2],
) -> Result<Plan> {
    let long = |l: usize, s: usize| {
        let exact = size as f64 * l as f64 / s as f64;
        ((exact / cell as f64).round() as usize * cell).max(size)
    };
    let (rw, rh) = if w <= h {
        (size, long(h, w))
    } else {
        (long(w, h), size)
    };
    if rw > MAX_SIDE || rh > MAX_SIDE {
        return Err(Error::InvalidArgument(format!(
            "a {w} × {h} image resized to a short side of {size} is {rw} × {rh}, over \
             {MAX_SIDE} px"
        )));
    }
    let [ih, iw] = input;
    let (xs, ys) = (starts(rw, iw, stride), starts(rh, ih, stride));
    let windows = ys
        .iter()
        .flat_map(|&y| xs.iter().map(move |&x| (x, y)))
        .collect();
    Ok(Plan {
        width: rw,
        height: rh,
        rows: rh / cell,
        cols: rw / cell,
        windows,
    })
}

/// One image read and resized; its window tensors are made a batch at a time, so memory holds
/// the resized bytes (at most 8192 × 8192 × 3) rather than every overlapping window as floats.
struct Loaded {
    width: usize,
    height: usize,
    plan: Plan,
    /// The resized image, interleaved RGB8, `plan.width × plan.height`.
    rgb: Vec<u8>,
    parts: Option<LabelMap>,
    objects: Option<LabelMap>,
}

/// Writes window `(x, y)` of an interleaved RGB8 image `w` wide as a normalised CHW tensor.
fn window_tensor(
    rgb: &[u8],
    w: usize,
    (x, y): (usize, usize),
    pre: &Preprocessor,
    out: &mut [f32],
) {
    let (th, tw) = pre.size;
    let plane = th * tw;
    // The same arithmetic as the region path: (v / 255 − mean) / std in float32.
    let lut: Vec<[f32; 256]> = (0..3)
        .map(|c| std::array::from_fn(|v| (v as f32 / 255.0 - pre.mean[c]) / pre.std[c]))
        .collect();
    for r in 0..th {
        let row = &rgb[((y + r) * w + x) * 3..((y + r) * w + x + tw) * 3];
        for (c, table) in lut.iter().enumerate() {
            let o = &mut out[c * plane + r * tw..c * plane + (r + 1) * tw];
            for (k, v) in o.iter_mut().enumerate() {
                *v = table[row[k * 3 + c] as usize];
            }
        }
    }
}

fn load(
    dataset: &dyn Dataset,
    item: &ImageItem,
    settings: &RegionSettings,
    pre: &Preprocessor,
    (size, stride, cell): (usize, usize, usize),
) -> Result<Loaded> {
    let img = decode_rgb(&item.image_path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (parts, objects) = dataset.label_maps(item, (w, h), settings)?;
    let plan =
        plan((w, h), size, stride, cell, [pre.size.0, pre.size.1]).map_err(|e| Error::Image {
            path: item.image_path.clone(),
            message: e.to_string(),
        })?;
    let rgb = crate::preprocess::resample::resize_bicubic_rgb8(
        img.as_raw(),
        w,
        h,
        plan.width,
        plan.height,
    );
    Ok(Loaded {
        width: w,
        height: h,
        plan,
        rgb,
        parts,
        objects,
    })
}

/// What the dense pass wrote.
#[derive(Debug)]
pub struct DenseOutcome {
    /// For the manifest.
    pub info: DenseInfo,
    /// Images left out, with reasons.
    pub skipped: Vec<Skipped>,
    /// Seconds inside the encoder.
    pub encode_seconds: f64,
    /// Windows encoded.
    pub windows: u64,
}

/// The largest label value (not 255) of a map.
fn max_label(m: &LabelMap) -> Option<u8> {
    m.data.iter().copied().filter(|&v| v != 255).max()
}

/// Makes every image's grid under `stage` with `ingest`'s dense options, region settings
/// (label maps are checked or resized as for regions), batch size, `strict` and progress (see
/// the module doc). An image that cannot be read is skipped and reported (or, with `strict`,
/// ends the run); a run where no image has a grid fails.
pub fn write_dense(
    dataset: &dyn Dataset,
    items: &[crate::dataset::ImageItem],
    encoder: &Encoder,
    ingest: &crate::ingest::IngestOptions,
    stage: &Path,
) -> Result<DenseOutcome> {
    let opts = &ingest.dense.unwrap_or_default();
    let (settings, batch_size, strict) = (&ingest.settings, ingest.batch_size, ingest.strict);
    let grid = encoder.token_grid()?;
    let input = encoder.spec().input_size;
    let stride = opts.check(&grid, input)?;
    let pre = encoder.preprocessor();
    let len = pre.tensor_len();
    for d in ["dense/labels/parts", "dense/labels/objects"] {
        std::fs::create_dir_all(stage.join(d)).at(stage.join(d))?;
    }
    let mut grids = HalfWriter::create(stage.join(GRIDS_FILE), &[grid.dim])?;
    let pb = crate::ingest::progress_bar(ingest.progress, items.len(), "images (dense)");
    let (tx, rx) = sync_channel::<(usize, Result<Loaded>)>(2);
    let mut rows: Vec<DenseImage> = Vec::new();
    let mut skipped = Vec::new();
    let mut max_seen = [None::<u8>; 2];
    let mut encode_seconds = 0f64;
    let mut windows = 0u64;
    let per = grid.tokens() * grid.dim;
    std::thread::scope(|scope| -> Result<()> {
        let pre = &pre;
        scope.spawn(move || {
            let chunk = rayon::current_num_threads().max(2);
            for (ci, block) in items.chunks(chunk).enumerate() {
                let loaded: Vec<Result<Loaded>> = block
                    .par_iter()
                    .map(|it| load(dataset, it, settings, pre, (opts.size, stride, grid.cell)))
                    .collect();
                for (i, l) in loaded.into_iter().enumerate() {
                    if tx.send((ci * chunk + i, l)).is_err() {
                        return;
                    }
                }
            }
        });
        let rx = rx;
        let mut acc: Vec<f32> = Vec::new();
        let mut count: Vec<u32> = Vec::new();
        let mut tensors: Vec<f32> = Vec::new();
        while let Ok((idx, loaded)) = rx.recv() {
            let item = &items[idx];
            pb.inc(1);
            let l = match loaded {
                Ok(l) => l,
                Err(e) if strict => return Err(e),
                Err(e) => {
                    tracing::warn!("dense: skipping {}: {e}", item.image);
                    skipped.push(Skipped::new(&item.image, format!("dense features: {e}")));
                    continue;
                }
            };
            let p = &l.plan;
            let d = grid.dim;
            acc.clear();
            acc.resize(p.rows * p.cols * d, 0.0);
            count.clear();
            count.resize(p.rows * p.cols, 0);
            for wins in p.windows.chunks(batch_size) {
                tensors.resize(wins.len() * len, 0.0);
                tensors
                    .par_chunks_mut(len)
                    .zip(wins)
                    .for_each(|(out, &xy)| window_tensor(&l.rgb, p.width, xy, pre, out));
                let te = std::time::Instant::now();
                let tokens = encoder.embed_tokens(&tensors, wins.len())?;
                encode_seconds += te.elapsed().as_secs_f64();
                windows += wins.len() as u64;
                for (&(x, y), t) in wins.iter().zip(tokens.chunks_exact(per)) {
                    let (r0, c0) = (y / grid.cell, x / grid.cell);
                    for r in 0..grid.rows {
                        for c in 0..grid.cols {
                            let cell = (r0 + r) * p.cols + c0 + c;
                            count[cell] += 1;
                            let src = &t[(r * grid.cols + c) * d..(r * grid.cols + c + 1) * d];
                            for (a, v) in acc[cell * d..(cell + 1) * d].iter_mut().zip(src) {
                                *a += v;
                            }
                        }
                    }
                }
            }
            for (cell, &n) in count.iter().enumerate() {
                let inv = 1.0 / n.max(1) as f32;
                acc[cell * d..(cell + 1) * d]
                    .iter_mut()
                    .for_each(|a| *a *= inv);
            }
            let offset = grids.rows() as u64;
            grids.append(&acc)?;
            let n = rows.len();
            let mut save = |m: &Option<LabelMap>, sub: &str, k: usize| -> Result<Option<String>> {
                let Some(m) = m else { return Ok(None) };
                if let Some(v) = max_label(m) {
                    max_seen[k] = max_seen[k].max(Some(v));
                }
                let rel = format!("dense/labels/{sub}/{n:07}.png");
                crate::dataset::convert::save(m, &stage.join(&rel))?;
                Ok(Some(rel))
            };
            let part_labels = save(&l.parts, "parts", 0)?;
            let object_labels = save(&l.objects, "objects", 1)?;
            let rel = |p: &Option<std::path::PathBuf>, has: bool| {
                p.as_ref()
                    .filter(|_| has)
                    .map(|p| dataset.listing().root.relative(p))
            };
            // The file each map came from: an object map without a file of its own was read
            // from the image's one annotation (a Pascal-Part `.mat`).
            rows.push(DenseImage {
                image: item.image.clone(),
                split: item.split.clone(),
                width: l.width as u32,
                height: l.height as u32,
                rows: p.rows as u32,
                cols: p.cols as u32,
                offset,
                part_annotation: rel(&item.part_ann, part_labels.is_some()),
                object_annotation: rel(&item.object_ann, object_labels.is_some()).or_else(|| {
                    rel(
                        &item.part_ann,
                        object_labels.is_some() && item.object_ann.is_none(),
                    )
                }),
                part_labels,
                object_labels,
            });
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    if rows.is_empty() {
        return Err(Error::Dataset {
            path: dataset.root().to_path_buf(),
            message: format!(
                "--dense: no image could be read ({} skipped{})",
                skipped.len(),
                skipped
                    .first()
                    .map(|s: &Skipped| format!("; first: {}: {}", s.path, s.reason))
                    .unwrap_or_default()
            ),
        });
    }
    let cells = grids.finish()? as u64;
    crate::store::dense::write_images(&stage.join(IMAGES_FILE), &rows)?;
    let (part_names, object_names) = dataset.map_classes();
    let names = |given: Option<Vec<String>>, any: bool, max: Option<u8>| {
        if !any {
            return None;
        }
        given.or_else(|| {
            let max = max.unwrap_or(0);
            Some((0..=max).map(|k| format!("class_{k}")).collect())
        })
    };
    let info = DenseInfo {
        size: opts.size,
        stride,
        window: input,
        cell: grid.cell,
        dim: grid.dim,
        source: grid.source,
        images: rows.len() as u64,
        cells,
        part_classes: names(
            part_names,
            rows.iter().any(|r| r.part_labels.is_some()),
            max_seen[0],
        ),
        object_classes: names(
            object_names,
            rows.iter().any(|r| r.object_labels.is_some()),
            max_seen[1],
        ),
    };
    Ok(DenseOutcome {
        info,
        skipped,
        encode_seconds,
        windows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_tile_the_resized_image_like_mmseg() {
        // 640 × 480 → short side 448: 597.3 → 608 (nearest multiple of 32).
        let p = plan((640, 480), 448, 112, 32, [224, 224]).unwrap();
        assert_eq!((p.width, p.height, p.rows, p.cols), (608, 448, 14, 19));
        // x: (608 − 224 + 111) / 112 + 1 = 5 windows, the last clamped to 384; y: 3.
        let xs: Vec<usize> = p.windows.iter().take(5).map(|w| w.0).collect();
        assert_eq!(xs, vec![0, 112, 224, 336, 384]);
        assert_eq!(p.windows.len(), 15);
        // Every window ends inside the image, every cell is covered.
        let mut covered = vec![false; p.rows * p.cols];
        for &(x, y) in &p.windows {
            assert!(x + 224 <= p.width && y + 224 <= p.height);
            for r in y / 32..(y + 224) / 32 {
                for c in x / 32..(x + 224) / 32 {
                    covered[r * p.cols + c] = true;
                }
            }
        }
        assert!(covered.iter().all(|&c| c));
        // A portrait image, and a size equal to the window: one window per axis.
        let p = plan((300, 900), 224, 112, 16, [224, 224]).unwrap();
        assert_eq!((p.width, p.height), (224, 672));
        assert_eq!(p.windows.len(), 5);
    }

    #[test]
    fn settings_are_checked_against_the_model() {
        let g = TokenGrid {
            rows: 14,
            cols: 14,
            dim: 8,
            cell: 16,
            source: crate::encoder::GridSource::PatchTokens,
        };
        let o = |size, stride| DenseOptions { size, stride };
        assert_eq!(o(448, None).check(&g, [224, 224]).unwrap(), 112);
        assert!(o(440, None).check(&g, [224, 224]).is_err()); // not a multiple of 16
        assert!(o(192, None).check(&g, [224, 224]).is_err()); // smaller than the window
        assert!(o(448, Some(100)).check(&g, [224, 224]).is_err());
        assert!(o(448, Some(240)).check(&g, [224, 224]).is_err());
        assert_eq!(o(448, Some(224)).check(&g, [224, 224]).unwrap(), 224);
    }
}
