//! Fused CPU kernels with their own backward pass, for training and inference on f32 tensors.
//!
//! Built from basic candle ops, an RMSNorm is six kernels and six temporaries forward, and its
//! backward pass is longer still; candle's autograd also zero-fills and adds a gradient buffer
//! for every op. At 135M parameters that bookkeeping cost as much as the matrix products, so
//! the layer's element-wise parts (RMSNorm, rotary embedding, masked softmax, SwiGLU) and the
//! loss are one op each here, forward and backward, each one pass over its rows on the rayon
//! pool. Other devices and dtypes keep the composed ops ([`supported`] decides).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

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
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    // A vectorised sum of squares: a plain `sum` adds one value at a time.
    let ms = super::rows::dot(row, row) / row.len() as f32;
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
pub fn rope_to_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let op = Rope {
        cos: Arc::new(cos.flatten_all()?.to_vec1::<f32>()?),
        sin: Arc::new(sin.flatten_all()?.to_vec1::<f32>()?),
        from_heads: false,
    };
    x.contiguous()?.apply_op1(op)
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

/// `out[i] = exp(scale * x[i] - shift)` for equal-length slices, returning the sum of `out`: the
/// inner loop of every softmax and of SwiGLU here. libm's `expf`, one value at a time, was a
/// fifth of a prefill's attention time; with AVX-512 sixteen lanes go at once through a
/// polynomial accurate to about 2 ulp.
pub(crate) fn exp_scaled(x: &[f32], out: &mut [f32], scale: f32, shift: f32) -> f32 {
    let n = x.len().min(out.len());
    #[cfg(target_arch = "x86_64")]
    if super::rows::avx512() {
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
    if super::rows::avx512() {
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

/// Softmax over the last axis of attention scores (batch, kv_heads, rep * t, s) after scaling
/// them and hiding future keys: row i of each t-block (query position `offset + i`) sees keys
/// `0..=offset + i`. Query heads sharing a key head are stacked as `rep` blocks of `t` rows.
pub fn causal_softmax(scores: &Tensor, scale: f64, t: usize, offset: usize) -> CResult<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax {
        scale: scale as f32,
        t,
        offset,
    })
}

struct CausalSoftmax {
    scale: f32,
    t: usize,
    offset: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(st, l, "attention scores")?;
        let s = l.shape().dims().last().copied().unwrap_or(0);
        if s == 0 || self.t == 0 || self.offset + self.t > s {
            candle_core::bail!(
                "causal softmax: {} queries at {} over {s} keys",
                self.t,
                self.offset
            );
        }
        let rows_per_task = ROW_CHUNK * 4;
        let chunk = s * rows_per_task;
        let y = par_filled(x.len(), chunk, |ci, yc| {
            let xc = &x[ci * chunk..ci * chunk + yc.len()];
            for (ri, (yr, xr)) in yc.chunks_mut(s).zip(xc.chunks(s)).enumerate() {
                let row = ci * rows_per_task + ri;
                let visible = self.offset + row % self.t + 1;
                let max = scaled_max(&xr[..visible], self.scale);
                let sum = exp_scaled(&xr[..visible], &mut yr[..visible], self.scale, max);
                let inv = 1.0 / sum;
                for y in &mut yr[..visible] {
                    *y *= inv;
                }
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, p: &Tensor, dp: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(causal_softmax_grad(p, dp, self.scale as f64)?))
    }
}

/// Attention for one new position per sequence (beam decoding): queries (batch, kv_heads, rep,
/// head_dim) against the cached keys and values (batch, kv_heads, seq, head_dim), every key
/// visible. One pass per query head: scaled dot products, softmax, weighted sum of values;
/// inference only. Replaces two batched products and a softmax whose fixed costs outweighed
/// their few thousand multiply-adds.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> CResult<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(
        &k.contiguous()?,
        &v.contiguous()?,
        &DecodeAttention {
            scale: scale as f32,
        },
    )
}

struct DecodeAttention {
    scale: f32,
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "fused-decode-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (q, k, v) = (
            f32s(qs, ql, "decode attention queries")?,
            f32s(ks, kl, "decode attention keys")?,
            f32s(vs, vl, "decode attention values")?,
        );
        let (qd, kd) = (ql.shape().dims(), kl.shape().dims());
        if qd.len() != 4 || kd.len() != 4 || kl.shape() != vl.shape() {
            candle_core::bail!("decode attention: shapes {qd:?}, {kd:?}, {:?}", vl.shape());
        }
        let (b, g, r, d) = (qd[0], qd[1], qd[2], qd[3]);
        let s = kd[2];
        if kd[0] != b || kd[1] != g || kd[3] != d || s == 0 {
            candle_core::bail!("decode attention: queries {qd:?} against keys {kd:?}");
        }
        let mut y = vec![0f32; q.len()];
        // Score and probability rows, one pair per worker rather than per head.
        let buffers = || (vec![0f32; s], vec![0f32; s]);
        y.par_chunks_mut(r * d).enumerate().for_each_init(
            buffers,
            |(scores, probs), (head, out)| {
                let keys = &k[head * s * d..(head + 1) * s * d];
                let values = &v[head * s * d..(head + 1) * s * d];
                for (qi, o) in out.chunks_mut(d).enumerate() {
                    let query = &q[(head * r + qi) * d..(head * r + qi + 1) * d];
                    for (sc, key) in scores.iter_mut().zip(keys.chunks(d)) {
                        *sc = super::rows::dot(query, key);
                    }
                    let max = scaled_max(scores, self.scale);
                    let sum = exp_scaled(scores, probs, self.scale, max);
                    let inv = 1.0 / sum;
                    for (p, value) in probs.iter().zip(values.chunks(d)) {
                        let w = p * inv;
                        for (o, x) in o.iter_mut().zip(value) {
                            *o += w * x;
                        }
                    }
                }
            },
        );
        Ok((CpuStorage::F32(y), ql.shape().clone()))
    }
}

/// `scale * p * (dp - sum(dp * p))` per row: the gradient of a scaled softmax.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        ps: &CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let p = f32s(ps, pl, "softmax output")?;
        let dp = f32s(gs, gl, "softmax gradient")?;
        let s = pl.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; p.len()];
        out.par_chunks_mut(s * ROW_CHUNK * 4)
            .zip(p.par_chunks(s * ROW_CHUNK * 4))
            .zip(dp.par_chunks(s * ROW_CHUNK * 4))
            .for_each(|((oc, pc), gc)| {
                for ((or, pr), gr) in oc.chunks_mut(s).zip(pc.chunks(s)).zip(gc.chunks(s)) {
                    let dot: f32 = pr.iter().zip(gr).map(|(p, g)| p * g).sum();
                    for ((o, p), g) in or.iter_mut().zip(pr).zip(gr) {
                        *o = self.scale * p * (g - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(out), pl.shape().clone()))
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
pub fn swiglu(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// [`swiglu`] of a stacked projection's output `[gate | up]` (last axis twice the width of the
/// result), read in place: inference only (no gradient).
pub fn swiglu_stacked(gate_up: &Tensor) -> CResult<Tensor> {
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

/// Mean cross-entropy of `logits` (rows, vocab) against `targets` (one id per row), as a
/// scalar. Never materialises the log-softmax: the forward pass keeps each row's
/// log-sum-exp, and the backward pass writes `softmax - one_hot` straight into the gradient.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> CResult<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    if rows != targets.len() || rows == 0 {
        candle_core::bail!("cross-entropy: {rows} rows for {} targets", targets.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross-entropy: target id {t} outside the vocabulary of {vocab}");
    }
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets: Arc::new(targets.to_vec()),
        lse: Arc::new(Mutex::new(Vec::new())),
    })
}

struct CrossEntropy {
    targets: Arc<Vec<u32>>,
    /// Each row's log-sum-exp, written by the forward pass for the backward pass.
    lse: Arc<Mutex<Vec<f32>>>,
}

/// `ln(sum(exp(row)))`, shifted by the row's maximum; `scratch` receives the shifted exps.
fn log_sum_exp_into(row: &[f32], scratch: &mut [f32]) -> f32 {
    let max = max_of(row);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + exp_scaled(row, scratch, 1.0, max).ln()
}

/// Log-probabilities over the last dimension: a row of logits becomes `x - logsumexp(x)` in two
/// passes over it, one row per task. Candle's version runs five separate element-wise ops over
/// the whole vocabulary-wide matrix, each waking its own thread pool; not differentiable.
pub fn log_softmax(logits: &Tensor) -> CResult<Tensor> {
    if !supported(logits) || logits.rank() == 0 {
        return candle_nn::ops::log_softmax(logits, candle_core::D::Minus1);
    }
    logits.contiguous()?.apply_op1_no_bwd(&LogSoftmax)
}

struct LogSoftmax;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "fused-log-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "logits")?;
        let width = l.shape().dims().last().copied().unwrap_or(0);
        let y = par_filled(x.len(), width, |r, out| {
            let row = &x[r * width..r * width + out.len()];
            let lse = log_sum_exp_into(row, out);
            for (o, v) in out.iter_mut().zip(row) {
                *o = v - lse;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "logits")?;
        let vocab = l.shape().dims().last().copied().unwrap_or(1);
        let lse: Vec<f32> = x
            .par_chunks(vocab)
            .map_init(|| vec![0f32; vocab], |buf, row| log_sum_exp_into(row, buf))
            .collect();
        let total: f64 = lse
            .iter()
            .zip(x.chunks(vocab))
            .zip(self.targets.iter())
            .map(|((l, row), &t)| (l - row[t as usize]) as f64)
            .sum();
        if let Ok(mut keep) = self.lse.lock() {
            *keep = lse;
        }
        let mean = (total / self.targets.len() as f64) as f32;
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _loss: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let op = CrossEntropyGrad {
            targets: self.targets.clone(),
            lse: self.lse.clone(),
        };
        Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &op)?))
    }
}

struct CrossEntropyGrad {
    targets: Arc<Vec<u32>>,
    lse: Arc<Mutex<Vec<f32>>>,
}

impl CustomOp2 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(xs, xl, "logits")?;
        let g = f32s(gs, gl, "loss gradient")?
            .first()
            .copied()
            .unwrap_or(1.0);
        let vocab = xl.shape().dims().last().copied().unwrap_or(1);
        let mut lse = self.lse.lock().map(|l| l.clone()).unwrap_or_default();
        if lse.len() != self.targets.len() {
            lse = x
                .par_chunks(vocab)
                .map_init(|| vec![0f32; vocab], |buf, row| log_sum_exp_into(row, buf))
                .collect();
        }
        let scale = g / self.targets.len() as f32;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(vocab)
            .zip(x.par_chunks(vocab))
            .enumerate()
            .for_each(|(r, (or, xr))| {
                exp_scaled(xr, or, 1.0, lse[r]);
                for o in or.iter_mut() {
                    *o *= scale;
                }
                or[self.targets[r] as usize] -= scale;
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
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

/// The gradient of [`causal_softmax`] without autograd, from its output `p`.
pub fn causal_softmax_grad(p: &Tensor, dp: &Tensor, scale: f64) -> CResult<Tensor> {
    p.contiguous()?.apply_op2_no_bwd(
        &dp.contiguous()?,
        &SoftmaxGrad {
            scale: scale as f32,
        },
    )
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

/// Mean cross-entropy and the gradient of `scale * loss` together, without autograd: what a
/// training step needs from the loss.
pub fn cross_entropy_with_grad(
    logits: &Tensor,
    targets: &[u32],
    scale: f32,
) -> CResult<(f32, Tensor)> {
    let (rows, vocab) = logits.dims2()?;
    if rows != targets.len() || rows == 0 {
        candle_core::bail!("cross-entropy: {rows} rows for {} targets", targets.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross-entropy: target id {t} outside the vocabulary of {vocab}");
    }
    let op = CrossEntropyStep {
        targets,
        scale,
        loss: Mutex::new(0.0),
    };
    let grad = logits.contiguous()?.apply_op1_no_bwd(&op)?;
    let total = op.loss.lock().map(|l| *l).unwrap_or(f64::NAN);
    Ok(((total / rows as f64) as f32, grad))
}

/// Loss and gradient together, one exponential per logit: each row's exponentials are kept
/// in the gradient buffer and normalised in place.
struct CrossEntropyStep<'a> {
    targets: &'a [u32],
    scale: f32,
    /// Summed over rows by the forward pass.
    loss: Mutex<f64>,
}

impl CustomOp1 for CrossEntropyStep<'_> {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-step"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "logits")?;
        let vocab = l.shape().dims().last().copied().unwrap_or(1);
        let per_row = self.scale / self.targets.len() as f32;
        let mut out = vec![0f32; x.len()];
        let losses: Vec<f64> = out
            .par_chunks_mut(vocab)
            .zip(x.par_chunks(vocab))
            .zip(self.targets.par_iter())
            .map(|((or, xr), &t)| {
                let max = max_of(xr);
                let sum = exp_scaled(xr, or, 1.0, max);
                let k = per_row / sum;
                for o in or.iter_mut() {
                    *o *= k;
                }
                or[t as usize] -= per_row;
                (max + sum.ln() - xr[t as usize]) as f64
            })
            .collect();
        if let Ok(mut loss) = self.loss.lock() {
            *loss = losses.iter().sum();
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

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

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Gradients of `sum(f(vars) * probe)` for each var: compares ops through a random
    /// projection of their outputs, which exercises every output element's gradient.
    fn grads(vars: &[&Var], out: &Tensor, probe: &Tensor) -> Vec<Tensor> {
        let loss = (out * probe).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        vars.iter().map(|v| g.get(v).unwrap().clone()).collect()
    }

    #[test]
    fn rms_norm_matches_composed_ops() {
        let x = Var::from_tensor(&rand(&[3, 37, 24], 1)).unwrap();
        let w = Var::from_tensor(&rand(&[24], 2)).unwrap();
        let probe = rand(&[3, 37, 24], 3);
        let fused = rms_norm(&x, &w, 1e-5).unwrap();
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let plain = x
            .broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap();
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
        let xt = x.transpose(1, 2).unwrap();
        let x1 = xt.narrow(D::Minus1, 0, d / 2).unwrap();
        let x2 = xt.narrow(D::Minus1, d / 2, d / 2).unwrap();
        let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        let c = Tensor::cat(&[&cos, &cos], D::Minus1).unwrap();
        let s = Tensor::cat(&[&sin, &sin], D::Minus1).unwrap();
        let plain = (xt.broadcast_mul(&c).unwrap() + rotated.broadcast_mul(&s).unwrap()).unwrap();
        assert_eq!(fused.dims(), &[b, h, t, d]);
        assert!(max_diff(&fused, &plain) < 1e-6);
        let probe = rand(&[b, h, t, d], 6);
        let gf = grads(&[&x], &fused, &probe);
        let gp = grads(&[&x], &plain, &probe);
        assert!(max_diff(&gf[0], &gp[0]) < 1e-5);
    }

    #[test]
    fn causal_softmax_matches_masked_softmax() {
        // 2 kv heads, rep 2, 4 new queries after 3 cached positions.
        let (b, nkv, rep, t, off) = (2, 2, 2, 4, 3);
        let s = off + t;
        let x = Var::from_tensor(&(rand(&[b, nkv, rep * t, s], 7) * 3.0).unwrap()).unwrap();
        let scale = 0.35;
        let fused = causal_softmax(&x, scale, t, off).unwrap();
        let mask = crate::model::llama::causal_mask(t, off, &Device::Cpu).unwrap();
        let plain = candle_nn::ops::softmax(
            &(x.as_tensor() * scale)
                .unwrap()
                .reshape((b, nkv, rep, t, s))
                .unwrap()
                .broadcast_add(&mask)
                .unwrap()
                .reshape((b, nkv, rep * t, s))
                .unwrap(),
            D::Minus1,
        )
        .unwrap();
        assert!(max_diff(&fused, &plain) < 1e-6);
        let probe = rand(&[b, nkv, rep * t, s], 8);
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

    /// One new position against a cache: the same as the masked softmax of the full products.
    #[test]
    fn decode_attention_matches_products_and_softmax() {
        let (b, g, r, s, d) = (3, 2, 3, 37, 64);
        let q = rand(&[b, g, r, d], 21);
        let k = rand(&[b, g, s, d], 22);
        let v = rand(&[b, g, s, d], 23);
        let scale = 0.125;
        let fused = decode_attention(&q, &k, &v, scale).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let plain = candle_nn::ops::softmax(&scores, D::Minus1)
            .unwrap()
            .matmul(&v)
            .unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);
    }

    #[test]
    fn cross_entropy_matches_candle() {
        let x = Var::from_tensor(&(rand(&[6, 50], 12) * 5.0).unwrap()).unwrap();
        let targets = [3u32, 0, 49, 7, 7, 21];
        let fused = cross_entropy(&x, &targets).unwrap();
        let t = Tensor::new(&targets, &Device::Cpu).unwrap();
        let plain = candle_nn::loss::cross_entropy(&x, &t).unwrap();
        let (a, b) = (
            fused.to_scalar::<f32>().unwrap(),
            plain.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        let gf = fused.backward().unwrap();
        let gp = plain.backward().unwrap();
        assert!(max_diff(gf.get(&x).unwrap(), gp.get(&x).unwrap()) < 1e-6);
        let (loss, grad) = cross_entropy_with_grad(x.as_tensor(), &targets, 0.5).unwrap();
        assert!((loss - b).abs() < 1e-5, "{loss} vs {b}");
        let want = (gp.get(&x).unwrap() * 0.5).unwrap();
        assert!(max_diff(&grad, &want) < 1e-6);
        assert!(cross_entropy(&x, &[1, 2]).is_err());
        assert!(cross_entropy(&x, &[0, 0, 0, 0, 0, 50]).is_err());
    }

    /// Vocabulary-wide rows (one task each) and a short row with a large spread, against
    /// candle's log-softmax; every row's probabilities sum to one.
    #[test]
    fn log_softmax_matches_candle() {
        for (rows, width, spread) in [(3, 49_152, 8.0), (5, 37, 60.0), (1, 1, 1.0)] {
            let x = (rand(&[rows, width], 4) * spread).unwrap();
            let fused = log_softmax(&x).unwrap();
            let plain = candle_nn::ops::log_softmax(&x, D::Minus1).unwrap();
            assert!(max_diff(&fused, &plain) < 2e-5, "{rows} x {width}");
            let total = fused.exp().unwrap().sum(D::Minus1).unwrap();
            let ones = Tensor::ones(rows, DType::F32, &Device::Cpu).unwrap();
            assert!(max_diff(&total, &ones) < 1e-4);
        }
    }
}
