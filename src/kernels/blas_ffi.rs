//! The system's BLAS (OpenBLAS or MKL), loaded at run time, and the split of one `sgemm` over
//! the rayon pool.
//!
//! candle's own CPU gemm reaches 50-60 GFLOP/s on two cores of the development machine where
//! OpenBLAS's `sgemm` reaches 140-160, and the model's projections are almost all of its work.
//! Loading the library at run time (instead of linking it) keeps the build free of system
//! packages: without a BLAS on the machine, or with `SELFRET_BLAS=off`, every product falls back
//! to candle's matmul ([`super::matmul`] decides) and gives the same results up to float rounding.

use std::ffi::{c_char, c_int};
use std::sync::OnceLock;

pub(crate) const ROW_MAJOR: c_int = 101;
pub(crate) const NO_TRANS: c_int = 111;
pub(crate) const TRANS: c_int = 112;

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
pub(crate) struct Call {
    /// 0 overwrites the output, 1 adds the product to it.
    pub(crate) beta: f32,
    pub(crate) ta: bool,
    pub(crate) tb: bool,
    pub(crate) k: usize,
    pub(crate) lda: usize,
    pub(crate) ldb: usize,
    pub(crate) ldc: usize,
}

/// A pointer that may cross to a worker thread: each worker touches a disjoint block of `c`.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) T);
// SAFETY: used only for the disjoint blocks handed out in `run_split`.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T: Copy> SendPtr<T> {
    /// The pointer, through a method so closures capture the whole (Send) wrapper rather than
    /// its field.
    pub(crate) fn get(self) -> T {
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
    pub(crate) unsafe fn run(
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
    pub(crate) unsafe fn run_split(
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
/// AMX tiles only when `amx` allows: for the benchmarks that place [`super::few_rows::max_rows`] and
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
