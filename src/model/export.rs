//! A model as a standard Hugging Face folder, for the tools people already use (transformers,
//! TRL, llama.cpp's converter): `config.json` (the architecture, end token declared),
//! `model.safetensors` under HF tensor names with LoRA adapters merged into the weights (a GGUF
//! base's q/k rows are already in HF order: the GGUF loader un-permutes them), `tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json` and a model card `README.md`.
//!
//! The folder loads back here as `--model FOLDER` and ranks as the run did (a test checks it).

use super::checkpoint::{save_tensors, write_dir_atomic};
use super::ModelBundle;
use crate::error::{Error, Result};
use std::path::Path;

/// Files every exported folder holds.
pub const EXPORTED_FILES: [&str; 6] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "README.md",
];

/// Writes `bundle` as a Hugging Face folder at `dir` (atomically: a folder already there is
/// replaced only once the new one is complete), with `card` as its README.md and `extra` files
/// (name, bytes) beside.
pub fn write_hf_folder(
    bundle: &ModelBundle,
    dir: &Path,
    card: &str,
    extra: &[(&str, Vec<u8>)],
) -> Result<()> {
    let eos = bundle.special.eos;
    let pad = bundle.special.pad;
    let mut config = bundle.model.config.clone();
    config.eos_token_id = Some(serde_json::json!(eos));
    let piece = |id: u32| bundle.tokenizer.id_to_token(id);
    let tokenizer_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": piece(eos),
        "pad_token": piece(pad),
        "model_max_length": config.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
    });
    let generation_config = serde_json::json!({
        "eos_token_id": eos,
        "pad_token_id": pad,
    });
    let weights = bundle.model.named_weights()?;
    write_dir_atomic(dir, |tmp| {
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(tmp.join(name), bytes).map_err(|e| Error::io(tmp.join(name), e))
        };
        write("config.json", config.to_json().as_bytes())?;
        save_tensors(&tmp.join("model.safetensors"), weights)?;
        bundle
            .tokenizer
            .save(tmp.join("tokenizer.json"), false)
            .map_err(|e| Error::bad_file(tmp.join("tokenizer.json"), e.to_string()))?;
        write(
            "tokenizer_config.json",
            pretty(&tokenizer_config).as_bytes(),
        )?;
        write(
            "generation_config.json",
            pretty(&generation_config).as_bytes(),
        )?;
        write("README.md", card.as_bytes())?;
        for (name, bytes) in extra {
            write(name, bytes)?;
        }
        Ok(())
    })
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
