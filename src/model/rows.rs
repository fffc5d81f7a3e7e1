//! `x @ w^T` for a handful of rows (beam decoding): one pass over the weight.
//!
//! A general matrix product first packs (copies) the weight into its blocked layout; with ten
//! rows that copy costs as much as the multiplication, and decoding is nothing but such products.
//! Here every weight row is read once, straight from memory, and dotted with all input rows while
//! they sit in L1: the step becomes bound by reading the weights, as it should be.

use rayon::prelude::*;

/// Up to this many input rows take the row kernel.
pub const MAX_ROWS: usize = 16;

/// `y (m, n) = x (m, k) @ w^T` where `w` is (n, k) row-major with leading dimension `ldw` and `x`
/// is (m, k) row-major with leading dimension `ldx`. Splits the output columns over candle's
/// threads.
pub fn matmul_nt(
    x: &[f32],
    ldx: usize,
    w: &[f32],
    ldw: usize,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    debug_assert!(m == 0 || x.len() >= (m - 1) * ldx + k);
    debug_assert!(n == 0 || w.len() >= (n - 1) * ldw + k);
    // Output column-major per block: each weight row yields m contiguous values.
    let mut yt = vec![0f32; n * m];
    // About four blocks per thread, so uneven blocks still balance.
    let threads = rayon::current_num_threads().max(1);
    let block = n.div_ceil(threads * 4).max(16);
    yt.par_chunks_mut(block * m)
        .enumerate()
        .for_each(|(bi, out)| {
            let j0 = bi * block;
            for (jj, col) in out.chunks_mut(m).enumerate() {
                let row = &w[(j0 + jj) * ldw..(j0 + jj) * ldw + k];
                for (i, slot) in col.iter_mut().enumerate() {
                    *slot = dot(&x[i * ldx..i * ldx + k], row);
                }
            }
        });
    let mut y = vec![0f32; m * n];
    for (j, col) in yt.chunks(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            y[i * n + j] = *v;
        }
    }
    y
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

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_kernel_matches_a_plain_product() {
        // Odd sizes: a tail after the 32- and 8-wide loops, a partial last column block.
        let (m, k, n) = (3, 45, 300);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
            .collect();
        let y = matmul_nt(&x, k, &w, k, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|l| x[i * k + l] * w[j * k + l]).sum();
                assert!((y[i * n + j] - want).abs() < 1e-4, "({i}, {j})");
            }
        }
        assert!((dot_portable(&x[..k], &w[..k]) - dot(&x[..k], &w[..k])).abs() < 1e-4);
    }
}
