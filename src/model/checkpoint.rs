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
/// The optimiser's state in a training checkpoint, for resuming.
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// The retrieval pathway of a docid run (retrieval heads, MLP', docid embeddings and head).
pub const DOCID: &str = "docid.safetensors";
/// In place of [`WEIGHTS`] in a LoRA checkpoint over a GGUF file: where the unchanged base is.
pub const BASE_REF: &str = "base.ron";

/// The frozen base of a LoRA checkpoint, by reference: the file it is read from and that
/// file's checksum, verified on load (the base is not copied into every checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    pub path: PathBuf,
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

impl BaseRef {
    /// The reference to `path` as it is now.
    pub fn of(path: &Path) -> Result<Self> {
        let path = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        Ok(BaseRef {
            bytes: std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len(),
            sha256: sha256_file(&path)?,
            path,
        })
    }

    /// Reads `base.ron` from a checkpoint folder, if it has one.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        read_optional_ron(&dir.join(BASE_REF), "base reference")
    }

    /// Refuses a base file that is missing or not the one the checkpoint was trained on.
    pub fn verify(&self, checkpoint: &Path) -> Result<()> {
        let what = |m: &str| {
            Error::bad_file(
                checkpoint.join(BASE_REF),
                format!(
                    "{m}: the adapters were trained on {} ({} bytes, sha256 {}); put that file back or retrain",
                    self.path.display(),
                    self.bytes,
                    self.sha256
                ),
            )
        };
        let len = std::fs::metadata(&self.path)
            .map_err(|_| what("the base model file is missing"))?
            .len();
        if len != self.bytes || sha256_file(&self.path)? != self.sha256 {
            return Err(what("the base model file has changed"));
        }
        Ok(())
    }

    pub fn to_ron(&self) -> String {
        ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::default()).unwrap_or_default()
    }
}

/// Reads a RON file that may be absent: `None` when there is none, an error naming the file
/// (and `what` it should hold) when it does not parse.
pub fn read_optional_ron<T: serde::de::DeserializeOwned>(
    file: &Path,
    what: &str,
) -> Result<Option<T>> {
    if !file.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    ron::from_str(&text)
        .map(Some)
        .map_err(|e| Error::bad_file(file, format!("invalid {what}: {e}")))
}

/// SHA-256 of a file's bytes, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// What a checkpoint is: how it was made and how to continue from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Where the base model came from (`tiny`, a GGUF path, ...).
    pub source: String,
    pub mode: TrainMode,
    /// Optimiser steps taken when this was written.
    pub step: u64,
    /// Seconds of training behind those steps (0 in checkpoints written before it was kept).
    #[serde(default)]
    pub training_seconds: f64,
    pub special: SpecialTokens,
    /// Hash of the corpus the model was trained on, to warn when querying another corpus.
    pub corpus_fingerprint: Option<String>,
    /// Free-form hyperparameters for display (learning rate, LoRA rank, ...).
    pub hyperparameters: BTreeMap<String, String>,
    /// SHA-256 (hex) of each tensor file in the folder, by file name, verified on load.
    /// Empty in checkpoints written before checksums were kept (loaded unverified).
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
    /// The retrieval pathway's shape, when the model has one (its weights in [`DOCID`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<super::retrieval::RetrievalConfig>,
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

    /// Refuses `dir/name` when the manifest holds a checksum for it and the file's bytes no
    /// longer match (overwritten, truncated, or copied from elsewhere). A file the manifest
    /// does not list passes: older checkpoints carry no checksums.
    pub fn verify_file(&self, dir: &Path, name: &str) -> Result<()> {
        let Some(want) = self.checksums.get(name) else {
            return Ok(());
        };
        let path = dir.join(name);
        if !path.is_file() {
            return Err(Error::bad_file(
                &path,
                "missing: the checkpoint lists it; use an earlier checkpoint or retrain",
            ));
        }
        if &sha256_file(&path)? != want {
            return Err(Error::bad_file(
                &path,
                "checksum mismatch: the file changed after it was written (corrupt or \
                 replaced); use an earlier checkpoint or retrain",
            ));
        }
        Ok(())
    }
}

/// The SHA-256 of every `.safetensors` file in `dir`, by file name.
pub fn tensor_checksums(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut sums = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|x| x == "safetensors") {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            sums.insert(name, sha256_file(&path)?);
        }
    }
    Ok(sums)
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
