//! A reader for MATLAB v5/v7 MAT-files (the format of Pascal-Part's annotations): numeric and
//! character arrays, structs and cells, compressed or not. Everything is bounds-checked: a
//! truncated or corrupt file is an error naming the file, never a panic. (The one crate that
//! reads structs, matrw 0.1, panics on struct dimensions, so we read the format ourselves.)

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// A MATLAB value.
#[derive(Debug, Clone, PartialEq)]
pub enum MatValue {
    /// A numeric or logical array, converted to f64, column-major with `dims`.
    Numeric {
        /// Dimensions (MATLAB order: rows, columns, …).
        dims: Vec<usize>,
        /// Values, column-major.
        data: Vec<f64>,
    },
    /// A character array, as a string (rows concatenated for 1 × N arrays).
    Char(String),
    /// A struct array: `dims`, and per element the fields in declaration order.
    Struct {
        /// Dimensions.
        dims: Vec<usize>,
        /// One map per element.
        elements: Vec<BTreeMap<String, MatValue>>,
    },
    /// A cell array.
    Cell {
        /// Dimensions.
        dims: Vec<usize>,
        /// Elements, column-major.
        elements: Vec<MatValue>,
    },
}

impl MatValue {
    /// Field `name` of struct element `i`.
    pub fn field(&self, i: usize, name: &str) -> Option<&MatValue> {
        match self {
            MatValue::Struct { elements, .. } => elements.get(i)?.get(name),
            _ => None,
        }
    }

    /// Number of elements of a struct or cell array (1 for other values).
    pub fn len(&self) -> usize {
        match self {
            MatValue::Struct { elements, .. } => elements.len(),
            MatValue::Cell { elements, .. } => elements.len(),
            _ => 1,
        }
    }

    /// True for an empty struct or cell array.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;

/// Largest decompressed element accepted, in bytes (guards against zip bombs).
const MAX_ELEMENT: usize = 1 << 28;

/// Most numeric and character values decoded from one file (each becomes an 8-byte f64, so
/// this bounds a file's memory at 1 GB; Pascal-Part's largest annotations hold ~25 M). Every
/// array node and every struct field entry is charged [`NODE_COST`] values too, so a file of
/// millions of empty arrays is bounded as well.
const MAX_VALUES: usize = 1 << 27;

/// What one array node or struct field entry costs from the budget, in values (~128 bytes).
const NODE_COST: usize = 16;

/// Longest struct field name (MATLAB's own limit is 63 characters).
const MAX_FIELD_NAME: usize = 64;

/// Most bytes inflated from the compressed elements of one file, all together.
const MAX_INFLATED: usize = 1 << 28;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Parse<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Parse<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("truncated")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Parse<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "truncated")?,
        ))
    }

    /// One data element: (type, payload), skipping padding to 8 bytes.
    fn element(&mut self) -> Parse<(u32, &'a [u8])> {
        let first = self.u32()?;
        if first >> 16 != 0 {
            // Small data element: size and type packed in 4 bytes, data in the next 4.
            let (ty, n) = (first & 0xffff, (first >> 16) as usize);
            if n > 4 {
                return Err("small element larger than 4 bytes".into());
            }
            let data = self.take(4)?;
            return Ok((ty, &data[..n]));
        }
        let n = self.u32()? as usize;
        let data = self.take(n)?;
        if first != MI_COMPRESSED {
            let pad = (8 - n % 8) % 8;
            self.take(pad.min(self.buf.len() - self.pos))?;
        }
        Ok((first, data))
    }
}

fn numbers(ty: u32, d: &[u8]) -> Parse<Vec<f64>> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            d.chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect()
        };
    }
    Ok(match ty {
        MI_INT8 => d.iter().map(|&b| b as i8 as f64).collect(),
        MI_UINT8 | MI_UTF8 => d.iter().map(|&b| b as f64).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        other => return Err(format!("unsupported data type {other}")),
    })
}

/// Takes `n` values from the file's budget.
fn spend(budget: &mut usize, n: usize) -> Parse<()> {
    *budget = budget
        .checked_sub(n)
        .ok_or_else(|| format!("more than {MAX_VALUES} values in one file"))?;
    Ok(())
}

fn matrix(d: &[u8], depth: usize, budget: &mut usize) -> Parse<MatValue> {
    if depth > 32 {
        return Err("nesting deeper than 32 levels".into());
    }
    spend(budget, NODE_COST)?;
    let mut r = Reader { buf: d, pos: 0 };
    if d.is_empty() {
        return Ok(MatValue::Numeric {
            dims: vec![0, 0],
            data: vec![],
        });
    }
    let (_, flags) = r.element()?;
    let class = *flags.first().ok_or("missing array flags")?;
    let (dty, dim_bytes) = r.element()?;
    let dims: Vec<usize> = numbers(dty, dim_bytes)?
        .into_iter()
        .map(|v| {
            if (0.0..1e12).contains(&v) {
                Ok(v as usize)
            } else {
                Err("bad dimension")
            }
        })
        .collect::<std::result::Result<_, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .filter(|&c| c <= MAX_ELEMENT)
        .ok_or("array too large")?;
    let _name = r.element()?;
    // Every cell or struct-field element takes at least 8 bytes of the file: a count the
    // remaining bytes cannot hold is a lie, refused before looping over it (a 208-byte file
    // claimed 2^30 elements).
    let fits =
        |per: usize, remaining: usize| count.checked_mul(per).is_some_and(|b| b <= remaining + 8);
    match class {
        // mxCELL_CLASS
        1 => {
            let remaining = d.len() - r.pos;
            if !fits(8, remaining) {
                return Err(format!("cell of {count} elements in {remaining} bytes"));
            }
            let elements = (0..count)
                .map(|_| {
                    let (ty, m) = r.element()?;
                    if ty != MI_MATRIX {
                        return Err(format!("cell element of type {ty}"));
                    }
                    matrix(m, depth + 1, budget)
                })
                .collect::<Parse<_>>()?;
            Ok(MatValue::Cell { dims, elements })
        }
        // mxSTRUCT_CLASS
        2 => {
            let (_, len) = r.element()?;
            let len = *numbers(MI_INT32, len.get(..4).ok_or("bad field name length")?)?
                .first()
                .ok_or("bad field name length")? as usize;
            let (_, names) = r.element()?;
            if len == 0 || len > MAX_FIELD_NAME {
                return Err(format!("field name length {len} (1 to {MAX_FIELD_NAME})"));
            }
            let fields: Vec<String> = names
                .chunks(len)
                .map(|c| {
                    String::from_utf8_lossy(c)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .collect();
            let remaining = d.len() - r.pos;
            if !fits(8 * fields.len().max(1), remaining) {
                return Err(format!(
                    "struct of {count} elements × {} fields in {remaining} bytes",
                    fields.len()
                ));
            }
            spend(
                budget,
                count.saturating_mul(fields.len()).saturating_mul(NODE_COST),
            )?;
            let mut elements = Vec::with_capacity(count.min(1 << 16));
            for _ in 0..count {
                let mut map = BTreeMap::new();
                for f in &fields {
                    let (ty, m) = r.element()?;
                    if ty != MI_MATRIX {
                        return Err(format!("struct field {f:?} of type {ty}"));
                    }
                    map.insert(f.clone(), matrix(m, depth + 1, budget)?);
                }
                elements.push(map);
            }
            Ok(MatValue::Struct { dims, elements })
        }
        // mxCHAR_CLASS
        4 => {
            let (ty, data) = r.element()?;
            spend(budget, data.len())?;
            let codes = numbers(ty, data)?;
            // Column-major; for the usual 1 × N names this is the string itself.
            let rows = dims.first().copied().unwrap_or(1).max(1);
            let cols = codes.len() / rows;
            let s: String = (0..rows)
                .flat_map(|i| (0..cols).map(move |j| (i, j)))
                .filter_map(|(i, j)| char::from_u32(codes[j * rows + i] as u32))
                .collect();
            Ok(MatValue::Char(s))
        }
        // numeric classes (double … uint64), logical arrays are uint8 with a flag
        6..=15 => {
            let (ty, data) = r.element()?;
            spend(budget, count)?;
            let data = numbers(ty, data)?;
            if data.len() != count {
                return Err(format!("{} values for dimensions {dims:?}", data.len()));
            }
            Ok(MatValue::Numeric { dims, data })
        }
        other => Err(format!("unsupported array class {other}")),
    }
}

/// Reads every top-level variable of a MAT-file.
pub fn read(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, MatValue>> {
    let bad = |m: String| Error::annotation(path, format!("not a readable MAT-file: {m}"));
    if bytes.len() < 128 || !bytes.starts_with(b"MATLAB 5.0 MAT-file") {
        return Err(bad(
            "no MATLAB 5.0 header (v7.3 files are HDF5 and not supported)".into(),
        ));
    }
    if &bytes[126..128] != b"IM" {
        return Err(bad("big-endian MAT-files are not supported".into()));
    }
    let mut r = Reader {
        buf: bytes,
        pos: 128,
    };
    let mut vars = BTreeMap::new();
    let mut budget = MAX_VALUES;
    let mut inflated_total = 0usize;
    while r.pos < bytes.len() {
        let (ty, data) = r.element().map_err(bad)?;
        let inflated;
        let (ty, data) = if ty == MI_COMPRESSED {
            let mut out = Vec::new();
            let room = MAX_INFLATED.saturating_sub(inflated_total).min(MAX_ELEMENT);
            flate2::read::ZlibDecoder::new(data)
                .take(room as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("corrupt compressed element: {e}")))?;
            if out.len() > room {
                return Err(bad(format!(
                    "compressed elements inflate past {MAX_INFLATED} bytes"
                )));
            }
            inflated_total += out.len();
            inflated = out;
            let mut inner = Reader {
                buf: &inflated,
                pos: 0,
            };
            let (t, d) = inner.element().map_err(bad)?;
            (t, d)
        } else {
            (ty, data)
        };
        if ty != MI_MATRIX {
            continue;
        }
        let name = {
            let mut rr = Reader { buf: data, pos: 0 };
            rr.element()
                .and_then(|_| rr.element())
                .and_then(|_| rr.element())
                .map_err(bad)?
                .1
        };
        let name = String::from_utf8_lossy(name).to_string();
        vars.insert(name, matrix(data, 0, &mut budget).map_err(bad)?);
    }
    Ok(vars)
}
