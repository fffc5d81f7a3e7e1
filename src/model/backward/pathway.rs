//! The retrieval pathway's part of the hand-written training pass: per layer, the retrieval
//! heads attend over the layer's own rotated keys and values and MLP' adds its output to the
//! residual stream ([`crate::model::retrieval::RetrievalLayer::forward`]). Its backward pass
//! gives the pathway's weight gradients and three gradients that flow into the base layer:
//! at the layer's normed input (through the retrieval queries) and at its keys and values.

use super::{linear_bwd, linear_fwd, missing, Dims, Grads, LinearSaved};
use crate::error::Result;
use crate::kernels::matmul::batched_matmul as bmm;
use crate::kernels::{attention, elementwise};
use crate::model::retrieval::RetrievalLayer;
use candle_core::Tensor;

/// Activations of one layer's pathway kept for its backward pass.
pub(super) struct PathSaved {
    q: LinearSaved,
    /// Rotated retrieval queries stacked per key head (b, kv_heads, per_kv * t, hd).
    qs: Tensor,
    /// Attention probabilities (b, kv_heads, per_kv * t, t).
    p: Tensor,
    gate: LinearSaved,
    up: LinearSaved,
    g: Tensor,
    u: Tensor,
    down: LinearSaved,
}

/// What the pathway's backward pass hands to its base layer.
pub(super) struct IntoBase {
    /// At the layer's normed input (b * t, hidden).
    pub dh1: Tensor,
    /// At the rotated keys and the values (b, kv_heads, t, hd).
    pub dkh: Tensor,
    pub dvh: Tensor,
}

/// MLP'(Attn'(h1)) for normed input `h1` (b * t, hidden) and the layer's rotated keys `kh` and
/// values `vh`; `per_kv` retrieval heads share each key/value head.
pub(super) fn path_fwd(
    layer: &RetrievalLayer,
    h1: &Tensor,
    kh: &Tensor,
    vh: &Tensor,
    d: &Dims,
    per_kv: usize,
    rope: (&Tensor, &Tensor),
) -> Result<(Tensor, PathSaved)> {
    let Dims { b, t, nkv, hd, .. } = *d;
    let heads = nkv * per_kv;
    let (q, q_s) = linear_fwd(&layer.q_proj, h1)?;
    let qh = elementwise::rope_to_heads(&q.reshape((b, t, heads, hd))?, rope.0, rope.1)?;
    let qs = qh.reshape((b, nkv, per_kv * t, hd))?;
    let scale = 1.0 / (hd as f64).sqrt();
    let p = attention::causal_softmax(&bmm(&qs, kh, false, true)?, scale, t, 0)?;
    let y = bmm(&p, vh, false, false)?
        .reshape((b, heads, t, hd))?
        .transpose(1, 2)?
        .reshape((b * t, heads * hd))?;
    let (g, g_s) = linear_fwd(&layer.gate_proj, &y)?;
    let (u, u_s) = linear_fwd(&layer.up_proj, &y)?;
    let a = elementwise::swiglu(&g, &u)?;
    let (out, down_s) = linear_fwd(&layer.down_proj, &a)?;
    Ok((
        out,
        PathSaved {
            q: q_s,
            qs,
            p,
            gate: g_s,
            up: u_s,
            g,
            u,
            down: down_s,
        },
    ))
}

/// From the gradient at the layer's output (which the pathway's output was added to) to the
/// pathway's weight gradients and what flows into the base layer.
#[allow(clippy::too_many_arguments)]
pub(super) fn path_bwd(
    layer: &RetrievalLayer,
    s: &PathSaved,
    dout: &Tensor,
    kh: &Tensor,
    vh: &Tensor,
    d: &Dims,
    per_kv: usize,
    rope: (&Tensor, &Tensor),
    grads: &mut Grads,
) -> Result<IntoBase> {
    let Dims { b, t, nkv, hd, .. } = *d;
    let heads = nkv * per_kv;
    let da = linear_bwd(&layer.down_proj, &s.down, dout, grads, true)?.ok_or_else(missing)?;
    let (dg, du) = elementwise::swiglu_grad(&s.g, &s.u, &da)?;
    let dy = elementwise::add(
        &linear_bwd(&layer.gate_proj, &s.gate, &dg, grads, true)?.ok_or_else(missing)?,
        &linear_bwd(&layer.up_proj, &s.up, &du, grads, true)?.ok_or_else(missing)?,
    )?;
    let dys = dy
        .reshape((b, t, heads, hd))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, nkv, per_kv * t, hd))?;
    let dp = bmm(&dys, vh, false, true)?;
    let dvh = bmm(&s.p, &dys, true, false)?;
    let ds = attention::causal_softmax_grad(&s.p, &dp, 1.0 / (hd as f64).sqrt())?;
    let dqs = bmm(&ds, kh, false, false)?.reshape((b, heads, t, hd))?;
    let dkh = bmm(&ds, &s.qs, true, false)?;
    let dq = elementwise::rope_from_heads(&dqs, rope.0, rope.1)?.reshape((b * t, heads * hd))?;
    let dh1 = linear_bwd(&layer.q_proj, &s.q, &dq, grads, true)?.ok_or_else(missing)?;
    Ok(IntoBase { dh1, dkh, dvh })
}
