//! JPEG decoding through libjpeg (mozjpeg-sys), bit-identical to Pillow's.

use std::path::Path;

use image::RgbImage;
use mozjpeg::{ColorSpace, Decompress};

use crate::error::{Error, Result};

fn marker_positions(bytes: &[u8], marker: u8) -> impl Iterator<Item = usize> + '_ {
    bytes
        .windows(2)
        .enumerate()
        .filter(move |(_, w)| w[0] == 0xFF && w[1] == marker)
        .map(|(i, _)| i)
}

/// libjpeg pads a truncated stream with grey and only warns; Pillow refuses it ("image file is
/// truncated"). A complete stream has an end-of-image marker after its last start-of-scan.
fn check_complete(bytes: &[u8], path: &Path) -> Result<()> {
    let last_sos = marker_positions(bytes, 0xDA).last();
    let last_eoi = marker_positions(bytes, 0xD9).last();
    match (last_sos, last_eoi) {
        (Some(s), Some(e)) if e > s => Ok(()),
        _ => Err(Error::Image {
            path: path.to_path_buf(),
            message: "truncated JPEG (no end-of-image marker after the image data)".into(),
        }),
    }
}

/// Pillow's CMYK JPEG → RGB: it reads CMYK as inverted (Adobe's convention, `CMYK;I`), then
/// `convert("RGB")` computes `nk - nk·c/255` per channel with `nk = 255 - k`, rounding as its
/// `MULDIV255`. With the inversion folded in: channel = K - round(K·(255 - C)/255).
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    cmyk.chunks_exact(4)
        .flat_map(|p| {
            let nk = u32::from(p[3]);
            let ch = move |c: u8| (nk - muldiv255(255 - u32::from(c), nk)) as u8;
            [ch(p[0]), ch(p[1]), ch(p[2])]
        })
        .collect()
}

/// Decodes a JPEG to RGB8 (CMYK and YCCK ones as Pillow converts them). `Ok(None)` never
/// happens for a readable JPEG; it is kept for colour spaces a future libjpeg might add.
pub(super) fn decode(bytes: &[u8], path: &Path) -> Result<Option<RgbImage>> {
    check_complete(bytes, path)?;
    let fail = |m: String| Error::Image {
        path: path.to_path_buf(),
        message: m,
    };
    // libjpeg reports fatal errors by unwinding out of the C code.
    let res = std::panic::catch_unwind(|| -> std::io::Result<Option<(usize, usize, Vec<u8>)>> {
        let d = Decompress::new_mem(bytes)?;
        let (w, h) = d.size();
        if (w as u64) * (h as u64) > super::MAX_IMAGE_PIXELS {
            return Err(std::io::Error::other(format!(
                "{w}×{h} pixels is over the {} limit (Pillow's decompression-bomb limit)",
                super::MAX_IMAGE_PIXELS
            )));
        }
        let cmyk = matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK);
        let mut s = if cmyk {
            d.to_colorspace(ColorSpace::JCS_CMYK)?
        } else {
            d.rgb()?
        };
        let (w, h) = (s.width(), s.height());
        let px = s.read_scanlines::<u8>()?;
        s.finish()?;
        Ok(Some((w, h, if cmyk { cmyk_to_rgb(&px) } else { px })))
    });
    match res {
        Ok(Ok(Some((w, h, px)))) => RgbImage::from_raw(w as u32, h as u32, px)
            .map(Some)
            .ok_or_else(|| fail("JPEG decoder returned too few pixels".into())),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => Err(fail(format!("corrupt JPEG: {e}"))),
        Err(_) => Err(fail("corrupt JPEG".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_inside_a_complete_stream_is_an_error_not_a_crash() {
        let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02];
        bytes.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
        bytes.extend([0xFF, 0xD9]);
        let err = decode(&bytes, Path::new("bad.jpg")).unwrap_err();
        assert!(err.to_string().contains("bad.jpg"), "{err}");
    }

    #[test]
    fn missing_end_marker_is_truncation() {
        let err = check_complete(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 3], Path::new("t.jpg"));
        assert!(err.unwrap_err().to_string().contains("truncated JPEG"));
    }
}
