//! The embedded default model: a small llama initialised from scratch with a tokenizer trained on
//! the user's corpus. Needs no download and trains at thousands of tokens per second on a CPU.

use super::LoadedWeights;
use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::tokenizer::{self, SpecialTokens, TINY_EOS};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// Options of the from-scratch model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TinyOptions {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub seed: u64,
}

impl Default for TinyOptions {
    fn default() -> Self {
        TinyOptions {
            vocab_size: 4096,
            hidden_size: 256,
            layers: 4,
            seed: 7,
        }
    }
}

/// Trains the tokenizer on `texts` and initialises weights (normal, std 0.02; norms at one),
/// deterministically from the seed.
pub fn build<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    opts: &TinyOptions,
    device: &Device,
) -> Result<LoadedWeights> {
    let tokenizer = tokenizer::train_tiny_tokenizer(texts, opts.vocab_size)?;
    let eos = tokenizer
        .token_to_id(TINY_EOS)
        .ok_or_else(|| Error::Tokenizer("tiny tokenizer lost its end-of-text token".into()))?;
    let mut config = Config::tiny(tokenizer.get_vocab_size(true));
    config.hidden_size = opts.hidden_size;
    config.intermediate_size = (opts.hidden_size * 8 / 3).div_ceil(16) * 16;
    config.num_hidden_layers = opts.layers;
    config.num_attention_heads = (opts.hidden_size / 64).max(1);
    config.num_key_value_heads = Some((config.num_attention_heads / 2).max(1));
    config.eos_token_id = Some(serde_json::json!(eos));
    config.validate()?;
    let tensors = random_weights(&config, opts.seed, device)?;
    Ok(LoadedWeights {
        config,
        tensors,
        tokenizer,
        special: SpecialTokens { eos, pad: eos },
    })
}

/// Random weights for any config, under HF names (also used by tests to build small models).
pub fn random_weights(cfg: &Config, seed: u64, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = |shape: (usize, usize)| -> Result<Tensor> {
        // Box-Muller from the seeded generator, so weights are reproducible across machines.
        let n = shape.0 * shape.1;
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let u1: f32 = rng.random::<f32>().max(1e-7);
            let u2: f32 = rng.random::<f32>();
            let r = (-2.0 * u1.ln()).sqrt() * 0.02;
            v.push(r * (2.0 * std::f32::consts::PI * u2).cos());
            v.push(r * (2.0 * std::f32::consts::PI * u2).sin());
        }
        v.truncate(n);
        Ok(Tensor::from_vec(v, shape, device)?)
    };
    let h = cfg.hidden_size;
    let hd = cfg.head_dim();
    let q = cfg.num_attention_heads * hd;
    let kv = cfg.num_kv_heads() * hd;
    let i = cfg.intermediate_size;
    let mut t = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".to_string(),
        normal((cfg.vocab_size, h))?,
    );
    for l in 0..cfg.num_hidden_layers {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        t.insert(p("self_attn.q_proj.weight"), normal((q, h))?);
        t.insert(p("self_attn.k_proj.weight"), normal((kv, h))?);
        t.insert(p("self_attn.v_proj.weight"), normal((kv, h))?);
        t.insert(p("self_attn.o_proj.weight"), normal((h, q))?);
        t.insert(p("mlp.gate_proj.weight"), normal((i, h))?);
        t.insert(p("mlp.up_proj.weight"), normal((i, h))?);
        t.insert(p("mlp.down_proj.weight"), normal((h, i))?);
        t.insert(
            p("input_layernorm.weight"),
            Tensor::ones(h, candle_core::DType::F32, device)?,
        );
        t.insert(
            p("post_attention_layernorm.weight"),
            Tensor::ones(h, candle_core::DType::F32, device)?,
        );
        if cfg.qkv_bias() {
            for (n, d) in [("q", q), ("k", kv), ("v", kv)] {
                t.insert(
                    p(&format!("self_attn.{n}_proj.bias")),
                    Tensor::zeros(d, candle_core::DType::F32, device)?,
                );
            }
        }
    }
    t.insert(
        "model.norm.weight".to_string(),
        Tensor::ones(h, candle_core::DType::F32, device)?,
    );
    if !cfg.tie_word_embeddings {
        t.insert("lm_head.weight".to_string(), normal((cfg.vocab_size, h))?);
    }
    Ok(t)
}
