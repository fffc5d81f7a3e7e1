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

mod pathway;

use super::llama::{Block, Linear, Llama, RmsNorm};
use super::retrieval::{MixedRows, RetrievalPath};
use crate::error::{Error, Result};
use crate::kernels::matmul::{add_matmul, batched_matmul as bmm, matmul, WeightPacks};
use crate::kernels::{attention, elementwise, loss};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId};
use std::collections::HashMap;

/// Whether [`loss_and_grads`] handles this model (f32 weights on the CPU).
pub fn supported(model: &Llama) -> bool {
    crate::kernels::supported(&model.embed_tokens)
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
    pathway: Option<pathway::IntoBase>,
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
    let mut dvh = bmm(&s.p, &dys, true, false)?;
    let ds = attention::causal_softmax_grad(&s.p, &dp, 1.0 / (hd as f64).sqrt())?;
    let dqs = bmm(&ds, &s.kh, false, false)?.reshape((b, nh, t, hd))?;
    let mut dkh = bmm(&ds, &s.qs, true, false)?;
    // The retrieval heads read the same keys and values and the same normed input.
    let mut dh1_pathway = None;
    if let Some(from) = pathway {
        dkh = elementwise::add(&dkh, &from.dkh)?;
        dvh = elementwise::add(&dvh, &from.dvh)?;
        dh1_pathway = Some(from.dh1);
    }
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
    let mut dh1 = match dh1 {
        [Some(a), Some(b), Some(c)] => elementwise::add(&elementwise::add(&a, &b)?, &c)?,
        _ => return Ok(None),
    };
    if let Some(extra) = dh1_pathway {
        dh1 = elementwise::add(&dh1, &extra)?;
    }
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
/// `loss.backward()` would key them. Targets from the base vocabulary's size on are docid
/// tokens: such a batch is read with the retrieval pathway open and scored by its docid head
/// (as [`crate::train::batch_loss`] reads it).
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
    let vocab = cfg.vocab_size as u32;
    let path = match &model.retrieval {
        Some(p) if targets.iter().any(|&x| x >= vocab) => {
            if targets.iter().any(|&x| x < vocab) {
                return Err(Error::invalid(
                    "a batch mixes docid targets with word targets",
                ));
            }
            Some(p)
        }
        _ => None,
    };
    let per_kv = path.map_or(0, |p| p.config.heads_per_kv(cfg));
    let dev = model.device();
    let (cos, sin) = model.rotary.tables(0, t)?;
    let flat_ids = ids.flatten_all()?;
    let embed = &model.embed_tokens;
    let inputs = Inputs::new(&flat_ids, vocab, path)?;
    let mut x = inputs.embed(embed)?;
    let mut saved = Vec::with_capacity(model.layers.len());
    for (i, layer) in model.layers.iter().enumerate() {
        let (mut next, s) = layer_fwd(layer, x, &d, &cos, &sin)?;
        let path_saved = match path {
            Some(p) => {
                let (out, ps) = pathway::path_fwd(
                    &p.layers[i],
                    &s.q.x,
                    &s.kh,
                    &s.vh,
                    &d,
                    per_kv,
                    (&cos, &sin),
                )?;
                next = elementwise::add(&next, &out)?;
                Some(ps)
            }
            None => None,
        };
        saved.push((s, path_saved));
        x = next;
    }
    let norm = &model.norm;
    let hn = elementwise::rms_norm(&x, &norm.weight.detach(), norm.eps)?;
    let pos = Tensor::new(positions, dev)?;
    let picked = hn.index_select(&pos, 0)?;
    let (head, head_packs, head_targets) = match path {
        Some(p) => (
            &p.head,
            None,
            targets.iter().map(|&x| x - vocab).collect::<Vec<u32>>(),
        ),
        None => (
            model.lm_head.as_ref().unwrap_or(embed),
            Some(&model.head_packs),
            targets.to_vec(),
        ),
    };
    let project = |x: &Tensor, trans: bool| -> Result<Tensor> {
        match head_packs {
            Some(packs) => weight_product(x, head, trans, packs),
            None => Ok(matmul(x, &head.detach(), false, trans)?),
        }
    };
    let logits = project(&picked, true)?;
    let (loss, dlogits) = loss::cross_entropy_with_grad(&logits, &head_targets, seed)?;
    drop(logits);

    let mut grads = Grads::default();
    let dpicked = project(&dlogits, false)?;
    grads.add(head, || Ok(matmul(&dlogits, &picked, true, false)?))?;
    drop(dlogits);
    let dhn =
        Tensor::zeros((b * t, cfg.hidden_size), x.dtype(), dev)?.index_add(&pos, &dpicked, 0)?;
    let mut dx = norm_bwd(norm, &x, &dhn, &mut grads)?;
    let need_embed = embed.is_variable() || path.is_some_and(|p| p.embed.is_variable());
    for (i, (layer, (s, ps))) in model.layers.iter().zip(saved.iter()).enumerate().rev() {
        let need_dx = i > 0 || need_embed;
        let into_base = match (path, ps) {
            (Some(p), Some(ps)) => Some(pathway::path_bwd(
                &p.layers[i],
                ps,
                &dx,
                &s.kh,
                &s.vh,
                &d,
                per_kv,
                (&cos, &sin),
                &mut grads,
            )?),
            _ => None,
        };
        match layer_bwd(layer, s, dx, &d, &cos, &sin, &mut grads, need_dx, into_base)? {
            Some(next) => dx = next,
            None => return grads.into_store(dev).map(|g| (loss, g)),
        }
    }
    inputs.embed_grads(&dx, embed, &mut grads)?;
    Ok((loss, grads.into_store(dev)?))
}

/// Where each input row's embedding comes from: the base table, or (docid tokens and markers,
/// with the pathway open) the pathway's own table.
struct Inputs {
    flat_ids: Tensor,
    /// With the pathway open: its table and each row's source.
    mixed: Option<(Tensor, MixedRows)>,
}

impl Inputs {
    fn new(flat_ids: &Tensor, vocab: u32, path: Option<&RetrievalPath>) -> Result<Self> {
        let mixed = match path {
            Some(p) => {
                let ids = flat_ids.to_vec1::<u32>()?;
                Some((
                    p.embed.clone(),
                    p.mixed_rows(&ids, vocab, flat_ids.device())?,
                ))
            }
            None => None,
        };
        Ok(Inputs {
            flat_ids: flat_ids.clone(),
            mixed,
        })
    }

    fn embed(&self, base: &Tensor) -> Result<Tensor> {
        Ok(match &self.mixed {
            Some((own, rows)) => rows.embed(&base.detach(), &own.detach())?,
            None => base.detach().index_select(&self.flat_ids, 0)?,
        })
    }

    fn embed_grads(&self, dx: &Tensor, base: &Tensor, grads: &mut Grads) -> Result<()> {
        let scatter = |table: &Tensor, rows: &Tensor, d: &Tensor| -> Result<Tensor> {
            Ok(Tensor::zeros(table.shape(), table.dtype(), table.device())?
                .index_add(rows, d, 0)?)
        };
        match &self.mixed {
            Some((own, rows)) => {
                grads.add(base, || {
                    scatter(base, &rows.base_ids, &dx.broadcast_mul(&rows.keep)?)
                })?;
                grads.add(own, || {
                    scatter(own, &rows.own_ids, &dx.broadcast_mul(&rows.own)?)
                })
            }
            None => grads.add(base, || scatter(base, &self.flat_ids, dx)),
        }
    }
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
        check_grads(vars, &want, &got);
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
        add_random_lora(&mut model, &varmap);
        compare(&model, &varmap.all_vars());
    }

    /// Rank-3 adapters on every projection, trainable in `varmap`, with values everywhere (B
    /// starts at zero, which would leave A without gradient).
    fn add_random_lora(model: &mut Llama, varmap: &VarMap) {
        let lcfg = LoraConfig {
            rank: 3,
            alpha: 6.0,
            ..Default::default()
        };
        model
            .add_lora(
                &lcfg,
                VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu),
            )
            .unwrap();
        for v in varmap.all_vars() {
            v.set(&Tensor::randn(0f32, 0.5, v.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    /// A retrieval pathway of random weights (MLP' down non-zero, so every part carries
    /// gradient), its tensors trainable in `varmap`.
    fn open_pathway(model: &mut Llama, varmap: &VarMap, docid_tokens: usize) {
        use crate::model::retrieval::{RetrievalConfig, RetrievalPath, PREFIX};
        let cfg = &model.config;
        let rcfg = RetrievalConfig {
            heads: 4,
            mlp_dim: 12,
            docid_tokens,
        };
        let width = cfg.num_kv_heads() * rcfg.heads_per_kv(cfg) * cfg.head_dim();
        let h = cfg.hidden_size;
        let dev = Device::Cpu;
        let mut shapes = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let name = |part: &str| format!("{PREFIX}.layers.{i}.{part}.weight");
            shapes.push((name("q_proj"), (width, h)));
            shapes.push((name("gate_proj"), (rcfg.mlp_dim, width)));
            shapes.push((name("up_proj"), (rcfg.mlp_dim, width)));
            shapes.push((name("down_proj"), (h, rcfg.mlp_dim)));
        }
        shapes.push((format!("{PREFIX}.embed"), (rcfg.embedding_rows(), h)));
        shapes.push((format!("{PREFIX}.head"), (docid_tokens, h)));
        {
            let mut data = varmap.data().lock().unwrap();
            for (name, shape) in shapes {
                let t = Tensor::randn(0f32, 0.4, shape, &dev).unwrap();
                data.insert(name, Var::from_tensor(&t).unwrap());
            }
        }
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &dev);
        model.retrieval = Some(RetrievalPath::load(vb, cfg, &rcfg).unwrap());
    }

    /// Questions, then the `<retrieve>` marker and docid tokens (ids from the vocabulary's
    /// size on), docid targets: the pathway's gradients by hand against autograd's, with the
    /// base frozen (the warm-up) and with LoRA on the base (keys and values then carry the
    /// retrieval heads' gradient into the adapters).
    #[test]
    fn retrieval_pathway_gradients_match_autograd() {
        let cfg = small_config(true, true);
        let vocab = cfg.vocab_size as u32;
        let docid_tokens = 6;
        let marker = vocab + docid_tokens as u32;
        let ids = Tensor::new(
            &[
                [3u32, 17, 4, marker, vocab + 2, vocab + 4, 9],
                [5, 41, 30, 2, marker, vocab + 1, vocab + 5],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let pos = [3u32, 4, 5, 11, 12];
        let targets = [vocab + 2, vocab + 4, vocab + 3, vocab + 1, vocab + 5];
        let reference = |model: &Llama| {
            let (b, t) = ids.dims2().unwrap();
            let hidden = model.hidden_retrieving(&ids, None).unwrap();
            let h = hidden.dim(2).unwrap();
            let picked = hidden
                .reshape((b * t, h))
                .unwrap()
                .index_select(&Tensor::new(&pos[..], &Device::Cpu).unwrap(), 0)
                .unwrap();
            let path = model.retrieval.as_ref().unwrap();
            let logits = path.docid_logits(&picked).unwrap();
            let own: Vec<u32> = targets.iter().map(|t| t - vocab).collect();
            let tg = Tensor::new(own.as_slice(), &Device::Cpu).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits, &tg).unwrap();
            let value = loss.to_scalar::<f32>().unwrap();
            (value, (loss * 0.5).unwrap().backward().unwrap())
        };
        for lora in [false, true] {
            let vb = VarBuilder::from_tensors(weights(&cfg), DType::F32, &Device::Cpu);
            let mut model = Llama::load(vb, &cfg).unwrap();
            let varmap = VarMap::new();
            if lora {
                add_random_lora(&mut model, &varmap);
            }
            open_pathway(&mut model, &varmap, docid_tokens);
            let (want_loss, want) = reference(&model);
            let (loss, got) = loss_and_grads(&model, &ids, &pos, &targets, 0.5).unwrap();
            assert!((loss - want_loss).abs() < 1e-4, "{loss} vs {want_loss}");
            check_grads(&varmap.all_vars(), &want, &got);
        }
    }

    fn check_grads(vars: &[Var], want: &GradStore, got: &GradStore) {
        assert!(!vars.is_empty());
        for v in vars {
            let w = want.get(v.as_tensor()).expect("autograd gradient");
            let g = got.get(v.as_tensor()).expect("hand-written gradient");
            assert_eq!(g.dims(), w.dims());
            let largest = |t: &Tensor| {
                t.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let scale = largest(w);
            let diff = largest(&(g - w).unwrap());
            assert!(scale > 1e-6, "gradient is zero: {:?}", v.shape());
            assert!(
                diff <= 1e-3 * scale,
                "{:?}: diff {diff} at scale {scale}",
                v.shape()
            );
        }
    }
}
