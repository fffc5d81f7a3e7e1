//! The matrix products and their dispatch: every product of the network goes through here and
//! is sent to the AMX tiles, the few-row kernel, the BLAS or candle's matmul, whichever runs it
//! best on this CPU.
//!
//! [`matmul`] is differentiable: its backward pass is two more products, and it computes a
//! gradient only for the operands that need one (a frozen base weight gets none, which is what
//! makes LoRA steps cheap). Without a BLAS, [`FrozenMatmul`] gives candle's matmul the same
//! saving.

use super::blas_ffi::{blas, Call};
use candle_core::{
    op::BackpropOp, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor,
};
use std::ffi::c_int;
use std::sync::{Arc, OnceLock};

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
        if !ta && tb && m <= super::few_rows::max_rows() {
            // Few rows against a row-major (n, k) weight: the packing-free row kernel.
            let x = &a[oa..];
            let w = &b[ob..];
            let y = super::few_rows::matmul_nt(x, lda as usize, w, ldb as usize, m, k, n);
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
        let a = super::f32s(s1, l1, "batched gemm")?;
        let b = super::f32s(s2, l2, "batched gemm")?;
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
        let c = super::par_filled(batch * m * n, m * n, |i, ci| {
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
        return super::elementwise::add(&c, &p);
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

/// `x (rows, in) @ w^T` for a weight `w` (out, in): the entry point of every projection. AMX
/// tiles against the weight packed once in `packs` when they pay; else the BLAS (the few-row
/// kernel below its limit); else candle's matmul, on `w_t`, the contiguous transpose, when the
/// caller keeps one ([`prefers_transposed_weights`]).
pub fn project(
    x: &Tensor,
    w: &Tensor,
    w_t: Option<&Tensor>,
    packs: &WeightPacks,
) -> candle_core::Result<Tensor> {
    if let Some(y) = packed_product(x, w, true, packs)? {
        return Ok(y);
    }
    match w_t {
        Some(wt) if blas().is_none() => x.matmul(wt),
        _ => linear_2d(x, w),
    }
}

/// Whether a product of `rows` input rows is a few-row one (beam decoding), which reads each
/// weight once in one pass of the threads: a stacked projection then serves several at once.
pub fn is_few_rows(rows: usize) -> bool {
    rows <= super::few_rows::max_rows()
}

/// Whether frozen weights are packed once for the AMX tiles, and the smallest product (rows)
/// that takes that path: `None` on CPUs without the tiles.
pub fn packed_rows() -> Option<usize> {
    super::amx::available().then(|| super::few_rows::max_rows() + 1)
}

/// Whether inference copies should keep their weights transposed and contiguous: without a BLAS,
/// candle's matmul runs the few-row products of beam decoding ~3x faster that way; the BLAS and
/// the few-row kernel read the (out, in) weight directly.
pub fn prefers_transposed_weights() -> bool {
    blas().is_none()
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

/// `x @ w_t` where `w_t` (in, out) is constant.
pub struct FrozenMatmul {
    pub w_t: Tensor,
}

fn cpu_tensor(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("frozen matmul needs a contiguous input");
    };
    let data = match s {
        CpuStorage::F32(v) => v[start..end].to_vec(),
        _ => candle_core::bail!("frozen matmul supports f32 only"),
    };
    Ok(Tensor::from_storage(
        Storage::Cpu(CpuStorage::F32(data)),
        l.shape().clone(),
        BackpropOp::none(),
        false,
    ))
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_tensor(s, l)?;
        let y = x.matmul(&self.w_t)?;
        let shape = y.shape().clone();
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cpu(c) if layout.is_contiguous() && layout.start_offset() == 0 => {
                Ok((c.clone(), shape))
            }
            _ => candle_core::bail!("frozen matmul: unexpected result layout"),
        }
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.w_t.t()?)?))
    }
}

/// `x (rows, in) @ w^T` through BLAS when loaded; otherwise with the cheap-backward op when only `x` needs a gradient (CPU).
pub fn linear_2d(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if super::blas_ffi::blas().is_some() && x.device().is_cpu() {
        // The BLAS op's backward already skips the gradient of an untracked weight.
        return super::matmul::matmul(x, w, false, true);
    }
    if x.track_op() && !w.track_op() && x.device().is_cpu() {
        return x.contiguous()?.apply_op1(FrozenMatmul { w_t: w.t()? });
    }
    x.matmul(&w.t()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::max_diff;
    use candle_core::{Device, Var};

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
