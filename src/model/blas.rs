//! Matrix products through the system's BLAS (OpenBLAS or MKL), loaded at run time.
//!
//! candle's own CPU gemm reaches 50-60 GFLOP/s on two cores of the development machine where
//! OpenBLAS's `sgemm` reaches 140-160, and the model's projections are almost all of its work.
//! Loading the library at run time (instead of linking it) keeps the build free of system
//! packages: without a BLAS on the machine, or with `SELFRET_BLAS=off`, every product falls back
//! to candle's matmul and gives the same results up to float rounding.
//!
//! [`matmul`] is differentiable: its backward pass is two more BLAS products, and it computes a
//! gradient only for the operands that need one (a frozen base weight gets none, which is what
//! makes LoRA steps cheap).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use std::ffi::{c_char, c_int};
use std::sync::{Arc, OnceLock};

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

/// A loaded BLAS library with the one routine the model needs.
pub struct Blas {
    sgemm: SgemmFn,
    /// Where it came from and what it says about itself, for benchmark tables and the GUI.
    pub description: String,
    /// Blocks a product is split into (candle's thread count).
    threads: usize,
    _lib: libloading::Library,
}

/// Libraries tried in order when `SELFRET_BLAS` names none: Debian/Ubuntu's OpenBLAS (package
/// `libopenblas0`), then Intel's single dynamic MKL, then macOS names and Homebrew's paths; last
/// the OpenBLAS that `scripts/fetch-model.sh` puts into `models/` (see [`FETCHED`]).
const CANDIDATES: &[&str] = &[
    "libopenblas.so.0",
    "libopenblas.so",
    "libmkl_rt.so.2",
    "libmkl_rt.so",
    "libopenblas.dylib",
    "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
    "/usr/local/opt/openblas/lib/libopenblas.dylib",
];

/// The OpenBLAS build of the PyPI package `scipy-openblas32` (its symbols carry a `scipy_`
/// prefix), which `scripts/fetch-model.sh` extracts into `models/`: the fast path on a machine
/// where no system BLAS is installed, with no root rights needed.
pub const FETCHED: &str = "models/libscipy_openblas.so";

/// Symbol prefixes of the CBLAS builds we load: plain, and scipy-openblas's.
const PREFIXES: [&str; 2] = ["", "scipy_"];

/// The fixed part of one product: transposes, inner size and leading dimensions.
struct Call {
    /// 0 overwrites the output, 1 adds the product to it.
    beta: f32,
    ta: bool,
    tb: bool,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
}

/// A pointer that may cross to a worker thread: each worker touches a disjoint block of `c`.
#[derive(Clone, Copy)]
struct SendPtr<T>(T);
// SAFETY: used only for the disjoint blocks handed out in `run_split`.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T: Copy> SendPtr<T> {
    /// The pointer, through a method so closures capture the whole (Send) wrapper rather than
    /// its field.
    fn get(self) -> T {
        self.0
    }
}

impl Blas {
    /// Loads `name` and turns the library's own threading off: [`Blas::run_split`] spreads
    /// products over candle's threads instead.
    fn open(name: &str, threads: usize) -> Result<Blas, String> {
        // SAFETY: loading a shared library runs its initialisers; the names are BLAS libraries
        // (or the path the user chose), whose initialisers only set up their thread pools.
        let lib = unsafe { libloading::Library::new(name) }.map_err(|e| e.to_string())?;
        let symbol = |prefix: &str, base: &str| format!("{prefix}{base}\0").into_bytes();
        // SAFETY: `cblas_sgemm` has this signature in every CBLAS with 32-bit integers (LP64).
        let found = PREFIXES.iter().find_map(|&prefix| unsafe {
            lib.get::<SgemmFn>(&symbol(prefix, "cblas_sgemm"))
                .ok()
                .map(|f| (prefix, *f))
        });
        let Some((prefix, sgemm)) = found else {
            return Err(format!("{name}: no cblas_sgemm"));
        };
        let mut description = name.to_string();
        // SAFETY: optional OpenBLAS/MKL entry points with these C signatures.
        unsafe {
            if let Ok(set) =
                lib.get::<unsafe extern "C" fn(c_int)>(&symbol(prefix, "openblas_set_num_threads"))
            {
                set(1);
            }
            if let Ok(set) = lib.get::<unsafe extern "C" fn(c_int)>(b"MKL_Set_Num_Threads\0") {
                set(1);
            }
            let text = |f: &[u8]| -> Option<String> {
                let get = lib.get::<unsafe extern "C" fn() -> *const c_char>(f).ok()?;
                let p = get();
                (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
            };
            if let Some(config) = text(&symbol(prefix, "openblas_get_config")) {
                // The configuration names the build target; the core is what runs here.
                let core = text(&symbol(prefix, "openblas_get_corename")).unwrap_or_default();
                description = format!("{config}, kernels {core} ({name})");
            }
        }
        Ok(Blas {
            sgemm,
            description,
            threads,
            _lib: lib,
        })
    }

    /// One single-threaded `sgemm` on an m x n block of the output.
    ///
    /// # Safety
    /// The pointers must cover the block as described by `call`.
    unsafe fn run(
        &self,
        call: &Call,
        m: usize,
        n: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
    ) {
        (self.sgemm)(
            ROW_MAJOR,
            if call.ta { TRANS } else { NO_TRANS },
            if call.tb { TRANS } else { NO_TRANS },
            m as c_int,
            n as c_int,
            call.k as c_int,
            1.0,
            a,
            call.lda as c_int,
            b,
            call.ldb as c_int,
            call.beta,
            c,
            call.ldc as c_int,
        );
    }

    /// Splits the output into one block per thread (by rows when there are enough, else by
    /// columns) and runs them on candle's rayon pool, the BLAS itself single-threaded: its own
    /// thread pool would spin on the same two cores while candle's element-wise kernels run.
    ///
    /// # Safety
    /// As for [`Blas::run`], for the whole m x n output.
    unsafe fn run_split(
        &self,
        call: &Call,
        m: usize,
        n: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
    ) {
        self.run_split_with(call, m, n, a, b, c, true)
    }

    /// [`Blas::run_split`], with large products sent to AMX tiles only when `amx` allows.
    ///
    /// # Safety
    /// As for [`Blas::run`], for the whole m x n output.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_split_with(
        &self,
        call: &Call,
        m: usize,
        n: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        amx: bool,
    ) {
        if amx && super::amx::available() && super::amx::worthwhile(m, n, call.k) {
            use super::amx::Operand;
            let left = Operand::strided(a, m, call.lda, !call.ta);
            let right = Operand::strided(b, n, call.ldb, call.tb);
            // SAFETY: the caller's operands cover the product as `call` describes.
            return super::amx::gemm(left, right, call.k, call.beta, c, call.ldc);
        }
        let parts = self
            .threads
            .min(if m >= 64 { m / 32 } else { n / 256 })
            .max(1);
        if parts == 1 || m * n * call.k < 1 << 18 {
            return self.run(call, m, n, a, b, c);
        }
        let (a, b, c) = (SendPtr(a), SendPtr(b), SendPtr(c));
        let by_rows = m >= 64;
        let total = if by_rows { m } else { n };
        let chunk = total.div_ceil(parts);
        rayon::scope(|s| {
            for p in 0..parts {
                let start = p * chunk;
                let len = chunk.min(total.saturating_sub(start));
                if len == 0 {
                    continue;
                }
                s.spawn(move |_| {
                    let (a, b, c) = (a, b, c);
                    // SAFETY: each block reads inside the operands and writes its own rows or
                    // columns of `c`.
                    unsafe {
                        if by_rows {
                            let a_off = if call.ta { start } else { start * call.lda };
                            self.run(call, len, n, a.0.add(a_off), b.0, c.0.add(start * call.ldc));
                        } else {
                            let b_off = if call.tb { start * call.ldb } else { start };
                            self.run(call, m, len, a.0, b.0.add(b_off), c.0.add(start));
                        }
                    }
                });
            }
        });
    }
}

/// Points OpenBLAS at the kernels this CPU can run, unless the user chose (`OPENBLAS_CORETYPE`).
///
/// OpenBLAS picks its kernels from the CPU model number when it loads, and on CPUs newer than the
/// library (or under hypervisors that report unfamiliar models) it falls back to its oldest
/// SSE3 target, "Prescott": on the development machine sgemm ran at 33 GFLOP/s per core that way
/// and at 150 with the AVX-512 "SkylakeX" kernels the CPU does support. The choice here follows
/// the instruction sets the CPU reports, which is all those kernels need. Call once at start-up,
/// before any other thread exists (it sets an environment variable); without this call OpenBLAS
/// keeps its own choice, which `backend()` reports.
pub fn choose_openblas_kernels() {
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512cd");
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let core = if avx512 {
            "SKYLAKEX"
        } else if avx2 {
            "HASWELL"
        } else {
            return;
        };
        std::env::set_var("OPENBLAS_CORETYPE", core);
    }
}

/// The process-wide BLAS, loaded on first use; `None` means candle's gemm is used.
pub fn blas() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(|| {
        let threads = candle_core::utils::get_num_threads();
        match std::env::var("SELFRET_BLAS") {
            Ok(v) if v == "off" || v == "0" || v == "none" => None,
            Ok(path) if !path.is_empty() => match Blas::open(&path, threads) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(
                        "SELFRET_BLAS={path} could not be loaded ({e}); using candle's gemm"
                    );
                    None
                }
            },
            _ => CANDIDATES
                .iter()
                .find_map(|n| Blas::open(n, threads).ok())
                .or_else(|| {
                    // The fetched library: beside the sources the binary was built from, in the
                    // working directory, or beside the executable.
                    let exe_dir = std::env::current_exe()
                        .ok()
                        .and_then(|e| e.parent().map(|p| p.to_path_buf()));
                    [
                        Some(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
                        Some(".".into()),
                        exe_dir,
                    ]
                    .into_iter()
                    .flatten()
                    .map(|dir| dir.join(FETCHED))
                    .filter(|p| p.is_file())
                    .find_map(|p| Blas::open(&p.to_string_lossy(), threads).ok())
                }),
        }
    })
    .as_ref()
}

/// `x (m, k) @ w^T` with `w` (n, k), both row-major, never through the row kernel, and through
/// AMX tiles only when `amx` allows: for the benchmarks that place [`super::rows::max_rows`] and
/// compare the AMX path with the BLAS. `None` without a BLAS.
pub fn blas_nt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, amx: bool) -> Option<Vec<f32>> {
    let blas = blas()?;
    if m == 0 || n == 0 || k == 0 || x.len() < m * k || w.len() < n * k {
        return None;
    }
    let call = Call {
        beta: 0.0,
        ta: false,
        tb: true,
        k,
        lda: k,
        ldb: k,
        ldc: n,
    };
    let mut c = vec![0f32; m * n];
    // SAFETY: the lengths are checked above; `c` holds m x n.
    unsafe { blas.run_split_with(&call, m, n, x.as_ptr(), w.as_ptr(), c.as_mut_ptr(), amx) };
    Some(c)
}

/// Which matrix-product backend is in use, for reports.
pub fn backend() -> String {
    match blas() {
        Some(b) => format!("BLAS: {}", b.description),
        None => "candle gemm (no system BLAS found)".to_string(),
    }
}

/// How a 2-D operand lies in memory: row-major with a leading dimension, or the transpose of one.
fn operand(l: &Layout) -> Option<(usize, bool, c_int)> {
    let dims = l.dims();
    let stride = l.stride();
    if dims.len() != 2 {
        return None;
    }
    let (r, c) = (dims[0], dims[1]);
    if (stride[1] == 1 || c <= 1) && stride[0] >= c.max(1) {
        Some((l.start_offset(), false, stride[0] as c_int))
    } else if (stride[0] == 1 || r <= 1) && stride[1] >= r.max(1) {
        Some((l.start_offset(), true, stride[1] as c_int))
    } else {
        None
    }
}

/// `op(a) @ op(b)` for 2-D f32 operands, where `op` transposes when the flag is set.
struct Gemm {
    trans_a: bool,
    trans_b: bool,
}

impl CustomOp2 for Gemm {
    fn name(&self) -> &'static str {
        "blas-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some(blas), CpuStorage::F32(a), CpuStorage::F32(b)) = (blas(), s1, s2) else {
            candle_core::bail!("blas gemm: needs f32 operands and a loaded BLAS");
        };
        let (Some((oa, ta, lda)), Some((ob, tb, ldb))) = (operand(l1), operand(l2)) else {
            candle_core::bail!("blas gemm: operands must be 2-D with a unit stride");
        };
        let (ad, bd) = (l1.dims(), l2.dims());
        let (m, k) = if self.trans_a {
            (ad[1], ad[0])
        } else {
            (ad[0], ad[1])
        };
        let (k2, n) = if self.trans_b {
            (bd[1], bd[0])
        } else {
            (bd[0], bd[1])
        };
        if k != k2 {
            candle_core::bail!("blas gemm: inner dimensions differ ({k} vs {k2})");
        }
        if m == 0 || n == 0 || k == 0 {
            return Ok((CpuStorage::F32(vec![0f32; m * n]), Shape::from((m, n))));
        }
        // A layout that is itself a transpose flips the flag passed to BLAS.
        let ta = ta != self.trans_a;
        let tb = tb != self.trans_b;
        let (a_len, b_len) = (a.len() - oa, b.len() - ob);
        let a_need = if ta {
            (k - 1) * lda as usize + m
        } else {
            (m - 1) * lda as usize + k
        };
        let b_need = if tb {
            (n - 1) * ldb as usize + k
        } else {
            (k - 1) * ldb as usize + n
        };
        if a_need > a_len || b_need > b_len {
            candle_core::bail!("blas gemm: operand layout runs past its storage");
        }
        if !ta && tb && m <= super::rows::max_rows() {
            // Few rows against a row-major (n, k) weight: the packing-free row kernel.
            let x = &a[oa..];
            let w = &b[ob..];
            let y = super::rows::matmul_nt(x, lda as usize, w, ldb as usize, m, k, n);
            return Ok((CpuStorage::F32(y), Shape::from((m, n))));
        }
        let call = Call {
            beta: 0.0,
            ta,
            tb,
            k,
            lda: lda as usize,
            ldb: ldb as usize,
            ldc: n,
        };
        let mut c: Vec<f32> = Vec::with_capacity(m * n);
        // SAFETY: the bounds above keep every read inside `a` and `b`; `c` holds m x n.
        // With beta = 0 BLAS writes every element of `c` without reading it, so the buffer
        // needs no zeroing first.
        unsafe {
            blas.run_split(
                &call,
                m,
                n,
                a.as_ptr().add(oa),
                b.as_ptr().add(ob),
                c.as_mut_ptr(),
            );
            c.set_len(m * n);
        };
        Ok((CpuStorage::F32(c), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (ta, tb) = (self.trans_a, self.trans_b);
        // C = op(A) op(B): dop(A) = dC op(B)^T, dop(B) = op(A)^T dC.
        let grad_a = if a.track_op() {
            Some(if ta {
                matmul(b, grad, tb, true)?
            } else {
                matmul(grad, b, false, !tb)?
            })
        } else {
            None
        };
        let grad_b = if b.track_op() {
            Some(if tb {
                matmul(grad, a, true, ta)?
            } else {
                matmul(a, grad, !ta, false)?
            })
        } else {
            None
        };
        Ok((grad_a, grad_b))
    }
}

fn transposed(t: &Tensor, flag: bool) -> candle_core::Result<Tensor> {
    if flag {
        t.t()
    } else {
        Ok(t.clone())
    }
}

/// `op(a) @ op(b)` for 2-D tensors (`op` transposes when its flag is set), through BLAS when one
/// is loaded and both operands are f32 on the CPU, through candle otherwise. Differentiable.
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> candle_core::Result<Tensor> {
    let usable = blas().is_some()
        && a.device().is_cpu()
        && b.device().is_cpu()
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && a.rank() == 2
        && b.rank() == 2;
    if !usable {
        return transposed(a, trans_a)?.matmul(&transposed(b, trans_b)?);
    }
    let fit = |t: &Tensor| -> candle_core::Result<Tensor> {
        if operand(t.layout()).is_some() {
            Ok(t.clone())
        } else {
            t.contiguous()
        }
    };
    let op = Gemm { trans_a, trans_b };
    if a.track_op() || b.track_op() {
        fit(a)?.apply_op2(&fit(b)?, op)
    } else {
        fit(a)?.apply_op2_no_bwd(&fit(b)?, &op)
    }
}

/// Query positions per task in [`causal_attention`]: each block's products stop at the last key
/// its rows can see, so the work above the causal diagonal shrinks to a staircase of this step.
const CAUSAL_BLOCK: usize = 64;

/// Attention for the last `t` of `s` positions (the first `s - t` cached), each seeing itself and
/// everything before it: `q` (b, g, rep * t, d) with the query heads that share a key/value head
/// stacked along the rows, `k` and `v` (b, g, s, d). Returns the weighted values as (b, t,
/// g * rep * d), heads side by side per position: the input of the output projection, with no
/// transpose between.
///
/// Separate products over all keys spend nearly half their work above the diagonal of a long
/// prefill, and write the whole score matrix out before the softmax reads it back. Here each task
/// takes one block of query positions of one head: its scores against only the keys it can see,
/// the softmax, and the weighted values, with the scores staying in cache. Not differentiable;
/// `None` without a BLAS or for inputs it does not cover (the caller then multiplies as usual).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    t: usize,
) -> candle_core::Result<Option<Tensor>> {
    let usable = blas().is_some()
        && [q, k, v]
            .iter()
            .all(|x| x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 4);
    if !usable {
        return Ok(None);
    }
    let op = CausalAttention {
        scale: scale as f32,
        t,
    };
    Ok(Some(q.contiguous()?.apply_op3_no_bwd(
        &k.contiguous()?,
        &v.contiguous()?,
        &op,
    )?))
}

struct CausalAttention {
    scale: f32,
    t: usize,
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "blas-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let Some(blas) = blas() else {
            candle_core::bail!("causal attention: no BLAS loaded");
        };
        let q = super::fused::f32s(s1, l1, "attention queries")?;
        let k = super::fused::f32s(s2, l2, "attention keys")?;
        let v = super::fused::f32s(s3, l3, "attention values")?;
        let (qd, kd) = (l1.dims(), l2.dims());
        let t = self.t;
        if kd != l3.dims() || qd[..2] != kd[..2] || qd[3] != kd[3] {
            candle_core::bail!(
                "causal attention: queries {qd:?}, keys {kd:?}, values {:?}",
                l3.dims()
            );
        }
        let (batch, kv_heads, rows, d, s) = (qd[0], qd[1], qd[2], qd[3], kd[2]);
        let groups = batch * kv_heads;
        if t == 0 || rows % t != 0 || s < t {
            candle_core::bail!(
                "causal attention: {rows} query rows for {t} positions over {s} keys"
            );
        }
        let (rep, offset) = (rows / t, s - t);
        // Output row stride: every head's values for one position.
        let width = kv_heads * rep * d;
        let blocks = t.div_ceil(CAUSAL_BLOCK);
        let len = groups * rows * d;
        let mut y: Vec<f32> = Vec::with_capacity(len);
        let out = SendPtr(y.as_mut_ptr());
        let scores_call = Call {
            beta: 0.0,
            ta: false,
            tb: true,
            k: d,
            lda: d,
            ldb: d,
            ldc: 0,
        };
        let scratch = || (vec![0f32; CAUSAL_BLOCK * s], vec![0f32; CAUSAL_BLOCK * s]);
        (0..groups * rep * blocks).into_par_iter().for_each_init(
            scratch,
            |(scores, probs), task| {
                let (group, r, block) = (task / (rep * blocks), task / blocks % rep, task % blocks);
                let (i0, i1) = (block * CAUSAL_BLOCK, ((block + 1) * CAUSAL_BLOCK).min(t));
                let (n, seen) = (i1 - i0, offset + i1);
                let first_row = group * rows + r * t + i0;
                let keys = group * s * d;
                let (bi, head) = (group / kv_heads, group % kv_heads * rep + r);
                let first_out = (bi * t + i0) * width + head * d;
                // SAFETY: the query block is rows first_row.. of q (n x d), the keys and values
                // the first `seen` of this group's s rows, the scratch holds n x seen, and this
                // task alone writes this head's d columns of output rows bi * t + i0.. (n of
                // them, stride `width`); beta 0 writes them all.
                unsafe {
                    let call = Call {
                        ldc: seen,
                        ..scores_call
                    };
                    blas.run(
                        &call,
                        n,
                        seen,
                        q.as_ptr().add(first_row * d),
                        k.as_ptr().add(keys),
                        scores.as_mut_ptr(),
                    );
                }
                for i in 0..n {
                    let visible = offset + i0 + i + 1;
                    let row = &scores[i * seen..i * seen + visible];
                    let p = &mut probs[i * seen..(i + 1) * seen];
                    let max = super::fused::scaled_max(row, self.scale);
                    let sum = super::fused::exp_scaled(row, &mut p[..visible], self.scale, max);
                    let inv = 1.0 / sum;
                    p[..visible].iter_mut().for_each(|x| *x *= inv);
                    p[visible..].fill(0.0);
                }
                let call = Call {
                    beta: 0.0,
                    ta: false,
                    tb: false,
                    k: seen,
                    lda: seen,
                    ldb: d,
                    ldc: width,
                };
                // SAFETY: as above.
                unsafe {
                    blas.run(
                        &call,
                        n,
                        d,
                        probs.as_ptr(),
                        v.as_ptr().add(keys),
                        out.get().add(first_out),
                    );
                }
            },
        );
        // SAFETY: the tasks cover every (batch, head, block), so every head's columns of every
        // output row.
        unsafe { y.set_len(len) };
        Ok((CpuStorage::F32(y), Shape::from((batch, t, width))))
    }
}

/// `op(a) @ op(b)` for each matrix of two stacks of equal leading shape (attention's
/// per-head products), not differentiable. Every product is one single-threaded BLAS call and
/// the products are spread over the rayon pool: candle's batched gemm runs these small
/// matrices at a fraction of the BLAS rate. Without a BLAS, candle's matmul.
pub fn batched_matmul(
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
) -> candle_core::Result<Tensor> {
    let usable = blas().is_some()
        && a.device().is_cpu()
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && a.rank() >= 3
        && a.rank() == b.rank();
    if !usable {
        let op = |t: &Tensor, flag: bool| if flag { t.t() } else { Ok(t.clone()) };
        return op(a, trans_a)?.matmul(&op(b, trans_b)?);
    }
    a.contiguous()?
        .apply_op2_no_bwd(&b.contiguous()?, &BatchedGemm { trans_a, trans_b })
}

struct BatchedGemm {
    trans_a: bool,
    trans_b: bool,
}

impl CustomOp2 for BatchedGemm {
    fn name(&self) -> &'static str {
        "blas-batched-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some(blas) = blas() else {
            candle_core::bail!("blas batched gemm: no BLAS loaded");
        };
        let a = super::fused::f32s(s1, l1, "batched gemm")?;
        let b = super::fused::f32s(s2, l2, "batched gemm")?;
        let (ad, bd) = (l1.dims(), l2.dims());
        let r = ad.len();
        if ad[..r - 2] != bd[..r - 2] {
            candle_core::bail!("blas batched gemm: batch shapes {ad:?} vs {bd:?}");
        }
        let (ra, ca, rb, cb) = (ad[r - 2], ad[r - 1], bd[r - 2], bd[r - 1]);
        let (m, k) = if self.trans_a { (ca, ra) } else { (ra, ca) };
        let (k2, n) = if self.trans_b { (cb, rb) } else { (rb, cb) };
        if k != k2 {
            candle_core::bail!("blas batched gemm: inner dimensions differ ({k} vs {k2})");
        }
        let batch: usize = ad[..r - 2].iter().product();
        let mut out_dims = ad[..r - 2].to_vec();
        out_dims.extend([m, n]);
        let call = Call {
            beta: 0.0,
            ta: self.trans_a,
            tb: self.trans_b,
            k,
            lda: ca,
            ldb: cb,
            ldc: n,
        };
        let c = super::fused::par_filled(batch * m * n, m * n, |i, ci| {
            if k > 0 {
                // SAFETY: operand i is the i-th contiguous (ra, ca) / (rb, cb) block, and
                // `ci` holds this product's m x n output.
                unsafe {
                    blas.run(
                        &call,
                        m,
                        n,
                        a.as_ptr().add(i * ra * ca),
                        b.as_ptr().add(i * rb * cb),
                        ci.as_mut_ptr(),
                    )
                }
            }
        });
        Ok((CpuStorage::F32(c), Shape::from(out_dims)))
    }
}

/// `c + op(a) @ op(b)` for 2-D tensors, not differentiable. With a BLAS the product is added
/// into `c`'s own buffer (no product tensor, no separate add), so `c` must be a fresh tensor
/// no other handle shares, such as a product just computed.
pub fn add_matmul(
    c: Tensor,
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
) -> candle_core::Result<Tensor> {
    let usable = blas().is_some()
        && [&c, a, b]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 2)
        && c.is_contiguous()
        && !c.track_op();
    if !usable {
        let p = matmul(a, b, trans_a, trans_b)?;
        return super::fused::add(&c, &p);
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    c.inplace_op3(&a, &b, &GemmAccumulate { trans_a, trans_b })?;
    Ok(c)
}

struct GemmAccumulate {
    trans_a: bool,
    trans_b: bool,
}

impl candle_core::InplaceOp3 for GemmAccumulate {
    fn name(&self) -> &'static str {
        "blas-gemm-accumulate"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (Some(blas), CpuStorage::F32(c), CpuStorage::F32(a), CpuStorage::F32(b)) =
            (blas(), s1, s2, s3)
        else {
            candle_core::bail!("blas gemm accumulate: needs f32 operands and a loaded BLAS");
        };
        let (Some((c0, c1)), Some((a0, a1)), Some((b0, b1))) = (
            l1.contiguous_offsets(),
            l2.contiguous_offsets(),
            l3.contiguous_offsets(),
        ) else {
            candle_core::bail!("blas gemm accumulate: operands must be contiguous");
        };
        let (cd, ad, bd) = (l1.dims(), l2.dims(), l3.dims());
        let (m, k) = if self.trans_a {
            (ad[1], ad[0])
        } else {
            (ad[0], ad[1])
        };
        let (k2, n) = if self.trans_b {
            (bd[1], bd[0])
        } else {
            (bd[0], bd[1])
        };
        if k != k2 || cd != [m, n] || c1 - c0 != m * n || a1 - a0 != m * k || b1 - b0 != k * n {
            candle_core::bail!("blas gemm accumulate: shapes {cd:?} += {ad:?} x {bd:?}");
        }
        if m * n * k == 0 {
            return Ok(());
        }
        let call = Call {
            beta: 1.0,
            ta: self.trans_a,
            tb: self.trans_b,
            k,
            lda: ad[1],
            ldb: bd[1],
            ldc: n,
        };
        // SAFETY: shapes and extents checked above; each block writes its own part of `c`.
        unsafe {
            blas.run_split(
                &call,
                m,
                n,
                a.as_ptr().add(a0),
                b.as_ptr().add(b0),
                c.as_mut_ptr().add(c0),
            );
        }
        Ok(())
    }
}

/// AMX packings of one frozen weight, made on first use and shared by clones of the layer that
/// owns them. A weight that changes (a training variable) never gets one: see
/// [`packed_product`].
#[derive(Clone, Default)]
pub struct WeightPacks {
    /// For `x @ w^T`: a projection's forward pass.
    nt: Arc<OnceLock<super::amx::PackedMatrix>>,
    /// For `dy @ w`: the input gradient of a frozen projection.
    nn: Arc<OnceLock<super::amx::PackedMatrix>>,
}

impl std::fmt::Debug for WeightPacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WeightPacks(nt: {}, nn: {})",
            self.nt.get().is_some(),
            self.nn.get().is_some()
        )
    }
}

/// `x @ w^T` (`trans_w`) or `x @ w` against a weight that stays fixed as long as `packs` lives,
/// on AMX tiles with the weight packed once: for the large products of prefill, assessment and
/// LoRA training. `None` when that path does not apply (no AMX, a small product, a weight that
/// is a training variable, an input that needs a gradient): the caller then multiplies as usual.
pub fn packed_product(
    x: &Tensor,
    w: &Tensor,
    trans_w: bool,
    packs: &WeightPacks,
) -> candle_core::Result<Option<Tensor>> {
    use super::amx;
    if !amx::available()
        || w.is_variable()
        || w.track_op()
        || x.track_op()
        || x.rank() != 2
        || w.rank() != 2
        || !x.device().is_cpu()
        || !w.device().is_cpu()
        || x.dtype() != DType::F32
        || w.dtype() != DType::F32
    {
        return Ok(None);
    }
    let (m, k) = x.dims2()?;
    let (wr, wc) = w.dims2()?;
    let (n, wk) = if trans_w { (wr, wc) } else { (wc, wr) };
    if k != wk || !amx::worthwhile_packed(m, n, k) {
        return Ok(None);
    }
    let cell = if trans_w { &packs.nt } else { &packs.nn };
    let packed = match cell.get() {
        Some(p) => p,
        None => {
            let (storage, layout) = w.storage_and_layout();
            let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                return Ok(None);
            };
            let Some((off, transposed, ld)) = operand(layout) else {
                return Ok(None);
            };
            // Element (j, p) of the right operand: w[j][p] with `trans_w`, else w[p][j]; a
            // layout that is itself a transpose flips that.
            let op =
                amx::Operand::strided(data[off..].as_ptr(), n, ld as usize, trans_w != transposed);
            // SAFETY: `operand` checked that the layout is a 2-D view inside the storage
            // (leading dimension at least the row length), which covers n x k elements.
            let packed = unsafe { amx::PackedMatrix::new(op, k) };
            drop(storage);
            cell.get_or_init(|| packed)
        }
    };
    if packed.rows() != n || packed.k() != k {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Ok(None);
    };
    let Some((start, _)) = layout.contiguous_offsets() else {
        return Ok(None);
    };
    let left = amx::Operand::strided(data[start..].as_ptr(), m, k, true);
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `x` is contiguous m x k; `y` holds m x n and beta = 0 writes every element.
    unsafe {
        amx::gemm_packed(left, packed, 0.0, y.as_mut_ptr(), n);
        y.set_len(m * n);
    }
    drop(storage);
    Ok(Some(Tensor::from_vec(y, (m, n), x.device())?))
}

/// `x @ w^T` over the last dimension of `x` (any leading shape), the shape of every projection.
pub fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = dims[dims.len() - 1];
    let rows = x.elem_count() / in_dim.max(1);
    let y = matmul(&x.reshape((rows, in_dim))?, w, false, true)?;
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = w.dim(0)?;
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>());
        d.unwrap()
    }

    #[test]
    fn the_system_openblas_is_found_when_installed() {
        let installed = [
            "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
            "/usr/lib/libopenblas.so.0",
        ]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
        if installed && std::env::var_os("SELFRET_BLAS").is_none() {
            assert!(
                blas().is_some(),
                "libopenblas.so.0 is installed but was not loaded"
            );
        }
        eprintln!("{}", backend());
    }

    /// Every transpose combination, views included, and both gradients, against candle's matmul.
    #[test]
    fn batched_products_match_candle() {
        let dev = Device::Cpu;
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            // Stacks of 2 x 3 matrices: a is (5, 7) or its transpose, b (7, 4) or its transpose.
            let a_shape = if ta { (2, 3, 7, 5) } else { (2, 3, 5, 7) };
            let b_shape = if tb { (2, 3, 4, 7) } else { (2, 3, 7, 4) };
            let a = Tensor::randn(0f32, 1.0, a_shape, &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, b_shape, &dev).unwrap();
            let got = batched_matmul(&a, &b, ta, tb).unwrap();
            let op = |t: &Tensor, f: bool| if f { t.t().unwrap() } else { t.clone() };
            let want = op(&a, ta).matmul(&op(&b, tb)).unwrap();
            assert_eq!(got.dims(), &[2, 3, 5, 4]);
            assert!(max_diff(&got, &want) < 1e-4, "ta={ta} tb={tb}");
        }
    }

    /// Blocked causal attention against the plain formula (scores, mask, softmax, values in
    /// candle): several blocks per head with a short last one, no cache, one position, stacked
    /// query heads, and a long cached prefix.
    #[test]
    fn causal_attention_matches_masked_softmax_products() {
        let dev = Device::Cpu;
        for (b, g, rep, t, offset, d) in [
            (2, 3, 3, 150, 20, 64),
            (1, 1, 2, 5, 0, 8),
            (1, 2, 1, 1, 9, 16),
            (1, 1, 1, 70, 300, 32),
        ] {
            let s = offset + t;
            let q = Tensor::randn(0f32, 1.0, (b, g, rep * t, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, g, s, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, g, s, d), &dev).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let Some(got) = causal_attention(&q, &k, &v, scale, t).unwrap() else {
                assert!(blas().is_none(), "declined with a BLAS loaded");
                return;
            };
            let mask: Vec<f32> = (0..rep * t)
                .flat_map(|row| {
                    (0..s).map(move |j| {
                        if j <= offset + row % t {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (rep * t, s), &dev).unwrap();
            let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale)
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            let att = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            let want = att
                .matmul(&v)
                .unwrap()
                .reshape((b, g * rep, t, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, t, g * rep * d))
                .unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(
                max_diff(&got, &want) < 1e-5,
                "{b} {g} {rep} {t} {offset} {d}"
            );
        }
    }

    /// Products large enough for the AMX tiles (where the CPU has them), every transpose
    /// combination and both accumulation modes, against candle's f32 matmul.
    #[test]
    fn large_products_match_candle_in_every_layout() {
        let dev = Device::Cpu;
        let (m, k, n) = (130, 128, 260);
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a_shape = if ta { (k, m) } else { (m, k) };
            let b_shape = if tb { (n, k) } else { (k, n) };
            let a = Tensor::randn(0f32, 1.0, a_shape, &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, b_shape, &dev).unwrap();
            let op = |t: &Tensor, f: bool| if f { t.t().unwrap() } else { t.clone() };
            let want = op(&a, ta).matmul(&op(&b, tb)).unwrap();
            // Sums of 128 unit-variance products: errors of 1e-5 relative stay below 1e-3.
            let got = matmul(&a, &b, ta, tb).unwrap();
            assert!(max_diff(&got, &want) < 1e-3, "ta={ta} tb={tb}");
            let c = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
            let got = add_matmul((&c * 1.0).unwrap(), &a, &b, ta, tb).unwrap();
            assert!(
                max_diff(&got, &(&c + &want).unwrap()) < 1e-3,
                "ta={ta} tb={tb} +="
            );
        }
    }

    #[test]
    fn accumulated_products_match_candle() {
        let dev = Device::Cpu;
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a_shape = if ta { (7, 70) } else { (70, 7) };
            let b_shape = if tb { (40, 7) } else { (7, 40) };
            let a = Tensor::randn(0f32, 1.0, a_shape, &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, b_shape, &dev).unwrap();
            let c = Tensor::randn(0f32, 1.0, (70, 40), &dev).unwrap();
            let op = |t: &Tensor, f: bool| if f { t.t().unwrap() } else { t.clone() };
            let want = (&c + op(&a, ta).matmul(&op(&b, tb)).unwrap()).unwrap();
            let fresh = (&c * 1.0).unwrap();
            let got = add_matmul(fresh, &a, &b, ta, tb).unwrap();
            assert!(max_diff(&got, &want) < 1e-4, "ta={ta} tb={tb}");
        }
    }

    #[test]
    fn products_and_gradients_match_candle() {
        let dev = Device::Cpu;
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (m, k, n) = (7, 5, 3);
            let a_shape = if ta { (k, m) } else { (m, k) };
            let b_shape = if tb { (n, k) } else { (k, n) };
            let a = Var::randn(0f32, 1., a_shape, &dev).unwrap();
            let b = Var::randn(0f32, 1., b_shape, &dev).unwrap();
            let ours = matmul(a.as_tensor(), b.as_tensor(), ta, tb).unwrap();
            let op = |t: &Tensor, f: bool| if f { t.t().unwrap() } else { t.clone() };
            let theirs = op(a.as_tensor(), ta)
                .matmul(&op(b.as_tensor(), tb))
                .unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-5, "({ta}, {tb}) forward");
            let w = Tensor::randn(0f32, 1., (m, n), &dev).unwrap();
            let g1 = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&a, &b] {
                let (x, y) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(max_diff(x, y) < 1e-5, "({ta}, {tb}) gradient");
            }
        }
        // A transposed view as an operand, and a frozen (untracked) right operand.
        let x = Var::randn(0f32, 1., (4, 6), &dev).unwrap();
        let w_t = Tensor::randn(0f32, 1., (6, 5), &dev).unwrap();
        let w = w_t.t().unwrap();
        let y = matmul(x.as_tensor(), &w, false, true).unwrap();
        assert!(max_diff(&y, &x.as_tensor().matmul(&w_t).unwrap()) < 1e-5);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&w).is_none());
        let expected = Tensor::ones((4, 5), DType::F32, &dev)
            .unwrap()
            .matmul(&w_t.t().unwrap())
            .unwrap();
        assert!(max_diff(g.get(&x).unwrap(), &expected) < 1e-5);
    }
}
