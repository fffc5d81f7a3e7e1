//! GGUF files (llama.cpp's format): the header's metadata as a [`Config`], every tensor
//! dequantised to f32 under its Hugging Face name, and the tokenizer the file carries.

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::tokenizer::{self, SpecialTokens};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

use super::{source_err, LoadedWeights};

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
