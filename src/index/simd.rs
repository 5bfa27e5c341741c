//! The dot product of two float32 vectors, the one arithmetic of graph search and build, and a
//! cache prefetch hint. The instruction set is detected once per process at run time
//! (AVX-512F, else AVX2 + FMA on x86-64; NEON on aarch64; else a portable loop the compiler
//! vectorises): [`Dot::detect`] picks a plain function pointer, which every caller then uses,
//! so one process scores every pair with the same bits.

/// A dot-product kernel chosen for this CPU.
#[derive(Clone, Copy)]
pub struct Dot {
    f: fn(&[f32], &[f32]) -> f32,
    name: &'static str,
}

impl std::fmt::Debug for Dot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dot({})", self.name)
    }
}

impl Dot {
    /// The fastest kernel this CPU runs (detected once, then cached).
    pub fn detect() -> Dot {
        static CHOSEN: std::sync::OnceLock<Dot> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    return Dot {
                        f: x86::dot_avx512_safe,
                        name: "avx512",
                    };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    return Dot {
                        f: x86::dot_avx2_safe,
                        name: "avx2+fma",
                    };
                }
            }
            #[cfg(target_arch = "aarch64")]
            {
                return Dot {
                    f: neon::dot,
                    name: "neon",
                };
            }
            #[allow(unreachable_code)]
            Dot {
                f: dot_portable,
                name: "portable",
            }
        })
    }

    /// The portable kernel (for tests comparing kernels).
    pub fn portable() -> Dot {
        Dot {
            f: dot_portable,
            name: "portable",
        }
    }

    /// ⟨a, b⟩ over the shorter length.
    #[inline(always)]
    pub fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        (self.f)(a, b)
    }

    /// The instruction set in use: `avx512`, `avx2+fma`, `neon` or `portable`.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Eight independent lanes so the compiler vectorises without reassociating.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// Hints the CPU to fetch the cache lines holding the first `bytes` of `p` (no effect where
/// there is no prefetch instruction).
#[inline(always)]
pub fn prefetch(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetch never faults, whatever the address.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p.wrapping_add(off) as *const i8,
                )
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    pub fn dot_avx512_safe(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: chosen only after `is_x86_feature_detected!("avx512f")`.
        unsafe { dot_avx512(a, b) }
    }

    pub fn dot_avx2_safe(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: chosen only after AVX2 and FMA were detected.
        unsafe { dot_avx2(a, b) }
    }

    /// Four 16-lane accumulators; the tail is a masked load (no scalar loop).
    #[target_feature(enable = "avx512f")]
    unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 64 ≤ n, i + 16 ≤ n, or masked to the n − i lanes left.
        while i + 64 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let x = _mm512_loadu_ps(pa.add(i + 16 * j));
                let y = _mm512_loadu_ps(pb.add(i + 16 * j));
                *s = _mm512_fmadd_ps(x, y, *s);
            }
            i += 64;
        }
        while i + 16 <= n {
            let x = _mm512_loadu_ps(pa.add(i));
            let y = _mm512_loadu_ps(pb.add(i));
            acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
            let x = _mm512_maskz_loadu_ps(m, pa.add(i));
            let y = _mm512_maskz_loadu_ps(m, pb.add(i));
            acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    /// Four 8-lane accumulators and a scalar tail.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 32 ≤ n or i + 8 ≤ n.
        while i + 32 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                let y = _mm256_loadu_ps(pb.add(i + 8 * j));
                *s = _mm256_fmadd_ps(x, y, *s);
            }
            i += 32;
        }
        while i + 8 <= n {
            let x = _mm256_loadu_ps(pa.add(i));
            let y = _mm256_loadu_ps(pb.add(i));
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        let mut r = _mm_cvtss_f32(h);
        while i < n {
            r += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        r
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// Four 4-lane accumulators and a scalar tail (NEON is always present on aarch64).
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY: NEON is part of aarch64; every load is within the first n values.
        unsafe {
            let mut acc = [vdupq_n_f32(0.0); 4];
            let mut i = 0;
            while i + 16 <= n {
                for (j, s) in acc.iter_mut().enumerate() {
                    *s = vfmaq_f32(
                        *s,
                        vld1q_f32(pa.add(i + 4 * j)),
                        vld1q_f32(pb.add(i + 4 * j)),
                    );
                }
                i += 16;
            }
            let mut r = vaddvq_f32(vaddq_f32(
                vaddq_f32(acc[0], acc[1]),
                vaddq_f32(acc[2], acc[3]),
            ));
            while i < n {
                r += *pa.add(i) * *pb.add(i);
                i += 1;
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_matches_f64_at_every_length() {
        let d = Dot::detect();
        let p = Dot::portable();
        for n in 0..200 {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 53 % 13) as f32 - 6.0) / 5.0).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            for k in [d, p] {
                let got = k.dot(&a, &b) as f64;
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{k:?} n {n}"
                );
            }
        }
        // Lengths differ: the shorter one counts.
        assert_eq!(d.dot(&[1.0, 2.0, 3.0], &[1.0, 1.0]), 3.0);
    }
}
