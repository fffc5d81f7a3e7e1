//! Where a model comes from (tiny, GGUF file, local Hugging Face folder or checkpoint, the Hub) and
//! the one [`load_weights`] that turns any of them into a config, float weights and a tokenizer.

use super::config::Config;
use super::tokenizer::{self, SpecialTokens};
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tokenizers::Tokenizer;

/// A model the user can pick: on the command line `tiny`, `path/to/model.gguf`,
/// `path/to/hf_folder` or `hf:REPO_ID[@REVISION]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelSource {
    /// A small llama trained from scratch on the corpus: works anywhere, no download.
    Tiny,
    /// A GGUF file, dequantised to a trainable float model.
    Gguf(PathBuf),
    /// A local folder with config.json, *.safetensors and tokenizer.json (also our checkpoints).
    HfFolder(PathBuf),
    /// A Hugging Face Hub repository, downloaded into the local HF cache.
    Hub { repo: String, revision: String },
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Tiny => write!(f, "tiny"),
            ModelSource::Gguf(p) | ModelSource::HfFolder(p) => write!(f, "{}", p.display()),
            ModelSource::Hub { repo, revision } if revision == "main" => write!(f, "hf:{repo}"),
            ModelSource::Hub { repo, revision } => write!(f, "hf:{repo}@{revision}"),
        }
    }
}

impl FromStr for ModelSource {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("tiny") {
            return Ok(ModelSource::Tiny);
        }
        if let Some(rest) = s.strip_prefix("hf:") {
            let (repo, revision) = match rest.split_once('@') {
                Some((r, v)) => (r, v),
                None => (rest, "main"),
            };
            if !repo.contains('/') {
                return Err(format!(
                    "`{repo}` is not a Hub repo id (expected owner/name)"
                ));
            }
            return Ok(ModelSource::Hub {
                repo: repo.to_string(),
                revision: revision.to_string(),
            });
        }
        let path = PathBuf::from(s);
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Ok(ModelSource::Gguf(path));
        }
        if path.is_dir() {
            return Ok(ModelSource::HfFolder(path));
        }
        Err(format!(
            "`{s}` is neither `tiny`, a .gguf file, an existing model folder nor hf:OWNER/NAME"
        ))
    }
}

/// Everything a source provides: architecture, float weights under HF names, tokenizer.
pub struct LoadedWeights {
    pub config: Config,
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
}

/// Download progress for Hub sources: (file name, bytes so far, total bytes).
pub type DownloadProgress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Loads a pretrained source. `Tiny` is not handled here: it needs the corpus (see `tiny`).
pub fn load_weights(
    source: &ModelSource,
    device: &Device,
    progress: Option<DownloadProgress<'_>>,
) -> Result<LoadedWeights> {
    match source {
        ModelSource::Tiny => Err(Error::invalid(
            "the tiny model is built from the corpus; use tiny::build",
        )),
        ModelSource::Gguf(path) => load_gguf(path, device),
        ModelSource::HfFolder(path) => load_hf_folder(path, device),
        ModelSource::Hub { repo, revision } => {
            let dir = super::hub::download(repo, revision, progress)?;
            load_hf_folder(&dir, device)
        }
    }
}

fn source_err(path: &Path, message: impl Into<String>) -> Error {
    Error::bad_file(path, message)
}

/// Reads the GGUF header and checks that the file holds every tensor it declares, so a truncated
/// download is reported as such instead of failing deep inside a tensor read.
pub fn read_gguf_header(path: &Path) -> Result<(gguf_file::Content, std::fs::File)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| source_err(path, format!("not a readable GGUF file: {e}")))?;
    for (name, info) in &content.tensor_infos {
        let bytes =
            info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let end = content.tensor_data_offset + info.offset + bytes as u64;
        if end > len {
            return Err(source_err(
                path,
                format!(
                    "GGUF file is truncated: tensor `{name}` ends at byte {end} but the file has {len} bytes"
                ),
            ));
        }
    }
    Ok((content, file))
}

fn meta_u(content: &gguf_file::Content, key: &str, path: &Path) -> Result<usize> {
    let v = content
        .metadata
        .get(key)
        .ok_or_else(|| source_err(path, format!("GGUF metadata lacks `{key}`")))?;
    v.to_u64()
        .map(|x| x as usize)
        .or_else(|_| v.to_u32().map(|x| x as usize))
        .or_else(|_| v.to_i32().map(|x| x as usize))
        .map_err(|e| source_err(path, format!("GGUF metadata `{key}`: {e}")))
}

fn meta_f(content: &gguf_file::Content, key: &str) -> Option<f64> {
    let v = content.metadata.get(key)?;
    v.to_f32().map(|x| x as f64).or_else(|_| v.to_f64()).ok()
}

/// Loads a GGUF file (llama or qwen2 architecture), dequantising every tensor to f32.
pub fn load_gguf(path: &Path, device: &Device) -> Result<LoadedWeights> {
    let (content, mut file) = read_gguf_header(path)?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| source_err(path, "GGUF metadata lacks `general.architecture`"))?;
    let hf_arch = match arch.as_str() {
        "llama" => "LlamaForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        other => {
            return Err(Error::UnsupportedModel(format!(
                "{}: GGUF architecture `{other}` is not llama-family (supported: llama, qwen2)",
                path.display()
            )))
        }
    };
    let tokenizer =
        tokenizer::tokenizer_from_gguf(&content).map_err(|e| source_err(path, e.to_string()))?;
    let heads = meta_u(&content, &format!("{arch}.attention.head_count"), path)?;
    let config = Config {
        architectures: vec![hf_arch.to_string()],
        model_type: Some(arch.clone()),
        vocab_size: tokenizer.get_vocab_size(true),
        hidden_size: meta_u(&content, &format!("{arch}.embedding_length"), path)?,
        intermediate_size: meta_u(&content, &format!("{arch}.feed_forward_length"), path)?,
        num_hidden_layers: meta_u(&content, &format!("{arch}.block_count"), path)?,
        num_attention_heads: heads,
        num_key_value_heads: Some(
            meta_u(&content, &format!("{arch}.attention.head_count_kv"), path).unwrap_or(heads),
        ),
        rms_norm_eps: meta_f(
            &content,
            &format!("{arch}.attention.layer_norm_rms_epsilon"),
        )
        .unwrap_or(1e-5),
        rope_theta: meta_f(&content, &format!("{arch}.rope.freq_base")).unwrap_or(10_000.0),
        max_position_embeddings: meta_u(&content, &format!("{arch}.context_length"), path)
            .unwrap_or(2048),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: Some(arch == "qwen2"),
        bos_token_id: None,
        eos_token_id: None,
    };
    config.validate()?;
    let declared_eos = content
        .metadata
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.to_u32().ok());
    let special = SpecialTokens::detect(&tokenizer, declared_eos)?;

    let mut tensors = HashMap::new();
    let mut read = |gguf_name: &str| -> Result<Tensor> {
        let q = content
            .tensor(&mut file, gguf_name, &Device::Cpu)
            .map_err(|e| source_err(path, format!("tensor `{gguf_name}`: {e}")))?;
        Ok(q.dequantize(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_device(device)?)
    };
    tensors.insert(
        "model.embed_tokens.weight".into(),
        read("token_embd.weight")?,
    );
    tensors.insert("model.norm.weight".into(), read("output_norm.weight")?);
    if !config.tie_word_embeddings {
        tensors.insert("lm_head.weight".into(), read("output.weight")?);
    }
    let hd = config.head_dim();
    for i in 0..config.num_hidden_layers {
        let g = |n: &str| format!("blk.{i}.{n}");
        let h = |n: &str| format!("model.layers.{i}.{n}");
        let pairs = [
            ("attn_norm.weight", "input_layernorm.weight"),
            ("ffn_norm.weight", "post_attention_layernorm.weight"),
            ("attn_v.weight", "self_attn.v_proj.weight"),
            ("attn_output.weight", "self_attn.o_proj.weight"),
            ("ffn_gate.weight", "mlp.gate_proj.weight"),
            ("ffn_up.weight", "mlp.up_proj.weight"),
            ("ffn_down.weight", "mlp.down_proj.weight"),
        ];
        for (gn, hn) in pairs {
            tensors.insert(h(hn), read(&g(gn))?);
        }
        let q = read(&g("attn_q.weight"))?;
        let k = read(&g("attn_k.weight"))?;
        // llama.cpp's converter permutes q/k rows for interleaved RoPE; undo it so one (HF,
        // half-split) RoPE serves every source and saved checkpoints are plain HF weights.
        let (q, k) = if arch == "llama" {
            (
                unpermute(&q, config.num_attention_heads, hd)?,
                unpermute(&k, config.num_kv_heads(), hd)?,
            )
        } else {
            (q, k)
        };
        tensors.insert(h("self_attn.q_proj.weight"), q);
        tensors.insert(h("self_attn.k_proj.weight"), k);
        if config.qkv_bias() {
            for (gn, hn) in [
                ("attn_q.bias", "self_attn.q_proj.bias"),
                ("attn_k.bias", "self_attn.k_proj.bias"),
                ("attn_v.bias", "self_attn.v_proj.bias"),
            ] {
                tensors.insert(h(hn), read(&g(gn))?);
            }
        }
    }
    Ok(LoadedWeights {
        config,
        tensors,
        tokenizer,
        special,
    })
}

/// Inverse of llama.cpp's `permute(w, n_head)`: rows (head, pair, half) -> (head, half, pair).
fn unpermute(w: &Tensor, n_head: usize, head_dim: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    Ok(w.reshape((n_head, head_dim / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Loads a Hugging Face folder (also a selfret checkpoint): config.json, tokenizer.json and one
/// `model.safetensors` or shards listed in `model.safetensors.index.json`.
pub fn load_hf_folder(dir: &Path, device: &Device) -> Result<LoadedWeights> {
    if !dir.is_dir() {
        return Err(Error::bad_file(dir, "model folder does not exist"));
    }
    let config = Config::from_file(&dir.join("config.json"))?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(Error::bad_file(
            &tok_path,
            "missing tokenizer: the model folder needs a tokenizer.json beside config.json",
        ));
    }
    let mut tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| Error::bad_file(&tok_path, format!("not a valid tokenizer.json: {e}")))?;
    super::tokenizer::widen_cache(&mut tokenizer);
    let mut files = Vec::new();
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&index, format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::bad_file(&index, "no `weight_map` object"))?;
        let mut shards: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        shards.sort();
        shards.dedup();
        files.extend(shards.into_iter().map(|s| dir.join(s)));
    } else {
        files.push(dir.join("model.safetensors"));
    }
    let mut tensors = HashMap::new();
    for f in &files {
        if !f.is_file() {
            return Err(Error::bad_file(f, "weights file is missing"));
        }
        let loaded = candle_core::safetensors::load(f, device).map_err(|e| {
            Error::bad_file(
                f,
                format!("not a readable safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        for (k, v) in loaded {
            tensors.insert(k, v.to_dtype(DType::F32)?);
        }
    }
    let declared_eos = match &config.eos_token_id {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    };
    let special = match super::checkpoint::Manifest::read(dir) {
        Ok(m) => m.special,
        Err(_) => SpecialTokens::detect(&tokenizer, declared_eos)?,
    };
    Ok(LoadedWeights {
        config,
        tensors,
        tokenizer,
        special,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!("tiny".parse::<ModelSource>().unwrap(), ModelSource::Tiny);
        assert_eq!(
            "hf:HuggingFaceTB/SmolLM2-135M-Instruct"
                .parse::<ModelSource>()
                .unwrap(),
            ModelSource::Hub {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                revision: "main".into()
            }
        );
        assert!(matches!(
            "models/x.gguf".parse::<ModelSource>().unwrap(),
            ModelSource::Gguf(_)
        ));
        assert!("hf:noslash".parse::<ModelSource>().is_err());
        assert!("/definitely/not/here".parse::<ModelSource>().is_err());
    }
}
