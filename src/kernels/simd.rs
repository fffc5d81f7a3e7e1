//! Vector building blocks shared by the kernels: dot products, the softmax's exponential and
//! maximum, with AVX-512 / AVX2 paths chosen at run time and a portable loop beside each.

/// Whether this CPU runs AVX-512F (the tiled kernel and the fused kernels' vector paths).
pub(crate) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVX512: OnceLock<bool> = OnceLock::new();
        *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Dot product of two equal-length slices, with AVX2/FMA when the CPU has it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if fma_available() {
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            return unsafe { dot_fma(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
fn fma_available() -> bool {
    use std::sync::OnceLock;
    static FMA: OnceLock<bool> = OnceLock::new();
    *FMA.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

pub(crate) fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc3 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        acc2 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 16)),
            _mm256_loadu_ps(pb.add(i + 16)),
            acc2,
        );
        acc3 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 24)),
            _mm256_loadu_ps(pb.add(i + 24)),
            acc3,
        );
        i += 32;
    }
    while i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    let hi = _mm256_extractf128_ps(acc, 1);
    let lo = _mm256_castps256_ps128(acc);
    let s4 = _mm_add_ps(hi, lo);
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    let mut s = _mm_cvtss_f32(s1);
    while i < n {
        s += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    s
}

/// `out[i] = exp(scale * x[i] - shift)` for equal-length slices, returning the sum of `out`: the
/// inner loop of every softmax and of SwiGLU here. libm's `expf`, one value at a time, was a
/// fifth of a prefill's attention time; with AVX-512 sixteen lanes go at once through a
/// polynomial accurate to about 2 ulp.
pub(crate) fn exp_scaled(x: &[f32], out: &mut [f32], scale: f32, shift: f32) -> f32 {
    let n = x.len().min(out.len());
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512() {
        // SAFETY: AVX-512F is present (checked); both slices hold `n` values.
        return unsafe { exp_scaled_avx512(&x[..n], &mut out[..n], scale, shift) };
    }
    let mut sum = 0f32;
    for (o, v) in out[..n].iter_mut().zip(&x[..n]) {
        *o = (scale * v - shift).exp();
        sum += *o;
    }
    sum
}

/// The largest value of `x` (negative infinity when empty; NaNs are passed over): the shift
/// of every softmax here, vectorised like [`exp_scaled`].
pub(crate) fn max_of(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512() {
        // SAFETY: AVX-512F is present (checked).
        return unsafe { max_avx512(x) };
    }
    x.iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// The largest of `scale * x[i]`: a softmax's shift, for either sign of the scale.
pub(crate) fn scaled_max(x: &[f32], scale: f32) -> f32 {
    if scale >= 0.0 {
        max_of(x) * scale
    } else {
        x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(v * scale))
    }
}

/// [`max_of`] with AVX-512.
///
/// # Safety
/// Needs AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_avx512(x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
    let n = x.len();
    let mut i = 0;
    while i + 16 <= n {
        acc = _mm512_max_ps(acc, _mm512_loadu_ps(x.as_ptr().add(i)));
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
        let v = _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), mask, x.as_ptr().add(i));
        acc = _mm512_max_ps(acc, v);
    }
    _mm512_reduce_max_ps(acc)
}

/// e^x in 16 lanes: x = n ln2 + r with |r| <= ln2/2, e^r by its Taylor series to degree 7
/// (truncation below 1e-8 relative), then scaled by 2^n (which also gives 0 and infinity at the
/// ends of the range, and NaN for NaN).
///
/// # Safety
/// Needs AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_min_ps(x, _mm512_set1_ps(89.0));
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // ln 2 in two parts, the first exact in a few bits, so n * ln2 is subtracted exactly.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// [`exp_scaled`] with AVX-512: whole vectors, then the tail through a masked load.
///
/// # Safety
/// Needs AVX-512F; `x` and `out` have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_scaled_avx512(x: &[f32], out: &mut [f32], scale: f32, shift: f32) -> f32 {
    use std::arch::x86_64::*;
    let (vs, vh) = (_mm512_set1_ps(scale), _mm512_set1_ps(shift));
    let mut acc = _mm512_setzero_ps();
    let n = x.len();
    let mut i = 0;
    while i + 16 <= n {
        let e = exp16(_mm512_fmsub_ps(_mm512_loadu_ps(x.as_ptr().add(i)), vs, vh));
        _mm512_storeu_ps(out.as_mut_ptr().add(i), e);
        acc = _mm512_add_ps(acc, e);
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
        let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
        let e = _mm512_maskz_mov_ps(mask, exp16(_mm512_fmsub_ps(v, vs, vh)));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, e);
        acc = _mm512_add_ps(acc, e);
    }
    _mm512_reduce_add_ps(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised exponential against f64 over the whole useful range, tails included, and
    /// its limits: 0 far below, infinity far above.
    #[test]
    fn exp_scaled_is_within_a_few_ulp() {
        let x: Vec<f32> = (0..20_003).map(|i| -100.0 + i as f32 * 0.0094).collect();
        let mut out = vec![0f32; x.len()];
        exp_scaled(&x, &mut out, 1.0, 0.5);
        for (v, o) in x.iter().zip(&out) {
            // The argument rounded to f32 as the kernel forms it; exp's own error is measured.
            let want = ((*v - 0.5) as f64).exp();
            let ulp = (want as f32).abs() * f32::EPSILON;
            assert!(
                (*o as f64 - want).abs() <= 3.0 * ulp as f64 + 1e-37,
                "exp({v} - 0.5) = {o}, want {want}"
            );
        }
        // The returned sum, on a range whose sum fits an f32, scaled arguments and a tail.
        let x: Vec<f32> = (0..1001).map(|i| -10.0 + i as f32 * 0.02).collect();
        let mut out = vec![0f32; x.len()];
        let sum = exp_scaled(&x, &mut out, 2.0, 3.0);
        let want: f64 = x.iter().map(|v| (2.0 * *v as f64 - 3.0).exp()).sum();
        assert!((sum as f64 - want).abs() <= 1e-5 * want, "{sum} vs {want}");
        let mut edge = [1.0f32; 3];
        exp_scaled(&[-200.0, 200.0, 0.0], &mut edge, 1.0, 0.0);
        assert_eq!(edge, [0.0, f32::INFINITY, 1.0]);
    }

    /// The vector dot product against the plain loop, on lengths around the vector widths.
    #[test]
    fn dot_matches_the_portable_loop() {
        for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 100, 576] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!(
                (dot(&a, &b) as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "n = {n}"
            );
            assert!((dot_portable(&a, &b) as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()));
        }
    }
}
