//! `regions/part-NNNNN.parquet`: one row per region, its metadata and one
//! `FixedSizeList<Float32, D>` column per feature. Readable by pyarrow, pandas and DuckDB.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, UInt32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, UInt32Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, StringArray,
    UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::encoder::{Feature, Features};
use crate::error::{Error, Result};
use crate::region::{PixelBox, Region, RegionKind};

/// Metadata columns, in order (features follow).
pub const METADATA_COLUMNS: [&str; 13] = [
    "id",
    "image",
    "split",
    "kind",
    "label",
    "label_name",
    "object_label",
    "object_name",
    "instance",
    "box",
    "crop_box",
    "area",
    "mask_rle",
];

pub(crate) fn pq_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn box_field() -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Int32, false)), 4)
}

/// The Arrow schema of a region file with the given feature dimensions.
pub fn schema(dims: &BTreeMap<Feature, usize>) -> SchemaRef {
    let mut fields = vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("image", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("label", DataType::UInt32, false),
        Field::new("label_name", DataType::Utf8, false),
        Field::new("object_label", DataType::UInt32, true),
        Field::new("object_name", DataType::Utf8, true),
        Field::new("instance", DataType::UInt32, false),
        Field::new("box", box_field(), false),
        Field::new("crop_box", box_field(), false),
        Field::new("area", DataType::UInt64, false),
        Field::new(
            "mask_rle",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))),
            false,
        ),
    ];
    for (f, d) in dims {
        fields.push(Field::new(
            f.as_str(),
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                *d as i32,
            ),
            false,
        ));
    }
    Arc::new(Schema::new(fields))
}

fn boxes(v: impl Iterator<Item = PixelBox>) -> Result<ArrayRef> {
    let flat: Vec<i32> = v
        .flat_map(|b| b.to_array())
        .map(|x| x.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
        .collect();
    let values = Arc::new(Int32Array::from(flat));
    let field = Arc::new(Field::new("item", DataType::Int32, false));
    FixedSizeListArray::try_new(field, 4, values, None)
        .map(|a| Arc::new(a) as ArrayRef)
        .map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Streams regions and their features into one Parquet file.
pub struct RegionWriter {
    path: PathBuf,
    schema: SchemaRef,
    dims: BTreeMap<Feature, usize>,
    writer: ArrowWriter<File>,
    rows: u64,
}

impl RegionWriter {
    /// Creates `path` for features of the given dimensions.
    pub fn create(path: impl AsRef<Path>, dims: &BTreeMap<Feature, usize>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let schema = schema(dims);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let props = writer_props();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| pq_err(&path, e))?;
        Ok(RegionWriter {
            path,
            schema,
            dims: dims.clone(),
            writer,
            rows: 0,
        })
    }

    /// Appends regions with their features (`features.n == regions.len()`).
    pub fn write(&mut self, regions: &[Region], features: &Features) -> Result<()> {
        let mut mask = ListBuilder::new(UInt32Builder::new());
        for r in regions {
            mask.values().append_slice(&r.mask_rle);
            mask.append(true);
        }
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(regions.iter().map(|r| r.id))),
            Arc::new(StringArray::from_iter_values(
                regions.iter().map(|r| &r.image),
            )),
            Arc::new(StringArray::from_iter_values(
                regions.iter().map(|r| &r.split),
            )),
            Arc::new(StringArray::from_iter_values(
                regions.iter().map(|r| r.kind.as_str()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                regions.iter().map(|r| r.label),
            )),
            Arc::new(StringArray::from_iter_values(
                regions.iter().map(|r| &r.label_name),
            )),
            Arc::new(UInt32Array::from_iter(
                regions.iter().map(|r| r.object_label),
            )),
            Arc::new(StringArray::from_iter(
                regions.iter().map(|r| r.object_name.as_deref()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                regions.iter().map(|r| r.instance),
            )),
            boxes(regions.iter().map(|r| r.bbox))?,
            boxes(regions.iter().map(|r| r.crop_box))?,
            Arc::new(UInt64Array::from_iter_values(
                regions.iter().map(|r| r.area),
            )),
            Arc::new(mask.finish()),
        ];
        for (f, d) in &self.dims {
            let values = features.values.get(f).ok_or_else(|| {
                Error::InvalidArgument(format!("feature {f} missing from the batch"))
            })?;
            if values.len() != regions.len() * d {
                return Err(Error::InvalidArgument(format!(
                    "feature {f}: {} values for {} regions of dim {d}",
                    values.len(),
                    regions.len()
                )));
            }
            let field = Arc::new(Field::new("item", DataType::Float32, false));
            let arr = FixedSizeListArray::try_new(
                field,
                *d as i32,
                Arc::new(Float32Array::from(values.clone())),
                None,
            )
            .map_err(|e| pq_err(&self.path, e))?;
            cols.push(Arc::new(arr));
        }
        let batch =
            RecordBatch::try_new(self.schema.clone(), cols).map_err(|e| pq_err(&self.path, e))?;
        self.writer
            .write(&batch)
            .map_err(|e| pq_err(&self.path, e))?;
        self.rows += regions.len() as u64;
        Ok(())
    }

    /// Closes the file (writes the footer) and syncs it. Returns the row count.
    pub fn finish(self) -> Result<u64> {
        let path = self.path;
        let file = self.writer.into_inner().map_err(|e| pq_err(&path, e))?;
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        Ok(self.rows)
    }
}

pub(crate) fn col<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::corrupt(path, format!("column {name:?} missing")))
}

/// The error of a column that is not of the type the schema says.
fn wrong_type(path: &Path, name: &str) -> Error {
    Error::corrupt(path, format!("column {name:?} has the wrong type"))
}

/// Column `name` of `batch` as strings; missing or of another type: corruption.
pub(crate) fn string_col(batch: &RecordBatch, name: &str, path: &Path) -> Result<StringArray> {
    Ok(col(batch, name, path)?
        .as_string_opt::<i32>()
        .ok_or_else(|| wrong_type(path, name))?
        .clone())
}

/// Column `name` of `batch` as uint32; missing or of another type: corruption.
pub(crate) fn u32_col(batch: &RecordBatch, name: &str, path: &Path) -> Result<UInt32Array> {
    Ok(col(batch, name, path)?
        .as_primitive_opt::<UInt32Type>()
        .ok_or_else(|| wrong_type(path, name))?
        .clone())
}

/// Column `name` of `batch` as uint64; missing or of another type: corruption.
pub(crate) fn u64_col(batch: &RecordBatch, name: &str, path: &Path) -> Result<UInt64Array> {
    Ok(col(batch, name, path)?
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| wrong_type(path, name))?
        .clone())
}

fn read_boxes(a: &ArrayRef, path: &Path) -> Result<Vec<PixelBox>> {
    let l = a
        .as_fixed_size_list_opt()
        .ok_or_else(|| Error::corrupt(path, "box column has the wrong type"))?;
    if l.value_length() != 4 {
        return Err(Error::corrupt(
            path,
            "box column must hold 4 values per row",
        ));
    }
    let v = l
        .values()
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| Error::corrupt(path, "box values have the wrong type"))?;
    if v.len() != l.len() * 4 {
        return Err(Error::corrupt(path, "box column is short"));
    }
    Ok(v.values()
        .chunks_exact(4)
        .map(|c| PixelBox {
            x0: c[0].into(),
            y0: c[1].into(),
            x1: c[2].into(),
            y1: c[3].into(),
        })
        .collect())
}

/// Reads every region's metadata (no feature columns) from a region file.
pub fn read_regions(path: impl AsRef<Path>) -> Result<Vec<Region>> {
    let path = path.as_ref();
    read_region_rows(path, reader_builder(path, false)?, None, true)
}

/// Opens a region file for reading; with `pages`, its offset index too (so a row selection
/// decodes only the pages holding the rows).
fn reader_builder(path: &Path, pages: bool) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = crate::files::open_regular(path)?;
    let policy = if pages {
        PageIndexPolicy::Optional
    } else {
        PageIndexPolicy::Skip
    };
    let opts = ArrowReaderOptions::new().with_offset_index_policy(policy);
    ParquetRecordBatchReaderBuilder::try_new_with_options(file, opts)
        .map_err(|e| Error::corrupt(path, format!("not a readable Parquet file: {e}")))
}

/// The projection of `builder`'s root columns named in `names`.
fn project(builder: &ParquetRecordBatchReaderBuilder<File>, names: &[&str]) -> ProjectionMask {
    let roots: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| names.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    ProjectionMask::roots(builder.parquet_schema(), roots)
}

/// Rows in a region file, from its footer (nothing else is read).
pub fn count_rows(path: &Path) -> Result<u64> {
    let b = reader_builder(path, false)?;
    Ok(b.metadata().file_metadata().num_rows().max(0) as u64)
}

/// A region file opened for reading single rows: its footer and offset index read once, so
/// each read decodes only the pages holding the rows asked for.
#[derive(Debug, Clone)]
pub struct RegionFile {
    path: PathBuf,
    meta: ArrowReaderMetadata,
    rows: usize,
}

impl RegionFile {
    /// Reads `path`'s footer and offset index.
    pub fn open(path: &Path) -> Result<RegionFile> {
        let file = crate::files::open_regular(path)?;
        let opts = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
        let meta = ArrowReaderMetadata::load(&file, opts)
            .map_err(|e| Error::corrupt(path, format!("not a readable Parquet file: {e}")))?;
        let rows = meta.metadata().file_metadata().num_rows().max(0) as usize;
        Ok(RegionFile {
            path: path.to_path_buf(),
            meta,
            rows,
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its number of rows (from the footer).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The metadata of the rows at `local` (ascending, distinct row numbers of the file);
    /// without `masks`, the mask column is not decoded (`mask_rle` left empty).
    pub fn read_at(&self, local: &[usize], masks: bool) -> Result<Vec<Region>> {
        if local.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(
                "rows must be ascending and distinct".into(),
            ));
        }
        if let Some(&last) = local.last().filter(|&&l| l >= self.rows) {
            return Err(Error::corrupt(
                &self.path,
                format!("row {last} asked for; the file holds {}", self.rows),
            ));
        }
        let file = crate::files::open_regular(&self.path)?;
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.meta.clone());
        let ranges = local.iter().map(|&i| i..i + 1);
        let sel = RowSelection::from_consecutive_ranges(ranges, self.rows);
        read_region_rows(&self.path, builder, Some(sel), masks)
    }
}

/// The columns [`scan_light`] reads: what filters and summaries need.
pub const LIGHT_COLUMNS: [&str; 7] = [
    "id",
    "split",
    "kind",
    "label",
    "label_name",
    "object_label",
    "object_name",
];

/// The filterable columns of a batch of region rows (no boxes, masks or features).
pub struct LightBatch {
    /// Region ids.
    pub id: UInt64Array,
    /// Splits.
    pub split: StringArray,
    /// `part` / `object`.
    pub kind: StringArray,
    /// Label ids.
    pub label: UInt32Array,
    /// Label names.
    pub label_name: StringArray,
    /// Object class ids (null: unknown).
    pub object_label: UInt32Array,
    /// Object class names (null: unknown).
    pub object_name: StringArray,
}

impl LightBatch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.id.len()
    }

    /// True when the batch has no row.
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    /// Row `i`'s kind.
    pub fn kind(&self, i: usize) -> Option<RegionKind> {
        RegionKind::parse(self.kind.value(i))
    }

    /// Row `i`'s object class name, if known.
    pub fn object_name(&self, i: usize) -> Option<&str> {
        self.object_name
            .is_valid(i)
            .then(|| self.object_name.value(i))
    }

    /// Row `i`'s object class id, if known.
    pub fn object_label(&self, i: usize) -> Option<u32> {
        self.object_label
            .is_valid(i)
            .then(|| self.object_label.value(i))
    }
}

/// Streams the filterable columns of every row of a region file to `f`, a batch at a time.
pub fn scan_light(path: &Path, f: &mut dyn FnMut(&LightBatch) -> Result<()>) -> Result<()> {
    let builder = reader_builder(path, false)?;
    let mask = project(&builder, &LIGHT_COLUMNS);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|e| pq_err(path, e))?;
    for batch in reader {
        let b = batch.map_err(|e| Error::corrupt(path, e.to_string()))?;
        let lb = LightBatch {
            id: u64_col(&b, "id", path)?,
            split: string_col(&b, "split", path)?,
            kind: string_col(&b, "kind", path)?,
            label: u32_col(&b, "label", path)?,
            label_name: string_col(&b, "label_name", path)?,
            object_label: u32_col(&b, "object_label", path)?,
            object_name: string_col(&b, "object_name", path)?,
        };
        f(&lb)?;
    }
    Ok(())
}

/// The rows of the region files `srcs`, in order, as one file `dst`, ids renumbered from
/// `first_id` (every other column, features included, as it is): how `merge` adopts a
/// segment and `compact` joins segments, without re-embedding. The files must share one schema.
pub fn concat_renumbered(srcs: &[PathBuf], dst: &Path, first_id: u64) -> Result<u64> {
    let mut writer: Option<(ArrowWriter<File>, SchemaRef)> = None;
    let mut next = first_id;
    for src in srcs {
        let builder = reader_builder(src, false)?;
        let schema = builder.schema().clone();
        let id_col = schema
            .index_of("id")
            .map_err(|_| Error::corrupt(src, "column \"id\" missing"))?;
        let reader = builder
            .with_batch_size(8192)
            .build()
            .map_err(|e| pq_err(src, e))?;
        let (w, wschema) = match &mut writer {
            Some(w) => w,
            None => {
                let file = File::create(dst).map_err(|e| Error::io(dst, e))?;
                let w = ArrowWriter::try_new(file, schema.clone(), Some(writer_props()))
                    .map_err(|e| pq_err(dst, e))?;
                writer.insert((w, schema.clone()))
            }
        };
        if *wschema != schema {
            return Err(Error::corrupt(
                src,
                "its columns differ from the other region files'",
            ));
        }
        for batch in reader {
            let b = batch.map_err(|e| Error::corrupt(src, e.to_string()))?;
            let n = b.num_rows() as u64;
            let mut cols = b.columns().to_vec();
            cols[id_col] = Arc::new(UInt64Array::from_iter_values(next..next + n));
            next += n;
            let nb = RecordBatch::try_new(schema.clone(), cols).map_err(|e| pq_err(dst, e))?;
            w.write(&nb).map_err(|e| pq_err(dst, e))?;
        }
    }
    let (w, _) = writer.ok_or_else(|| Error::InvalidArgument("no region file to copy".into()))?;
    let file = w.into_inner().map_err(|e| pq_err(dst, e))?;
    file.sync_all().map_err(|e| Error::io(dst, e))?;
    Ok(next - first_id)
}

/// How region files are written: Snappy, row groups of 8192, pages of ≤ 256 rows with an
/// offset index, so a query reads its hits' rows by decoding only the pages that hold them.
fn writer_props() -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(8192))
        .set_data_page_row_count_limit(256)
        .set_write_batch_size(256)
        // A dictionary page is read whole for any row of its row group: kept for the columns
        // of few distinct values, not for ids, boxes, areas, masks and features (where it
        // holds nearly every value and made one row's read decode the row group's).
        .set_dictionary_enabled(false);
    for c in DICTIONARY_COLUMNS {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c), true);
    }
    b.build()
}

/// Columns written with a dictionary: few distinct values.
const DICTIONARY_COLUMNS: [&str; 7] = [
    "image",
    "split",
    "kind",
    "label",
    "label_name",
    "object_label",
    "object_name",
];

fn read_region_rows(
    path: &Path,
    mut builder: ParquetRecordBatchReaderBuilder<File>,
    selection: Option<RowSelection>,
    masks: bool,
) -> Result<Vec<Region>> {
    let columns: Vec<&str> = METADATA_COLUMNS
        .iter()
        .copied()
        .filter(|c| masks || *c != "mask_rle")
        .collect();
    let mask = project(&builder, &columns);
    if let Some(sel) = selection {
        builder = builder.with_row_selection(sel);
    }
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| pq_err(path, e))?;
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.map_err(|e| Error::corrupt(path, e.to_string()))?;
        let u64s = |n: &str| -> Result<Vec<u64>> { Ok(u64_col(&b, n, path)?.values().to_vec()) };
        let u32s = |n: &str| u32_col(&b, n, path);
        let strs = |n: &str| string_col(&b, n, path);
        let (ids, areas) = (u64s("id")?, u64s("area")?);
        let (image, split, kind, label_name, object_name) = (
            strs("image")?,
            strs("split")?,
            strs("kind")?,
            strs("label_name")?,
            strs("object_name")?,
        );
        let (label, object_label, instance) =
            (u32s("label")?, u32s("object_label")?, u32s("instance")?);
        let bbox = read_boxes(col(&b, "box", path)?, path)?;
        let crop = read_boxes(col(&b, "crop_box", path)?, path)?;
        let mask_col = match masks {
            true => Some(
                col(&b, "mask_rle", path)?
                    .as_list_opt::<i32>()
                    .ok_or_else(|| wrong_type(path, "mask_rle"))?,
            ),
            false => None,
        };
        for i in 0..b.num_rows() {
            let mask_rle = match mask_col {
                Some(masks) => masks
                    .value(i)
                    .as_primitive_opt::<UInt32Type>()
                    .ok_or_else(|| wrong_type(path, "mask_rle"))?
                    .values()
                    .to_vec(),
                None => Vec::new(),
            };
            out.push(Region {
                id: ids[i],
                image: image.value(i).to_string(),
                split: split.value(i).to_string(),
                kind: RegionKind::parse(kind.value(i))
                    .ok_or_else(|| Error::corrupt(path, format!("row {i}: unknown kind")))?,
                label: label.value(i),
                label_name: label_name.value(i).to_string(),
                object_label: object_label.is_valid(i).then(|| object_label.value(i)),
                object_name: object_name
                    .is_valid(i)
                    .then(|| object_name.value(i).to_string()),
                instance: instance.value(i),
                bbox: bbox[i],
                crop_box: crop[i],
                area: areas[i],
                mask_rle,
            });
        }
    }
    Ok(out)
}
