//! Downloads a model from the Hugging Face Hub into the shared HF cache (when online).

use super::DownloadProgress;
use crate::error::{Error, Result};
use std::path::PathBuf;

struct Reporter<'a, 'b> {
    file: String,
    total: u64,
    done: u64,
    callback: &'a mut Option<DownloadProgress<'b>>,
}

impl hf_hub::api::Progress for Reporter<'_, '_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.file = filename.to_string();
        self.total = size as u64;
        self.done = 0;
        if let Some(cb) = self.callback.as_mut() {
            cb(&self.file, 0, self.total);
        }
    }
    fn update(&mut self, size: usize) {
        self.done += size as u64;
        if let Some(cb) = self.callback.as_mut() {
            cb(&self.file, self.done, self.total);
        }
    }
    fn finish(&mut self) {}
}

fn offline_error(repo: &str, why: impl std::fmt::Display) -> Error {
    Error::Source {
        source_name: format!("hf:{repo}"),
        message: format!(
            "cannot reach the Hugging Face Hub ({why}). Offline, use a local model instead: a \
             .gguf file (see scripts/fetch-model.sh) or a folder with config.json, \
             model.safetensors and tokenizer.json"
        ),
    }
}

/// Fetches config.json, tokenizer.json and the safetensors weights of `repo` at `revision` and
/// returns the snapshot folder. Files already in the local cache are not downloaded again.
pub fn download(
    repo: &str,
    revision: &str,
    progress: Option<DownloadProgress<'_>>,
) -> Result<PathBuf> {
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1") {
        let cache = hf_hub::Cache::from_env();
        let r = hf_hub::Repo::with_revision(repo.into(), hf_hub::RepoType::Model, revision.into());
        return match cache.repo(r).get("config.json") {
            Some(p) => Ok(p.parent().map(PathBuf::from).unwrap_or_default()),
            None => Err(offline_error(
                repo,
                "HF_HUB_OFFLINE=1 and the repo is not cached",
            )),
        };
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_retries(0)
        .build()
        .map_err(|e| offline_error(repo, e))?;
    let r = api.repo(hf_hub::Repo::with_revision(
        repo.into(),
        hf_hub::RepoType::Model,
        revision.into(),
    ));
    let mut callback = progress;
    let mut fetch = |name: &str| -> Result<PathBuf> {
        let rep = Reporter {
            file: String::new(),
            total: 0,
            done: 0,
            callback: &mut callback,
        };
        r.download_with_progress(name, rep)
            .map_err(|e| offline_error(repo, format!("{name}: {e}")))
    };
    let config = fetch("config.json")?;
    fetch("tokenizer.json")?;
    match fetch("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::bad_file(&index, e.to_string()))?;
            let mut shards: Vec<String> = json["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                fetch(&s)?;
            }
        }
        Err(_) => {
            fetch("model.safetensors")?;
        }
    }
    Ok(config.parent().map(PathBuf::from).unwrap_or_default())
}
