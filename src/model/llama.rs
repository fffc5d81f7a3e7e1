//! A llama-family decoder (llama, qwen2, mistral, SmolLM2, TinyLlama) written on candle, trainable
//! (weights may be `Var`s, LoRA adapters may be attached) and fast at inference (the kernels of
//! [`crate::kernels`], each op one entry point that picks its own path, and a KV
//! cache that a beam search can fork and reorder).
//!
//! Weight names follow Hugging Face safetensors keys (`model.layers.0.self_attn.q_proj.weight`), so
//! a checkpoint saved here loads in any llama implementation and vice versa.

use super::config::Config;
use super::kv_cache::KvCache;
use super::lora::{LoraAdapter, LoraConfig, Projection};
use super::retrieval::{LayerView, RetrievalPath};
use crate::error::Result;
use crate::kernels::{attention, elementwise, matmul};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

/// A linear projection `y = x W^T (+ b)`, optionally with a low-rank adapter `+ scale * x A^T B^T`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// HF key prefix, e.g. `model.layers.3.mlp.up_proj`; used to name saved weights.
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
    /// Without a BLAS, inference copies keep the weight transposed and contiguous (`weight` is
    /// then a view of it): candle's matmul is ~3x faster on the few-row inputs of beam decoding
    /// that way.
    pub weight_t: Option<Tensor>,
    /// The weight packed for AMX tiles, made on first use when the weight is frozen.
    pub packs: matmul::WeightPacks,
}

impl Linear {
    /// Loads `weight` (out, in) and optionally `bias` (out) under the builder's prefix.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Linear {
            name: vb.prefix(),
            weight,
            bias,
            lora: None,
            weight_t: None,
            packs: Default::default(),
        })
    }

    /// Applies the projection to the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let x2 = x.reshape((rows, in_dim))?;
        let mut y = matmul::project(&x2, &self.weight, self.weight_t.as_ref(), &self.packs)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(lora) = &self.lora {
            y = (y + lora.delta(&x2)?)?;
        }
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.weight.dim(0)?;
        Ok(y.reshape(out_dims)?)
    }

    /// The weight with the adapter folded in, detached from any autograd graph.
    pub fn merged_weight(&self) -> Result<Tensor> {
        match &self.lora {
            None => Ok(self.weight.detach()),
            Some(l) => Ok((self.weight.detach() + l.weight_delta()?)?),
        }
    }

    fn detached_merged(&self) -> Result<Self> {
        if !matmul::prefers_transposed_weights() {
            // BLAS and the few-row kernel read the (out, in) weight directly. A training
            // variable is copied: the inference copy (and its packing) must not change when
            // training steps on.
            let merged = self.merged_weight()?;
            let weight = if self.weight.is_variable() && self.lora.is_none() {
                merged.copy()?
            } else {
                merged.contiguous()?
            };
            return Ok(Linear {
                name: self.name.clone(),
                weight,
                bias: self.bias.as_ref().map(|b| b.detach()),
                lora: None,
                weight_t: None,
                packs: Default::default(),
            });
        }
        let weight_t = self.merged_weight()?.t()?.contiguous()?;
        Ok(Linear {
            name: self.name.clone(),
            weight: weight_t.t()?,
            bias: self.bias.as_ref().map(|b| b.detach()),
            lora: None,
            weight_t: Some(weight_t),
            packs: Default::default(),
        })
    }
}

/// Stacks detached projections that read the same input into one (weights and biases
/// concatenated by rows) and makes each part's weight a view of its rows, so the parts take no
/// memory of their own. `None` (nothing changed) when the parts cannot share one product: an
/// adapter, a transposed copy, or biases on only some.
fn stack(parts: &mut [&mut Linear], name: &str) -> Result<Option<Linear>> {
    if parts
        .iter()
        .any(|l| l.lora.is_some() || l.weight_t.is_some())
    {
        return Ok(None);
    }
    let with_bias = parts.iter().filter(|l| l.bias.is_some()).count();
    if with_bias != 0 && with_bias != parts.len() {
        return Ok(None);
    }
    let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
    let weight = Tensor::cat(&weights, 0)?;
    let bias = if with_bias == 0 {
        None
    } else {
        let biases: Vec<&Tensor> = parts.iter().filter_map(|l| l.bias.as_ref()).collect();
        Some(Tensor::cat(&biases, 0)?)
    };
    let mut offset = 0;
    for part in parts.iter_mut() {
        let rows = part.weight.dim(0)?;
        part.weight = weight.narrow(0, offset, rows)?;
        part.bias = bias
            .as_ref()
            .map(|b| b.narrow(0, offset, rows))
            .transpose()?;
        part.packs = Default::default();
        offset += rows;
    }
    Ok(Some(Linear {
        name: name.to_string(),
        weight,
        bias,
        lora: None,
        weight_t: None,
        packs: Default::default(),
    }))
}

/// Root-mean-square layer norm with a learned gain.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub name: String,
    pub weight: Tensor,
    pub(crate) eps: f64,
}

impl RmsNorm {
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            name: vb.prefix(),
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(elementwise::rms_norm(x, &self.weight, self.eps)?)
    }
}

/// Precomputed rotary-embedding tables (half-split form, as in HF's `rotate_half`).
#[derive(Clone, Debug)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    pub fn new(cfg: &Config, device: &Device) -> Result<Self> {
        let half = cfg.head_dim() / 2;
        let max = cfg.max_position_embeddings.max(64);
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim() as f64) as f32)
            .collect();
        let inv = Tensor::from_vec(inv_freq, (1, half), device)?;
        let pos = Tensor::arange(0u32, max as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Rotary {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    /// The (cos, sin) rows for positions `offset..offset + t`, or an error past the context.
    pub(crate) fn tables(&self, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        if offset + t > self.cos.dim(0)? {
            return Err(crate::error::Error::invalid(format!(
                "sequence of {} tokens exceeds the model's context of {} positions",
                offset + t,
                self.cos.dim(0)?
            )));
        }
        Ok((
            self.cos.narrow(0, offset, t)?,
            self.sin.narrow(0, offset, t)?,
        ))
    }

    /// Rotates projections `x` of shape (batch, seq, heads, head_dim) for positions
    /// `offset..offset+seq` and returns them as (batch, heads, seq, head_dim).
    pub fn apply_to_heads(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (cos, sin) = self.tables(offset, x.dim(1)?)?;
        Ok(elementwise::rope_to_heads(x, &cos, &sin)?)
    }

    /// [`Rotary::apply_to_heads`] with each batch row's positions starting at its own offset.
    fn apply_to_heads_by_row(&self, x: &Tensor, offsets: &[usize]) -> Result<Tensor> {
        let rows = offsets
            .iter()
            .enumerate()
            .map(|(i, &offset)| self.apply_to_heads(&x.narrow(0, i, 1)?, offset))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    }
}

/// Where a batch's new positions go.
#[derive(Clone, Copy, Debug)]
enum Positions<'a> {
    /// After a cache whose rows all hold this many positions.
    After(usize),
    /// After a stacked cache ([`KvCache::stack`]) whose row `i` holds `lens[i]` positions and
    /// then padding up to the longest: each row continues from its own length.
    Ragged(&'a [usize]),
}

/// Additive mask (batch, 1, 1, t, longest + t) of a ragged continuation: row `r`'s position
/// `i` sees the row's own `lens[r]` cached keys and the new positions up to itself, never the
/// padding between.
fn ragged_mask(lens: &[usize], t: usize, device: &Device) -> Result<Tensor> {
    let longest = lens.iter().copied().max().unwrap_or(0);
    let s = longest + t;
    let data: Vec<f32> = lens
        .iter()
        .flat_map(|&len| {
            (0..t).flat_map(move |i| {
                (0..s).map(move |j| {
                    if j < len || (j >= longest && j <= longest + i) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
        })
        .collect();
    Ok(Tensor::from_vec(data, (lens.len(), 1, 1, t, s), device)?)
}

/// Grouped-query self-attention.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub(crate) n_heads: usize,
    pub(crate) n_kv_heads: usize,
    pub(crate) head_dim: usize,
    /// Inference copies: q, k and v stacked into one projection (their weights are views of
    /// its rows), so that in decoding one pass of the threads over the weights serves all three.
    pub(crate) qkv: Option<Linear>,
}

impl Attention {
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let kv = cfg.num_kv_heads() * hd;
        let bias = cfg.qkv_bias();
        Ok(Attention {
            q_proj: Linear::load(vb.pp("q_proj"), h, cfg.num_attention_heads * hd, bias)?,
            k_proj: Linear::load(vb.pp("k_proj"), h, kv, bias)?,
            v_proj: Linear::load(vb.pp("v_proj"), h, kv, bias)?,
            o_proj: Linear::load(vb.pp("o_proj"), cfg.num_attention_heads * hd, h, false)?,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_kv_heads(),
            head_dim: hd,
            qkv: None,
        })
    }

    /// The attention output, and the layer's keys and values (cached ones included, rotated),
    /// which the retrieval pathway's heads read too.
    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        positions: Positions,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let (q, k, v) = self.project_qkv(x)?;
        let q = q.reshape((b, t, nh, hd))?;
        let k = k.reshape((b, t, nkv, hd))?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        let (q, k) = match positions {
            Positions::After(offset) => (
                rotary.apply_to_heads(&q, offset)?,
                rotary.apply_to_heads(&k, offset)?,
            ),
            Positions::Ragged(lens) => (
                rotary.apply_to_heads_by_row(&q, lens)?,
                rotary.apply_to_heads_by_row(&k, lens)?,
            ),
        };
        let v = v.contiguous()?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v)?,
            None => (k, v),
        };
        // Query heads that share a key/value head are stacked along the sequence axis, so keys and
        // values are never copied per head: (b, nkv, rep*t, hd) x (b, nkv, hd, s).
        let rep = nh / nkv;
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let y = match (positions, mask) {
            // The padding inside a ragged cache is masked per row, which only the reference
            // path does (a few new positions: its products are small).
            (Positions::Ragged(_), Some(mask)) => {
                attention::attention_slow(&q, &k, &v, scale, t, mask)?
            }
            _ => attention::attention(&q, &k, &v, scale, t, mask)?,
        };
        Ok((self.o_proj.forward(&y)?, k, v))
    }

    /// Queries, keys and values for `x` (b, t, hidden).
    fn project_qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        // Few rows (decoding): one pass of the threads over the stacked weight. Many rows: the
        // separate products, whose outputs need no copying apart.
        let few_rows = matmul::is_few_rows(b * t);
        Ok(match &self.qkv {
            Some(stacked) if few_rows => {
                let y = stacked.forward(x)?;
                (
                    y.narrow(2, 0, nh * hd)?,
                    y.narrow(2, nh * hd, nkv * hd)?,
                    y.narrow(2, (nh + nkv) * hd, nkv * hd)?,
                )
            }
            _ => (
                self.q_proj.forward(x)?,
                self.k_proj.forward(x)?,
                self.v_proj.forward(x)?,
            ),
        })
    }
}

/// SwiGLU feed-forward block.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    /// Inference copies: gate and up stacked into one projection, as [`Attention::qkv`]; used
    /// at every size, since the activation reads its two halves in place.
    pub(crate) gate_up: Option<Linear>,
}

impl Mlp {
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate_proj: Linear::load(vb.pp("gate_proj"), h, i, false)?,
            up_proj: Linear::load(vb.pp("up_proj"), h, i, false)?,
            down_proj: Linear::load(vb.pp("down_proj"), i, h, false)?,
            gate_up: None,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(stacked) = &self.gate_up {
            // One product for both halves, read in place by the activation.
            let y = stacked.forward(x)?;
            return self.down_proj.forward(&elementwise::swiglu_stacked(&y)?);
        }
        let (g, u) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        self.down_proj.forward(&elementwise::swiglu(&g, &u)?)
    }
}

/// One pre-norm transformer layer.
#[derive(Clone, Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Block {
            input_layernorm: RmsNorm::load(
                vb.pp("input_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_layernorm: RmsNorm::load(
                vb.pp("post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
        })
    }

    fn linears_mut(&mut self) -> [(Projection, &mut Linear); 7] {
        [
            (Projection::Q, &mut self.self_attn.q_proj),
            (Projection::K, &mut self.self_attn.k_proj),
            (Projection::V, &mut self.self_attn.v_proj),
            (Projection::O, &mut self.self_attn.o_proj),
            (Projection::Gate, &mut self.mlp.gate_proj),
            (Projection::Up, &mut self.mlp.up_proj),
            (Projection::Down, &mut self.mlp.down_proj),
        ]
    }

    fn linears(&self) -> [&Linear; 7] {
        [
            &self.self_attn.q_proj,
            &self.self_attn.k_proj,
            &self.self_attn.v_proj,
            &self.self_attn.o_proj,
            &self.mlp.gate_proj,
            &self.mlp.up_proj,
            &self.mlp.down_proj,
        ]
    }
}

/// The causal language model.
#[derive(Clone, Debug)]
pub struct Llama {
    pub config: Config,
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// `None` when the output projection is tied to the embedding matrix.
    pub lm_head: Option<Tensor>,
    pub(crate) rotary: Rotary,
    /// The output projection packed for AMX tiles, when it is frozen.
    pub(crate) head_packs: matmul::WeightPacks,
    /// The second retrieval mode's pathway (docid runs); `None`: the base model alone.
    pub retrieval: Option<RetrievalPath>,
}

impl Llama {
    /// Builds the model from weights named like Hugging Face's safetensors keys.
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let m = vb.pp("model");
        let embed_tokens = m
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(m.pp("layers").pp(i.to_string()), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(m.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(
                vb.pp("lm_head")
                    .get((cfg.vocab_size, cfg.hidden_size), "weight")?,
            )
        };
        let rotary = Rotary::new(cfg, vb.device())?;
        Ok(Llama {
            config: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            head_packs: Default::default(),
            retrieval: None,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Final-norm hidden states (batch, seq, hidden) for token ids (batch, seq). With a cache, the
    /// ids continue the cached sequences (all rows have the same cached length).
    pub fn hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        crate::kernels::on_pool(|| self.hidden_here(ids, cache, None, None))
    }

    /// [`Llama::hidden`] continuing rows of different cached lengths: `cache` stacks them
    /// ([`KvCache::stack`]), row `i` holding `lens[i]` positions, and each row reads `ids` as
    /// if it had run alone (its positions from `lens[i]` on, the padding unseen). Many cached
    /// contexts, each continued by a few tokens, then share one batch.
    pub fn hidden_ragged(
        &self,
        ids: &Tensor,
        cache: &mut KvCache,
        lens: &[usize],
    ) -> Result<Tensor> {
        if lens.len() != ids.dim(0)? || lens.len() != cache.batch_size() {
            return Err(crate::error::Error::invalid(
                "a ragged continuation needs one cached length per row",
            ));
        }
        crate::kernels::on_pool(|| self.hidden_here(ids, Some(cache), None, Some(lens)))
    }

    /// [`Llama::hidden`] with the retrieval pathway open: every layer adds MLP'(Attn'(H)) to
    /// its output, and ids from the base vocabulary's size on are docid tokens and markers.
    /// A cache filled this way holds the open pathway's keys and values (not the base's).
    pub fn hidden_retrieving(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let path = self
            .retrieval
            .as_ref()
            .ok_or_else(|| crate::error::Error::invalid("this model has no retrieval pathway"))?;
        crate::kernels::on_pool(|| self.hidden_here(ids, cache, Some(path), None))
    }

    /// Log-probabilities over the docid vocabulary after the last position of each row
    /// (batch, docid tokens), the pathway open.
    pub fn docid_logprobs(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.hidden_retrieving(ids, cache)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?.squeeze(1)?;
        let path = self
            .retrieval
            .as_ref()
            .expect("checked by hidden_retrieving");
        Ok(crate::kernels::loss::log_softmax(
            &path.docid_logits(&last)?,
        )?)
    }

    fn hidden_here(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        path: Option<&RetrievalPath>,
        ragged: Option<&[usize]>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map(|c| c.seq_len()).unwrap_or(0);
        if ragged.is_some() && path.is_some() {
            return Err(crate::error::Error::invalid(
                "the retrieval pathway does not continue ragged caches",
            ));
        }
        let positions = match ragged {
            Some(lens) => Positions::Ragged(lens),
            None => Positions::After(offset),
        };
        let flat = ids.flatten_all()?;
        let mut x = match path {
            None => self.embed_tokens.index_select(&flat, 0)?,
            Some(p) => p.embed_mixed(
                &self.embed_tokens,
                &flat.to_vec1::<u32>()?,
                self.config.vocab_size as u32,
            )?,
        }
        .reshape((b, t, self.config.hidden_size))?;
        let mask = match ragged {
            Some(lens) => Some(ragged_mask(lens, t, self.device())?),
            None if t > 1 && attention::needs_mask(&x) => {
                Some(attention::causal_mask(t, offset, self.device())?)
            }
            None => None,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(&x)?;
            let c = cache.as_deref_mut().map(|c| (c, i));
            let (a, keys, values) =
                layer
                    .self_attn
                    .forward(&h, &self.rotary, positions, mask.as_ref(), c)?;
            x = elementwise::add(&x, &a)?;
            let h2 = layer.post_attention_layernorm.forward(&x)?;
            x = elementwise::add(&x, &layer.mlp.forward(&h2)?)?;
            if let Some(p) = path {
                let view = LayerView {
                    normed: &h,
                    keys: &keys,
                    values: &values,
                    offset,
                    mask: mask.as_ref(),
                };
                let r = p.layers[i].forward(&view, &self.rotary, &self.config, &p.config)?;
                x = elementwise::add(&x, &r)?;
            }
        }
        self.norm.forward(&x)
    }

    /// Vocabulary logits for hidden states of any leading shape: applied only where needed, since
    /// the projection onto the vocabulary dominates the cost of small models.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let w = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let dims = hidden.dims().to_vec();
        let h = dims[dims.len() - 1];
        let rows = hidden.elem_count() / h;
        let x = hidden.reshape((rows, h))?;
        let y = matmul::project(&x, w, None, &self.head_packs)?;
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.config.vocab_size;
        Ok(y.reshape(out)?)
    }

    /// Logits at every position (batch, seq, vocab).
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.hidden(ids, cache)?;
        self.logits(&h)
    }

    /// Log-probabilities of the next token after the last position of each row (batch, vocab).
    pub fn next_token_logprobs(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.hidden(ids, cache)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?.squeeze(1)?;
        let logits = self.logits(&last)?;
        Ok(crate::kernels::loss::log_softmax(&logits)?)
    }

    /// Runs only the projections that a forward pass over `rows` positions makes (`logit_rows` of
    /// them onto the vocabulary), through the same product paths and weights, on placeholder
    /// activations: the matrix work alone, which `bench query` measures a query against.
    pub fn matrix_work(&self, rows: usize, logit_rows: usize) -> Result<()> {
        crate::kernels::on_pool(|| {
            let cfg = &self.config;
            let dev = self.device();
            let placeholder = |cols: usize| Tensor::full(0.01f32, (1, rows, cols), dev);
            let x = placeholder(cfg.hidden_size)?;
            let heads = placeholder(cfg.num_attention_heads * cfg.head_dim())?;
            let inner = placeholder(cfg.intermediate_size)?;
            for layer in &self.layers {
                layer.self_attn.project_qkv(&x)?;
                layer.self_attn.o_proj.forward(&heads)?;
                let mlp = &layer.mlp;
                match &mlp.gate_up {
                    Some(stacked) => {
                        stacked.forward(&x)?;
                    }
                    None => {
                        mlp.gate_proj.forward(&x)?;
                        mlp.up_proj.forward(&x)?;
                    }
                }
                mlp.down_proj.forward(&inner)?;
            }
            if logit_rows > 0 {
                self.logits(&Tensor::full(0.01f32, (logit_rows, cfg.hidden_size), dev)?)?;
            }
            Ok(())
        })
    }

    /// Packs every frozen weight for the AMX tiles now (nothing without them) by running the
    /// matrix work of the smallest pass that takes the packed path, so the first query after
    /// loading does not pay for the packing (about 0.3 s for the 135M model).
    pub fn prepare_products(&self) -> Result<()> {
        match matmul::packed_rows() {
            Some(rows) => self.matrix_work(rows, rows),
            None => Ok(()),
        }
    }

    /// An empty KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Attaches fresh LoRA adapters (A random, B zero, so the model is unchanged) to the chosen
    /// projections; their parameters are created through `vb` (normally backed by a `VarMap`).
    pub fn add_lora(&mut self, lora: &LoraConfig, vb: VarBuilder) -> Result<()> {
        for layer in self.layers.iter_mut() {
            // Stacked projections would bypass the new adapters.
            layer.self_attn.qkv = None;
            layer.mlp.gate_up = None;
            for (proj, linear) in layer.linears_mut() {
                if lora.targets.contains(&proj) {
                    let (out_dim, in_dim) = linear.weight.dims2()?;
                    let adapter = LoraAdapter::new(vb.pp(&linear.name), in_dim, out_dim, lora)?;
                    linear.lora = Some(adapter);
                }
            }
        }
        Ok(())
    }

    /// An inference copy: adapters merged into the base weights, everything detached from autograd
    /// (so KV caches hold no graph, and the kernels take their inference paths). Shares storage
    /// with unadapted weights.
    pub fn for_inference(&self) -> Result<Llama> {
        let mut m = self.clone();
        // Training variables are copied, so the inference copy stays as it is now.
        let snapshot = |t: &Tensor| -> Result<Tensor> {
            Ok(if t.is_variable() {
                t.copy()?
            } else {
                t.detach()
            })
        };
        m.embed_tokens = snapshot(&self.embed_tokens)?;
        m.lm_head = self.lm_head.as_ref().map(snapshot).transpose()?;
        m.head_packs = Default::default();
        m.retrieval = self
            .retrieval
            .as_ref()
            .map(|p| p.for_inference())
            .transpose()?;
        m.norm.weight = self.norm.weight.detach();
        for layer in m.layers.iter_mut() {
            layer.input_layernorm.weight = layer.input_layernorm.weight.detach();
            layer.post_attention_layernorm.weight = layer.post_attention_layernorm.weight.detach();
            for (_, lin) in layer.linears_mut() {
                *lin = lin.detached_merged()?;
            }
            let att = &mut layer.self_attn;
            let name = format!("{}+k+v", att.q_proj.name);
            att.qkv = stack(
                &mut [&mut att.q_proj, &mut att.k_proj, &mut att.v_proj],
                &name,
            )?;
            let mlp = &mut layer.mlp;
            let name = format!("{}+up", mlp.gate_proj.name);
            mlp.gate_up = stack(&mut [&mut mlp.gate_proj, &mut mlp.up_proj], &name)?;
        }
        Ok(m)
    }

    /// A copy with every adapter removed: the frozen base as it was loaded.
    pub fn without_lora(&self) -> Llama {
        let mut m = self.clone();
        for layer in m.layers.iter_mut() {
            for (_, lin) in layer.linears_mut() {
                lin.lora = None;
            }
        }
        m
    }

    /// Every base weight under its HF name, with adapters merged, ready to save as safetensors.
    pub fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.detach(),
        )];
        for layer in &self.layers {
            for norm in [&layer.input_layernorm, &layer.post_attention_layernorm] {
                out.push((format!("{}.weight", norm.name), norm.weight.detach()));
            }
            for lin in layer.linears() {
                out.push((
                    format!("{}.weight", lin.name),
                    lin.merged_weight()?.contiguous()?,
                ));
                if let Some(b) = &lin.bias {
                    out.push((format!("{}.bias", lin.name), b.detach()));
                }
            }
        }
        out.push((
            format!("{}.weight", self.norm.name),
            self.norm.weight.detach(),
        ));
        if let Some(w) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), w.detach()));
        }
        Ok(out)
    }

    /// Only the LoRA adapter parameters, for saving an adapter alone.
    pub fn lora_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for layer in &self.layers {
            for lin in layer.linears() {
                if let Some(l) = &lin.lora {
                    out.push((format!("{}.lora_a", lin.name), l.a.detach()));
                    out.push((format!("{}.lora_b", lin.name), l.b.detach()));
                }
            }
        }
        out
    }
}
