//! A NumPy `.npz` writer (a ZIP archive of `.npy` arrays, stored uncompressed) for the linear
//! probe's head: `numpy.load("head.npz")` reads it without partlens and without pickle.

use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// One array of an archive.
pub enum Array<'a> {
    /// float32 values of the given shape.
    F32(&'a [f32], Vec<usize>),
    /// A 1-D array of Unicode strings (`<U{longest}`).
    Str(&'a [String]),
}

fn npy(array: &Array<'_>) -> Vec<u8> {
    let (descr, shape, body): (String, Vec<usize>, Vec<u8>) = match array {
        Array::F32(v, shape) => (
            "<f4".into(),
            shape.clone(),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Array::Str(v) => {
            let width = v
                .iter()
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
                .max(1);
            let mut body = Vec::with_capacity(v.len() * width * 4);
            for s in v.iter() {
                let n = s.chars().count();
                body.extend(s.chars().flat_map(|c| (c as u32).to_le_bytes()));
                body.extend(std::iter::repeat_n(0u8, 4 * (width - n)));
            }
            (format!("<U{width}"), vec![v.len()], body)
        }
    };
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + dict + '\n', padded to a multiple of 64.
    let total = (10 + dict.len() + 1).div_ceil(64) * 64;
    while 10 + dict.len() + 1 < total {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len() + body.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(&body);
    out
}

/// Writes `arrays` (name, array) to `path` as an `.npz` (through a temporary file renamed
/// into place, so a reader never sees half an archive).
pub fn write_npz(path: &Path, arrays: &[(&str, Array<'_>)]) -> Result<()> {
    let mut zip = Vec::new();
    let mut central = Vec::new();
    for (name, array) in arrays {
        let data = npy(array);
        // Every offset and size of a ZIP without ZIP64 is 32 bits (headers are < 1 KB each).
        if (zip.len() + central.len() + data.len() + 4096) as u64 > u64::from(u32::MAX) {
            return Err(crate::error::Error::InvalidArgument(format!(
                "array {name}: the archive would pass 4 GB, too large for an .npz without ZIP64"
            )));
        }
        let fname = format!("{name}.npy");
        let mut crc = flate2::Crc::new();
        crc.update(&data);
        let offset = zip.len() as u32;
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&0u16.to_le_bytes()); // stored
            v.extend_from_slice(&0u16.to_le_bytes()); // time
            v.extend_from_slice(&0x21u16.to_le_bytes()); // date: 1980-01-01
            v.extend_from_slice(&crc.sum().to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(fname.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra
        };
        zip.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut zip);
        zip.extend_from_slice(fname.as_bytes());
        zip.extend_from_slice(&data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // made by
        common(&mut central);
        central.extend_from_slice(&[0u8; 6]); // comment length, disk, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(fname.as_bytes());
    }
    let cd_offset = zip.len() as u32;
    zip.extend_from_slice(&central);
    zip.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    zip.extend_from_slice(&[0u8; 4]); // disk numbers
    zip.extend_from_slice(&(arrays.len() as u16).to_le_bytes());
    zip.extend_from_slice(&(arrays.len() as u16).to_le_bytes());
    zip.extend_from_slice(&(central.len() as u32).to_le_bytes());
    zip.extend_from_slice(&cd_offset.to_le_bytes());
    zip.extend_from_slice(&0u16.to_le_bytes());
    if path.is_dir() {
        return Err(crate::error::Error::InvalidArgument(format!(
            "{} is a folder: --save needs a file name (e.g. head.npz)",
            path.display()
        )));
    }
    let tmp = path.with_extension("npz.tmp");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).at(&tmp)?;
        f.write_all(&zip).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        std::fs::rename(&tmp, path).at(path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
