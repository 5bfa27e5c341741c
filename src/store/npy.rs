//! `.npy` arrays: float32 matrices ([`NpyWriter`], [`NpyMatrix`]) and float16 arrays of any
//! rank ([`HalfWriter`], [`HalfArray`]: dense grids and patch tokens), written row by row, read
//! back through `memmap2`, and opened by `numpy.load(path, mmap_mode="r")` without this tool.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, IoContext, Result};

// The files are little-endian float32 ('<f4') and are read in place, without a copy; on a
// big-endian host every value would need swapping, which this reader does not do.
#[cfg(target_endian = "big")]
compile_error!(
    "partlens maps little-endian .npy files in place; big-endian hosts are not supported"
);

/// Header length we always write (magic + version + length + dict, padded), so the row count
/// can be patched in place when the writer finishes.
const HEADER_LEN: usize = 128;

fn header(rows: usize, cols: usize) -> Vec<u8> {
    header_of("<f4", rows, &[cols])
}

/// A header for `descr` and shape `(rows, inner…)`, padded to [`HEADER_LEN`].
fn header_of(descr: &str, rows: usize, inner: &[usize]) -> Vec<u8> {
    let shape: Vec<String> = std::iter::once(rows)
        .chain(inner.iter().copied())
        .map(|d| d.to_string())
        .collect();
    let dict = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}), }}",
        shape.join(", ")
    );
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&((HEADER_LEN - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(HEADER_LEN - 1, b' ');
    h.push(b'\n');
    h
}

/// Writes a whole small `.npy` at once: dtype `descr` (e.g. `<i4`, `<i8`), `shape`, and its
/// values as little-endian bytes (labels or ids for numpy; matrices use the writers below).
pub fn write_raw(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let item: usize = descr
        .trim_start_matches(['<', '>', '|'])
        .get(1..)
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    let values: usize = shape.iter().product();
    let (rows, inner) = shape.split_first().unwrap_or((&0, &[]));
    if item == 0 || Some(data.len()) != values.checked_mul(item) {
        return Err(Error::InvalidArgument(format!(
            "{}: {} bytes are not a {shape:?} array of {descr}",
            path.display(),
            data.len()
        )));
    }
    let mut bytes = header_of(descr, *rows, inner);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).at(path)
}

/// Flushes `file`, writes the final `header` over the placeholder and syncs.
fn finish_file(file: std::io::BufWriter<File>, path: &Path, header: &[u8]) -> Result<()> {
    let mut file = file
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.seek(SeekFrom::Start(0)).at(path)?;
    file.write_all(header).at(path)?;
    file.sync_all().at(path)
}

/// Maps the `.npy` file at `path` of dtype `descr` (`item` bytes per value) and checks its
/// length against its header: the map, the data offset and the shape.
fn map_checked(path: &Path, descr: &str, item: usize) -> Result<(Mmap, usize, Vec<usize>)> {
    let file = crate::files::open_regular(path)?;
    // SAFETY: a mapping is only sound while nobody modifies or truncates the file. partlens
    // never writes to a finished index (a new ingest builds a new folder and swaps it in,
    // leaving open files of the old one intact), and the length is checked below; a file
    // truncated by another program while mapped would raise SIGBUS, as with any mmap.
    let mmap = unsafe { Mmap::map(&file) }.at(path)?;
    let (offset, shape) = parse_any(&mmap, path, descr)?;
    let need = shape
        .iter()
        .try_fold(item, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_add(offset))
        .ok_or_else(|| Error::corrupt(path, format!("impossible shape {shape:?}")))?;
    if mmap.len() != need {
        return Err(Error::corrupt(
            path,
            format!(
                "file is {} bytes, its header ({shape:?} of {descr}) needs {need}: truncated?",
                mmap.len()
            ),
        ));
    }
    if !offset.is_multiple_of(item) {
        return Err(Error::corrupt(
            path,
            format!("data not {item}-byte aligned"),
        ));
    }
    Ok((mmap, offset, shape))
}

/// Appends float32 rows of fixed width to a `.npy` file.
#[derive(Debug)]
pub struct NpyWriter {
    path: PathBuf,
    file: std::io::BufWriter<File>,
    cols: usize,
    rows: usize,
}

impl NpyWriter {
    /// Creates (truncates) `path` for rows of `cols` floats.
    pub fn create(path: impl AsRef<Path>, cols: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut file = std::io::BufWriter::new(File::create(&path).at(&path)?);
        file.write_all(&header(0, cols)).at(&path)?;
        Ok(NpyWriter {
            path,
            file,
            cols,
            rows: 0,
        })
    }

    /// Appends `values.len() / cols` rows.
    pub fn append(&mut self, values: &[f32]) -> Result<()> {
        if !values.len().is_multiple_of(self.cols) {
            return Err(Error::InvalidArgument(format!(
                "{}: {} values are not whole rows of {}",
                self.path.display(),
                values.len(),
                self.cols
            )));
        }
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.file.write_all(&bytes).at(&self.path)?;
        self.rows += values.len() / self.cols;
        Ok(())
    }

    /// Writes the final shape into the header and syncs the file. Returns the row count.
    pub fn finish(self) -> Result<usize> {
        finish_file(self.file, &self.path, &header(self.rows, self.cols))?;
        Ok(self.rows)
    }
}

/// A memory-mapped float32 `.npy` matrix.
#[derive(Debug)]
pub struct NpyMatrix {
    path: PathBuf,
    mmap: Mmap,
    offset: usize,
    rows: usize,
    cols: usize,
}

/// The data offset and shape of a C-order `.npy` of dtype `descr`.
fn parse_any(bytes: &[u8], path: &Path, descr: &str) -> Result<(usize, Vec<usize>)> {
    let bad = |m: &str| Error::corrupt(path, format!("not a {descr} .npy array: {m}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unknown version")),
    };
    let dict = bytes
        .get(start..start + hlen)
        .and_then(|d| std::str::from_utf8(d).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if !dict.contains(&format!("'descr': '{descr}'")) || !dict.contains("'fortran_order': False") {
        return Err(bad(&format!("dtype must be '{descr}', C order")));
    }
    let shape = dict
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    if dims.is_empty() || dims.len() > 8 {
        return Err(bad("rank must be 1 to 8"));
    }
    Ok((start + hlen, dims))
}

impl NpyMatrix {
    /// Maps `path` and checks its header and length; a truncated file is [`Error::DataCorruption`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (mmap, offset, shape) = map_checked(path, "<f4", 4)?;
        let [rows, cols] = shape[..] else {
            return Err(Error::corrupt(path, "not a float32 .npy matrix: not 2-D"));
        };
        Ok(NpyMatrix {
            path: path.to_path_buf(),
            mmap,
            offset,
            rows,
            cols,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// All values, row-major, without copying.
    pub fn as_slice(&self) -> &[f32] {
        // `open` checked the length and the 4-byte alignment of the offset (the mapping itself
        // is page-aligned), so the cast cannot fail; an empty slice is the safe answer if it
        // ever did.
        bytemuck::try_cast_slice(&self.mmap[self.offset..]).unwrap_or(&[])
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.as_slice()[i * self.cols..(i + 1) * self.cols]
    }

    /// Row `i` read from the file with `pread`, not through the map: a process that checks a
    /// few rows this way does not map (and count in its RSS) the pages around them.
    pub fn read_row(&self, i: usize) -> Result<Vec<f32>> {
        use std::os::unix::fs::FileExt;
        if i >= self.rows {
            return Err(Error::InvalidArgument(format!(
                "{}: no row {i} of {}",
                self.path.display(),
                self.rows
            )));
        }
        let mut bytes = vec![0u8; self.cols * 4];
        let at = (self.offset + i * self.cols * 4) as u64;
        std::fs::File::open(&self.path)
            .and_then(|f| f.read_exact_at(&mut bytes, at))
            .at(&self.path)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

/// Appends float16 rows of a fixed inner shape (e.g. `[D]` for grid cells, `[T, D]` for a
/// region's tokens) to a `.npy` file (`<f2`); values arrive as float32 and are rounded to
/// nearest even. Values beyond float16's range (±65,504) would become infinite and are
/// refused, naming the file.
#[derive(Debug)]
pub struct HalfWriter {
    path: PathBuf,
    file: std::io::BufWriter<File>,
    inner: Vec<usize>,
    row_len: usize,
    rows: usize,
    buf: Vec<half::f16>,
}

impl HalfWriter {
    /// Creates (truncates) `path` for rows of shape `inner`.
    pub fn create(path: impl AsRef<Path>, inner: &[usize]) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let row_len = inner.iter().product::<usize>();
        if row_len == 0 {
            return Err(Error::InvalidArgument(format!(
                "{}: empty row shape {inner:?}",
                path.display()
            )));
        }
        let mut file = std::io::BufWriter::new(File::create(&path).at(&path)?);
        file.write_all(&header_of("<f2", 0, inner)).at(&path)?;
        Ok(HalfWriter {
            path,
            file,
            inner: inner.to_vec(),
            row_len,
            rows: 0,
            buf: Vec::new(),
        })
    }

    /// Appends `values.len() / row_len` rows.
    pub fn append(&mut self, values: &[f32]) -> Result<()> {
        use half::slice::HalfFloatSliceExt;
        if !values.len().is_multiple_of(self.row_len) {
            return Err(Error::InvalidArgument(format!(
                "{}: {} values are not whole rows of {}",
                self.path.display(),
                values.len(),
                self.row_len
            )));
        }
        self.buf.clear();
        self.buf.resize(values.len(), half::f16::ZERO);
        self.buf.convert_from_f32_slice(values);
        if let Some(i) = self.buf.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "{}: value {} (row {}) does not fit float16 (largest 65504)",
                self.path.display(),
                values[i],
                self.rows + i / self.row_len
            )));
        }
        self.file
            .write_all(bytemuck::cast_slice(&self.buf))
            .at(&self.path)?;
        self.rows += values.len() / self.row_len;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes the final shape into the header and syncs the file. Returns the row count.
    pub fn finish(self) -> Result<usize> {
        let header = header_of("<f2", self.rows, &self.inner);
        finish_file(self.file, &self.path, &header)?;
        Ok(self.rows)
    }
}

/// A memory-mapped float16 `.npy` array (`<f2`, C order) of any rank; row = first axis.
#[derive(Debug)]
pub struct HalfArray {
    mmap: Mmap,
    offset: usize,
    shape: Vec<usize>,
    row_len: usize,
}

impl HalfArray {
    /// Maps `path` and checks its header and length; a truncated file is
    /// [`Error::DataCorruption`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let (mmap, offset, shape) = map_checked(path.as_ref(), "<f2", 2)?;
        let row_len = shape[1..].iter().product();
        Ok(HalfArray {
            mmap,
            offset,
            shape,
            row_len,
        })
    }

    /// The shape, first axis = rows.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of rows (the first axis).
    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    /// Values per row (the product of the other axes).
    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// All values, without copying.
    pub fn as_slice(&self) -> &[half::f16] {
        // Length and 2-byte alignment were checked by `open`.
        bytemuck::try_cast_slice(&self.mmap[self.offset..]).unwrap_or(&[])
    }

    /// Rows `start..start + n` converted to float32 into `out` (`n × row_len` values).
    pub fn read_rows(&self, start: usize, n: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let s = &self.as_slice()[start * self.row_len..(start + n) * self.row_len];
        s.convert_to_f32_slice(&mut out[..s.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        let mut w = NpyWriter::create(&p, 3).unwrap();
        w.append(&[1.0, 2.0, 3.0]).unwrap();
        w.append(&[4.0, 5.0, 6.0, 7.0, 8.0, 9.0]).unwrap();
        assert_eq!(w.finish().unwrap(), 3);
        let m = NpyMatrix::open(&p).unwrap();
        assert_eq!((m.rows(), m.cols()), (3, 3));
        assert_eq!(m.row(2), &[7.0, 8.0, 9.0]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let err = NpyMatrix::open(&p).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn half_arrays_round_trip_refuse_overflow_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.npy");
        let mut w = HalfWriter::create(&p, &[2, 3]).unwrap();
        let vals: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        w.append(&vals).unwrap();
        let err = w.append(&[1e6; 6]).unwrap_err();
        assert!(err.to_string().contains("float16"), "{err}");
        assert_eq!(w.finish().unwrap(), 2);
        let a = HalfArray::open(&p).unwrap();
        assert_eq!((a.shape(), a.rows(), a.row_len()), (&[2, 2, 3][..], 2, 6));
        let mut out = vec![0f32; 6];
        a.read_rows(1, 1, &mut out);
        assert_eq!(out, vals[6..]);
        // float32 readers refuse it, and a truncated file is corruption.
        assert!(NpyMatrix::open(&p).is_err());
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 2]).unwrap();
        let err = HalfArray::open(&p).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
