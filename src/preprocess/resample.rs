//! Bicubic resampling that reproduces Pillow's `Image.resize(..., Image.BICUBIC)` bit for bit on
//! 8-bit RGB images: the same filter (Keys, a = -0.5), the same support widening when shrinking
//! (antialiasing), the same 22-bit fixed-point coefficients and rounding, horizontal pass first.
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

/// Per-output-pixel source window and fixed-point weights along one axis.
struct Coeffs {
    ksize: usize,
    /// `(first source index, number of taps)` per output pixel.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output pixel, in Pillow's fixed point.
    weights: Vec<i32>,
}

fn precompute(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Pillow truncates toward zero after adding 0.5 (`(int)(x + 0.5)`).
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..n {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an interleaved RGB8 buffer of `w × h` pixels to `ow × oh`, exactly as Pillow's
/// bicubic resize does. Returns the new interleaved RGB8 buffer.
pub fn resize_bicubic_rgb8(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<u8> {
    debug_assert_eq!(src.len(), w * h * 3);
    if (w, h) == (ow, oh) {
        return src.to_vec();
    }
    let horiz = precompute(w, ow);
    let vert = precompute(h, oh);
    let need_h = ow != w;
    let need_v = oh != h;

    // Horizontal pass over only the rows the vertical pass will read, as Pillow does.
    let (tmp, tmp_w, row0) = if need_h {
        let first = vert.bounds[0].0;
        let (lmin, ln) = vert.bounds[oh - 1];
        let rows = lmin + ln - first;
        let mut out = vec![0u8; ow * rows * 3];
        for (y, orow) in out.chunks_exact_mut(ow * 3).enumerate() {
            let srow = &src[(y + first) * w * 3..(y + first + 1) * w * 3];
            for ((xx, &(xmin, n)), o) in horiz
                .bounds
                .iter()
                .enumerate()
                .zip(orow.chunks_exact_mut(3))
            {
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                let px = &srow[xmin * 3..(xmin + n) * 3];
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
        }
        (out, ow, first)
    } else {
        (src.to_vec(), w, 0)
    };
    if !need_v {
        return tmp;
    }
    // Vertical pass a whole row at a time: contiguous reads, and the compiler vectorises it.
    let stride = tmp_w * 3;
    let mut out = vec![0u8; stride * oh];
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, n)) in vert.bounds.iter().enumerate() {
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (y, &ky) in k.iter().enumerate() {
            let r = ymin - row0 + y;
            for (a, &p) in acc.iter_mut().zip(&tmp[r * stride..(r + 1) * stride]) {
                *a += i32::from(p) * ky;
            }
        }
        for (o, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
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

    #[test]
    fn matches_pillow_on_a_known_case() {
        // Pillow 13: Image.frombytes("RGB", (4, 1), bytes([0,0,0, 255,255,255, 0,0,0, 255,255,255]))
        //   .resize((2, 1), Image.BICUBIC).tobytes() == bytes([107,107,107, 148,148,148])
        let src = [0, 0, 0, 255, 255, 255, 0, 0, 0, 255, 255, 255];
        let out = resize_bicubic_rgb8(&src, 4, 1, 2, 1);
        assert_eq!(out, vec![107, 107, 107, 148, 148, 148]);
    }
}
