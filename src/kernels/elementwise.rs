//! The layer's element-wise ops, one fused CPU kernel each with its own backward pass: residual
//! add, RMSNorm, rotary embedding (fused with the head transpose), SwiGLU.
//!
//! Built from basic candle ops, an RMSNorm is six kernels and six temporaries forward, and its
//! backward pass is longer still; candle's autograd also zero-fills and adds a gradient buffer
//! for every op. At 135M parameters that bookkeeping cost as much as the matrix products, so
//! each op here is one pass over its rows on the rayon pool. Each entry point falls back to
//! candle's ops for devices and dtypes the kernels lack ([`super::supported`]); the tests
//! compare every kernel with those composed ops.

use super::simd::exp_scaled;
use super::{f32s, par_filled, supported, CResult, ROW_CHUNK};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Arc;

/// `a + b` for tensors of one shape, on the rayon pool with the matrix products: candle's
/// element-wise kernels run on a second pool whose idle workers spin on the same cores.
/// Differentiable.
pub fn add(a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    if a.shape() != b.shape() || !supported(a) || !supported(b) {
        return a + b;
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    if a.track_op() || b.track_op() {
        a.apply_op2(&b, Add)
    } else {
        a.apply_op2_no_bwd(&b, &Add)
    }
}

struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "fused-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (a, b) = (f32s(s1, l1, "add")?, f32s(s2, l2, "add")?);
        let mut y: Vec<f32> = Vec::with_capacity(a.len());
        y.spare_capacity_mut()
            .par_chunks_mut(1 << 14)
            .zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14)))
            .for_each(|(yc, (ac, bc))| {
                for ((y, a), b) in yc.iter_mut().zip(ac).zip(bc) {
                    y.write(a + b);
                }
            });
        // SAFETY: the chunks above cover all a.len() elements, each written once.
        unsafe { y.set_len(a.len()) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(g.clone()), Some(g.clone())))
    }
}

/// Root-mean-square norm with gain `w` over the last dimension; differentiable in `x` and `w`.
///
/// On the CPU in f32 one fused kernel with its own backward pass; elsewhere candle's kernel when
/// no gradient is needed, or [`rms_norm_slow`].
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    if supported(x) {
        return x
            .contiguous()?
            .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 });
    }
    if !x.track_op() && !w.track_op() {
        return candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32);
    }
    rms_norm_slow(x, w, eps)
}

/// [`rms_norm`] from basic differentiable ops: the reference the kernel is tested against.
pub fn rms_norm_slow(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

struct RmsNorm {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    // A vectorised sum of squares: a plain `sum` adds one value at a time.
    let ms = super::simd::dot(row, row) / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(xs, xl, "rms-norm input")?;
        let w = f32s(ws, wl, "rms-norm gain")?;
        let h = w.len();
        if h == 0 || x.len() % h != 0 {
            candle_core::bail!("rms-norm: input {:?} vs gain {h}", xl.shape());
        }
        let chunk = h * ROW_CHUNK;
        let y = par_filled(x.len(), chunk, |ci, yc| {
            let xc = &x[ci * chunk..ci * chunk + yc.len()];
            for (yr, xr) in yc.chunks_mut(h).zip(xc.chunks(h)) {
                let r = inv_rms(xr, self.eps);
                for ((y, x), w) in yr.iter_mut().zip(xr).zip(w) {
                    *y = x * r * w;
                }
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = rms_norm_grad(x, w, dy, self.eps as f64, w.track_op())?;
        Ok((x.track_op().then_some(dx), dw))
    }
}

/// Gradients of [`RmsNorm`]: `dx` for every row, then `dw` (summed over rows) in one buffer.
struct RmsNormGrad {
    eps: f32,
    need_w: bool,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(xs, xl, "rms-norm input")?;
        let w = f32s(ws, wl, "rms-norm gain")?;
        let dy = f32s(gs, gl, "rms-norm gradient")?;
        let h = w.len();
        let n = x.len();
        let mut out = vec![0f32; n + h];
        let (dx, dw) = out.split_at_mut(n);
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(h * ROW_CHUNK)
            .zip(x.par_chunks(h * ROW_CHUNK))
            .zip(dy.par_chunks(h * ROW_CHUNK))
            .map(|((dxc, xc), dyc)| {
                let mut dw_part = if self.need_w {
                    vec![0f32; h]
                } else {
                    Vec::new()
                };
                for ((dxr, xr), dyr) in dxc.chunks_mut(h).zip(xc.chunks(h)).zip(dyc.chunks(h)) {
                    let r = inv_rms(xr, self.eps);
                    // mean over the row of (dy * w) * x_hat
                    let dot = dyr
                        .iter()
                        .zip(w)
                        .zip(xr)
                        .map(|((g, w), x)| g * w * x * r)
                        .sum::<f32>()
                        / h as f32;
                    for i in 0..h {
                        let xh = xr[i] * r;
                        dxr[i] = r * (dyr[i] * w[i] - xh * dot);
                        if self.need_w {
                            dw_part[i] += dyr[i] * xh;
                        }
                    }
                }
                dw_part
            })
            .collect();
        if self.need_w {
            for p in partial {
                for (d, v) in dw.iter_mut().zip(p) {
                    *d += v;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n + h)))
    }
}

/// Rotary embedding (half-split form) fused with the head transpose: `x` is (batch, seq,
/// heads, head_dim) as a projection produces it, the result (batch, heads, seq, head_dim) as
/// attention consumes it. `cos`/`sin` are (seq, head_dim / 2) for the positions of `x`.
///
/// On the CPU in f32 one fused kernel with its own backward pass; elsewhere the transpose, then
/// candle's kernel when no gradient is needed, or [`rope_slow`].
pub fn rope_to_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    if !supported(x) {
        let heads = x.transpose(1, 2)?;
        if !x.track_op() {
            return candle_nn::rotary_emb::rope(&heads.contiguous()?, cos, sin);
        }
        return rope_slow(&heads, cos, sin);
    }
    let op = Rope {
        cos: Arc::new(cos.flatten_all()?.to_vec1::<f32>()?),
        sin: Arc::new(sin.flatten_all()?.to_vec1::<f32>()?),
        from_heads: false,
    };
    x.contiguous()?.apply_op1(op)
}

/// The rotary embedding of `x` (batch, heads, seq, head_dim) from basic differentiable ops, as
/// Hugging Face's `rotate_half` writes it: the reference [`rope_to_heads`] is tested against.
pub fn rope_slow(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Rotates by the table's angles (or back, for the gradient) and swaps the seq and heads axes.
struct Rope {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    /// false: input (b, t, h, d) -> output (b, h, t, d), rotating forward; true: the inverse
    /// rotation from (b, h, t, d) back to (b, t, h, d), which is the gradient of the former.
    from_heads: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "rope input")?;
        let (b, a1, a2, d) = l.shape().dims4()?;
        let t = if self.from_heads { a2 } else { a1 };
        let half = d / 2;
        if self.cos.len() != t * half || d % 2 != 0 {
            candle_core::bail!(
                "rope: table for {} positions, input {:?}",
                self.cos.len() / half.max(1),
                l.shape()
            );
        }
        let sign = if self.from_heads { -1f32 } else { 1f32 };
        // Output (bi, o, i) of shape (b, a2, a1, d) reads input (bi, i, o); one task per (bi, o).
        let y = par_filled(x.len(), a1 * d, |bo, yb| {
            let (bi, o) = (bo / a2, bo % a2);
            for i in 0..a1 {
                let src = ((bi * a1 + i) * a2 + o) * d;
                let pos = if self.from_heads { o } else { i };
                let (c, sn) = (
                    &self.cos[pos * half..(pos + 1) * half],
                    &self.sin[pos * half..(pos + 1) * half],
                );
                // Halves as separate slices of one length, so the loop vectorises.
                let (x1, x2) = x[src..src + d].split_at(half);
                let (y1, y2) = yb[i * d..(i + 1) * d].split_at_mut(half);
                for k in 0..half {
                    let s = sign * sn[k];
                    y1[k] = x1[k] * c[k] - x2[k] * s;
                    y2[k] = x2[k] * c[k] + x1[k] * s;
                }
            }
        });
        let shape = Shape::from((b, a2, a1, d));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        let back = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            from_heads: !self.from_heads,
        };
        Ok(Some(dy.contiguous()?.apply_op1(back)?))
    }
}

/// `out = silu(g) * u = g * u / (1 + e^-g)` for one row.
fn swiglu_row(g: &[f32], u: &[f32], out: &mut [f32]) {
    exp_scaled(g, out, -1.0, 0.0);
    for ((y, g), u) in out.iter_mut().zip(g).zip(u) {
        *y = g * u / (1.0 + *y);
    }
}

/// `silu(gate) * up`, the SwiGLU activation, as one op with its gradient.
/// Elsewhere than the CPU in f32, candle's `silu` times `up` (also the tests' reference).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    if !supported(gate) {
        return gate.silu()? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// [`swiglu`] of a stacked projection's output `[gate | up]` (last axis twice the width of the
/// result), read in place: inference only (no gradient). Elsewhere than the CPU in f32, the two
/// halves through [`swiglu`].
pub fn swiglu_stacked(gate_up: &Tensor) -> CResult<Tensor> {
    if !supported(gate_up) {
        let half = gate_up.dim(D::Minus1)? / 2;
        let gate = gate_up.narrow(D::Minus1, 0, half)?;
        return swiglu(&gate, &gate_up.narrow(D::Minus1, half, half)?);
    }
    gate_up.contiguous()?.apply_op1_no_bwd(&SwiGluStacked)
}

struct SwiGluStacked;

impl CustomOp1 for SwiGluStacked {
    fn name(&self) -> &'static str {
        "fused-swiglu-stacked"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "stacked gate and up")?;
        let mut dims = l.shape().dims().to_vec();
        let width = dims.last().copied().unwrap_or(0);
        if width % 2 != 0 {
            candle_core::bail!("swiglu: stacked width {width} is odd");
        }
        let half = width / 2;
        let last = dims.len() - 1;
        dims[last] = half;
        // Whole rows per task, about 16K outputs each.
        let rows = (1 << 14) / half.max(1) + 1;
        let y = par_filled(x.len() / 2, rows * half, |ci, yc| {
            for (ri, yr) in yc.chunks_mut(half).enumerate() {
                let at = (ci * rows + ri) * width;
                let (g, u) = x[at..at + width].split_at(half);
                swiglu_row(g, u, yr);
            }
        });
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

struct SwiGlu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = f32s(gs, gl, "swiglu gate")?;
        let u = f32s(us, ul, "swiglu up")?;
        if g.len() != u.len() {
            candle_core::bail!("swiglu: gate {:?} vs up {:?}", gl.shape(), ul.shape());
        }
        let y = par_filled(g.len(), 4096, |ci, yc| {
            let at = ci * 4096;
            swiglu_row(&g[at..at + yc.len()], &u[at..at + yc.len()], yc);
        });
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = swiglu_grad(g, u, dy)?;
        Ok((Some(dg), Some(du)))
    }
}

/// `[d gate; d up]` in one buffer.
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "fused-swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = f32s(gs, gl, "swiglu gate")?;
        let u = f32s(us, ul, "swiglu up")?;
        let dy = f32s(ds, dl, "swiglu gradient")?;
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        dg.par_chunks_mut(4096)
            .zip(du.par_chunks_mut(4096))
            .zip(
                g.par_chunks(4096)
                    .zip(u.par_chunks(4096))
                    .zip(dy.par_chunks(4096)),
            )
            .for_each(|((dgc, duc), ((gc, uc), dyc))| {
                for i in 0..gc.len() {
                    let s = sigmoid(gc[i]);
                    let silu = gc[i] * s;
                    duc[i] = dyc[i] * silu;
                    dgc[i] = dyc[i] * uc[i] * s * (1.0 + gc[i] * (1.0 - s));
                }
            });
        Ok((CpuStorage::F32(out), Shape::from(2 * n)))
    }
}

/// Gradients of [`rms_norm`] without autograd: `dx`, and `dw` (summed over rows) if `need_w`.
pub fn rms_norm_grad(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    eps: f64,
    need_w: bool,
) -> CResult<(Tensor, Option<Tensor>)> {
    let g = x.contiguous()?.apply_op3_no_bwd(
        &w.contiguous()?,
        &dy.contiguous()?,
        &RmsNormGrad {
            eps: eps as f32,
            need_w,
        },
    )?;
    let n = x.elem_count();
    let dx = g.narrow(0, 0, n)?.reshape(x.shape())?;
    let dw = if need_w {
        Some(g.narrow(0, n, w.elem_count())?)
    } else {
        None
    };
    Ok((dx, dw))
}

/// The gradient of [`rope_to_heads`] without autograd: `dy` (batch, heads, seq, head_dim)
/// rotated back and returned as (batch, seq, heads, head_dim).
pub fn rope_from_heads(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let op = Rope {
        cos: Arc::new(cos.flatten_all()?.to_vec1::<f32>()?),
        sin: Arc::new(sin.flatten_all()?.to_vec1::<f32>()?),
        from_heads: true,
    };
    dy.contiguous()?.apply_op1_no_bwd(&op)
}

/// The gradients of [`swiglu`] without autograd: `(d gate, d up)`.
pub fn swiglu_grad(gate: &Tensor, up: &Tensor, dy: &Tensor) -> CResult<(Tensor, Tensor)> {
    let both =
        gate.contiguous()?
            .apply_op3_no_bwd(&up.contiguous()?, &dy.contiguous()?, &SwiGluGrad)?;
    let n = gate.elem_count();
    Ok((
        both.narrow(0, 0, n)?.reshape(gate.shape())?,
        both.narrow(0, n, n)?.reshape(up.shape())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{grads, max_diff, rand};
    use candle_core::Var;

    #[test]
    fn rms_norm_matches_composed_ops() {
        let x = Var::from_tensor(&rand(&[3, 37, 24], 1)).unwrap();
        let w = Var::from_tensor(&rand(&[24], 2)).unwrap();
        let probe = rand(&[3, 37, 24], 3);
        let fused = rms_norm(&x, &w, 1e-5).unwrap();
        let plain = rms_norm_slow(&x, &w, 1e-5).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);
        let gf = grads(&[&x, &w], &fused, &probe);
        let gp = grads(&[&x, &w], &plain, &probe);
        for (a, b) in gf.iter().zip(&gp) {
            assert_eq!(a.dims(), b.dims());
            assert!(max_diff(a, b) < 1e-4, "{}", max_diff(a, b));
        }
        // A frozen gain gets no gradient and the input's is unchanged.
        let frozen = w.as_tensor().detach();
        let out = rms_norm(&x, &frozen, 1e-5).unwrap();
        let loss = (out * &probe).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        assert!(g.get(&frozen).is_none());
        assert!(max_diff(g.get(&x).unwrap(), &gp[0]) < 1e-4);
    }

    #[test]
    fn rope_matches_half_split_rotation() {
        let (b, t, h, d) = (2, 5, 3, 8);
        let x = Var::from_tensor(&rand(&[b, t, h, d], 4)).unwrap();
        let angles = rand(&[t, d / 2], 5);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let fused = rope_to_heads(&x, &cos, &sin).unwrap();
        let plain = rope_slow(&x.transpose(1, 2).unwrap(), &cos, &sin).unwrap();
        assert_eq!(fused.dims(), &[b, h, t, d]);
        assert!(max_diff(&fused, &plain) < 1e-6);
        let probe = rand(&[b, h, t, d], 6);
        let gf = grads(&[&x], &fused, &probe);
        let gp = grads(&[&x], &plain, &probe);
        assert!(max_diff(&gf[0], &gp[0]) < 1e-5);
    }

    #[test]
    fn swiglu_matches_silu_times_up() {
        let g = Var::from_tensor(&(rand(&[7, 33], 9) * 4.0).unwrap()).unwrap();
        let u = Var::from_tensor(&rand(&[7, 33], 10)).unwrap();
        let fused = swiglu(&g, &u).unwrap();
        let plain = (g.silu().unwrap() * u.as_tensor()).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);
        let probe = rand(&[7, 33], 11);
        let gf = grads(&[&g, &u], &fused, &probe);
        let gp = grads(&[&g, &u], &plain, &probe);
        for (a, b) in gf.iter().zip(&gp) {
            assert!(max_diff(a, b) < 1e-5);
        }
        // The stacked form reads [gate | up] rows in place.
        let stacked = Tensor::cat(&[g.as_tensor(), u.as_tensor()], 1).unwrap();
        assert!(max_diff(&swiglu_stacked(&stacked).unwrap(), &plain) < 1e-5);
    }
}
