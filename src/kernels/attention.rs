//! Attention's kernels: causal prefill attention in blocks through the BLAS, the one-position
//! decode attention over a cache, and the causal softmax with its gradient for training.
//!
//! Each keeps the plain formula (scores, mask, softmax, values in candle's ops) as the
//! reference its tests compare against.

use super::blas_ffi::{blas, Call, SendPtr};
use super::simd::{exp_scaled, scaled_max};
use super::{f32s, par_filled, CResult, ROW_CHUNK};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor,
};
use rayon::prelude::*;

/// Query positions per task in [`causal_attention`]: each block's products stop at the last key
/// its rows can see, so the work above the causal diagonal shrinks to a staircase of this step.
const CAUSAL_BLOCK: usize = 64;

/// Grouped-query attention for the last `t` of `s` positions (the first `s - t` cached), each
/// seeing itself and what precedes it: `q` (b, g, rep * t, d) with the query heads that share a
/// key/value head stacked along the rows, `k` and `v` (b, g, s, d), scores scaled by `scale`.
/// Returns (b, t, g * rep * d), the input of the output projection. `mask` (t, s), added to
/// the scores, is needed only where the softmax kernel is missing (not CPU f32).
///
/// The entry point of attention: without a gradient, one position takes [`decode_attention`]
/// and a prefill [`causal_attention`]; with one (training), or where those do not apply,
/// [`attention_slow`]'s products around the causal softmax.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    t: usize,
    mask: Option<&Tensor>,
) -> CResult<Tensor> {
    let (b, g, rows, d) = q.dims4()?;
    let inference = !(q.track_op() || k.track_op() || v.track_op()) && super::supported(q);
    if inference && t == 1 {
        return decode_attention(q, k, v, scale)?.reshape((b, 1, g * rows * d));
    }
    if inference {
        if let Some(y) = causal_attention(q, k, v, scale, t)? {
            return Ok(y);
        }
    }
    let rep = rows / t.max(1);
    let s = k.dim(2)?;
    let y = if inference {
        // Inference prefill without the blocked kernel: one BLAS product per head.
        let scores = super::matmul::batched_matmul(q, k, false, true)?;
        let p = causal_softmax(&scores, scale, t, s - t)?;
        super::matmul::batched_matmul(&p, v, false, false)?
    } else {
        let scores = q.matmul(&k.t()?)?;
        let p = match super::supported(&scores) {
            true => causal_softmax(&scores, scale, t, s - t)?,
            false => masked_softmax(&scores, scale, rep, mask)?,
        };
        p.matmul(v)?
    };
    // (b, g, rep * t, d) -> (b, g * rep, t, d) -> (b, t, heads * d)
    y.reshape((b, g * rep, t, d))?
        .transpose(1, 2)?
        .reshape((b, t, g * rep * d))
}

/// Additive causal mask (seq, offset + seq): position i may see keys 0..=offset+i.
pub fn causal_mask(t: usize, offset: usize, device: &Device) -> CResult<Tensor> {
    let s = offset + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(data, (t, s), device)
}

/// Attention from candle's products and its softmax over added mask values: the reference the
/// kernels are tested against, and the path of devices without them. Shapes as [`attention`];
/// `mask` is (t, s), or (b, 1, 1, t, s) for a mask of each batch row.
pub fn attention_slow(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    t: usize,
    mask: &Tensor,
) -> CResult<Tensor> {
    let (b, g, rows, d) = q.dims4()?;
    let rep = rows / t.max(1);
    let p = masked_softmax(&q.matmul(&k.t()?)?, scale, rep, Some(mask))?;
    p.matmul(v)?
        .reshape((b, g * rep, t, d))?
        .transpose(1, 2)?
        .reshape((b, t, g * rep * d))
}

/// The scaled softmax of scores (b, g, rep * t, s) plus `mask` (t, s) for each of the `rep`
/// stacked heads, from basic ops (candle's fused softmax when no gradient is needed).
fn masked_softmax(
    scores: &Tensor,
    scale: f64,
    rep: usize,
    mask: Option<&Tensor>,
) -> CResult<Tensor> {
    let (b, g, rows, s) = scores.dims4()?;
    let t = rows / rep.max(1);
    let att = (scores * scale)?;
    let att = match mask {
        Some(m) => att
            .reshape((b, g, rep, t, s))?
            .broadcast_add(m)?
            .reshape((b, g, rows, s))?,
        None => att,
    };
    if att.track_op() {
        candle_nn::ops::softmax(&att, candle_core::D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(&att)
    }
}

/// Whether [`attention`] needs an additive causal mask for inputs like `x`: only where its
/// softmax kernel, which masks as it goes, is missing.
pub fn needs_mask(x: &Tensor) -> bool {
    !super::supported(x)
}

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
        let q = super::f32s(s1, l1, "attention queries")?;
        let k = super::f32s(s2, l2, "attention keys")?;
        let v = super::f32s(s3, l3, "attention values")?;
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
                    let max = super::simd::scaled_max(row, self.scale);
                    let sum = super::simd::exp_scaled(row, &mut p[..visible], self.scale, max);
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
                        *sc = super::simd::dot(query, key);
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

/// The gradient of [`causal_softmax`] without autograd, from its output `p`.
pub fn causal_softmax_grad(p: &Tensor, dp: &Tensor, scale: f64) -> CResult<Tensor> {
    p.contiguous()?.apply_op2_no_bwd(
        &dp.contiguous()?,
        &SoftmaxGrad {
            scale: scale as f32,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{grads, max_diff, rand};
    use candle_core::{Device, Var, D};

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

    #[test]
    fn causal_softmax_matches_masked_softmax() {
        // 2 kv heads, rep 2, 4 new queries after 3 cached positions.
        let (b, nkv, rep, t, off) = (2, 2, 2, 4, 3);
        let s = off + t;
        let x = Var::from_tensor(&(rand(&[b, nkv, rep * t, s], 7) * 3.0).unwrap()).unwrap();
        let scale = 0.35;
        let fused = causal_softmax(&x, scale, t, off).unwrap();
        let mask = causal_mask(t, off, &Device::Cpu).unwrap();
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

    /// The entry point against the reference on its every path: a prefill (blocked kernel),
    /// one cached position (decode kernel), and with a gradient (products and causal softmax),
    /// stacked query heads throughout.
    #[test]
    fn attention_matches_the_reference_on_every_path() {
        let (b, g, rep, d) = (2, 2, 3, 16);
        for (t, offset, tracked) in [(9, 0, false), (1, 12, false), (9, 4, true), (5, 0, true)] {
            let s = offset + t;
            let q = rand(&[b, g, rep * t, d], 31 + t as u64);
            let k = rand(&[b, g, s, d], 32);
            let v = rand(&[b, g, s, d], 33);
            let q = match tracked {
                true => Var::from_tensor(&q).unwrap().as_tensor().clone(),
                false => q,
            };
            let got = attention(&q, &k, &v, 0.25, t, None).unwrap();
            let mask = causal_mask(t, offset, &Device::Cpu).unwrap();
            let want = attention_slow(&q, &k, &v, 0.25, t, &mask).unwrap();
            assert_eq!(got.dims(), &[b, t, g * rep * d]);
            assert!(
                max_diff(&got, &want) < 1e-5,
                "t {t} offset {offset} tracked {tracked}"
            );
        }
    }
}
