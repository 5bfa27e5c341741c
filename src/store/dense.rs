//! Dense features: every image's token grid at the model's patch resolution, for the
//! segmentation probe.
//!
//! ```text
//! dense/grids.npy                  R × D float16 ('<f2'): every grid's cells, image by image, raster order
//! dense/images.parquet             one row per image: where its cells are and its label maps
//! dense/labels/parts/<n>.png       image n's part label map (8-bit, the dataset's numbering)
//! dense/labels/objects/<n>.png     image n's object label map
//! tokens/regions.npy               N × T × D float16: each region's own tokens (`ingest --tokens`)
//! ```
//!
//! `numpy.load("dense/grids.npy", mmap_mode="r")[off:off + rows * cols].reshape(rows, cols, D)`
//! is one image's grid, `off`, `rows`, `cols` from its row in `images.parquet`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::npy::HalfArray;
use super::parquet::{pq_err, string_col, u32_col, u64_col};
use crate::dataset::LabelMap;
use crate::encoder::GridSource;
use crate::error::{Error, IoContext, Result};

/// The grid file, relative to the index.
pub const GRIDS_FILE: &str = "dense/grids.npy";
/// The image table, relative to the index.
pub const IMAGES_FILE: &str = "dense/images.parquet";
/// The region tokens, relative to the index.
pub const TOKENS_FILE: &str = "tokens/regions.npy";

/// How dense features were made (`manifest.json` → `dense`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseInfo {
    /// Short side of the resized image, pixels.
    pub size: usize,
    /// Step between sliding windows, pixels of the resized image.
    pub stride: usize,
    /// The model's input, `[H, W]`: the window.
    pub window: [usize; 2],
    /// Resized-image pixels per grid cell.
    pub cell: usize,
    /// Values per cell.
    pub dim: usize,
    /// The model output the cells come from.
    pub source: GridSource,
    /// Images with a grid.
    pub images: u64,
    /// Cells in all (rows of `dense/grids.npy`).
    pub cells: u64,
    /// Names of the part label maps' values (index = value, 0 = background), if any image has
    /// a part map.
    pub part_classes: Option<Vec<String>>,
    /// Names of the object label maps' values, if any image has an object map.
    pub object_classes: Option<Vec<String>>,
}

/// Region tokens (`manifest.json` → `tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensInfo {
    /// Tokens per region (grid rows × columns of one input).
    pub tokens: usize,
    /// Grid rows of one input.
    pub rows: usize,
    /// Grid columns of one input.
    pub cols: usize,
    /// Values per token.
    pub dim: usize,
    /// The model output they come from.
    pub source: GridSource,
}

/// One image's row of `dense/images.parquet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenseImage {
    /// Image path relative to the dataset root.
    pub image: String,
    /// Split.
    pub split: String,
    /// The original image's width and height (= the label maps').
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Grid rows and columns.
    pub rows: u32,
    /// Grid columns.
    pub cols: u32,
    /// First row of its cells in `dense/grids.npy`.
    pub offset: u64,
    /// Its part label map, relative to the index (`dense/labels/parts/<n>.png`).
    pub part_labels: Option<String>,
    /// Its object label map, relative to the index.
    pub object_labels: Option<String>,
    /// The dataset's own annotation for parts, relative to the dataset root (predictions are
    /// named after it).
    pub part_annotation: Option<String>,
    /// The dataset's own annotation for objects.
    pub object_annotation: Option<String>,
}

impl DenseImage {
    /// Number of cells.
    pub fn cells(&self) -> usize {
        self.rows as usize * self.cols as usize
    }
}

fn schema() -> Arc<Schema> {
    let s = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    let u32f = |n: &str| Field::new(n, DataType::UInt32, false);
    Arc::new(Schema::new(vec![
        s("image", false),
        s("split", false),
        u32f("width"),
        u32f("height"),
        u32f("grid_rows"),
        u32f("grid_cols"),
        Field::new("row_offset", DataType::UInt64, false),
        s("part_labels", true),
        s("object_labels", true),
        s("part_annotation", true),
        s("object_annotation", true),
    ]))
}

/// Writes the image table (it is small: one row per image, kept until the end).
pub fn write_images(path: &Path, rows: &[DenseImage]) -> Result<()> {
    let file = File::create(path).at(path)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let schema = schema();
    let mut w =
        ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| pq_err(path, e))?;
    for chunk in rows.chunks(8192) {
        let strs = |f: &dyn Fn(&DenseImage) -> Option<&str>| -> ArrayRef {
            Arc::new(chunk.iter().map(f).collect::<StringArray>())
        };
        let u32s = |f: &dyn Fn(&DenseImage) -> u32| -> ArrayRef {
            Arc::new(chunk.iter().map(f).collect::<UInt32Array>())
        };
        let cols: Vec<ArrayRef> = vec![
            strs(&|r| Some(r.image.as_str())),
            strs(&|r| Some(r.split.as_str())),
            u32s(&|r| r.width),
            u32s(&|r| r.height),
            u32s(&|r| r.rows),
            u32s(&|r| r.cols),
            Arc::new(chunk.iter().map(|r| r.offset).collect::<UInt64Array>()),
            strs(&|r| r.part_labels.as_deref()),
            strs(&|r| r.object_labels.as_deref()),
            strs(&|r| r.part_annotation.as_deref()),
            strs(&|r| r.object_annotation.as_deref()),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| pq_err(path, e))?;
        w.write(&batch).map_err(|e| pq_err(path, e))?;
    }
    let f = w.into_inner().map_err(|e| pq_err(path, e))?;
    f.sync_all().at(path)?;
    Ok(())
}

/// Reads the image table.
pub fn read_images(path: &Path) -> Result<Vec<DenseImage>> {
    let file = crate::files::open_regular(path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::corrupt(path, format!("not a readable Parquet file: {e}")))?
        .build()
        .map_err(|e| pq_err(path, e))?;
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.map_err(|e| Error::corrupt(path, e.to_string()))?;
        let strs = |n: &str| string_col(&b, n, path);
        let u32s = |n: &str| -> Result<Vec<u32>> { Ok(u32_col(&b, n, path)?.values().to_vec()) };
        let (image, split) = (strs("image")?, strs("split")?);
        let (pl, ol, pa, oa) = (
            strs("part_labels")?,
            strs("object_labels")?,
            strs("part_annotation")?,
            strs("object_annotation")?,
        );
        let (w, h, gr, gc) = (
            u32s("width")?,
            u32s("height")?,
            u32s("grid_rows")?,
            u32s("grid_cols")?,
        );
        let off = u64_col(&b, "row_offset", path)?.values().to_vec();
        let opt = |a: &StringArray, i: usize| {
            use arrow_array::Array;
            (!a.is_null(i)).then(|| a.value(i).to_string())
        };
        for i in 0..b.num_rows() {
            out.push(DenseImage {
                image: image.value(i).to_string(),
                split: split.value(i).to_string(),
                width: w[i],
                height: h[i],
                rows: gr[i],
                cols: gc[i],
                offset: off[i],
                part_labels: opt(&pl, i),
                object_labels: opt(&ol, i),
                part_annotation: opt(&pa, i),
                object_annotation: opt(&oa, i),
            });
        }
    }
    Ok(out)
}

/// Which label maps a segmentation probe scores against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSet {
    /// Part label maps.
    Parts,
    /// Object label maps.
    Objects,
}

impl LabelSet {
    /// `parts` or `objects`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LabelSet::Parts => "parts",
            LabelSet::Objects => "objects",
        }
    }
}

/// The dense settings of two parts of one index (segments) as one: counts added, each class
/// list the longer of the two (names made up from the largest value seen grow with it).
pub fn merge_info(a: &DenseInfo, b: &DenseInfo) -> DenseInfo {
    let longer = |x: &Option<Vec<String>>, y: &Option<Vec<String>>| match (x, y) {
        (Some(x), Some(y)) => Some(if y.len() > x.len() {
            y.clone()
        } else {
            x.clone()
        }),
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    DenseInfo {
        images: a.images + b.images,
        cells: a.cells + b.cells,
        part_classes: longer(&a.part_classes, &b.part_classes),
        object_classes: longer(&a.object_classes, &b.object_classes),
        ..a.clone()
    }
}

/// An index's dense features, opened and checked: one part per segment (schema 3) or one for
/// the whole index (schema 2).
#[derive(Debug)]
pub struct DenseIndex {
    /// Per part: its folder, its first cell (global), its grid matrix (memory-mapped).
    parts: Vec<(PathBuf, u64, HalfArray)>,
    /// Part of each image.
    image_part: Vec<u32>,
    /// How they were made.
    pub info: DenseInfo,
    /// One row per image, in grid order; `offset` is the image's first cell counted over all
    /// parts.
    pub images: Vec<DenseImage>,
}

impl DenseIndex {
    /// Opens every segment's dense files (`(folder, [images, cells])` in segment order) as one
    /// table: images and cells numbered across segments.
    pub fn open_segments(parts: &[(PathBuf, [u64; 2])], info: &DenseInfo) -> Result<DenseIndex> {
        let mut out = DenseIndex {
            parts: Vec::new(),
            image_part: Vec::new(),
            info: info.clone(),
            images: Vec::new(),
        };
        let mut cells = 0u64;
        for (p, (dir, [images, n_cells])) in parts.iter().enumerate() {
            let one = DenseIndex::open(
                dir,
                &DenseInfo {
                    images: *images,
                    cells: *n_cells,
                    ..info.clone()
                },
            )?;
            for mut im in one.images {
                im.offset += cells;
                out.images.push(im);
                out.image_part.push(p as u32);
            }
            let (d, _, g) = one.parts.into_iter().next().expect("one part");
            out.parts.push((d, cells, g));
            cells += n_cells;
        }
        if cells != info.cells || out.images.len() as u64 != info.images {
            return Err(Error::corrupt(
                parts.first().map_or(Path::new("."), |p| p.0.as_path()),
                format!(
                    "segments hold {} dense images and {cells} cells; the manifest says {} and {}",
                    out.images.len(),
                    info.images,
                    info.cells
                ),
            ));
        }
        Ok(out)
    }

    /// `n` cells from global cell `start` (within one image's grid) as float32 into `out`.
    pub fn read_cells(&self, start: usize, n: usize, out: &mut [f32]) {
        let p = self
            .parts
            .partition_point(|(_, first, _)| *first as usize <= start)
            - 1;
        let (_, first, g) = &self.parts[p];
        g.read_rows(start - *first as usize, n, out);
    }

    /// Total cells.
    pub fn cells(&self) -> usize {
        self.parts.iter().map(|(_, _, g)| g.rows()).sum()
    }

    /// Opens `dir`'s dense files and checks them against `info` and each other: the image
    /// rows' cells must be contiguous and add up to the grid matrix, label paths must be
    /// plain files under `dense/labels/`. Any disagreement is [`Error::DataCorruption`].
    pub fn open(dir: &Path, info: &DenseInfo) -> Result<DenseIndex> {
        let gp = dir.join(GRIDS_FILE);
        let grids = HalfArray::open(&gp)?;
        if grids.shape().len() != 2 || grids.row_len() != info.dim {
            return Err(Error::corrupt(
                &gp,
                format!(
                    "shape {:?}, the manifest says (cells, {})",
                    grids.shape(),
                    info.dim
                ),
            ));
        }
        let tp = dir.join(IMAGES_FILE);
        let images = read_images(&tp)?;
        let mut next = 0u64;
        for (n, im) in images.iter().enumerate() {
            // Label maps are read from below the index: relative, `/`-separated, without empty,
            // `.` or `..` components. (Image and annotation paths are the dataset's: with
            // --allow-outside-root they may be absolute; predictions are named safely from
            // them by `eval::segment::prediction_path`.)
            let unsafe_rel = |p: &str| {
                p.contains('\\') || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            };
            let bad_path = |p: &Option<String>| {
                p.as_ref()
                    .is_some_and(|p| !p.starts_with("dense/labels/") || unsafe_rel(p))
            };
            // Checked: a table whose grid sizes wrap around u64 must not pass the sum below
            // (its grids would then be read with absurd allocations).
            let end = next
                .checked_add(im.rows as u64 * im.cols as u64)
                .filter(|&e| e <= grids.rows() as u64);
            if im.offset != next
                || im.rows == 0
                || im.cols == 0
                || end.is_none()
                || bad_path(&im.part_labels)
                || bad_path(&im.object_labels)
            {
                return Err(Error::corrupt(
                    &tp,
                    format!(
                        "row {n} ({}): offset {}, grid {} × {}, labels {:?} / {:?}: rows must be \
                         contiguous from 0 (expected offset {next}) within the {} cells of {} \
                         with label maps under dense/labels/",
                        im.image,
                        im.offset,
                        im.rows,
                        im.cols,
                        im.part_labels,
                        im.object_labels,
                        grids.rows(),
                        gp.display()
                    ),
                ));
            }
            next = end.unwrap_or(next);
        }
        if next != grids.rows() as u64 || images.len() as u64 != info.images {
            return Err(Error::corrupt(
                &tp,
                format!(
                    "{} images with {next} cells; the manifest says {} images and {} holds {} cells",
                    images.len(),
                    info.images,
                    gp.display(),
                    grids.rows()
                ),
            ));
        }
        Ok(DenseIndex {
            image_part: vec![0; images.len()],
            parts: vec![(dir.to_path_buf(), 0, grids)],
            info: info.clone(),
            images,
        })
    }

    /// Image `n`'s cells as float32 (`rows × cols × dim`), into `out`.
    pub fn read_grid(&self, n: usize, out: &mut Vec<f32>) {
        let im = &self.images[n];
        out.resize(im.cells() * self.info.dim, 0.0);
        self.read_cells(im.offset as usize, im.cells(), out);
    }

    /// [`DenseIndex::read_grid`], refusing a grid holding NaN or infinity (ingest never
    /// stores one: the file is damaged).
    pub fn read_grid_checked(&self, n: usize, out: &mut Vec<f32>) -> Result<()> {
        self.read_grid(n, out);
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            let im = &self.images[n];
            return Err(Error::corrupt(
                self.parts[self.image_part[n] as usize].0.join(GRIDS_FILE),
                format!(
                    "row {} (image {}) holds NaN or infinity: the file is damaged \
                     (`partlens info --verify` checks it)",
                    im.offset as usize + i / self.info.dim,
                    im.image
                ),
            ));
        }
        Ok(())
    }

    /// The class names of a label set (index = map value, 0 = background), or why there are
    /// none.
    pub fn classes(&self, set: LabelSet) -> Option<&[String]> {
        match set {
            LabelSet::Parts => self.info.part_classes.as_deref(),
            LabelSet::Objects => self.info.object_classes.as_deref(),
        }
    }

    /// Image `n`'s label map of `set`, read from the index and checked against the image's
    /// size; `None` when the image has none.
    pub fn label_map(&self, n: usize, set: LabelSet) -> Result<Option<LabelMap>> {
        let im = &self.images[n];
        let rel = match set {
            LabelSet::Parts => &im.part_labels,
            LabelSet::Objects => &im.object_labels,
        };
        let Some(rel) = rel else { return Ok(None) };
        let p = self.parts[self.image_part[n] as usize].0.join(rel);
        let map = LabelMap::read_png(&p)?;
        if (map.width, map.height) != (im.width as usize, im.height as usize) {
            return Err(Error::corrupt(
                &p,
                format!(
                    "{} × {} label map for a {} × {} image",
                    map.width, map.height, im.width, im.height
                ),
            ));
        }
        Ok(Some(map))
    }
}
