//! Bicubic resampling that reproduces Pillow's `Image.resize(..., Image.BICUBIC)` bit for bit on
//! 8-bit RGB images: the same filter (Keys, a = -0.5), the same support widening when shrinking
//! (antialiasing), the same 22-bit fixed-point coefficients and rounding, and the same order of
//! the two passes (Pillow 13 runs the vertical pass first when the height shrinks by more than
//! twice what the width does; the 8-bit image between the passes makes the order visible).
//!
//! The paper's pipeline is torchvision on PIL images, so matching Pillow here is what makes our
//! embeddings equal to the reference ones rather than merely close.

/// Pillow's `PRECISION_BITS` for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per-output-pixel taps and fixed-point weights along one axis, kept only where the taps
/// land inside the image (elsewhere the window is black and a tap adds exactly 0).
struct Coeffs {
    /// Weights stored per output pixel.
    stride: usize,
    /// `(first kept source index, number of kept taps)` per output pixel, in window
    /// coordinates.
    bounds: Vec<(usize, usize)>,
    /// `stride` weights per output pixel (the first `bounds[i].1` used), Pillow's fixed point.
    weights: Vec<i32>,
}

/// Pillow's coefficients for resizing `in_size` pixels to `out_size`, for the output pixels in
/// `range` only (each output pixel's taps and weights depend on nothing else), keeping the taps
/// within `keep` (the window positions inside the image). Each weight is normalised by the sum
/// over *all* its taps, as Pillow's are, so the kept ones are exactly Pillow's; memory is
/// `range × min(taps, keep)` whatever the window's size.
fn precompute(
    in_size: usize,
    out_size: usize,
    range: std::ops::Range<usize>,
    keep: (usize, usize),
) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let stride = ksize.min(keep.1.saturating_sub(keep.0)).max(1);
    let mut bounds = Vec::with_capacity(range.len());
    let mut weights = vec![0i32; range.len() * stride];
    let ss = 1.0 / filterscale;
    for (i, xx) in range.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        // Pillow truncates toward zero after adding 0.5 (`(int)(x + 0.5)`).
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let tap = |x: usize| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
        // The sum over every tap, in Pillow's order.
        let ww: f64 = (0..n).fold(0.0, |acc, x| acc + tap(x));
        let first = xmin.max(keep.0).min(xmin + n);
        let last = (xmin + n).min(keep.1).max(first);
        for (j, x) in (first - xmin..last - xmin).enumerate() {
            let k = tap(x);
            let w = if ww != 0.0 { k / ww } else { k };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[i * stride + j] = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((first, last - first));
    }
    Coeffs {
        stride,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One output pixel of a horizontal pass: the weights `k` over the RGB pixels `px`, in
/// Pillow's fixed point (rounding constant first, then the taps in order).
#[inline]
fn taps_rgb(k: &[i32], px: &[u8], o: &mut [u8]) {
    let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
    for (&kx, p) in k.iter().zip(px.chunks_exact(3)) {
        acc[0] += i32::from(p[0]) * kx;
        acc[1] += i32::from(p[1]) * kx;
        acc[2] += i32::from(p[2]) * kx;
    }
    o[0] = clip8(acc[0]);
    o[1] = clip8(acc[1]);
    o[2] = clip8(acc[2]);
}

/// One output row of a horizontal pass: for each output pixel, its kept taps over `row`, where
/// window column `t` is pixel `t + origin` of `row`.
fn horizontal_row(c: &Coeffs, row: &[u8], origin: i64, out: &mut [u8]) {
    for (i, (&(a, n), o)) in c.bounds.iter().zip(out.chunks_exact_mut(3)).enumerate() {
        let k = &c.weights[i * c.stride..i * c.stride + n];
        let px = if n == 0 {
            &[][..] // every tap on black
        } else {
            &row[(a as i64 + origin) as usize * 3..][..n * 3]
        };
        taps_rgb(k, px, o);
    }
}

/// A vertical pass: output row `i` (`stride` bytes of `out`) is `Σ k[y] · row(y)` over its
/// kept taps, a whole row at a time (contiguous reads, which the compiler vectorises).
fn vertical_pass<'a>(c: &Coeffs, row: impl Fn(usize) -> &'a [u8], stride: usize, out: &mut [u8]) {
    let mut acc = vec![0i32; stride];
    for (i, (&(a, n), orow)) in c
        .bounds
        .iter()
        .zip(out.chunks_exact_mut(stride))
        .enumerate()
    {
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (&ky, y) in c.weights[i * c.stride..i * c.stride + n]
            .iter()
            .zip(a..a + n)
        {
            for (a, &p) in acc.iter_mut().zip(row(y)) {
                *a += i32::from(p) * ky;
            }
        }
        for (o, &a) in orow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
}

/// A window onto an interleaved RGB8 image: `width × height` pixels whose top-left corner is
/// `(x0, y0)` in image coordinates. The window may extend past the image; pixels there are
/// black, as with PIL's `Image.crop`, but are never stored.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    /// The image, `img_w × img_h × 3` bytes.
    pub src: &'a [u8],
    /// Image width in pixels.
    pub img_w: usize,
    /// Image height in pixels.
    pub img_h: usize,
    /// Window's first column, in image coordinates (may be negative).
    pub x0: i64,
    /// Window's first row, in image coordinates (may be negative).
    pub y0: i64,
    /// Window width in pixels.
    pub width: usize,
    /// Window height in pixels.
    pub height: usize,
}

impl<'a> Window<'a> {
    /// The whole image `src` of `w × h` pixels.
    pub fn whole(src: &'a [u8], w: usize, h: usize) -> Self {
        Window {
            src,
            img_w: w,
            img_h: h,
            x0: 0,
            y0: 0,
            width: w,
            height: h,
        }
    }

    /// Window positions `lo..hi` (along one axis of `len` window pixels starting at image
    /// coordinate `start`) that fall inside an image of `size` pixels.
    fn inside(start: i64, size: usize, lo: usize, hi: usize) -> (usize, usize) {
        let first = (-start).clamp(lo as i64, hi as i64) as usize;
        let last = (size as i64 - start).clamp(first as i64, hi as i64) as usize;
        (first, last)
    }
}

/// Resizes an interleaved RGB8 buffer of `w × h` pixels to `ow × oh`, exactly as Pillow's
/// bicubic resize does. Returns the new interleaved RGB8 buffer.
pub fn resize_bicubic_rgb8(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<u8> {
    debug_assert_eq!(src.len(), w * h * 3);
    resize_window(&Window::whole(src, w, h), ow, oh)
}

/// Resizes a window of an image to `ow × oh` exactly as Pillow resizes the cropped image
/// (`img.crop(box).resize((ow, oh), Image.BICUBIC)`), without building the crop.
pub fn resize_window(win: &Window<'_>, ow: usize, oh: usize) -> Vec<u8> {
    resize_part(win, (ow, oh), 0..ow, 0..oh)
}

/// The pixels `cols × rows` of [`resize_window`]'s `ow × oh` result, computed alone: a centre
/// crop of a very elongated resize costs the crop, not the whole resize. Memory is the part
/// plus one horizontal pass over the window's rows that lie inside the image; taps on black
/// pixels are skipped (they add exactly 0 to Pillow's fixed-point sums, and a row of them
/// resamples to exactly 0), so a crop many times the image costs no more memory than one
/// inside it. Returns `cols.len() × rows.len()` interleaved RGB8 pixels.
pub fn resize_part(
    win: &Window<'_>,
    (ow, oh): (usize, usize),
    cols: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) -> Vec<u8> {
    let (w, h) = (win.width, win.height);
    let cols = cols.start.min(ow)..cols.end.min(ow);
    let rows = rows.start.min(oh)..rows.end.min(oh);
    let stride = cols.len() * 3;
    let mut out = vec![0u8; stride * rows.len()];
    if cols.is_empty() || rows.is_empty() || w == 0 || h == 0 {
        return out;
    }
    let need_h = ow != w;
    let need_v = oh != h;
    // Pillow 13's `ImagingResampleInner`: vertical pass first when the height shrinks by more
    // than twice as many pixels as the width does.
    let shrink_h = h as i64 - oh as i64;
    if need_h && need_v && shrink_h > 0 && shrink_h > 2 * (w as i64 - ow as i64) {
        return vertical_first(win, (ow, oh), cols, rows);
    }
    // Window columns and rows that lie inside the image.
    let in_cols = Window::inside(win.x0, win.img_w, 0, w);
    let in_rows = Window::inside(win.y0, win.img_h, 0, h);
    let vert = need_v.then(|| precompute(h, oh, rows.clone(), in_rows));
    // Window rows (inside the image) the vertical pass reads; without a vertical pass, the
    // output rows themselves.
    let (r0, r1) = match &vert {
        Some(v) => span(&v.bounds),
        None => Window::inside(win.y0, win.img_h, rows.start, rows.end),
    };
    // tmp: window rows r0..r1, the output's columns wide after the horizontal pass.
    let mut tmp = vec![0u8; (r1 - r0) * stride];
    if need_h {
        let horiz = precompute(w, ow, cols.clone(), in_cols);
        for (r, orow) in (r0..r1).zip(tmp.chunks_exact_mut(stride)) {
            horizontal_row(&horiz, image_row(win, r), win.x0, orow);
        }
    } else {
        // Same width: the window's own columns, black outside the image.
        let c0 = in_cols.0.max(cols.start);
        let c1 = in_cols.1.min(cols.end);
        if c0 < c1 {
            for (r, orow) in (r0..r1).zip(tmp.chunks_exact_mut(stride)) {
                let srow = image_row(win, r);
                let o = (c0 - cols.start) * 3;
                orow[o..o + (c1 - c0) * 3]
                    .copy_from_slice(&srow[window_col(win, c0) * 3..][..(c1 - c0) * 3]);
            }
        }
    }
    let Some(vert) = vert else {
        // No vertical pass: output row y is window row y.
        for y in r0..r1 {
            let dst = (y - rows.start) * stride;
            out[dst..dst + stride].copy_from_slice(&tmp[(y - r0) * stride..(y - r0 + 1) * stride]);
        }
        return out;
    };
    vertical_pass(
        &vert,
        |y| &tmp[(y - r0) * stride..(y - r0 + 1) * stride],
        stride,
        &mut out,
    );
    out
}

/// The smallest range covering every `(first, n)` tap range (empty ones ignored).
fn span(bounds: &[(usize, usize)]) -> (usize, usize) {
    let used = bounds.iter().filter(|b| b.1 > 0);
    let lo = used.clone().map(|b| b.0).min().unwrap_or(0);
    let hi = used.map(|b| b.0 + b.1).max().unwrap_or(lo);
    (lo, hi.max(lo))
}

/// Row `r` of the window (which must lie inside the image), as the image's whole row.
fn image_row<'a>(win: &Window<'a>, r: usize) -> &'a [u8] {
    let iy = (win.y0 + r as i64) as usize;
    &win.src[iy * win.img_w * 3..(iy + 1) * win.img_w * 3]
}

/// The image column of window column `c` (which must lie inside the image).
fn window_col(win: &Window<'_>, c: usize) -> usize {
    (win.x0 + c as i64) as usize
}

/// [`resize_part`] with the vertical pass first: the window's columns that lie inside the
/// image are resampled to the output's height, then each output row horizontally.
fn vertical_first(
    win: &Window<'_>,
    (ow, oh): (usize, usize),
    cols: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) -> Vec<u8> {
    let (w, h) = (win.width, win.height);
    let in_cols = Window::inside(win.x0, win.img_w, 0, w);
    let in_rows = Window::inside(win.y0, win.img_h, 0, h);
    let horiz = precompute(w, ow, cols.clone(), in_cols);
    let vert = precompute(h, oh, rows.clone(), in_rows);
    // Window columns (inside the image) the horizontal pass reads.
    let (c0, c1) = span(&horiz.bounds);
    let tstride = (c1 - c0) * 3;
    let stride = cols.len() * 3;
    let mut out = vec![0u8; stride * rows.len()];
    if tstride == 0 {
        return out; // every tap is black
    }
    // tmp: output rows × window columns c0..c1, after the vertical pass.
    let mut tmp = vec![0u8; rows.len() * tstride];
    let first = window_col(win, c0) * 3;
    vertical_pass(
        &vert,
        |y| &image_row(win, y)[first..][..tstride],
        tstride,
        &mut tmp,
    );
    for (trow, orow) in tmp.chunks_exact(tstride).zip(out.chunks_exact_mut(stride)) {
        horizontal_row(&horiz, trow, -(c0 as i64), orow);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_bicubic_rgb8(&src, 5, 4, 5, 4), src);
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 13 * 9 * 3];
        for (ow, oh) in [(4, 3), (30, 20), (13, 5), (7, 9)] {
            let out = resize_bicubic_rgb8(&src, 13, 9, ow, oh);
            assert_eq!(out.len(), ow * oh * 3);
            assert!(out.iter().all(|&v| v == 77), "{ow}x{oh}");
        }
    }

    /// The crop Pillow would make: black outside.
    fn padded(src: &[u8], w: usize, h: usize, x0: i64, y0: i64, cw: usize, ch: usize) -> Vec<u8> {
        let mut out = vec![0u8; cw * ch * 3];
        for y in 0..ch {
            for x in 0..cw {
                let (ix, iy) = (x0 + x as i64, y0 + y as i64);
                if ix >= 0 && iy >= 0 && (ix as usize) < w && (iy as usize) < h {
                    let s = (iy as usize * w + ix as usize) * 3;
                    out[(y * cw + x) * 3..(y * cw + x) * 3 + 3].copy_from_slice(&src[s..s + 3]);
                }
            }
        }
        out
    }

    #[test]
    fn windows_equal_resizing_the_padded_crop() {
        let (w, h) = (23, 17);
        let src: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        let cases = [
            (-5, -3, 40, 40, 12, 12),
            (3, 2, 10, 10, 10, 10),
            (-30, 4, 80, 6, 7, 6),
            (10, -20, 6, 70, 6, 9),
            (-100, -100, 250, 250, 11, 11),
            (30, 30, 9, 9, 4, 4),    // wholly outside
            (40, 0, 4, 100, 2, 10),  // right of the image, vertical pass first
            (-50, 5, 4, 100, 2, 10), // left of it
            (5, -300, 3, 200, 2, 7), // above it
            (0, 0, 23, 17, 23, 40),
        ];
        for (x0, y0, cw, ch, ow, oh) in cases {
            let win = Window {
                src: &src,
                img_w: w,
                img_h: h,
                x0,
                y0,
                width: cw,
                height: ch,
            };
            let want = resize_bicubic_rgb8(&padded(&src, w, h, x0, y0, cw, ch), cw, ch, ow, oh);
            assert_eq!(
                resize_window(&win, ow, oh),
                want,
                "{x0},{y0} {cw}x{ch} -> {ow}x{oh}"
            );
            // Any part of it, alone.
            let (c, r) = (ow / 3..ow - ow / 4, oh / 4..oh);
            let part = resize_part(&win, (ow, oh), c.clone(), r.clone());
            for (j, y) in r.enumerate() {
                let got = &part[j * c.len() * 3..(j + 1) * c.len() * 3];
                assert_eq!(got, &want[(y * ow + c.start) * 3..(y * ow + c.end) * 3]);
            }
        }
    }

    #[test]
    fn matches_pillow_on_a_known_case() {
        // Pillow 13: Image.frombytes("RGB", (4, 1), bytes([0,0,0, 255,255,255, 0,0,0, 255,255,255]))
        //   .resize((2, 1), Image.BICUBIC).tobytes() == bytes([107,107,107, 148,148,148])
        let src = [0, 0, 0, 255, 255, 255, 0, 0, 0, 255, 255, 255];
        let out = resize_bicubic_rgb8(&src, 4, 1, 2, 1);
        assert_eq!(out, vec![107, 107, 107, 148, 148, 148]);
    }
}
