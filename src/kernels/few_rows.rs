//! `x @ w^T` for a handful of rows (beam decoding, short continuations): one pass over the weight.
//!
//! A general matrix product first packs (copies) the weight into its blocked layout; with ten
//! rows that copy costs as much as the multiplication, and decoding is nothing but such products.
//! Here every weight row is read once, straight from memory, and dotted with all input rows while
//! it sits in L1: the step becomes bound by reading the weights, as it should be. With AVX-512 the
//! kernel works on tiles of 4 weight rows x 4 input rows (16 accumulators, each loaded value used
//! four times), so it stays ahead of memory up to a few dozen input rows.

use super::simd::{avx512, dot};
use rayon::prelude::*;

/// Up to this many input rows take the row kernel: measured against OpenBLAS's AVX-512 sgemm on
/// the 135M model's shapes (`bench model`'s few-row table), the tiled kernel wins clearly up to
/// 10 rows, narrowly at 16, and the two trade places from 32 rows on.
const MAX_ROWS: usize = 16;

/// Up to how many input rows [`matmul_nt`] beats a packed general product.
pub fn max_rows() -> usize {
    MAX_ROWS
}

/// A pointer to the output that tasks writing disjoint columns may share.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only the output columns of its own weight rows.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer, through a method so closures capture the whole (Send) wrapper rather than
    /// its raw-pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `y (m, n) = x (m, k) @ w^T` where `w` is (n, k) row-major with leading dimension `ldw` and `x`
/// is (m, k) row-major with leading dimension `ldx`. Splits the weight rows (output columns)
/// over the rayon pool.
pub fn matmul_nt(
    x: &[f32],
    ldx: usize,
    w: &[f32],
    ldw: usize,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    matmul_nt_with(x, ldx, w, ldw, m, k, n, avx512())
}

/// [`matmul_nt`] with the kernel chosen by the caller (`tiled` needs AVX-512F).
#[allow(clippy::too_many_arguments)]
fn matmul_nt_with(
    x: &[f32],
    ldx: usize,
    w: &[f32],
    ldw: usize,
    m: usize,
    k: usize,
    n: usize,
    tiled: bool,
) -> Vec<f32> {
    assert!(
        m == 0 || x.len() >= (m - 1) * ldx + k,
        "row kernel: x too short"
    );
    assert!(
        n == 0 || w.len() >= (n - 1) * ldw + k,
        "row kernel: w too short"
    );
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return y;
    }
    // About four blocks per thread, so uneven blocks still balance; whole tiles of 4 rows.
    let threads = rayon::current_num_threads().max(1);
    let block = n.div_ceil(threads * 4).max(16).next_multiple_of(4);
    let out = OutPtr(y.as_mut_ptr());
    (0..n.div_ceil(block)).into_par_iter().for_each(|bi| {
        let (j0, j1) = (bi * block, ((bi + 1) * block).min(n));
        #[cfg(target_arch = "x86_64")]
        if tiled {
            // SAFETY: the caller passes `tiled` only with AVX-512F; the asserts above
            // keep reads inside `x` and `w`, and this task writes columns j0..j1 of `y` only.
            unsafe { tiled_block(x, ldx, w, ldw, m, k, n, j0, j1, out.get()) };
            return;
        }
        let _ = tiled;
        for j in j0..j1 {
            let row = &w[j * ldw..j * ldw + k];
            for i in 0..m {
                // SAFETY: (i, j) is inside `y`, and column j belongs to this task.
                unsafe { *out.get().add(i * n + j) = dot(&x[i * ldx..i * ldx + k], row) };
            }
        }
    });
    y
}

/// Output columns `j0..j1` of `y = x @ w^T`: up to 4 input rows against 4 weight rows at a
/// time, more in groups of up to 12 against pairs of weight rows.
///
/// # Safety
/// AVX-512F must be available; `x`, `w` must hold the rows described; `y` must have m x n
/// elements, of which this call writes columns `j0..j1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tiled_block(
    x: &[f32],
    ldx: usize,
    w: &[f32],
    ldw: usize,
    m: usize,
    k: usize,
    n: usize,
    j0: usize,
    j1: usize,
    y: *mut f32,
) {
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    // The weight rows two tiles on, to prefetch while this tile runs (see `tile`), when they
    // are still this task's.
    let ahead = |j: usize, c: usize| -> *const f32 {
        if j + 3 * c <= j1 {
            wp.add((j + c) * ldw)
        } else {
            std::ptr::null()
        }
    };
    let mut j = j0;
    if m >= 5 {
        // Up to 12 input rows at a time against each pair of weight rows: the weights stream
        // from memory once, with the arithmetic on them overlapping their loads (several passes
        // of 4 rows left memory idle during the later ones). More rows take further groups of
        // up to 12 over the same pair, then in L1.
        while j < j1 {
            let c = (j1 - j).min(2);
            let wj = wp.add(j * ldw);
            let mut i = 0;
            while i < m {
                let r = (m - i).min(12);
                let (xi, yij) = (xp.add(i * ldx), y.add(i * n + j));
                let pf = if i == 0 {
                    ahead(j, c)
                } else {
                    std::ptr::null()
                };
                macro_rules! rows {
                    ($($r:literal),*) => {
                        match (r, c) {
                            $(($r, 2) => tile::<$r, 2>(xi, ldx, wj, ldw, k, yij, n, pf),
                              ($r, _) => tile::<$r, 1>(xi, ldx, wj, ldw, k, yij, n, pf),)*
                            _ => unreachable!("1 to 12 rows"),
                        }
                    };
                }
                rows!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
                i += r;
            }
            j += c;
        }
        return;
    }
    // Up to 4 rows: one tile of all of them against up to 4 weight rows, fetching the next.
    while j < j1 {
        let c = (j1 - j).min(4);
        let (wj, yj, pf) = (wp.add(j * ldw), y.add(j), ahead(j, c));
        match (m, c) {
            (4, 4) => tile::<4, 4>(xp, ldx, wj, ldw, k, yj, n, pf),
            (4, 3) => tile::<4, 3>(xp, ldx, wj, ldw, k, yj, n, pf),
            (4, 2) => tile::<4, 2>(xp, ldx, wj, ldw, k, yj, n, pf),
            (4, _) => tile::<4, 1>(xp, ldx, wj, ldw, k, yj, n, pf),
            (3, 4) => tile::<3, 4>(xp, ldx, wj, ldw, k, yj, n, pf),
            (3, 3) => tile::<3, 3>(xp, ldx, wj, ldw, k, yj, n, pf),
            (3, 2) => tile::<3, 2>(xp, ldx, wj, ldw, k, yj, n, pf),
            (3, _) => tile::<3, 1>(xp, ldx, wj, ldw, k, yj, n, pf),
            (2, 4) => tile::<2, 4>(xp, ldx, wj, ldw, k, yj, n, pf),
            (2, 3) => tile::<2, 3>(xp, ldx, wj, ldw, k, yj, n, pf),
            (2, 2) => tile::<2, 2>(xp, ldx, wj, ldw, k, yj, n, pf),
            (2, _) => tile::<2, 1>(xp, ldx, wj, ldw, k, yj, n, pf),
            (_, 4) => tile::<1, 4>(xp, ldx, wj, ldw, k, yj, n, pf),
            (_, 3) => tile::<1, 3>(xp, ldx, wj, ldw, k, yj, n, pf),
            (_, 2) => tile::<1, 2>(xp, ldx, wj, ldw, k, yj, n, pf),
            _ => tile::<1, 1>(xp, ldx, wj, ldw, k, yj, n, pf),
        }
        j += c;
    }
}

/// One R x C tile: `y[r][c] = x_r . w_c` over the full length `k`, 16 lanes at a time, the tail
/// through a masked load. Every loaded weight vector serves R rows and every input vector C
/// weight rows.
///
/// # Safety
/// As for [`tiled_block`]: R input rows from `x` (stride `ldx`), C weight rows from `w` (stride
/// `ldw`), each `k` long; writes y[r * ldy + c]. `prefetch`, unless null, starts 2C more weight
/// rows (same stride and length) to fetch along the way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const C: usize>(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    k: usize,
    y: *mut f32,
    ldy: usize,
    prefetch: *const f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut l = 0;
    while l + 16 <= k {
        if !prefetch.is_null() {
            // The hardware prefetcher alone left beam decoding at a third of the memory
            // bandwidth here: the next C weight rows into L1, the C after them into L2, each at
            // the pace these rows are read.
            for c in 0..C {
                _mm_prefetch::<_MM_HINT_T0>(prefetch.add(c * ldw + l) as *const i8);
            }
            for c in C..2 * C {
                _mm_prefetch::<_MM_HINT_T1>(prefetch.add(c * ldw + l) as *const i8);
            }
        }
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(w.add(c * ldw + l));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let xv = _mm512_loadu_ps(x.add(r * ldx + l));
            for (c, a) in row.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(xv, wv[c], *a);
            }
        }
        l += 16;
    }
    if l < k {
        let mask: __mmask16 = (1u32 << (k - l)) as u16 - 1;
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(mask, w.add(c * ldw + l));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let xv = _mm512_maskz_loadu_ps(mask, x.add(r * ldx + l));
            for (c, a) in row.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(xv, wv[c], *a);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, a) in row.iter().enumerate() {
            *y.add(r * ldy + c) = _mm512_reduce_add_ps(*a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1].
    fn filled(len: usize, mul: usize, modulo: usize) -> Vec<f32> {
        let half = (modulo / 2) as f32;
        (0..len)
            .map(|i| ((i * mul % modulo) as f32 - half) / half)
            .collect()
    }

    #[test]
    fn every_kernel_tile_shape_and_stride_matches_a_plain_product() {
        // m and n cover every tile remainder (1-3 rows, 1-3 weight rows), k tails after the
        // 32-, 16- and 8-wide loops, and leading dimensions equal to or larger than k (views
        // into wider matrices). Both kernels run wherever the CPU can run them.
        let kernels = [false, avx512()];
        for (m, k, n, pad) in [
            (3, 45, 300, 0),
            (1, 16, 4, 3),
            (5, 33, 7, 3),
            (7, 64, 66, 3),
            (13, 100, 301, 3),
            (48, 576, 40, 3),
        ] {
            let (ldx, ldw) = (k + pad, k + 2 * pad);
            let x = filled(m * ldx, 37, 101);
            let w = filled(n * ldw, 53, 97);
            for tiled in kernels {
                let y = matmul_nt_with(&x, ldx, &w, ldw, m, k, n, tiled);
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 = (0..k).map(|l| x[i * ldx + l] * w[j * ldw + l]).sum();
                        let tol = 1e-4 * (k as f32).sqrt().max(1.0);
                        assert!(
                            (y[i * n + j] - want).abs() < tol,
                            "tiled {tiled} m{m} k{k} n{n} ({i}, {j})"
                        );
                    }
                }
            }
            assert!(
                (super::super::simd::dot_portable(&x[..k], &w[..k]) - dot(&x[..k], &w[..k])).abs()
                    < 1e-4
            );
        }
    }
}
