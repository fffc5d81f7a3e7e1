//! The retrieval pathway of the second retrieval mode ("Retrieval as Reasoning"): per layer, a
//! few extra query heads attend over the layer's own keys and values, and their output goes
//! through a small SwiGLU MLP' back into the residual stream, H_out = H_out + MLP'(Attn'(H));
//! a docid head projects the final hidden states onto the docid vocabulary.
//!
//! Docid tokens and the `<retrieve>` / `<generate>` markers live in their own embedding table,
//! with ids after the base vocabulary: the base embedding (tied to the output projection in
//! SmolLM2) is untouched, so with the pathway closed the model is the base model bit for bit,
//! and a GGUF base is still referenced by path and checksum.

use super::config::Config;
use super::llama::{Linear, Llama, Rotary};
use crate::error::{Error, Result};
use crate::kernels::{attention, elementwise};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

/// The pathway's shape, saved in the run's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalConfig {
    /// Retrieval query heads per layer, asked for (see [`RetrievalConfig::heads_per_kv`]).
    pub heads: usize,
    /// Inner width of MLP'.
    pub mlp_dim: usize,
    /// Docid tokens (levels x width of the docid tree); the two markers follow them.
    pub docid_tokens: usize,
}

impl RetrievalConfig {
    /// The defaults: four retrieval heads, MLP' a quarter of the hidden width.
    pub fn new(model: &Config, docid_tokens: usize) -> Self {
        RetrievalConfig {
            heads: 4,
            mlp_dim: (model.hidden_size / 4).max(16),
            docid_tokens,
        }
    }

    /// Retrieval heads per key/value head: the heads asked for rounded up to a multiple of the
    /// key/value heads (grouped-query attention stacks the heads of a group on one key/value
    /// head; SmolLM2 has 3, so 4 asked become 6).
    pub fn heads_per_kv(&self, model: &Config) -> usize {
        self.heads.div_ceil(model.num_kv_heads()).max(1)
    }

    /// Id of the first docid token: right after the base vocabulary.
    pub fn first_docid(&self, model: &Config) -> u32 {
        model.vocab_size as u32
    }

    /// Id of the `<retrieve>` marker, which ends a question and starts its docid.
    pub fn retrieve_marker(&self, model: &Config) -> u32 {
        (model.vocab_size + self.docid_tokens) as u32
    }

    /// Id of the `<generate>` marker (the answering mode).
    pub fn generate_marker(&self, model: &Config) -> u32 {
        self.retrieve_marker(model) + 1
    }

    /// Rows of the pathway's embedding table: docid tokens and the two markers.
    pub fn embedding_rows(&self) -> usize {
        self.docid_tokens + 2
    }

    fn check(&self, model: &Config) -> Result<()> {
        if self.heads == 0 || self.mlp_dim == 0 || self.docid_tokens == 0 {
            return Err(Error::invalid(format!(
                "the retrieval pathway needs heads, an MLP width and docid tokens (got {} heads, \
                 width {}, {} tokens)",
                self.heads, self.mlp_dim, self.docid_tokens
            )));
        }
        if !model
            .num_attention_heads
            .is_multiple_of(model.num_kv_heads())
        {
            return Err(Error::invalid(
                "query heads must be a multiple of key/value heads",
            ));
        }
        Ok(())
    }
}

/// One layer's retrieval heads and MLP'.
#[derive(Clone, Debug)]
pub struct RetrievalLayer {
    pub q_proj: Linear,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// What a retrieval layer reads of its base layer: the normed input and the layer's keys and
/// values (cached ones included), already rotated.
pub struct LayerView<'a> {
    pub normed: &'a Tensor,
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    pub offset: usize,
    pub mask: Option<&'a Tensor>,
}

impl RetrievalLayer {
    fn load(vb: VarBuilder, model: &Config, cfg: &RetrievalConfig) -> Result<Self> {
        let h = model.hidden_size;
        let width = model.num_kv_heads() * cfg.heads_per_kv(model) * model.head_dim();
        Ok(RetrievalLayer {
            q_proj: Linear::load(vb.pp("q_proj"), h, width, false)?,
            gate_proj: Linear::load(vb.pp("gate_proj"), width, cfg.mlp_dim, false)?,
            up_proj: Linear::load(vb.pp("up_proj"), width, cfg.mlp_dim, false)?,
            down_proj: Linear::load(vb.pp("down_proj"), cfg.mlp_dim, h, false)?,
        })
    }

    /// MLP'(Attn'(H)): what this layer adds to the residual stream.
    pub fn forward(
        &self,
        view: &LayerView,
        rotary: &Rotary,
        model: &Config,
        cfg: &RetrievalConfig,
    ) -> Result<Tensor> {
        let (b, t, _) = view.normed.dims3()?;
        let (nkv, hd) = (model.num_kv_heads(), model.head_dim());
        let per_kv = cfg.heads_per_kv(model);
        let q = self
            .q_proj
            .forward(view.normed)?
            .reshape((b, t, nkv * per_kv, hd))?;
        let q = rotary.apply_to_heads(&q, view.offset)?;
        let q = q.reshape((b, nkv, per_kv * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let y = attention::attention(&q, view.keys, view.values, scale, t, view.mask)?;
        let inner = elementwise::swiglu(&self.gate_proj.forward(&y)?, &self.up_proj.forward(&y)?)?;
        self.down_proj.forward(&inner)
    }

    fn linears(&self) -> [&Linear; 4] {
        [
            &self.q_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }
}

/// The pathway: per-layer retrieval heads, the docid embedding table and the docid head.
#[derive(Clone, Debug)]
pub struct RetrievalPath {
    pub config: RetrievalConfig,
    pub layers: Vec<RetrievalLayer>,
    /// (docid tokens + 2, hidden): docid tokens, then `<retrieve>`, `<generate>`.
    pub embed: Tensor,
    /// (docid tokens, hidden): final hidden states onto the docid vocabulary.
    pub head: Tensor,
}

/// Name prefix of the pathway's tensors (in `docid.safetensors`).
pub const PREFIX: &str = "retrieval";

impl RetrievalPath {
    /// Builds the pathway from tensors named as [`RetrievalPath::named_weights`] writes them
    /// (through a `VarMap` builder to train them).
    pub fn load(vb: VarBuilder, model: &Config, cfg: &RetrievalConfig) -> Result<Self> {
        cfg.check(model)?;
        let vb = vb.pp(PREFIX);
        let layers = (0..model.num_hidden_layers)
            .map(|i| RetrievalLayer::load(vb.pp("layers").pp(i.to_string()), model, cfg))
            .collect::<Result<Vec<_>>>()?;
        let h = model.hidden_size;
        Ok(RetrievalPath {
            config: cfg.clone(),
            layers,
            embed: vb.get((cfg.embedding_rows(), h), "embed")?,
            head: vb.get((cfg.docid_tokens, h), "head")?,
        })
    }

    /// A fresh pathway's weights for `model`, which starts as the model's own reading:
    /// - each retrieval head copies a query head of its key/value group (so it attends where
    ///   the model already does), MLP' gate and up are small and random, and down is zero, so
    ///   a fresh pathway adds nothing (as LoRA's B);
    /// - docid token (level, index) starts from the embedding of the number `index` (so tokens
    ///   of one index are alike across levels but not equal: a little seeded noise), the
    ///   markers from the words "retrieve" and "generate";
    /// - the docid head starts as the docid embeddings (as a tied output projection).
    pub fn initial_weights(
        model: &Llama,
        cfg: &RetrievalConfig,
        tokenizer: &Tokenizer,
        docid_index: impl Fn(usize) -> u16,
        seed: u64,
    ) -> Result<Vec<(String, Tensor)>> {
        let mc = &model.config;
        cfg.check(mc)?;
        let dev = model.device();
        let (h, hd) = (mc.hidden_size, mc.head_dim());
        let (nkv, per_kv) = (mc.num_kv_heads(), cfg.heads_per_kv(mc));
        let rep = mc.num_attention_heads / nkv;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut normal = |rows: usize, cols: usize, std: f32| -> Result<Tensor> {
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    // Box-Muller: one standard normal from two uniforms.
                    let (u1, u2): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
                    std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect();
            Ok(Tensor::from_vec(data, (rows, cols), dev)?)
        };
        let width = nkv * per_kv * hd;
        let mut out = Vec::new();
        for (i, layer) in model.layers.iter().enumerate() {
            let name = |part: &str| format!("{PREFIX}.layers.{i}.{part}.weight");
            let base_q = layer.self_attn.q_proj.merged_weight()?;
            let heads: Vec<Tensor> = (0..nkv * per_kv)
                .map(|j| {
                    let (group, r) = (j / per_kv, j % per_kv);
                    base_q.narrow(0, (group * rep + r % rep) * hd, hd)
                })
                .collect::<std::result::Result<_, _>>()?;
            out.push((name("q_proj"), Tensor::cat(&heads, 0)?.contiguous()?));
            let std = (1.0 / width as f32).sqrt();
            out.push((name("gate_proj"), normal(cfg.mlp_dim, width, std)?));
            out.push((name("up_proj"), normal(cfg.mlp_dim, width, std)?));
            out.push((
                name("down_proj"),
                Tensor::zeros((h, cfg.mlp_dim), DType::F32, dev)?,
            ));
        }
        let word = |text: &str| -> Result<Tensor> { mean_embedding(model, tokenizer, text) };
        let spread = model
            .embed_tokens
            .to_dtype(DType::F32)?
            .flatten_all()?
            .sqr()?
            .mean_all()?
            .sqrt()?
            .to_scalar::<f32>()?;
        let mut rows = Vec::with_capacity(cfg.embedding_rows());
        for t in 0..cfg.docid_tokens {
            rows.push(word(&format!(" {}", docid_index(t)))?);
        }
        let docid_rows = Tensor::stack(&rows, 0)?;
        let docid_rows = (docid_rows + normal(cfg.docid_tokens, h, 0.1 * spread)?)?;
        let markers = Tensor::stack(&[word(" retrieve")?, word(" generate")?], 0)?;
        out.push((
            format!("{PREFIX}.embed"),
            Tensor::cat(&[&docid_rows, &markers], 0)?.contiguous()?,
        ));
        out.push((format!("{PREFIX}.head"), docid_rows.contiguous()?));
        Ok(out)
    }

    /// Every tensor under its saved name (detached).
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let parts = ["q_proj", "gate_proj", "up_proj", "down_proj"];
            for (part, lin) in parts.iter().zip(layer.linears()) {
                out.push((
                    format!("{PREFIX}.layers.{i}.{part}.weight"),
                    lin.weight.detach(),
                ));
            }
        }
        out.push((format!("{PREFIX}.embed"), self.embed.detach()));
        out.push((format!("{PREFIX}.head"), self.head.detach()));
        out
    }

    /// An inference copy: training variables copied (the copy stays as it is now), nothing
    /// tracked by autograd.
    pub fn for_inference(&self) -> Result<Self> {
        let snapshot = |t: &Tensor| -> Result<Tensor> {
            Ok(if t.is_variable() {
                t.copy()?
            } else {
                t.detach()
            })
        };
        let mut p = self.clone();
        for layer in p.layers.iter_mut() {
            for lin in [
                &mut layer.q_proj,
                &mut layer.gate_proj,
                &mut layer.up_proj,
                &mut layer.down_proj,
            ] {
                lin.weight = snapshot(&lin.weight)?;
                lin.weight_t = None;
                lin.packs = Default::default();
            }
        }
        p.embed = snapshot(&self.embed)?;
        p.head = snapshot(&self.head)?;
        Ok(p)
    }

    /// Where each of `ids` reads its embedding: ids below `vocab` from the base table, the
    /// others (docid tokens and markers) from the pathway's own; an id past both is an error.
    pub fn mixed_rows(&self, ids: &[u32], vocab: u32, dev: &Device) -> Result<MixedRows> {
        let own_row = |&i: &u32| i.checked_sub(vocab);
        let too_far = ids
            .iter()
            .filter_map(own_row)
            .find(|&o| o as usize >= self.config.embedding_rows());
        if let Some(o) = too_far {
            return Err(Error::invalid(format!(
                "token id {} is past the docid vocabulary ({} tokens)",
                o + vocab,
                self.config.embedding_rows()
            )));
        }
        let base_ids: Vec<u32> = ids.iter().map(|&i| if i < vocab { i } else { 0 }).collect();
        let own_ids: Vec<u32> = ids.iter().map(|i| own_row(i).unwrap_or(0)).collect();
        let is_own: Vec<f32> = ids.iter().map(|&i| (i >= vocab) as u8 as f32).collect();
        let own = Tensor::from_vec(is_own, (ids.len(), 1), dev)?;
        Ok(MixedRows {
            base_ids: Tensor::new(base_ids.as_slice(), dev)?,
            own_ids: Tensor::new(own_ids.as_slice(), dev)?,
            keep: (1.0 - &own)?,
            own,
        })
    }

    /// Input embeddings for ids that mix base tokens (below `vocab`) and the pathway's own
    /// (docid tokens and markers, from `vocab` on): (rows, hidden).
    pub fn embed_mixed(&self, base: &Tensor, ids: &[u32], vocab: u32) -> Result<Tensor> {
        self.mixed_rows(ids, vocab, base.device())?
            .embed(base, &self.embed)
    }

    /// Docid logits for final-norm hidden states (rows, hidden): (rows, docid tokens).
    pub fn docid_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.matmul(&self.head.t()?)?)
    }

    /// Number of parameters.
    pub fn parameters(&self) -> usize {
        self.named_weights()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum()
    }
}

/// Input rows split between the base embedding table and the pathway's
/// ([`RetrievalPath::mixed_rows`]).
pub struct MixedRows {
    /// Row of the base table (0 where the pathway's is read).
    pub base_ids: Tensor,
    /// Row of the pathway's table (0 where the base's is read).
    pub own_ids: Tensor,
    /// (rows, 1): 1 where the pathway's table is read, and its complement.
    pub own: Tensor,
    pub keep: Tensor,
}

impl MixedRows {
    /// The rows' embeddings from the two tables.
    pub fn embed(&self, base: &Tensor, own: &Tensor) -> Result<Tensor> {
        let from_base = base.index_select(&self.base_ids, 0)?;
        let from_own = own.index_select(&self.own_ids, 0)?;
        Ok((from_base.broadcast_mul(&self.keep)? + from_own.broadcast_mul(&self.own)?)?)
    }
}

/// The mean of the base embeddings of `text`'s tokens (hidden,).
fn mean_embedding(model: &Llama, tokenizer: &Tokenizer, text: &str) -> Result<Tensor> {
    let enc = tokenizer
        .encode(text, false)
        .map_err(|e| Error::invalid(format!("tokenizer: {e}")))?;
    let ids: Vec<u32> = enc.get_ids().to_vec();
    if ids.is_empty() {
        return Err(Error::invalid(format!("`{text}` has no tokens")));
    }
    let dev: &Device = model.device();
    let rows = model
        .embed_tokens
        .index_select(&Tensor::new(ids.as_slice(), dev)?, 0)?;
    Ok(rows.to_dtype(DType::F32)?.mean(0)?.detach())
}
