//! Turning image regions into encoder input, the way the paper's torchvision pipeline does:
//! PIL `crop` (black outside the image) → `Resize(size)` on the short side, bicubic →
//! `CenterCrop(size)` → `ToTensor` → `Normalize(mean, std)`, laid out as CHW float32.

mod jpeg;
pub mod resample;

use std::path::Path;

use image::RgbImage;

use crate::error::{Error, Result};
use crate::region::PixelBox;

/// Largest image decoded, in pixels: Pillow's decompression-bomb limit (twice its
/// `MAX_IMAGE_PIXELS`), above which `Image.open` refuses a file, so the paper's pipeline could not
/// have read it either. Checked against the header before any pixel buffer is allocated.
pub const MAX_IMAGE_PIXELS: u64 = 178_956_970;

/// Longest crop side partlens resamples, in pixels (2^24). Memory never depends on it (see
/// [`Preprocessor::region_tensor`]), but time does: the filter's weights are normalised over
/// every tap, ~4 × side / 224 of them per output pixel. Ingest skips (and reports) regions past
/// it; a query refuses them.
pub const MAX_CROP_SIDE: i64 = 1 << 24;

/// Largest image file read, in bytes: an uncompressed image at [`MAX_IMAGE_PIXELS`] × 4
/// channels, plus headers.
pub const MAX_IMAGE_FILE_BYTES: u64 = MAX_IMAGE_PIXELS * 4 + (1 << 20);

/// Decodes an image file into RGB8 (greyscale and palette images are expanded, like PIL's
/// `convert("RGB")`). Corrupt and truncated files give [`Error::Image`] naming the file.
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = crate::files::read_limited(path, MAX_IMAGE_FILE_BYTES)?;
    decode_rgb_bytes(&bytes, path)
}

/// Decodes in-memory image bytes; `path` is only used in error messages.
///
/// JPEGs go through libjpeg (mozjpeg's decoder, the libjpeg-turbo code base with the same
/// defaults as Pillow: accurate integer IDCT, fancy upsampling), so decoded pixels equal PIL's;
/// a pure-Rust decoder differs by up to 4 levels, enough to move embeddings of small crops.
/// Other formats, and JPEG colour spaces libjpeg cannot turn into RGB (CMYK), use `image`.
pub fn decode_rgb_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        if let Some(img) = jpeg::decode(bytes, path)? {
            return Ok(img);
        }
    }
    let fail = |e: image::ImageError| Error::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .expect("reading from memory cannot fail")
    };
    // The header alone says how large the image claims to be; refuse before decoding.
    let (w, h) = reader().into_dimensions().map_err(fail)?;
    if w as u64 * h as u64 > MAX_IMAGE_PIXELS {
        return Err(Error::Image {
            path: path.to_path_buf(),
            message: format!(
                "{w}×{h} pixels is over the {MAX_IMAGE_PIXELS} limit (Pillow's \
                 decompression-bomb limit)"
            ),
        });
    }
    Ok(reader().decode().map_err(fail)?.to_rgb8())
}

/// torchvision's `Resize(size)` for an int size: the short side becomes `size`, the long side
/// `int(size * long / short)` (truncated).
pub fn short_side_size(w: usize, h: usize, size: usize) -> (usize, usize) {
    if w <= h {
        (size, (size as f64 * h as f64 / w as f64) as usize)
    } else {
        ((size as f64 * w as f64 / h as f64) as usize, size)
    }
}

/// Python's `round` (ties to even) of `x / 2` for an integer `x`, as torchvision's `CenterCrop`
/// computes its offsets with `int(round((h - th) / 2.0))`.
fn half_round_even(x: i64) -> i64 {
    let q = x.div_euclid(2);
    if x.rem_euclid(2) == 0 || q % 2 == 0 {
        q
    } else {
        q + 1
    }
}

/// Where torchvision's `CenterCrop(target)` starts along an axis of `size` pixels: at
/// `round((size - target) / 2)` (Python's round), or, when the image is smaller, after padding
/// `(target - size) // 2` black pixels before it.
fn center_offset(size: usize, target: usize) -> i64 {
    if size >= target {
        half_round_even(size as i64 - target as i64)
    } else {
        -(((target - size) / 2) as i64)
    }
}

/// How regions become tensors; built from a model's spec.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    /// Output height and width in pixels.
    pub size: (usize, usize),
    /// Per-channel mean (RGB), applied after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
}

impl Preprocessor {
    /// Number of floats one region occupies: `3 × H × W`.
    pub fn tensor_len(&self) -> usize {
        3 * self.size.0 * self.size.1
    }

    /// Writes the CHW float32 tensor for the crop `b` of `img` into `out`
    /// (`out.len() == self.tensor_len()`): PIL's `img.crop(b)` (black outside the image),
    /// torchvision's `Resize` + `CenterCrop` + `Normalize`. The crop is never built: the resize
    /// reads the image through a window and computes only the centre-cropped pixels, so memory
    /// is bounded by the output whatever the box (a crop far larger than the image, or a
    /// 1 × 10,000 sliver whose short-side resize would be millions of pixels long).
    pub fn region_tensor(&self, img: &RgbImage, b: PixelBox, out: &mut [f32]) {
        let win = resample::Window {
            src: img.as_raw(),
            img_w: img.width() as usize,
            img_h: img.height() as usize,
            x0: b.x0,
            y0: b.y0,
            width: b.width().max(0) as usize,
            height: b.height().max(0) as usize,
        };
        self.tensor_from_window(&win, out);
    }

    /// Resize (short side, bicubic), centre crop and normalise an RGB8 buffer of `w × h`.
    pub fn tensor_from_rgb(&self, rgb: &[u8], w: usize, h: usize, out: &mut [f32]) {
        self.tensor_from_window(&resample::Window::whole(rgb, w, h), out);
    }

    fn tensor_from_window(&self, win: &resample::Window<'_>, out: &mut [f32]) {
        let (th, tw) = self.size;
        // Resize the short side to the smaller target side; for a square target (the usual
        // case) this is exactly torchvision's Resize(size).
        let (rw, rh) = short_side_size(win.width.max(1), win.height.max(1), th.min(tw));
        let top = center_offset(rh, th);
        let left = center_offset(rw, tw);
        // Only the pixels the centre crop keeps: rows top..top+th, columns left..left+tw.
        let span = |start: i64, len: usize, size: usize| {
            let a = start.clamp(0, size as i64) as usize;
            let b = (start + len as i64).clamp(0, size as i64) as usize;
            a..b
        };
        let (cols, rows) = (span(left, tw, rw), span(top, th, rh));
        let part = resample::resize_part(win, (rw, rh), cols.clone(), rows.clone());
        let plane = th * tw;
        // (v / 255 - mean) / std for every byte value: the same f32 arithmetic, done 768 times
        // instead of 3 × H × W.
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, t) in table.iter_mut().enumerate() {
                *t = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        let (r_out, rest) = out.split_at_mut(plane);
        let (g_out, b_out) = rest.split_at_mut(plane);
        for y in 0..th {
            let sy = y as i64 + top;
            for x in 0..tw {
                let sx = x as i64 + left;
                let inside = sy >= rows.start as i64
                    && sy < rows.end as i64
                    && sx >= cols.start as i64
                    && sx < cols.end as i64;
                let px = if inside {
                    let i =
                        ((sy as usize - rows.start) * cols.len() + (sx as usize - cols.start)) * 3;
                    [part[i], part[i + 1], part[i + 2]]
                } else {
                    [0, 0, 0]
                };
                let o = y * tw + x;
                r_out[o] = lut[0][px[0] as usize];
                g_out[o] = lut[1][px[1] as usize];
                b_out[o] = lut[2][px[2] as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_tensors_equal_the_padded_crop_resized() {
        let img = RgbImage::from_fn(37, 29, |x, y| image::Rgb([x as u8 * 7, y as u8 * 5, 90]));
        let p = Preprocessor {
            size: (16, 16),
            mean: [0.5, 0.4, 0.3],
            std: [0.2, 0.25, 0.3],
        };
        for b in [
            PixelBox::new(-5, -5, 20, 20).unwrap(),
            PixelBox::new(3, 4, 30, 9).unwrap(),
            PixelBox::new(-400, -300, 500, 600).unwrap(),
            PixelBox::new(10, 0, 11, 29).unwrap(),
        ] {
            // The crop PIL would build, black outside.
            let (cw, ch) = (b.width() as usize, b.height() as usize);
            let mut crop = vec![0u8; cw * ch * 3];
            for y in 0..ch {
                for x in 0..cw {
                    let (ix, iy) = (b.x0 + x as i64, b.y0 + y as i64);
                    if (0..37).contains(&ix) && (0..29).contains(&iy) {
                        let px = img.get_pixel(ix as u32, iy as u32).0;
                        crop[(y * cw + x) * 3..(y * cw + x) * 3 + 3].copy_from_slice(&px);
                    }
                }
            }
            let mut want = vec![0f32; p.tensor_len()];
            let mut got = vec![0f32; p.tensor_len()];
            p.tensor_from_rgb(&crop, cw, ch, &mut want);
            p.region_tensor(&img, b, &mut got);
            assert_eq!(got, want, "{b:?}");
        }
    }

    #[test]
    fn a_sliver_costs_its_output_not_its_resize() {
        // 1 × 10,000: the short-side resize is 224 × 2,240,000 pixels; only 224² are made.
        let img = RgbImage::from_pixel(2, 10_000, image::Rgb([200, 100, 50]));
        let p = Preprocessor {
            size: (224, 224),
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let mut out = vec![0f32; p.tensor_len()];
        p.region_tensor(&img, PixelBox::new(0, 0, 1, 10_000).unwrap(), &mut out);
        assert!((out[0] - 200.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn torchvision_sizes_and_offsets() {
        assert_eq!(short_side_size(300, 200, 224), (336, 224));
        assert_eq!(short_side_size(100, 301, 224), (224, 674));
        assert_eq!(half_round_even(1), 0); // round(0.5) == 0
        assert_eq!(half_round_even(3), 2); // round(1.5) == 2
        assert_eq!(half_round_even(5), 2); // round(2.5) == 2
        assert_eq!(half_round_even(4), 2);
    }

    #[test]
    fn normalises_per_channel() {
        let p = Preprocessor {
            size: (2, 2),
            mean: [0.5, 0.0, 0.0],
            std: [0.5, 1.0, 2.0],
        };
        let rgb = vec![255u8; 2 * 2 * 3];
        let mut out = vec![0f32; p.tensor_len()];
        p.tensor_from_rgb(&rgb, 2, 2, &mut out);
        assert!(out[0..4].iter().all(|&v| (v - 1.0).abs() < 1e-6));
        assert!(out[4..8].iter().all(|&v| (v - 1.0).abs() < 1e-6));
        assert!(out[8..12].iter().all(|&v| (v - 0.5).abs() < 1e-6));
    }
}
