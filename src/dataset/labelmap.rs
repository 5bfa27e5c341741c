//! Label maps (8-bit single-channel PNGs) and the regions inside them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::region::PixelBox;

/// The label value that means "ignore this pixel" (mmseg convention).
pub const IGNORE: u8 = 255;
/// Largest label map accepted, in pixels (16k × 16k).
pub const MAX_PIXELS: u64 = 1 << 28;

/// The label value that means background; never a region (mmseg's `reduce_zero_label`).
pub const BACKGROUND: u8 = 0;

/// A per-pixel class map, row-major, `width × height` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// One class id per pixel.
    pub data: Vec<u8>,
}

/// Largest label-map or mask file read, in bytes: far above any real annotation, far below
/// what would hurt (a file's length is input too).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// What to do with a label map whose size differs from its image's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelResize {
    /// Skip the image and say so (the default): a map of another size usually belongs to
    /// another image, or to another release of the dataset.
    #[default]
    Never,
    /// Scale the map to its image by nearest neighbour, exactly as Pillow's
    /// `resize(size, Image.NEAREST)` does (CelebAMask-HQ's 512-px maps for 1024-px photos).
    Nearest,
}

impl LabelResize {
    /// Every choice.
    pub const ALL: [LabelResize; 2] = [LabelResize::Never, LabelResize::Nearest];

    /// `never` or `nearest`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LabelResize::Never => "never",
            LabelResize::Nearest => "nearest",
        }
    }
}

/// The one size check for every label map, mask and class map against its image: `Ok(false)`
/// when the sizes agree, `Ok(true)` when they differ and `resize` allows scaling, otherwise an
/// error naming the file, both sizes and the flag that scales maps.
pub fn check_size(
    path: &Path,
    what: &str,
    (w, h): (usize, usize),
    (iw, ih): (usize, usize),
    resize: LabelResize,
) -> Result<bool> {
    if (w, h) == (iw, ih) {
        return Ok(false);
    }
    match resize {
        LabelResize::Nearest if w > 0 && h > 0 => Ok(true),
        _ => Err(Error::annotation(
            path,
            format!(
                "{what} is {w}×{h} but its image is {iw}×{ih}; if the maps are a scaled copy \
                 of the annotation, pass --resize-labels nearest to scale them to their images"
            ),
        )),
    }
}

impl LabelMap {
    /// Reads an 8-bit greyscale or palette PNG, keeping the raw values (palette indices are the
    /// class ids, as in mmseg's and LIP's annotations). Other bit depths and colour PNGs are
    /// refused: reading them as labels would give wrong classes.
    pub fn read_png(path: &Path) -> Result<LabelMap> {
        let bytes = crate::files::read_limited(path, MAX_FILE_BYTES)?;
        Self::from_png_bytes(&bytes, path)
    }

    /// Reads the label map (or mask) of an image of `size` pixels. The size is checked against
    /// the PNG header before anything is decoded; a map of another size is an error, or, with
    /// [`LabelResize::Nearest`], decoded and scaled to `size`. `what` names the map in errors.
    pub fn read_png_for(
        path: &Path,
        size: (usize, usize),
        resize: LabelResize,
        what: &str,
    ) -> Result<LabelMap> {
        let bytes = crate::files::read_limited(path, MAX_FILE_BYTES)?;
        let map = Self::decode(&bytes, path, &|w, h| {
            check_size(path, what, (w, h), size, resize).map(|_| ())
        })?;
        map.fit(size, resize, path, what)
    }

    /// [`LabelMap::read_png`] on bytes; `path` only names the file in errors.
    pub fn from_png_bytes(bytes: &[u8], path: &Path) -> Result<LabelMap> {
        Self::decode(bytes, path, &|_, _| Ok(()))
    }

    /// This map at `size`: itself when the sizes agree, scaled by nearest neighbour when
    /// `resize` allows, otherwise the size error.
    pub fn fit(
        self,
        size: (usize, usize),
        resize: LabelResize,
        path: &Path,
        what: &str,
    ) -> Result<LabelMap> {
        if check_size(path, what, (self.width, self.height), size, resize)? {
            Ok(self.resize_nearest(size.0, size.1))
        } else {
            Ok(self)
        }
    }

    /// Scales the map to `w × h` exactly as Pillow's `Image.resize((w, h), Image.NEAREST)`:
    /// source column = ⌊x₀ + (x + ½)·sx⌋ accumulated in f64 step by step (Pillow's
    /// `ImagingScaleAffine`), rows likewise.
    pub fn resize_nearest(&self, w: usize, h: usize) -> LabelMap {
        let coords = |out: usize, inp: usize| -> Vec<Option<usize>> {
            let scale = inp as f64 / out as f64;
            let mut pos = scale * 0.5;
            (0..out)
                .map(|_| {
                    let c = if pos < 0.0 { None } else { Some(pos as usize) };
                    pos += scale;
                    c.filter(|&c| c < inp)
                })
                .collect()
        };
        let (xs, ys) = (coords(w, self.width), coords(h, self.height));
        let mut data = vec![0u8; w * h];
        for (row, sy) in data.chunks_exact_mut(w.max(1)).zip(&ys) {
            let Some(sy) = sy else { continue };
            let src = &self.data[sy * self.width..(sy + 1) * self.width];
            for (o, sx) in row.iter_mut().zip(&xs) {
                if let Some(sx) = sx {
                    *o = src[*sx];
                }
            }
        }
        LabelMap {
            width: w,
            height: h,
            data,
        }
    }

    /// Decodes a label-map PNG; `check(width, height)` sees the header's size before any pixel
    /// buffer is allocated.
    fn decode(
        bytes: &[u8],
        path: &Path,
        check: &dyn Fn(usize, usize) -> Result<()>,
    ) -> Result<LabelMap> {
        let bad = |m: String| Error::annotation(path, m);
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
        dec.set_transformations(png::Transformations::IDENTITY);
        let mut reader = dec
            .read_info()
            .map_err(|e| bad(format!("not a readable PNG label map: {e}")))?;
        let (ct, depth) = reader.output_color_type();
        let bits = match (ct, depth) {
            (png::ColorType::Grayscale | png::ColorType::Indexed, png::BitDepth::Eight) => 8,
            // Pillow writes palettes of ≤ 16 entries at 1, 2 or 4 bits; the indices are labels.
            (png::ColorType::Indexed, png::BitDepth::Four) => 4,
            (png::ColorType::Indexed, png::BitDepth::Two) => 2,
            (png::ColorType::Indexed, png::BitDepth::One) => 1,
            _ => 0,
        };
        if bits == 0 {
            return Err(bad(format!(
                "label maps must be 8-bit greyscale or palette PNGs, this one is {ct:?} {depth:?}"
            )));
        }
        // A header can claim any size: refuse before allocating (found by fuzzing).
        let (hw, hh) = (reader.info().width as u64, reader.info().height as u64);
        if hw * hh > MAX_PIXELS {
            return Err(bad(format!(
                "label map of {hw}×{hh} pixels is larger than the {MAX_PIXELS}-pixel limit"
            )));
        }
        check(hw as usize, hh as usize)?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| bad("PNG too large".into()))?;
        let mut buf = vec![0u8; size];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| bad(format!("truncated or corrupt PNG: {e}")))?;
        let (w, h) = (info.width as usize, info.height as usize);
        if info.line_size != (w * bits).div_ceil(8) {
            return Err(bad(format!("unexpected PNG row size {}", info.line_size)));
        }
        let data = if bits == 8 {
            buf.truncate(w * h);
            buf
        } else {
            let per_byte = 8 / bits;
            let mask = (1u8 << bits) - 1;
            let mut out = Vec::with_capacity(w * h);
            for row in buf.chunks_exact(info.line_size).take(h) {
                // Pixels are packed from the most significant bits down.
                out.extend((0..w).map(|x| {
                    let shift = 8 - bits * (x % per_byte + 1);
                    (row[x / per_byte] >> shift) & mask
                }));
            }
            out
        };
        Ok(LabelMap {
            width: w,
            height: h,
            data,
        })
    }

    /// The largest class id present other than [`IGNORE`], if any pixel is labelled.
    pub fn max_label(&self) -> Option<u8> {
        self.data
            .iter()
            .copied()
            .filter(|&v| v != IGNORE && v != BACKGROUND)
            .max()
    }
}

/// One connected region of a single class in a label map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// The class id.
    pub label: u8,
    /// Number of this component among those of its class, from 0, in raster order of first pixel.
    pub instance: u32,
    /// Tight bounding box.
    pub bbox: PixelBox,
    /// Pixel count.
    pub area: u64,
    /// Mask inside `bbox`, run-length encoded row-major, starting with an outside run.
    pub mask_rle: Vec<u32>,
}

/// Finds the 4-connected components of every class except background and ignore, keeping those
/// of at least `min_area` pixels. Components come in raster order of their first pixel.
pub fn components(map: &LabelMap, min_area: u64) -> Vec<Component> {
    let (w, h) = (map.width, map.height);
    let mut comp = vec![u32::MAX; w * h];
    let mut out = Vec::new();
    let mut next_instance = [0u32; 256];
    let mut stack = Vec::new();
    let mut pixels = Vec::new();
    for start in 0..w * h {
        let label = map.data[start];
        if label == BACKGROUND || label == IGNORE || comp[start] != u32::MAX {
            continue;
        }
        let id = out.len() as u32;
        comp[start] = id;
        stack.push(start);
        pixels.clear();
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        while let Some(p) = stack.pop() {
            pixels.push(p);
            let (x, y) = (p % w, p / w);
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
            let mut visit = |q: usize| {
                if map.data[q] == label && comp[q] == u32::MAX {
                    comp[q] = id;
                    stack.push(q);
                }
            };
            if x > 0 {
                visit(p - 1);
            }
            if x + 1 < w {
                visit(p + 1);
            }
            if y > 0 {
                visit(p - w);
            }
            if y + 1 < h {
                visit(p + w);
            }
        }
        let area = pixels.len() as u64;
        // Keep component ids dense even for dropped components, so `comp` stays meaningful.
        let bbox = PixelBox {
            x0: x0 as i64,
            y0: y0 as i64,
            x1: x1 as i64 + 1,
            y1: y1 as i64 + 1,
        };
        let mask_rle = rle_where(w, bbox, |i| comp[i] == id);
        out.push((
            area >= min_area,
            Component {
                label,
                instance: 0,
                bbox,
                area,
                mask_rle,
            },
        ));
    }
    out.into_iter()
        .filter(|(keep, _)| *keep)
        .map(|(_, mut c)| {
            c.instance = next_instance[c.label as usize];
            next_instance[c.label as usize] += 1;
            c
        })
        .collect()
}

/// Run-length encodes the pixels of box `b` (row-major, image width `w`) for which `inside`
/// holds: alternating outside / inside runs, starting with an outside run.
fn rle_where(w: usize, b: PixelBox, inside: impl Fn(usize) -> bool) -> Vec<u32> {
    let mut runs = Vec::new();
    let mut state = false;
    let mut run = 0u32;
    for y in b.y0 as usize..b.y1 as usize {
        for x in b.x0 as usize..b.x1 as usize {
            let v = inside(y * w + x);
            if v != state {
                runs.push(run);
                run = 0;
                state = v;
            }
            run += 1;
        }
    }
    runs.push(run);
    runs
}

/// Every pixel of value 1 as one region, however many pieces it has (an annotated instance, a
/// listed polygon): tight box, area and RLE mask. `None` when there is no such pixel.
pub fn whole_region(map: &LabelMap) -> Option<Component> {
    let w = map.width;
    let (mut x0, mut y0, mut x1, mut y1, mut area) = (usize::MAX, usize::MAX, 0, 0, 0u64);
    for (i, _) in map.data.iter().enumerate().filter(|(_, &v)| v == 1) {
        let (x, y) = (i % w, i / w);
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
        area += 1;
    }
    if area == 0 {
        return None;
    }
    let bbox = PixelBox {
        x0: x0 as i64,
        y0: y0 as i64,
        x1: x1 as i64 + 1,
        y1: y1 as i64 + 1,
    };
    Some(Component {
        label: 1,
        instance: 0,
        bbox,
        area,
        mask_rle: rle_where(w, bbox, |i| map.data[i] == 1),
    })
}

/// Expands a mask from [`Component::mask_rle`] into `width × height` booleans.
pub fn decode_rle(rle: &[u32], width: usize, height: usize) -> Vec<bool> {
    let mut out = Vec::with_capacity(width * height);
    for (i, &n) in rle.iter().enumerate() {
        out.extend(std::iter::repeat_n(i % 2 == 1, n as usize));
    }
    out.resize(width * height, false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rows: &[&[u8]]) -> LabelMap {
        LabelMap {
            width: rows[0].len(),
            height: rows.len(),
            data: rows.concat(),
        }
    }

    #[test]
    fn four_connected_components_per_class() {
        let m = map(&[&[1, 1, 0, 2], &[0, 1, 0, 2], &[1, 0, 255, 0], &[1, 0, 0, 2]]);
        let c = components(&m, 1);
        let summary: Vec<_> = c.iter().map(|c| (c.label, c.instance, c.area)).collect();
        // The diagonal 1 at (0,2) is not 4-connected to the top-left blob.
        assert_eq!(summary, vec![(1, 0, 3), (2, 0, 2), (1, 1, 2), (2, 1, 1)]);
        assert_eq!(c[0].bbox, PixelBox::new(0, 0, 2, 2).unwrap());
        assert_eq!(c[0].mask_rle, vec![0, 2, 1, 1]);
        assert_eq!(
            decode_rle(&c[0].mask_rle, 2, 2),
            vec![true, true, false, true]
        );
    }

    #[test]
    fn min_area_drops_small_components_and_renumbers() {
        let m = map(&[&[1, 0, 1, 1]]);
        let c = components(&m, 2);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].instance, c[0].area), (0, 2));
    }

    #[test]
    fn reads_4_bit_palette_png_as_indices() {
        // Pillow: Image.new("P", (3, 2)) with 5 palette colours saves at bit depth 4.
        let mut buf = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut buf, 3, 2);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Four);
            enc.set_palette(vec![0u8; 5 * 3]);
            let mut w = enc.write_header().unwrap();
            // rows [0,1,2] and [3,4,0], packed two pixels per byte, high nibble first
            w.write_image_data(&[0x01, 0x20, 0x34, 0x00]).unwrap();
        }
        let m = LabelMap::from_png_bytes(&buf, Path::new("p.png")).unwrap();
        assert_eq!((m.width, m.height), (3, 2));
        assert_eq!(m.data, vec![0, 1, 2, 3, 4, 0]);
    }

    #[test]
    fn huge_header_is_refused_before_allocating() {
        // A fuzzer-found PNG whose header claims gigapixels (data/fuzz-regressions/).
        let bytes = include_bytes!("../../data/fuzz-regressions/labelmap_png-huge-header.png");
        let err = LabelMap::from_png_bytes(bytes, Path::new("h.png")).unwrap_err();
        assert!(err.to_string().contains("h.png"), "{err}");
    }

    #[test]
    fn refuses_colour_png() {
        let mut buf = Vec::new();
        image::RgbImage::new(2, 2)
            .write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
            .unwrap();
        let err = LabelMap::from_png_bytes(&buf, Path::new("x.png")).unwrap_err();
        assert!(
            err.to_string().contains("8-bit greyscale or palette"),
            "{err}"
        );
    }
}
