//! Large f32 matrix products on Intel AMX tiles, split three ways into bf16 ("bf16x3").
//!
//! AMX multiplies bf16 tiles at about ten times the f32 rate of AVX-512 on one core. A bf16 keeps
//! only 8 bits of an f32's 24-bit significand, so each operand is split into a high and a low
//! bf16 (`x ~ hi + lo`, 16 significant bits) and the product is summed from the three terms that
//! matter, `hi*hi + lo*hi + hi*lo`, accumulated in f32 by the tile unit. The term left out,
//! `lo*lo`, and the split's own remainder are each about 2^-16 of a term, so a product agrees with
//! f32 to roughly 1e-5 relative: far below what moves a ranking or a training step, and checked
//! against f64 sums in the tests. Three bf16 products still run 2-3x faster than one f32 product
//! through the best AVX-512 sgemm on the development machine (`bench products` prints both rates).
//!
//! Used only where it pays: CPUs that have AMX-BF16, Linux granting the tile state, products big
//! enough that packing the operands is cheap beside the work. `SELFRET_AMX=off` turns it off.
//! Everything else (small products, other CPUs) stays on the BLAS and the row kernel. One job
//! in one file: packing, the tile kernel and its dispatch over threads belong together.

use rayon::prelude::*;
use std::sync::OnceLock;

/// Rows of a tile, and output columns of a tile.
const TILE: usize = 16;
/// bf16 values along the contraction in one tile row (64 bytes).
const TILE_K: usize = 32;
/// u16 elements in one packed tile.
const TILE_ELEMS: usize = TILE * TILE_K;
/// Rows of the left operand packed and multiplied together: their packed tiles (about 600 KB at
/// the model's widest contraction) stay in the core's L2 while every column panel passes by.
const ROW_CHUNK: usize = 256;

/// Whether products may run on AMX here: the CPU has it, the kernel lets this process use it,
/// and neither the user (`SELFRET_AMX=off`) nor [`set_enabled`] has turned it off.
pub fn available() -> bool {
    present() && ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The CPU and the kernel allow the tiles and `SELFRET_AMX` does not forbid them. Decided once.
fn present() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let off = std::env::var("SELFRET_AMX")
            .map(|v| matches!(v.as_str(), "off" | "0" | "none"))
            .unwrap_or(false);
        !off && detect()
    })
}

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the AMX path off (or back on) for the whole process, so a test or a benchmark can
/// compare it with the f32 products on the same inputs. Returns whether the tiles are there
/// at all.
pub fn set_enabled(on: bool) -> bool {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
    present()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID.(7,0):EDX bit 24 is AMX-TILE, bit 22 AMX-BF16. CPUID is available on every x86_64
    // CPU; leaf 7 is checked against the maximum leaf.
    let (max_leaf, leaf7) = (__cpuid_count(0, 0).eax, __cpuid_count(7, 0));
    if max_leaf < 7 || leaf7.edx & (1 << 24) == 0 || leaf7.edx & (1 << 22) == 0 {
        return false;
    }
    // The packing converts with AVX512-BF16 (present on every AMX CPU so far, but checked).
    if !is_x86_feature_detected!("avx512bf16") || !is_x86_feature_detected!("avx512bw") {
        return false;
    }
    // Linux enables the large tile-data state per process, on request (ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA); without the grant the first tile instruction would fault.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permitted state.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Whether an m x n x k product is worth the tiles, both operands packed for it: every side
/// spans several tiles, so each packed element serves many tile products, and there are column
/// pairs for every thread. (A LoRA adapter's rank-32 products failed this and ran slower on
/// the tiles than through the BLAS.)
pub fn worthwhile(m: usize, n: usize, k: usize) -> bool {
    m >= 64 && n >= 128 && k >= 64 && m * n * k >= 1 << 22
}

/// Whether a product against a weight packed already ([`PackedMatrix`]) is worth the tiles:
/// only the input rows are packed per product. From the row kernel's limit on: with 17-32 rows
/// the tiles still stream a cold weight at 12-14 GB/s here, where the row kernel and the BLAS
/// fell to 6-8 (`bench products` shows both).
pub fn worthwhile_packed(m: usize, n: usize, k: usize) -> bool {
    m > super::few_rows::max_rows() && n >= 32 && k >= 32 && m * n * k >= 1 << 18
}

/// One operand as the product sees it: `rows` x `k` (k is the contraction), element (i, p) at
/// `ptr[i * row_stride + p * k_stride]`.
#[derive(Clone, Copy)]
pub struct Operand {
    pub ptr: *const f32,
    pub rows: usize,
    pub row_stride: usize,
    pub k_stride: usize,
}
// SAFETY: an operand is only read, and the caller keeps its memory alive for the product.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    /// A matrix stored with leading dimension `ld`: with `rows_along_ld` operand row i starts at
    /// `ptr + i * ld` (its contraction values contiguous), otherwise the matrix is stored
    /// transposed (contraction step p starts at `ptr + p * ld`).
    pub fn strided(ptr: *const f32, rows: usize, ld: usize, rows_along_ld: bool) -> Operand {
        let (row_stride, k_stride) = if rows_along_ld { (ld, 1) } else { (1, ld) };
        Operand {
            ptr,
            rows,
            row_stride,
            k_stride,
        }
    }
}

/// Round to the nearest bf16 (ties to even), as the upper 16 bits of an f32.
#[cfg(test)]
fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return ((b >> 16) | 0x40) as u16; // NaN stays NaN
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// An operand in tile order: for every block of 16 rows and 32 contraction steps, its high tile
/// then its low tile (1 KB each). Rows and contraction are zero-padded to whole tiles, and the row
/// blocks to an even count (the kernel works on pairs).
struct Packed {
    data: Vec<u16>,
    /// Contraction blocks of 32.
    k_blocks: usize,
}

impl Packed {
    /// Offset (in u16) of the high tile of row block `rb`, contraction block `kb`.
    #[inline(always)]
    fn tile(&self, rb: usize, kb: usize) -> usize {
        (rb * self.k_blocks + kb) * 2 * TILE_ELEMS
    }
}

/// Reads the 16 x 32 block of `op` at rows `r0..`, contraction `p0..` into `buf` (zeros past the
/// ends), walking memory in whichever order is contiguous.
///
/// # Safety
/// `op` must describe readable memory for all its rows and `k` contraction steps.
#[inline(always)]
unsafe fn gather(op: &Operand, k: usize, r0: usize, p0: usize, buf: &mut [[f32; TILE_K]; TILE]) {
    let rows = TILE.min(op.rows.saturating_sub(r0));
    let steps = TILE_K.min(k.saturating_sub(p0));
    if rows < TILE || steps < TILE_K {
        *buf = [[0.0; TILE_K]; TILE];
    }
    if op.k_stride == 1 {
        for (r, row) in buf.iter_mut().enumerate().take(rows) {
            let src = op.ptr.add((r0 + r) * op.row_stride + p0);
            std::ptr::copy_nonoverlapping(src, row.as_mut_ptr(), steps);
        }
    } else {
        for p in 0..steps {
            let src = op.ptr.add((p0 + p) * op.k_stride + r0 * op.row_stride);
            for (r, row) in buf.iter_mut().enumerate().take(rows) {
                row[p] = *src.add(r * op.row_stride);
            }
        }
    }
}

/// Splits the 32 values of `row` into high and low bf16 halves, 64 bytes each.
///
/// # Safety
/// Needs AVX-512F/BW and AVX512-BF16 (every AMX CPU has them; [`available`] checks).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn split_row(row: &[f32; TILE_K], hi: *mut u16, lo: *mut u16) {
    use std::arch::x86_64::*;
    let a = _mm512_loadu_ps(row.as_ptr());
    let b = _mm512_loadu_ps(row.as_ptr().add(16));
    // Round to nearest even; the first 16 values land in the low half of the result.
    let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
    let widen = |v: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)));
    let ha = widen(_mm512_castsi512_si256(h));
    let hb = widen(_mm512_extracti64x4_epi64::<1>(h));
    let l: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(
        _mm512_sub_ps(b, hb),
        _mm512_sub_ps(a, ha),
    ));
    _mm512_storeu_si512(hi as *mut __m512i, h);
    _mm512_storeu_si512(lo as *mut __m512i, l);
}

/// Packs `op` (`blocks` row blocks of it, padded with zero blocks) into tiles. As the left
/// operand, tile row r holds operand row r's 32 contraction values. As the right operand the
/// tile is in the pair-interleaved ("VNNI") layout the tile product reads: tile row q holds, for
/// each of the 16 operand rows (output columns) c, contraction values 2q and 2q+1 side by side.
///
/// # Safety
/// As for [`gemm`]; AVX-512 BF16 must be present.
#[cfg(target_arch = "x86_64")]
unsafe fn pack(op: &Operand, k: usize, right: bool) -> Packed {
    let k_blocks = k.div_ceil(TILE_K);
    let blocks = op.rows.div_ceil(TILE).next_multiple_of(2);
    let len = blocks * k_blocks * 2 * TILE_ELEMS;
    let mut data: Vec<u16> = Vec::with_capacity(len);
    // Written in place without zeroing first: every element is written below (the gathered
    // blocks carry the zero padding).
    data.spare_capacity_mut()[..len]
        .par_chunks_mut(k_blocks * 2 * TILE_ELEMS)
        .enumerate()
        .for_each(|(rb, out)| {
            let out = out.as_mut_ptr() as *mut u16;
            let mut buf = [[0f32; TILE_K]; TILE];
            let mut split = [[[0u32; TILE]; TILE]; 2];
            for kb in 0..k_blocks {
                // SAFETY: the caller guarantees the operand's memory and the CPU features;
                // `out` holds this row block's tiles.
                unsafe {
                    gather(op, k, rb * TILE, kb * TILE_K, &mut buf);
                    let hi = out.add(kb * 2 * TILE_ELEMS);
                    let lo = hi.add(TILE_ELEMS);
                    if !right {
                        for (r, row) in buf.iter().enumerate() {
                            split_row(row, hi.add(r * TILE_K), lo.add(r * TILE_K));
                        }
                        continue;
                    }
                    // Row c's 32 values as 16 pairs, then pairs transposed into tile rows.
                    let [sh, sl] = &mut split;
                    for (c, row) in buf.iter().enumerate() {
                        split_row(
                            row,
                            sh[c].as_mut_ptr() as *mut u16,
                            sl[c].as_mut_ptr() as *mut u16,
                        );
                    }
                    let (hi, lo) = (hi as *mut u32, lo as *mut u32);
                    for q in 0..TILE {
                        for c in 0..TILE {
                            *hi.add(q * TILE + c) = sh[c][q];
                            *lo.add(q * TILE + c) = sl[c][q];
                        }
                    }
                }
            }
        });
    // SAFETY: every one of the `len` elements was written above.
    unsafe { data.set_len(len) };
    Packed { data, k_blocks }
}

/// A right operand packed once for many products: a frozen weight.
pub struct PackedMatrix {
    packed: Packed,
    /// Operand rows: the product's output columns.
    rows: usize,
    /// Contraction length.
    k: usize,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({} x {})", self.rows, self.k)
    }
}

impl PackedMatrix {
    /// Packs `op` (`rows` x `k`) as the right operand of later products. Callers check
    /// [`available`] first.
    ///
    /// # Safety
    /// `op` must describe readable memory for `k` contraction steps of all its rows.
    pub unsafe fn new(op: Operand, k: usize) -> PackedMatrix {
        PackedMatrix {
            packed: pack(&op, k, true),
            rows: op.rows,
            k,
        }
    }

    /// Output columns of a product with this operand.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Contraction length.
    pub fn k(&self) -> usize {
        self.k
    }
}

/// The tile palette: eight tiles of 16 rows x 64 bytes (tmm0-3 accumulate a 32 x 32 block of the
/// output, tmm4-5 hold left tiles, tmm6-7 right tiles).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Adds to a 32 x 32 block of the output: left row blocks starting at `a0` and `a1`, right
/// column blocks at `b0` and `b1` (each pointing at a high tile), `steps` contraction blocks.
/// The block lives at `out`, rows `stride` bytes apart: its sums are read first unless `fresh`,
/// then written.
///
/// # Safety
/// The tile configuration must be loaded on this thread, the four pointers must have `steps`
/// packed (high, low) tile pairs after them, and `out` must hold 32 rows of 32 floats.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
unsafe fn block(
    [a0, a1, b0, b1]: [*const u16; 4],
    steps: usize,
    out: *mut f32,
    stride: usize,
    fresh: bool,
) {
    use std::arch::asm;
    let o = out as *mut u8;
    let o2 = o.add(16 * stride);
    if fresh {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, preserves_flags)
        );
    } else {
        asm!(
            "tileloadd tmm0, [{o} + {s}*1]",
            "tileloadd tmm1, [{o} + {s}*1 + 64]",
            "tileloadd tmm2, [{o2} + {s}*1]",
            "tileloadd tmm3, [{o2} + {s}*1 + 64]",
            o = in(reg) o,
            o2 = in(reg) o2,
            s = in(reg) stride,
            options(nostack, preserves_flags, readonly)
        );
    }
    // Bytes from one contraction block's (high, low) pair to the next.
    let step = 2 * TILE_ELEMS * 2;
    for kb in 0..steps {
        let off = kb * step;
        // High x high, high x low (the left high tiles stay), low x high; the right tiles are
        // loaded twice, the left ones once each.
        asm!(
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "tileloadd tmm6, [{b0} + {s}*1 + 1024]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}*1 + 1024]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "tileloadd tmm4, [{a0} + {s}*1 + 1024]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s}*1 + 1024]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) (a0 as *const u8).add(off),
            a1 = in(reg) (a1 as *const u8).add(off),
            b0 = in(reg) (b0 as *const u8).add(off),
            b1 = in(reg) (b1 as *const u8).add(off),
            s = in(reg) 64usize,
            options(nostack, preserves_flags, readonly)
        );
    }
    asm!(
        "tilestored [{o} + {s}*1], tmm0",
        "tilestored [{o} + {s}*1 + 64], tmm1",
        "tilestored [{o2} + {s}*1], tmm2",
        "tilestored [{o2} + {s}*1 + 64], tmm3",
        o = in(reg) o,
        o2 = in(reg) o2,
        s = in(reg) stride,
        options(nostack, preserves_flags)
    );
}

/// Loads the tile palette on this thread.
///
/// # Safety
/// AMX must be [`available`].
#[cfg(target_arch = "x86_64")]
unsafe fn configure_tiles() {
    std::arch::asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, preserves_flags));
}

/// Returns this thread's tiles to their initial state (cheaper context switches).
///
/// # Safety
/// AMX must be [`available`].
#[cfg(target_arch = "x86_64")]
unsafe fn release_tiles() {
    std::arch::asm!("tilerelease", options(nostack, preserves_flags));
}

// Other architectures never get here: `available` is false.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn configure_tiles() {
    unreachable!("AMX exists on x86_64 only")
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn release_tiles() {}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack(_: &Operand, _: usize, _: bool) -> Packed {
    unreachable!("AMX exists on x86_64 only")
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn block(_: [*const u16; 4], _: usize, _: *mut f32, _: usize, _: bool) {
    unreachable!("AMX exists on x86_64 only")
}

/// A pointer to the output that tasks writing disjoint blocks may share.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes its own columns of the output.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The output element at `offset` (a method, so closures capture the whole `Out`).
    ///
    /// # Safety
    /// `offset` must lie inside the output.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// `c (m x n, row stride ldc) = beta * c + left (m x k) @ right (n x k)^T`, with `beta` 0 or 1
/// (with 0, `c` is only written). Callers check [`available`] first.
///
/// # Safety
/// The operands must describe readable memory for `k` contraction steps of all their rows, and
/// `c` must hold `m` rows of `n` floats at stride `ldc`, not aliasing the operands.
pub unsafe fn gemm(left: Operand, right: Operand, k: usize, beta: f32, c: *mut f32, ldc: usize) {
    if left.rows == 0 || right.rows == 0 {
        return;
    }
    gemm_packed(left, &PackedMatrix::new(right, k), beta, c, ldc);
}

/// [`gemm`] with the right operand packed already.
///
/// # Safety
/// As for [`gemm`], with `left` covering `right.k()` contraction steps and `c` `right.rows()`
/// columns.
pub unsafe fn gemm_packed(left: Operand, right: &PackedMatrix, beta: f32, c: *mut f32, ldc: usize) {
    let (m, n, k) = (left.rows, right.rows, right.k);
    if m == 0 || n == 0 {
        return;
    }
    let right = &right.packed;
    let col_pairs = n.div_ceil(2 * TILE);
    let out = Out(c);
    for r0 in (0..m).step_by(ROW_CHUNK) {
        let chunk = Operand {
            ptr: left.ptr.add(r0 * left.row_stride),
            rows: ROW_CHUNK.min(m - r0),
            ..left
        };
        let left_packed = pack(&chunk, k, false);
        let row_pairs = chunk.rows.div_ceil(2 * TILE);
        (0..col_pairs).into_par_iter().for_each(|cp| {
            let kbs = left_packed.k_blocks;
            let cols = (2 * TILE).min(n - cp * 2 * TILE);
            let mut edge = [0f32; 1024];
            // SAFETY: tiles are configured on this thread before use and released after;
            // packed offsets stay inside the packed buffers; each task writes its own columns.
            unsafe {
                configure_tiles();
                let b0 = right.data.as_ptr().add(right.tile(2 * cp, 0));
                let b1 = right.data.as_ptr().add(right.tile(2 * cp + 1, 0));
                for rp in 0..row_pairs {
                    let a0 = left_packed.data.as_ptr().add(left_packed.tile(2 * rp, 0));
                    let a1 = left_packed
                        .data
                        .as_ptr()
                        .add(left_packed.tile(2 * rp + 1, 0));
                    let rows = (2 * TILE).min(chunk.rows - rp * 2 * TILE);
                    let dst = out.at((r0 + rp * 2 * TILE) * ldc + cp * 2 * TILE);
                    if rows == 2 * TILE && cols == 2 * TILE {
                        // A whole block: the tiles read and write the output in place.
                        block([a0, a1, b0, b1], kbs, dst, ldc * 4, beta == 0.0);
                        continue;
                    }
                    // A block on the edge goes through a 32 x 32 buffer.
                    block([a0, a1, b0, b1], kbs, edge.as_mut_ptr(), 2 * TILE * 4, true);
                    for r in 0..rows {
                        let d = dst.add(r * ldc);
                        for (j, &v) in edge[r * 2 * TILE..r * 2 * TILE + cols].iter().enumerate() {
                            if beta == 0.0 {
                                *d.add(j) = v;
                            } else {
                                *d.add(j) += v;
                            }
                        }
                    }
                }
                release_tiles();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The vector split rounds like the scalar definition and keeps 16 significant bits.
    #[test]
    fn split_keeps_sixteen_bits() {
        if !available() {
            eprintln!("no AMX here: nothing to check");
            return;
        }
        let mut s = 7;
        for _ in 0..500 {
            let mut row = [0f32; TILE_K];
            for v in row.iter_mut() {
                *v = lcg(&mut s) * 100.0;
            }
            let (mut hi, mut lo) = ([0u16; TILE_K], [0u16; TILE_K]);
            unsafe { split_row(&row, hi.as_mut_ptr(), lo.as_mut_ptr()) };
            for p in 0..TILE_K {
                let x = row[p];
                assert_eq!(hi[p], bf16(x), "{x}");
                let back =
                    f32::from_bits((hi[p] as u32) << 16) + f32::from_bits((lo[p] as u32) << 16);
                assert!(
                    (back - x).abs() <= x.abs() * 2f32.powi(-16),
                    "{x} -> {back}"
                );
            }
        }
        assert_eq!(bf16(1.0), 0x3f80);
        assert!(f32::from_bits((bf16(f32::NAN) as u32) << 16).is_nan());
    }

    /// Odd sizes (partial tiles everywhere), both operand layouts, both betas, against f64 sums.
    #[test]
    fn products_match_f64_sums() {
        if !available() {
            eprintln!("no AMX here: nothing to check");
            return;
        }
        let mut s = 1;
        for &(m, n, k, a_t, b_t, beta) in &[
            (70usize, 45usize, 100usize, false, false, 0.0f32),
            (33, 64, 576, true, false, 1.0),
            (300, 97, 65, false, true, 0.0),
            (257, 40, 33, true, true, 1.0),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut s)).collect();
            let b: Vec<f32> = (0..n * k).map(|_| lcg(&mut s)).collect();
            let ldc = n + 3;
            let c0: Vec<f32> = (0..m * ldc).map(|_| lcg(&mut s)).collect();
            // Left (m x k): row-major, or stored as its (k x m) transpose.
            let left = if a_t {
                Operand {
                    ptr: a.as_ptr(),
                    rows: m,
                    row_stride: 1,
                    k_stride: m,
                }
            } else {
                Operand {
                    ptr: a.as_ptr(),
                    rows: m,
                    row_stride: k,
                    k_stride: 1,
                }
            };
            let right = if b_t {
                Operand {
                    ptr: b.as_ptr(),
                    rows: n,
                    row_stride: 1,
                    k_stride: n,
                }
            } else {
                Operand {
                    ptr: b.as_ptr(),
                    rows: n,
                    row_stride: k,
                    k_stride: 1,
                }
            };
            let mut c = c0.clone();
            unsafe { gemm(left, right, k, beta, c.as_mut_ptr(), ldc) };
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut scale) = (0f64, 0f64);
                    for p in 0..k {
                        let x = unsafe { *left.ptr.add(i * left.row_stride + p * left.k_stride) };
                        let y =
                            unsafe { *right.ptr.add(j * right.row_stride + p * right.k_stride) };
                        want += x as f64 * y as f64;
                        scale += (x as f64 * y as f64).abs();
                    }
                    want += beta as f64 * c0[i * ldc + j] as f64;
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * scale + 1e-6,
                        "({m},{n},{k}) at ({i},{j}): {got} vs {want}"
                    );
                }
                // The padding columns of c are untouched.
                for j in n..ldc {
                    assert_eq!(c[i * ldc + j], c0[i * ldc + j]);
                }
            }
        }
    }
}

#[cfg(test)]
mod kernel_rate {
    use super::*;

    /// Single-thread rate of the tile kernel alone (operands packed, in cache), for tuning:
    /// `cargo test --lib kernel_rate -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn kernel_rate() {
        if !available() {
            return;
        }
        let (m, n, k) = (256usize, 64usize, 576usize);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let op = |p: &Vec<f32>, rows| Operand {
            ptr: p.as_ptr(),
            rows,
            row_stride: k,
            k_stride: 1,
        };
        unsafe {
            let pa = pack(&op(&a, m), k, false);
            let pb = pack(&op(&b, n), k, true);
            configure_tiles();
            let mut acc = [0f32; 1024];
            let acc = acc.as_mut_ptr();
            let reps = 2000;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                for cp in 0..n / 32 {
                    for rp in 0..m / 32 {
                        let ptrs = [
                            pa.data.as_ptr().add(pa.tile(2 * rp, 0)),
                            pa.data.as_ptr().add(pa.tile(2 * rp + 1, 0)),
                            pb.data.as_ptr().add(pb.tile(2 * cp, 0)),
                            pb.data.as_ptr().add(pb.tile(2 * cp + 1, 0)),
                        ];
                        block(ptrs, pa.k_blocks, acc, 128, true);
                    }
                }
            }
            let s = t.elapsed().as_secs_f64();
            release_tiles();
            let flop = 2.0 * (m * n * k) as f64 * reps as f64;
            eprintln!(
                "kernel: {:.0} GFLOP/s (f32-equivalent, one thread)",
                flop / s / 1e9
            );
        }
    }

    /// Both threads, packing of the left operand included: `gemm_rate -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn gemm_rate() {
        if !available() {
            return;
        }
        for (m, n, k) in [
            (1024usize, 1536usize, 576usize),
            (650, 576, 576),
            (650, 192, 576),
            (650, 1536, 576),
            (64, 1536, 576),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let op = |p: &Vec<f32>, rows| Operand {
                ptr: p.as_ptr(),
                rows,
                row_stride: k,
                k_stride: 1,
            };
            let pb = unsafe { PackedMatrix::new(op(&b, n), k) };
            let mut c = vec![0f32; m * n];
            let reps = 200;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                unsafe { gemm_packed(op(&a, m), &pb, 0.0, c.as_mut_ptr(), n) };
            }
            let s = t.elapsed().as_secs_f64();
            let flop = 2.0 * (m * n * k) as f64 * reps as f64;
            eprintln!("gemm {m}x{k} @ {k}x{n}: {:.0} GFLOP/s", flop / s / 1e9);
        }
    }

    /// Packing a left operand alone: `pack_rate -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn pack_rate() {
        if !available() {
            return;
        }
        let (m, k) = (650usize, 576usize);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let op = Operand {
            ptr: a.as_ptr(),
            rows: m,
            row_stride: k,
            k_stride: 1,
        };
        let reps = 200;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            std::hint::black_box(unsafe { pack(&op, k, false) });
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        eprintln!(
            "pack {m} x {k}: {:.3} ms ({:.2} ns per element)",
            s * 1e3,
            s * 1e9 / (m * k) as f64
        );
    }
}
