//! `partlens import`: an index from embeddings made elsewhere (a PyTorch pipeline, another
//! tool) and a Parquet table of what each row is, without an encoder.
//!
//! ```text
//! X.npy          float32 ('<f4'), C order, N × D: one row per region
//! M.parquet      N rows, in the same order: image (utf8, required); optional split (utf8,
//!                default "all"), kind ("part" | "object", default "part"), label_name (utf8,
//!                default ""), label (integer; default the rank of label_name among the
//!                distinct names), object_name (utf8, nullable), object_label (integer,
//!                nullable), instance (integer, default 0), box ([x0, y0, x1, y1] integers,
//!                default 0s), area (integer, default the box's)
//! ```
//!
//! Everything is checked before anything is written: the matrix's type, shape and values
//! (NaN or infinity refused, naming the rows), the table's row count and column types. The
//! index is written in segments of `segment_size` rows, each with its graph, beside `--out`
//! and swapped into place at the end. With `--model`, the model that made the vectors is
//! recorded (its output dimension checked), so the index answers image queries too;
//! without, it answers "more like this" and vector queries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::encoder::{EncoderOptions, Feature, Features, ModelSpec, SpecOutputs};
use crate::error::{Error, IoContext, Result};
use crate::files::StagedDir;
use crate::index::{GraphBuilder, HnswParams};
use crate::region::{PixelBox, Region, RegionKind};
use crate::store::manifest::{
    Counts, DatasetInfo, EncoderInfo, HnswInfo, Manifest, SegmentInfo, SCHEMA_VERSION,
};
use crate::store::{NpyMatrix, NpyWriter, RegionWriter, MARKER_FILE, MARKER_TEXT};

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The vectors, `.npy` float32 N × D.
    pub vectors: PathBuf,
    /// The table of what each row is.
    pub metadata: PathBuf,
    /// The index to create.
    pub out: PathBuf,
    /// Which feature the vectors are (`mean` by default).
    pub feature: Feature,
    /// Rows per segment.
    pub segment_size: usize,
    /// Graph parameters.
    pub hnsw: HnswParams,
    /// The model that made the vectors, if any (recorded; image queries then work).
    pub model: Option<PathBuf>,
    /// The folder the table's image paths are relative to (recorded as the dataset's root).
    pub root: Option<PathBuf>,
    /// Replace an existing index at `out`.
    pub overwrite: bool,
}

impl ImportOptions {
    /// Defaults for importing `vectors` and `metadata` into `out`.
    pub fn new(vectors: PathBuf, metadata: PathBuf, out: PathBuf) -> ImportOptions {
        ImportOptions {
            vectors,
            metadata,
            out,
            feature: Feature::Mean,
            segment_size: crate::store::manifest::DEFAULT_SEGMENT_SIZE,
            hnsw: HnswParams::default(),
            model: None,
            root: None,
            overwrite: false,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The index written.
    pub path: PathBuf,
    /// Rows imported.
    pub regions: u64,
    /// Their dimension.
    pub dim: usize,
    /// Segments written.
    pub segments: usize,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Seconds building graphs (unit rows included).
    pub hnsw_seconds: f64,
}

/// The spec recorded for vectors imported without a model (never run).
fn imported_spec() -> ModelSpec {
    ModelSpec {
        spec_version: 1,
        name: "imported".into(),
        input: "none".into(),
        input_size: [224, 224],
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        interpolation: "bicubic".into(),
        outputs: SpecOutputs {
            pooled: Some("none".into()),
            ..Default::default()
        },
        patch_size: None,
        method: None,
        precision: Default::default(),
        fp32: None,
    }
}

/// Imports (see the module doc).
pub fn import(opts: &ImportOptions, enc: &EncoderOptions) -> Result<ImportReport> {
    let start = Instant::now();
    if opts.segment_size == 0 {
        return Err(Error::InvalidArgument(
            "--segment-size must be at least 1".into(),
        ));
    }
    opts.hnsw.validate().map_err(Error::InvalidArgument)?;
    let x = NpyMatrix::open(&opts.vectors).map_err(|e| {
        Error::InvalidArgument(format!(
            "--vectors {}: {e} (expected a float32 N × D .npy in C order: \
             np.save(path, x.astype(np.float32)))",
            opts.vectors.display()
        ))
    })?;
    let (n, dim) = (x.rows(), x.cols());
    if n == 0 || !(1..=crate::store::manifest::MAX_DIM).contains(&dim) {
        return Err(Error::InvalidArgument(format!(
            "--vectors {}: {n} × {dim}; expected at least one row of 1 to {} values",
            opts.vectors.display(),
            crate::store::manifest::MAX_DIM
        )));
    }
    let bad = crate::index::nonfinite_rows(x.as_slice(), dim);
    if !bad.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "--vectors {}: rows {} hold NaN or infinity; nothing was imported",
            opts.vectors.display(),
            crate::eval::name_rows(&bad)
        )));
    }
    let meta_rows = crate::store::parquet::count_rows(&opts.metadata)?;
    if meta_rows != n as u64 {
        return Err(Error::InvalidArgument(format!(
            "--metadata {} has {meta_rows} rows, --vectors {} has {n}: one row per vector, in \
             the same order",
            opts.metadata.display(),
            opts.vectors.display()
        )));
    }
    let regions = read_metadata(&opts.metadata)?;
    let encoder = match &opts.model {
        Some(m) => {
            let e = crate::encoder::Encoder::load(m, enc)?;
            match e.dims().get(&opts.feature) {
                Some(&d) if d == dim => {}
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "--model {} gives {} a dimension of {other:?}, the vectors have {dim}: \
                         not the model that made them",
                        m.display(),
                        opts.feature
                    )))
                }
            }
            EncoderInfo {
                file: std::fs::canonicalize(m)
                    .unwrap_or(m.clone())
                    .display()
                    .to_string(),
                sha256: e.sha256().to_string(),
                spec: e.spec().clone(),
                provider: e.provider().to_string(),
                dims: [(opts.feature.as_str().to_string(), dim)].into(),
            }
        }
        None => EncoderInfo {
            file: String::new(),
            sha256: String::new(),
            spec: imported_spec(),
            provider: "imported".into(),
            dims: [(opts.feature.as_str().to_string(), dim)].into(),
        },
    };

    let staged = StagedDir::begin(&opts.out, "index")?;
    crate::ingest::check_target(staged.target(), opts.overwrite)?;
    let stage = staged.path().to_path_buf();
    std::fs::create_dir_all(stage.join("segments")).at(&stage)?;
    let dims: BTreeMap<Feature, usize> = [(opts.feature, dim)].into();
    let hnsw = HnswInfo {
        basename: opts.feature.as_str().to_string(),
        max_nb_connection: opts.hnsw.max_nb_connection,
        ef_construction: opts.hnsw.ef_construction,
        seed: Some(crate::index::DEFAULT_SEED),
        builder: Some(GraphBuilder::Partlens.as_str().to_string()),
    };
    let mut segments = Vec::new();
    let mut total = Counts::default();
    let mut hnsw_seconds = 0.0;
    for (k, (rows, regs)) in x
        .as_slice()
        .chunks(opts.segment_size * dim)
        .zip(regions.chunks(opts.segment_size))
        .enumerate()
    {
        let name = format!("seg-{k:06}");
        let dir = stage.join("segments").join(&name);
        for sub in ["regions", "features", "hnsw"] {
            std::fs::create_dir_all(dir.join(sub)).at(&dir)?;
        }
        let first_id = total.regions;
        let mut counts = Counts::default();
        let mut w = RegionWriter::create(dir.join(crate::store::SEGMENT_REGIONS), &dims)?;
        let mut npy = NpyWriter::create(crate::store::feature_path(&dir, opts.feature), dim)?;
        for (i, (r, v)) in regs.chunks(8192).zip(rows.chunks(8192 * dim)).enumerate() {
            let mut r = r.to_vec();
            for (j, reg) in r.iter_mut().enumerate() {
                reg.id = first_id + (i * 8192 + j) as u64;
                match reg.kind {
                    RegionKind::Part => counts.parts += 1,
                    RegionKind::Object => counts.objects += 1,
                }
            }
            let f = Features {
                n: r.len(),
                values: [(opts.feature, v.to_vec())].into(),
            };
            w.write(&r, &f)?;
            npy.append(v)?;
        }
        w.finish()?;
        npy.finish()?;
        counts.regions = regs.len() as u64;
        let th = Instant::now();
        crate::ingest::build_graphs(
            &dir,
            &dims,
            opts.hnsw,
            crate::index::DEFAULT_SEED,
            GraphBuilder::Partlens,
        )?;
        hnsw_seconds += th.elapsed().as_secs_f64();
        crate::files::sync_tree(&dir)?;
        crate::ingest::add_counts(&mut total, &counts);
        segments.push(SegmentInfo {
            name,
            first_id,
            counts,
            origin: None,
            items: None,
            dense: None,
            files: crate::ingest::record_files(&dir)?,
        });
        tracing::info!("imported segment {k}: {} rows in all", total.regions);
    }
    let mut splits: Vec<String> = regions.iter().map(|r| r.split.clone()).collect();
    splits.sort_unstable();
    splits.dedup();
    let root = opts
        .root
        .clone()
        .or_else(|| opts.metadata.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        partlens_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix: crate::ingest::now_unix(),
        encoder,
        dataset: DatasetInfo {
            path: std::fs::canonicalize(&root)
                .unwrap_or(root)
                .display()
                .to_string(),
            format: "import".into(),
            splits,
            options: serde_json::json!({
                "vectors": std::fs::canonicalize(&opts.vectors).unwrap_or(opts.vectors.clone()),
                "metadata": std::fs::canonicalize(&opts.metadata).unwrap_or(opts.metadata.clone()),
            }),
        },
        settings: crate::dataset::RegionSettings::default(),
        counts: total,
        features: vec![opts.feature.as_str().to_string()],
        shards: Vec::new(),
        hnsw: [(opts.feature.as_str().to_string(), hnsw)].into(),
        skipped: Vec::new(),
        files: BTreeMap::new(),
        segments,
        ingest: None,
        dense: None,
        tokens: None,
    };
    manifest
        .validate()
        .map_err(|e| Error::InvalidArgument(format!("imported manifest: {e}")))?;
    std::fs::write(stage.join(MARKER_FILE), MARKER_TEXT).at(&stage)?;
    manifest.write_atomic(&stage)?;
    staged.commit(&|old| crate::ingest::check_target(old, opts.overwrite).is_ok())?;
    Ok(ImportReport {
        path: opts.out.clone(),
        regions: n as u64,
        dim,
        segments: manifest.segments.len(),
        seconds: start.elapsed().as_secs_f64(),
        hnsw_seconds,
    })
}

/// An integer column as `i64`s (nulls `None`); any Arrow integer type.
fn ints(a: &ArrayRef, name: &str, path: &Path) -> Result<Vec<Option<i64>>> {
    macro_rules! prim {
        ($t:ty) => {
            a.as_primitive::<$t>()
                .iter()
                .map(|v| v.map(|v| v as i64))
                .collect()
        };
    }
    Ok(match a.data_type() {
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => a
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.map(|v| v.min(i64::MAX as u64) as i64))
            .collect(),
        t => {
            return Err(Error::InvalidArgument(format!(
                "{}: column {name:?} is {t}, expected integers",
                path.display()
            )))
        }
    })
}

/// A string column (utf8 or large utf8; nulls `None`).
fn strings(a: &ArrayRef, name: &str, path: &Path) -> Result<Vec<Option<String>>> {
    Ok(match a.data_type() {
        DataType::Utf8 => a
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect(),
        DataType::LargeUtf8 => a
            .as_string::<i64>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect(),
        t => {
            return Err(Error::InvalidArgument(format!(
                "{}: column {name:?} is {t}, expected strings",
                path.display()
            )))
        }
    })
}

/// The box column: 4 integers per row (fixed-size or variable list).
fn boxes(a: &ArrayRef, path: &Path) -> Result<Vec<Option<[i64; 4]>>> {
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "{}: column \"box\" {why}; expected [x0, y0, x1, y1] integers per row",
            path.display()
        ))
    };
    let mut out = Vec::with_capacity(a.len());
    let rows: Vec<Option<ArrayRef>> = match a.data_type() {
        DataType::FixedSizeList(_, _) => {
            let l = a.as_fixed_size_list();
            (0..l.len())
                .map(|i| l.is_valid(i).then(|| l.value(i)))
                .collect()
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            (0..l.len())
                .map(|i| l.is_valid(i).then(|| l.value(i)))
                .collect()
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            (0..l.len())
                .map(|i| l.is_valid(i).then(|| l.value(i)))
                .collect()
        }
        _ => return Err(bad("is not a list")),
    };
    for r in rows {
        match r {
            None => out.push(None),
            Some(v) => {
                let v = ints(&v, "box", path)?;
                let v: Vec<i64> = v.into_iter().map(|x| x.unwrap_or(0)).collect();
                let b: [i64; 4] = v
                    .try_into()
                    .map_err(|_| bad("has a row of other than 4 values"))?;
                out.push(Some(b));
            }
        }
    }
    Ok(out)
}

/// Reads the metadata table into regions (ids not yet set; see the module doc).
fn read_metadata(path: &Path) -> Result<Vec<Region>> {
    let file = crate::files::open_regular(path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::corrupt(path, format!("not a readable Parquet file: {e}")))?;
    let reader = builder
        .with_batch_size(8192)
        .build()
        .map_err(|e| Error::corrupt(path, e.to_string()))?;
    let mut out: Vec<Region> = Vec::new();
    let mut missing_label = Vec::new();
    for batch in reader {
        let b: RecordBatch = batch.map_err(|e| Error::corrupt(path, e.to_string()))?;
        let col = |n: &str| b.column_by_name(n);
        let image = strings(
            col("image").ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: no \"image\" column (each row's image path is required)",
                    path.display()
                ))
            })?,
            "image",
            path,
        )?;
        let opt_s = |n: &str| col(n).map(|a| strings(a, n, path)).transpose();
        let opt_i = |n: &str| col(n).map(|a| ints(a, n, path)).transpose();
        let (split, kind, label_name, object_name) = (
            opt_s("split")?,
            opt_s("kind")?,
            opt_s("label_name")?,
            opt_s("object_name")?,
        );
        let (label, object_label, instance, area) = (
            opt_i("label")?,
            opt_i("object_label")?,
            opt_i("instance")?,
            opt_i("area")?,
        );
        let bx = col("box").map(|a| boxes(a, path)).transpose()?;
        for i in 0..b.num_rows() {
            let row = out.len();
            let at = |v: &Option<Vec<Option<String>>>| v.as_ref().and_then(|v| v[i].clone());
            let num = |v: &Option<Vec<Option<i64>>>| v.as_ref().and_then(|v| v[i]);
            let image = image[i].clone().ok_or_else(|| {
                Error::InvalidArgument(format!("{}: row {row} has no image", path.display()))
            })?;
            let kind = match at(&kind).as_deref() {
                None => RegionKind::Part,
                Some(k) => RegionKind::parse(k).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{}: row {row} has kind {k:?}; expected \"part\" or \"object\"",
                        path.display()
                    ))
                })?,
            };
            let u32_of = |v: Option<i64>, what: &str| -> Result<Option<u32>> {
                v.map(|x| {
                    u32::try_from(x).map_err(|_| {
                        Error::InvalidArgument(format!(
                            "{}: row {row}: {what} {x} is not in 0..2³²",
                            path.display()
                        ))
                    })
                })
                .transpose()
            };
            let b4 = bx.as_ref().and_then(|v| v[i]).unwrap_or([0; 4]);
            let bbox = PixelBox {
                x0: b4[0],
                y0: b4[1],
                x1: b4[2],
                y1: b4[3],
            };
            let label = u32_of(num(&label), "label")?;
            if label.is_none() {
                missing_label.push(row);
            }
            out.push(Region {
                id: 0,
                image,
                split: at(&split).unwrap_or_else(|| "all".into()),
                kind,
                label: label.unwrap_or(0),
                label_name: at(&label_name).unwrap_or_default(),
                object_label: u32_of(num(&object_label), "object_label")?,
                object_name: at(&object_name),
                instance: u32_of(num(&instance), "instance")?.unwrap_or(0),
                bbox,
                crop_box: bbox,
                area: num(&area)
                    .map(|a| a.max(0) as u64)
                    .unwrap_or((bbox.width().max(0) * bbox.height().max(0)) as u64),
                mask_rle: Vec::new(),
            });
        }
    }
    // Labels left out: the rank of each name among the distinct names.
    if !missing_label.is_empty() {
        let mut names: Vec<&str> = out.iter().map(|r| r.label_name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let rank: BTreeMap<String, u32> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i as u32))
            .collect();
        for i in missing_label {
            out[i].label = rank[&out[i].label_name];
        }
    }
    Ok(out)
}
