//! Checkpoints: a folder with `config.json`, `tokenizer.json`, `model.safetensors` (base or full
//! weights), `adapter.safetensors` (LoRA only) and a RON `manifest.ron`. A checkpoint folder is
//! also a valid Hugging Face folder. Folders are written beside their final place and renamed
//! into it, so a crash mid-write never leaves a half checkpoint where a loadable one was.

use super::tokenizer::SpecialTokens;
use super::TrainMode;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the manifest inside a checkpoint folder.
pub const MANIFEST: &str = "manifest.ron";
/// Base (LoRA) or full weights.
pub const WEIGHTS: &str = "model.safetensors";
/// LoRA adapter weights alone.
pub const ADAPTER: &str = "adapter.safetensors";

/// What a checkpoint is: how it was made and how to continue from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Where the base model came from (`tiny`, a GGUF path, ...).
    pub source: String,
    pub mode: TrainMode,
    /// Optimiser steps taken when this was written.
    pub step: u64,
    pub special: SpecialTokens,
    /// Hash of the corpus the model was trained on, to warn when querying another corpus.
    pub corpus_fingerprint: Option<String>,
    /// Free-form hyperparameters for display (learning rate, LoRA rank, ...).
    pub hyperparameters: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads `manifest.ron` from a checkpoint folder.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        ron::from_str(&text).map_err(|e| Error::bad_file(&path, format!("invalid manifest: {e}")))
    }

    /// Serialises to pretty RON.
    pub fn to_ron(&self) -> String {
        ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::default()).unwrap_or_default()
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_sibling(path);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn tmp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Fills a fresh temporary folder with `fill`, then swaps it into `dir` (replacing an older
/// version only once the new one is complete).
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_sibling(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = dir.with_file_name(format!(
        "{}.old-{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Saves named tensors as safetensors at `path` (atomically).
pub fn save_tensors(path: &Path, tensors: Vec<(String, candle_core::Tensor)>) -> Result<()> {
    let map: std::collections::HashMap<String, candle_core::Tensor> = tensors.into_iter().collect();
    let tmp = tmp_sibling(path);
    candle_core::safetensors::save(&map, &tmp).map_err(|e| Error::bad_file(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
