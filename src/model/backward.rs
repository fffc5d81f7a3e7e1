//! A hand-written forward and backward pass of the llama stack for training on the CPU.
//!
//! candle's autograd records every op, then for each op's inputs zero-fills a gradient
//! buffer and adds into it, and undoes each transpose and reshape with a copy. At 135M
//! parameters that bookkeeping cost about as much as the matrix products. Here a training
//! step keeps only the activations the backward pass reads, runs every product through
//! [`crate::kernels::matmul::matmul`] (whichever operand order needs no copy) and every
//! element-wise part through the fused kernels of [`crate::kernels`], and produces each weight's
//! gradient exactly once. The autograd path stays for other devices and dtypes, and a test
//! checks the two agree.

use super::llama::{Block, Linear, Llama, RmsNorm};
use crate::error::{Error, Result};
use crate::kernels::matmul::{add_matmul, batched_matmul as bmm, matmul, WeightPacks};
use crate::kernels::{attention, elementwise, loss};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId};
use std::collections::HashMap;

/// Whether [`loss_and_grads`] handles this model (f32 weights on the CPU).
pub fn supported(model: &Llama) -> bool {
    // The retrieval pathway's gradients come from autograd (see `retrieval`).
    crate::kernels::supported(&model.embed_tokens) && model.retrieval.is_none()
}

/// Gradients keyed by the parameter they belong to, summed when a weight is used twice (tied
/// embeddings). Frozen tensors are skipped.
#[derive(Default)]
struct Grads {
    by_param: HashMap<TensorId, (Tensor, Tensor)>,
}

impl Grads {
    fn add(&mut self, param: &Tensor, grad: impl FnOnce() -> Result<Tensor>) -> Result<()> {
        if !param.is_variable() {
            return Ok(());
        }
        let grad = grad()?;
        match self.by_param.get_mut(&param.id()) {
            Some((_, sum)) => *sum = elementwise::add(sum, &grad)?,
            None => {
                self.by_param.insert(param.id(), (param.clone(), grad));
            }
        }
        Ok(())
    }

    fn into_store(self, device: &candle_core::Device) -> Result<GradStore> {
        // candle keeps `GradStore::new` private; the backward pass of a constant yields a store
        // holding only that constant's own gradient, which no parameter shares.
        let mut store = Tensor::new(0f32, device)?.backward()?;
        for (_, (param, grad)) in self.by_param {
            store.insert(&param, grad);
        }
        Ok(store)
    }
}

/// What a projection's backward pass reads: its input and, with an adapter, `x A^T`.
struct LinearSaved {
    x: Tensor,
    low: Option<Tensor>,
}

/// `x @ w^T` (`trans_w`) or `x @ w` for a weight that gets no gradient through this product:
/// on the tiles against its packing when that applies, else through [`matmul`].
fn weight_product(x: &Tensor, w: &Tensor, trans_w: bool, packs: &WeightPacks) -> Result<Tensor> {
    Ok(
        match crate::kernels::matmul::packed_product(x, w, trans_w, packs)? {
            Some(y) => y,
            None => matmul(x, &w.detach(), false, trans_w)?,
        },
    )
}

fn linear_fwd(l: &Linear, x: &Tensor) -> Result<(Tensor, LinearSaved)> {
    let mut y = weight_product(x, &l.weight, true, &l.packs)?;
    if let Some(b) = &l.bias {
        y = y.broadcast_add(&b.detach())?;
    }
    let low = match &l.lora {
        Some(lora) => {
            let low = matmul(x, &lora.a.detach(), false, true)?;
            let b = (lora.b.detach() * lora.scale)?;
            y = add_matmul(y, &low, &b, false, true)?;
            Some(low)
        }
        None => None,
    };
    Ok((y, LinearSaved { x: x.clone(), low }))
}

/// Accumulates the projection's weight gradients and returns the input's (when `need_dx`).
fn linear_bwd(
    l: &Linear,
    s: &LinearSaved,
    dy: &Tensor,
    grads: &mut Grads,
    need_dx: bool,
) -> Result<Option<Tensor>> {
    let mut dx = if need_dx {
        Some(weight_product(dy, &l.weight, false, &l.packs)?)
    } else {
        None
    };
    grads.add(&l.weight, || Ok(matmul(dy, &s.x, true, false)?))?;
    if let Some(b) = &l.bias {
        grads.add(b, || Ok(dy.sum(0)?))?;
    }
    if let (Some(lora), Some(low)) = (&l.lora, &s.low) {
        let b = (lora.b.detach() * lora.scale)?;
        let dlow = matmul(dy, &b, false, false)?;
        if let Some(d) = dx.take() {
            dx = Some(add_matmul(d, &dlow, &lora.a.detach(), false, false)?);
        }
        grads.add(&lora.a, || Ok(matmul(&dlow, &s.x, true, false)?))?;
        grads.add(
            &lora.b,
            || Ok((matmul(dy, low, true, false)? * lora.scale)?),
        )?;
    }
    Ok(dx)
}

/// Activations of one layer kept for its backward pass.
struct LayerSaved {
    x: Tensor,
    q: LinearSaved,
    k: LinearSaved,
    v: LinearSaved,
    /// Rotated queries stacked per key head (b, kv_heads, rep * t, hd).
    qs: Tensor,
    /// Rotated keys and values (b, kv_heads, t, hd).
    kh: Tensor,
    vh: Tensor,
    /// Attention probabilities (b, kv_heads, rep * t, t).
    p: Tensor,
    o: LinearSaved,
    x2: Tensor,
    gate: LinearSaved,
    up: LinearSaved,
    g: Tensor,
    u: Tensor,
    down: LinearSaved,
}

/// Shapes shared by every layer of one batch.
struct Dims {
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
}

fn layer_fwd(
    layer: &Block,
    x: Tensor,
    d: &Dims,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<(Tensor, LayerSaved)> {
    let Dims { b, t, nh, nkv, hd } = *d;
    let att = &layer.self_attn;
    let norm = &layer.input_layernorm;
    let h1 = elementwise::rms_norm(&x, &norm.weight.detach(), norm.eps)?;
    let (q, q_s) = linear_fwd(&att.q_proj, &h1)?;
    let (k, k_s) = linear_fwd(&att.k_proj, &h1)?;
    let (v, v_s) = linear_fwd(&att.v_proj, &h1)?;
    let qh = elementwise::rope_to_heads(&q.reshape((b, t, nh, hd))?, cos, sin)?;
    let kh = elementwise::rope_to_heads(&k.reshape((b, t, nkv, hd))?, cos, sin)?;
    let vh = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
    let rep = nh / nkv;
    let qs = qh.reshape((b, nkv, rep * t, hd))?;
    let scale = 1.0 / (hd as f64).sqrt();
    let p = attention::causal_softmax(&bmm(&qs, &kh, false, true)?, scale, t, 0)?;
    let y = bmm(&p, &vh, false, false)?
        .reshape((b, nh, t, hd))?
        .transpose(1, 2)?
        .reshape((b * t, nh * hd))?;
    let (o, o_s) = linear_fwd(&att.o_proj, &y)?;
    let x2 = elementwise::add(&x, &o)?;
    let norm2 = &layer.post_attention_layernorm;
    let h2 = elementwise::rms_norm(&x2, &norm2.weight.detach(), norm2.eps)?;
    let (g, g_s) = linear_fwd(&layer.mlp.gate_proj, &h2)?;
    let (u, u_s) = linear_fwd(&layer.mlp.up_proj, &h2)?;
    let a = elementwise::swiglu(&g, &u)?;
    let (down, down_s) = linear_fwd(&layer.mlp.down_proj, &a)?;
    let x3 = elementwise::add(&x2, &down)?;
    Ok((
        x3,
        LayerSaved {
            x,
            q: q_s,
            k: k_s,
            v: v_s,
            qs,
            kh,
            vh,
            p,
            o: o_s,
            x2,
            gate: g_s,
            up: u_s,
            g,
            u,
            down: down_s,
        },
    ))
}

/// From the gradient at the layer's output to the gradient at its input (when `need_dx`).
#[allow(clippy::too_many_arguments)]
fn layer_bwd(
    layer: &Block,
    s: &LayerSaved,
    dx3: Tensor,
    d: &Dims,
    cos: &Tensor,
    sin: &Tensor,
    grads: &mut Grads,
    need_dx: bool,
) -> Result<Option<Tensor>> {
    let Dims { b, t, nh, nkv, hd } = *d;
    let rep = nh / nkv;
    let mlp = &layer.mlp;
    let da = linear_bwd(&mlp.down_proj, &s.down, &dx3, grads, true)?.ok_or_else(missing)?;
    let (dg, du) = elementwise::swiglu_grad(&s.g, &s.u, &da)?;
    let dh2 = elementwise::add(
        &linear_bwd(&mlp.gate_proj, &s.gate, &dg, grads, true)?.ok_or_else(missing)?,
        &linear_bwd(&mlp.up_proj, &s.up, &du, grads, true)?.ok_or_else(missing)?,
    )?;
    let norm2 = &layer.post_attention_layernorm;
    let dx2_norm = norm_bwd(norm2, &s.x2, &dh2, grads)?;
    let dx2 = elementwise::add(&dx3, &dx2_norm)?;

    let att = &layer.self_attn;
    let dy = linear_bwd(&att.o_proj, &s.o, &dx2, grads, true)?.ok_or_else(missing)?;
    let dys = dy
        .reshape((b, t, nh, hd))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, nkv, rep * t, hd))?;
    let dp = bmm(&dys, &s.vh, false, true)?;
    let dvh = bmm(&s.p, &dys, true, false)?;
    let ds = attention::causal_softmax_grad(&s.p, &dp, 1.0 / (hd as f64).sqrt())?;
    let dqs = bmm(&ds, &s.kh, false, false)?.reshape((b, nh, t, hd))?;
    let dkh = bmm(&ds, &s.qs, true, false)?;
    let dq = elementwise::rope_from_heads(&dqs, cos, sin)?.reshape((b * t, nh * hd))?;
    let dk = elementwise::rope_from_heads(&dkh, cos, sin)?.reshape((b * t, nkv * hd))?;
    let dv = dvh
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * t, nkv * hd))?;
    let norm = &layer.input_layernorm;
    let need_dh1 = need_dx || norm.weight.is_variable();
    let dh1 = [
        linear_bwd(&att.q_proj, &s.q, &dq, grads, need_dh1)?,
        linear_bwd(&att.k_proj, &s.k, &dk, grads, need_dh1)?,
        linear_bwd(&att.v_proj, &s.v, &dv, grads, need_dh1)?,
    ];
    let dh1 = match dh1 {
        [Some(a), Some(b), Some(c)] => elementwise::add(&elementwise::add(&a, &b)?, &c)?,
        _ => return Ok(None),
    };
    let dx_norm = norm_bwd(norm, &s.x, &dh1, grads)?;
    Ok(if need_dx {
        Some(elementwise::add(&dx2, &dx_norm)?)
    } else {
        None
    })
}

/// The input gradient of an RMSNorm, accumulating its gain's gradient when it is trained.
fn norm_bwd(norm: &RmsNorm, x: &Tensor, dy: &Tensor, grads: &mut Grads) -> Result<Tensor> {
    let trained = norm.weight.is_variable();
    let (dx, dw) = elementwise::rms_norm_grad(x, &norm.weight.detach(), dy, norm.eps, trained)?;
    if let Some(dw) = dw {
        grads.add(&norm.weight, || Ok(dw))?;
    }
    Ok(dx)
}

fn missing() -> Error {
    Error::invalid("backward: a needed gradient was not computed")
}

/// Mean cross-entropy of predicting `targets` at flat `positions` of `ids` (batch, seq), and
/// the gradient of `seed * loss` for every trainable weight of `model`, keyed as
/// `loss.backward()` would key them.
pub fn loss_and_grads(
    model: &Llama,
    ids: &Tensor,
    positions: &[u32],
    targets: &[u32],
    seed: f32,
) -> Result<(f32, GradStore)> {
    let (b, t) = ids.dims2()?;
    let cfg = &model.config;
    let first = model
        .layers
        .first()
        .ok_or_else(|| Error::invalid("model has no layers"))?;
    let d = Dims {
        b,
        t,
        nh: first.self_attn.n_heads,
        nkv: first.self_attn.n_kv_heads,
        hd: first.self_attn.head_dim,
    };
    let dev = model.device();
    let (cos, sin) = model.rotary.tables(0, t)?;
    let flat_ids = ids.flatten_all()?;
    let embed = &model.embed_tokens;
    let mut x = embed.detach().index_select(&flat_ids, 0)?;
    let mut saved = Vec::with_capacity(model.layers.len());
    for layer in &model.layers {
        let (next, s) = layer_fwd(layer, x, &d, &cos, &sin)?;
        saved.push(s);
        x = next;
    }
    let norm = &model.norm;
    let hn = elementwise::rms_norm(&x, &norm.weight.detach(), norm.eps)?;
    let pos = Tensor::new(positions, dev)?;
    let picked = hn.index_select(&pos, 0)?;
    let head = model.lm_head.as_ref().unwrap_or(embed);
    let logits = weight_product(&picked, head, true, &model.head_packs)?;
    let (loss, dlogits) = loss::cross_entropy_with_grad(&logits, targets, seed)?;
    drop(logits);

    let mut grads = Grads::default();
    let dpicked = weight_product(&dlogits, head, false, &model.head_packs)?;
    grads.add(head, || Ok(matmul(&dlogits, &picked, true, false)?))?;
    drop(dlogits);
    let dhn =
        Tensor::zeros((b * t, cfg.hidden_size), x.dtype(), dev)?.index_add(&pos, &dpicked, 0)?;
    let mut dx = norm_bwd(norm, &x, &dhn, &mut grads)?;
    let need_embed = embed.is_variable();
    for (i, (layer, s)) in model.layers.iter().zip(saved.iter()).enumerate().rev() {
        let need_dx = i > 0 || need_embed;
        match layer_bwd(layer, s, dx, &d, &cos, &sin, &mut grads, need_dx)? {
            Some(next) => dx = next,
            None => return grads.into_store(dev).map(|g| (loss, g)),
        }
    }
    grads.add(embed, || {
        Ok(Tensor::zeros(embed.shape(), embed.dtype(), dev)?.index_add(&flat_ids, &dx, 0)?)
    })?;
    Ok((loss, grads.into_store(dev)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Config;
    use crate::model::lora::LoraConfig;
    use candle_core::{DType, Device, Var};
    use candle_nn::{VarBuilder, VarMap};

    fn small_config(bias: bool, tied: bool) -> Config {
        let mut cfg = Config::tiny(61);
        cfg.hidden_size = 32;
        cfg.intermediate_size = 48;
        cfg.num_hidden_layers = 2;
        cfg.num_attention_heads = 4;
        cfg.num_key_value_heads = Some(2);
        cfg.attention_bias = Some(bias);
        cfg.tie_word_embeddings = tied;
        cfg
    }

    /// Random weights at a scale where every path carries signal (norm gains and biases too).
    fn weights(cfg: &Config) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let w = crate::model::source::tiny::random_weights(cfg, 7, &dev).unwrap();
        w.into_iter()
            .enumerate()
            .map(|(i, (k, t))| {
                let noise = Tensor::randn(0f32, 0.3, t.shape(), &dev).unwrap();
                let t = if k.ends_with("norm.weight") || k.ends_with(".bias") {
                    (t + noise).unwrap()
                } else {
                    (t * (8.0 + i as f64 % 3.0)).unwrap()
                };
                (k, t)
            })
            .collect()
    }

    fn autograd(model: &Llama, ids: &Tensor, pos: &[u32], targets: &[u32]) -> (f32, GradStore) {
        let (b, t) = ids.dims2().unwrap();
        let hidden = model.hidden(ids, None).unwrap();
        let h = hidden.dim(2).unwrap();
        let picked = hidden
            .reshape((b * t, h))
            .unwrap()
            .index_select(&Tensor::new(pos, &Device::Cpu).unwrap(), 0)
            .unwrap();
        let logits = model.logits(&picked).unwrap();
        let tg = Tensor::new(targets, &Device::Cpu).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &tg).unwrap();
        let value = loss.to_scalar::<f32>().unwrap();
        let g = (loss * 0.5).unwrap().backward().unwrap();
        (value, g)
    }

    fn compare(model: &Llama, vars: &[Var]) {
        let ids = Tensor::new(
            &[[3u32, 17, 4, 60, 22, 9, 1], [5, 5, 41, 30, 2, 0, 59]],
            &Device::Cpu,
        )
        .unwrap();
        let pos = [1u32, 2, 3, 5, 7, 8, 12, 13];
        let targets = [4u32, 60, 22, 1, 41, 30, 0, 59];
        let (want_loss, want) = autograd(model, &ids, &pos, &targets);
        let (loss, got) = loss_and_grads(model, &ids, &pos, &targets, 0.5).unwrap();
        assert!((loss - want_loss).abs() < 1e-4, "{loss} vs {want_loss}");
        assert!(!vars.is_empty());
        for v in vars {
            let w = want.get(v.as_tensor()).expect("autograd gradient");
            let g = got.get(v.as_tensor()).expect("hand-written gradient");
            assert_eq!(g.dims(), w.dims());
            let scale = w
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = (g - w)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(scale > 1e-6, "gradient is zero: {:?}", v.shape());
            assert!(
                diff <= 1e-3 * scale,
                "{:?}: diff {diff} at scale {scale}",
                v.shape()
            );
        }
    }

    #[test]
    fn full_fine_tune_gradients_match_autograd() {
        for (bias, tied) in [(false, true), (true, false)] {
            let cfg = small_config(bias, tied);
            let varmap = VarMap::new();
            {
                let mut data = varmap.data().lock().unwrap();
                for (k, t) in weights(&cfg) {
                    data.insert(k, Var::from_tensor(&t).unwrap());
                }
            }
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let model = Llama::load(vb, &cfg).unwrap();
            compare(&model, &varmap.all_vars());
        }
    }

    #[test]
    fn lora_gradients_match_autograd() {
        let cfg = small_config(true, true);
        let vb = VarBuilder::from_tensors(weights(&cfg), DType::F32, &Device::Cpu);
        let mut model = Llama::load(vb, &cfg).unwrap();
        let varmap = VarMap::new();
        let lcfg = LoraConfig {
            rank: 3,
            alpha: 6.0,
            ..Default::default()
        };
        model
            .add_lora(
                &lcfg,
                VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            )
            .unwrap();
        // B starts at zero, which would leave A without gradient; give it values.
        for v in varmap.all_vars() {
            if v.dims()[1] == 3 {
                v.set(&Tensor::randn(0f32, 0.5, v.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        compare(&model, &varmap.all_vars());
    }
}
