//! The model's architecture, read from a Hugging Face `config.json` (llama and qwen2 families) or
//! built from GGUF metadata, so that every source ends in the same [`Config`].

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

fn default_rms_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

/// Hyperparameters of a llama-family decoder, with the field names of Hugging Face's config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// HF architecture names, e.g. `LlamaForCausalLM`; used to reject unknown models early.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `llama`, `qwen2` or `mistral`.
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: fewer key/value heads than query heads (defaults to all heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on the q, k, v projections (llama's `attention_bias`; always on for qwen2).
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

/// Architectures whose weights this engine's decoder reproduces exactly.
const KNOWN_ARCHITECTURES: &[&str] =
    &["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"];
const KNOWN_MODEL_TYPES: &[&str] = &["llama", "qwen2", "mistral"];

impl Config {
    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Config = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(path, format!("not a valid model config: {e}")))?;
        cfg.validate()
            .map_err(|e| Error::bad_file(path, e.to_string()))?;
        Ok(cfg)
    }

    /// Checks that the architecture is one we implement and the shapes are consistent.
    pub fn validate(&self) -> Result<()> {
        if let Some(arch) = self
            .architectures
            .iter()
            .find(|a| !KNOWN_ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(Error::UnsupportedModel(format!(
                "architecture `{arch}` is not a llama-family causal LM (supported: {})",
                KNOWN_ARCHITECTURES.join(", ")
            )));
        }
        if let Some(mt) = &self.model_type {
            if !KNOWN_MODEL_TYPES.contains(&mt.as_str()) {
                return Err(Error::UnsupportedModel(format!(
                    "model_type `{mt}` (supported: {})",
                    KNOWN_MODEL_TYPES.join(", ")
                )));
            }
        }
        if self.architectures.is_empty() && self.model_type.is_none() {
            return Err(Error::UnsupportedModel(
                "config names neither `architectures` nor `model_type`".into(),
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(Error::UnsupportedModel(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(Error::UnsupportedModel(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::UnsupportedModel(
                "head dimension must be even for RoPE".into(),
            ));
        }
        Ok(())
    }

    /// Number of key/value heads (grouped-query attention).
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether q/k/v projections carry a bias (qwen2 always does).
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias
            .unwrap_or(self.model_type.as_deref() == Some("qwen2"))
    }

    /// Number of parameters, for the model panel and memory estimates.
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let kv = self.num_kv_heads() * self.head_dim();
        let attn = h * h * 2 + h * kv * 2 + if self.qkv_bias() { h + 2 * kv } else { 0 };
        let mlp = 3 * h * self.intermediate_size;
        let layer = attn + mlp + 2 * h;
        let emb = self.vocab_size * h;
        emb * if self.tie_word_embeddings { 1 } else { 2 } + layer * self.num_hidden_layers + h
    }

    /// The small model trained from scratch when no pretrained model is available.
    pub fn tiny(vocab_size: usize) -> Self {
        Config {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: Some("llama".into()),
            vocab_size,
            hidden_size: 256,
            intermediate_size: 688,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 1024,
            tie_word_embeddings: true,
            attention_bias: Some(false),
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// Writes the config as `config.json` next to checkpoint weights.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smollm_style_config() {
        let json = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":49152,
            "hidden_size":576,"intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,
            "num_key_value_heads":3,"rms_norm_eps":1e-5,"rope_theta":100000,"tie_word_embeddings":true,
            "bos_token_id":1,"eos_token_id":2}"#;
        let cfg: Config = serde_json::from_str(json).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.head_dim(), 64);
        assert!(!cfg.qkv_bias());
        // SmolLM2-135M has ~134.5M parameters.
        let p = cfg.parameter_count();
        assert!((134_000_000..135_000_000).contains(&p), "{p}");
    }

    #[test]
    fn qwen2_has_qkv_bias() {
        let json = r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","vocab_size":100,
            "hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2}"#;
        let cfg: Config = serde_json::from_str(json).unwrap();
        assert!(cfg.qkv_bias());
    }

    #[test]
    fn rejects_unknown_architecture() {
        let json = r#"{"architectures":["GPTNeoXForCausalLM"],"vocab_size":100,"hidden_size":64,
            "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4}"#;
        let cfg: Config = serde_json::from_str(json).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("GPTNeoXForCausalLM"), "{err}");
    }
}
