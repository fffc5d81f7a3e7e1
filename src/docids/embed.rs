//! Passage embeddings for the docid tree: the dense baseline's all-MiniLM-L6-v2 when it is
//! installed (scripts/fetch-dense.sh), else mean-pooled final hidden states of the loaded model.
//! Both give one L2-normalised row per passage of "title. text".

use crate::corpus::Corpus;
use crate::error::Result;
use crate::model::Llama;
use candle_core::Tensor;
use std::path::Path;
use tokenizers::Tokenizer;

/// Longest passage prefix the model reads when embedding (tokens).
const MAX_TOKENS: usize = 256;

/// Passages per model batch.
const BATCH: usize = 8;

/// The text each embedder reads for a passage.
fn passage_text(corpus: &Corpus, i: usize) -> String {
    let p = &corpus.passages[i];
    format!("{}. {}", p.title, p.text)
}

/// Embeds every passage with MiniLM from `dir`; returns the rows and the embedder's name.
pub fn with_minilm(dir: &Path, corpus: &Corpus) -> Result<(Vec<Vec<f32>>, String)> {
    let index = crate::eval::dense::DenseIndex::new(dir, corpus)?;
    Ok((index.passage_rows()?, "all-MiniLM-L6-v2".to_string()))
}

/// Embeds every passage as the mean of the model's final-norm hidden states over its tokens.
/// Rows of a batch are right-padded; a causal model's states at real positions do not see the
/// padding, and the mean runs over real positions only.
pub fn with_model(
    model: &Llama,
    tokenizer: &Tokenizer,
    pad: u32,
    corpus: &Corpus,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<f32>>> {
    let texts: Vec<String> = (0..corpus.len()).map(|i| passage_text(corpus, i)).collect();
    let mut ids = crate::model::tokenizer::encode_many(tokenizer, &texts)?;
    for row in &mut ids {
        row.truncate(MAX_TOKENS);
        if row.is_empty() {
            row.push(pad);
        }
    }
    // Similar lengths together, so little padding is computed.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut out = vec![Vec::new(); ids.len()];
    let mut done = 0;
    for chunk in order.chunks(BATCH) {
        let len = chunk.iter().map(|&i| ids[i].len()).max().unwrap_or(1);
        let mut flat = Vec::with_capacity(chunk.len() * len);
        for &i in chunk {
            flat.extend_from_slice(&ids[i]);
            flat.extend(std::iter::repeat_n(pad, len - ids[i].len()));
        }
        let input = Tensor::from_vec(flat, (chunk.len(), len), model.device())?;
        let hidden = model.hidden(&input, None)?;
        let rows: Vec<Vec<Vec<f32>>> = hidden.to_vec3()?;
        for (&i, states) in chunk.iter().zip(rows) {
            let real = &states[..ids[i].len()];
            let dim = real[0].len();
            let mut mean = vec![0f32; dim];
            for s in real {
                for (m, x) in mean.iter_mut().zip(s) {
                    *m += x / real.len() as f32;
                }
            }
            out[i] = normalise(mean);
        }
        done += chunk.len();
        progress(done, ids.len());
    }
    Ok(out)
}

/// Scales a vector to unit length (a zero vector stays zero).
pub fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Passage;

    #[test]
    fn model_embeddings_are_unit_rows_independent_of_batch_padding() {
        let passages: Vec<Passage> = [
            "short one",
            "a much longer passage about rivers, deltas and the sea",
            "mid length text here",
        ]
        .iter()
        .enumerate()
        .map(|(i, t)| Passage {
            id: format!("p{i}"),
            title: "T".into(),
            text: t.to_string(),
        })
        .collect();
        let corpus = Corpus::from_passages(passages, Vec::new());
        let opts = crate::model::source::tiny::TinyOptions {
            vocab_size: 300,
            hidden_size: 64,
            layers: 2,
            seed: 3,
        };
        let dev = candle_core::Device::Cpu;
        let w = crate::model::source::tiny::build(corpus.texts(), &opts, &dev).unwrap();
        let b = crate::model::ModelBundle::from_weights(
            w,
            crate::model::ModelSource::Tiny,
            crate::model::TrainMode::Frozen,
            &dev,
        )
        .unwrap();
        let (model, tok, pad) = (&b.model, &b.tokenizer, b.special.pad);
        let rows = with_model(model, tok, pad, &corpus, &mut |_, _| {}).unwrap();
        assert_eq!(rows.len(), 3);
        for r in &rows {
            let n: f32 = r.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4, "{n}");
        }
        // The short passage alone gives the same row as inside a padded batch.
        let one = Corpus::from_passages(vec![corpus.passages[0].clone()], Vec::new());
        let alone = with_model(model, tok, pad, &one, &mut |_, _| {}).unwrap();
        let diff = alone[0]
            .iter()
            .zip(&rows[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{diff}");
    }
}
