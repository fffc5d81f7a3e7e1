//! The CPU compute backend: matrix products, attention, the element-wise layer ops and the
//! loss, as kernels on f32 tensors. It knows tensors, never llama: the network (`crate::model`)
//! calls one entry point per op, and the entry point chooses the kernel for the CPU, the shapes
//! and whether a gradient is needed.
//!
//! - [`matmul`]: every product and its dispatch (AMX tiles, the few-row kernel, the BLAS,
//!   candle's matmul); [`blas_ffi`] loads OpenBLAS/MKL at run time (`SELFRET_BLAS=off`
//!   declines it); [`amx`] the bf16x3 tile products (`SELFRET_AMX=off`); [`few_rows`] the
//!   one-pass kernel for a handful of rows.
//! - [`attention`]: causal prefill attention, decode attention, the causal softmax.
//! - [`elementwise`]: residual add, RMSNorm, rotary embedding, SwiGLU, forward and backward.
//! - [`loss`]: cross-entropy and log-softmax.
//! - [`simd`]: the vector dot, exponential and maximum the kernels share.
//! - here: what every kernel shares, and the process's thread and allocator tuning.

pub mod amx;
pub mod attention;
pub mod blas_ffi;
pub mod elementwise;
pub mod few_rows;
pub mod loss;
pub mod matmul;
pub mod simd;
#[cfg(test)]
pub(crate) mod testing;

use candle_core::{CpuStorage, DType, Layout, Tensor};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

/// Rows handed to one rayon task: enough work to amortise the task, few enough to balance.
const ROW_CHUNK: usize = 16;

/// A buffer of `len` floats built chunk by chunk on the pool: each task zeroes its own chunk of
/// `chunk` floats (the last may be shorter) and `fill(index, chunk)` writes it. A zeroed `vec!`
/// would first clear the whole output in one memset on the calling thread while the other
/// threads wait, and push everything else out of the caches.
pub(crate) fn par_filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut y: Vec<f32> = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| {
            for v in c.iter_mut() {
                v.write(0.0);
            }
            // SAFETY: every element of `c` was initialised just above.
            let c = unsafe { &mut *(c as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            fill(i, c);
        });
    // SAFETY: the chunks cover 0..len, and each element was initialised above.
    unsafe { y.set_len(len) };
    y
}

/// Whether the fused kernels handle this tensor: f32 on the CPU.
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

pub(crate) fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: fused kernels take f32 tensors")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: fused kernels take contiguous tensors"),
    }
}

/// Fixes, once at start-up, how many threads candle's matmuls use. Left unset, candle works the
/// number out on every matmul, and on Linux that reads /proc/cpuinfo each time (~80 us here,
/// ~270 matmuls per decoding step of the 135M model). Call before any other thread starts: it
/// sets `RAYON_NUM_THREADS` to the count candle would have chosen, unless the user set it.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// Runs `f` on a thread of rayon's pool (at once when already on one).
///
/// A parallel loop started from outside the pool hands its work to the pool and puts the caller
/// to sleep until the pool is done: two thread wake-ups per loop, and a forward pass runs a few
/// hundred loops. Started on a pool thread, the loop runs partly on the caller itself, and the
/// other threads join in as they wake.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Keeps freed memory in the process for reuse, once at start-up (glibc only).
///
/// glibc hands every block over 32 MB (logits, embedding gradients, optimiser moments) straight
/// back to the kernel when freed, and each training step then pays for the kernel zeroing fresh
/// pages for the same sizes again: a quarter of a full fine-tuning step here. With one arena, no
/// mmap'd blocks and no trimming, the heap is reused; [`release_memory`] gives it back when a
/// long job ends. Call before any other thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Returns the heap's free memory to the system, after a job whose peak will not come back soon
/// (training, evaluation), since [`tune_allocator`] keeps it otherwise.
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    /// Work handed to `on_pool` from an outside thread runs on a pool thread and returns its
    /// value; from a pool thread it runs in place.
    #[test]
    fn on_pool_runs_on_a_pool_thread() {
        assert!(rayon::current_thread_index().is_none());
        let (index, value) = super::on_pool(|| (rayon::current_thread_index(), 6 * 7));
        assert!(index.is_some());
        assert_eq!(value, 42);
        let nested = super::on_pool(|| {
            let outer = rayon::current_thread_index();
            super::on_pool(move || rayon::current_thread_index() == outer)
        });
        assert!(nested);
    }
}
