//! Hugging Face folders (config.json, safetensors shards, tokenizer.json), which checkpoints are
//! too.

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::tokenizer::SpecialTokens;
use candle_core::{DType, Device};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::Tokenizer;

use super::LoadedWeights;

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
        // Bytes overwritten behind an intact header load "fine" and compute NaN scores.
        crate::model::bundle::refuse_non_finite(f, &loaded)?;
        for (k, v) in loaded {
            tensors.insert(k, v.to_dtype(DType::F32)?);
        }
    }
    let declared_eos = match &config.eos_token_id {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    };
    // A checkpoint's manifest names its special tokens; one that does not parse is an error,
    // not a reason to guess.
    let special = match dir.join(crate::model::checkpoint::MANIFEST).is_file() {
        true => crate::model::checkpoint::Manifest::read(dir)?.special,
        false => SpecialTokens::detect(&tokenizer, declared_eos)?,
    };
    Ok(LoadedWeights {
        config,
        tensors,
        tokenizer,
        special,
    })
}
