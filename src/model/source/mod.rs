//! Where a model comes from (tiny, GGUF file, local Hugging Face folder or checkpoint, the Hub) and
//! the one [`load_weights`] that turns any of them into a config, float weights and a tokenizer:
//! [`gguf`] reads and dequantises a GGUF file, [`hf`] a Hugging Face folder, [`hub`] fetches one,
//! [`tiny`] builds a small model from the corpus alone.

pub mod gguf;
pub mod hf;
pub mod hub;
pub mod tiny;

pub use gguf::load_gguf;
pub use hf::load_hf_folder;

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::tokenizer::{self, SpecialTokens};
use candle_core::{Device, Tensor};
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
        ModelSource::HfFolder(path) => {
            if path.join(crate::model::checkpoint::MANIFEST).is_file() {
                // Its adapters, checksums and base reference are read by the checkpoint
                // loader; as a plain folder it would load unverified, without its adapters.
                return Err(Error::bad_file(
                    path,
                    "a selfret checkpoint, not a model folder: open its run (--run RUN_DIR), \
                     or write it as a model folder with `selfret export --run RUN_DIR --out FOLDER`",
                ));
            }
            load_hf_folder(path, device)
        }
        ModelSource::Hub { repo, revision } => {
            let dir = hub::download(repo, revision, progress)?;
            load_hf_folder(&dir, device)
        }
    }
}

fn source_err(path: &Path, message: impl Into<String>) -> Error {
    Error::bad_file(path, message)
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
