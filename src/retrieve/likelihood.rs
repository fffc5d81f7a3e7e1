//! Query likelihood: how probable the model finds the user's question after reading a
//! candidate passage, in the prompt it writes pseudo-queries with ("Read the passage and write
//! one short question that it answers"). Generating the passage from the question (the
//! retrieval pathway) asks the model to recall a document; this asks it to read one, which a
//! language model does well on questions it never saw, so it is the ranking's strongest
//! signal on new questions (measured: docs/benchmarks.md). The score is the mean log-probability
//! of the question's tokens.

use super::{length_batches, rows_to_vecs, Retriever, Timings};
use crate::error::Result;
use crate::model::tokenizer::encode;
use crate::model::Llama;
use crate::prompts::{clean, QuestionPrompt};
use candle_core::Tensor;
use tokenizers::Tokenizer;

/// Passage tokens a likelihood row reads at most: the start of a passage holds what it is
/// about, and the rows of a query's candidates cost one forward pass over all their tokens.
pub const LIKELIHOOD_EXCERPT: usize = 160;
/// What one more forward pass costs, in tokens of batch (see the verdict batches).
const CALL_TOKENS: usize = 48;
/// Rows in one batch at most.
const BATCH_ROWS: usize = 16;

/// The question's tokens as the query likelihood scores them (and the reading task trains).
pub fn question_ids(tokenizer: &Tokenizer, query: &str) -> Result<Vec<u32>> {
    encode(tokenizer, &format!(" {}", clean(query)))
}

/// The prompt the query likelihood reads a passage in: the question prompt over the first
/// [`LIKELIHOOD_EXCERPT`] tokens of the passage (the reading task trains on the same rows).
pub fn reading_prompt(tokenizer: &Tokenizer, title: &str, text: &str) -> Result<Vec<u32>> {
    let prompt = QuestionPrompt::new(tokenizer, title, text)?;
    let len = prompt.head.len() + prompt.tail.len() + LIKELIHOOD_EXCERPT;
    Ok(prompt.ids(len.min(prompt.len())))
}

/// Length of the token prefix all `rows` share.
fn shared_prefix(rows: &[Vec<u32>]) -> usize {
    let Some(first) = rows.first() else {
        return 0;
    };
    rows[1..].iter().fold(first.len(), |n, r| {
        n.min(r.iter().zip(first).take_while(|(a, b)| a == b).count())
    })
}

impl Retriever<'_> {
    /// Mean log P(question token | question prompt over passage, earlier question tokens) under
    /// `reader` (the retriever's model or its base) for each passage index in `passages`, in
    /// batches of rows of similar length.
    pub fn query_logprobs(
        &self,
        reader: &Llama,
        query: &str,
        passages: &[usize],
        timings: &mut Timings,
    ) -> Result<Vec<f64>> {
        let question = question_ids(self.tokenizer, query)?;
        if question.is_empty() || passages.is_empty() {
            return Ok(vec![0.0; passages.len()]);
        }
        let mut rows: Vec<Vec<u32>> = Vec::with_capacity(passages.len());
        let mut starts: Vec<usize> = Vec::with_capacity(passages.len());
        for &pidx in passages {
            let p = &self.corpus.passages[pidx];
            let mut row = reading_prompt(self.tokenizer, &p.title, &p.text)?;
            starts.push(row.len());
            row.extend_from_slice(&question);
            rows.push(row);
        }
        let q = question.len();
        // Every row opens with the same instruction: it is read once, and each batch continues
        // from its cache (a fifth of a row's tokens on NQ). The shared part stops before a
        // row's first question token, whose distribution is read from the position before it.
        let shared =
            shared_prefix(&rows).min(starts.iter().copied().min().unwrap_or(0).saturating_sub(1));
        let mut prefix = reader.new_cache();
        if shared > 0 {
            let input = Tensor::from_vec(rows[0][..shared].to_vec(), (1, shared), reader.device())?;
            reader.hidden(&input, Some(&mut prefix))?;
            timings.count_pass(shared, 0);
        }
        let mut out = vec![0.0; passages.len()];
        for group in length_batches(&rows, CALL_TOKENS, BATCH_ROWS) {
            let max = group.iter().map(|&i| rows[i].len()).max().unwrap_or(0) - shared;
            let mut flat = Vec::with_capacity(group.len() * max);
            for &i in &group {
                let rest = &rows[i][shared..];
                flat.extend_from_slice(rest);
                flat.extend(std::iter::repeat_n(self.codec.eos, max - rest.len()));
            }
            let input = Tensor::from_vec(flat, (group.len(), max), reader.device())?;
            let hidden = if shared > 0 {
                let mut cache = prefix.select(&vec![0u32; group.len()])?;
                reader.hidden(&input, Some(&mut cache))?
            } else {
                reader.hidden(&input, None)?
            };
            let h = hidden.dim(2)?;
            // The distribution before each question token: positions start-1 .. start+q-2
            // of the row, counted after the shared prefix.
            let picks: Vec<u32> = group
                .iter()
                .enumerate()
                .flat_map(|(k, &i)| {
                    let start = k * max + starts[i] - shared;
                    (0..q).map(move |j| (start + j - 1) as u32)
                })
                .collect();
            timings.count_pass(group.len() * max, picks.len());
            let idx = Tensor::new(picks.as_slice(), reader.device())?;
            let picked = hidden
                .reshape((group.len() * max, h))?
                .index_select(&idx, 0)?;
            let lp = rows_to_vecs(&crate::kernels::loss::log_softmax(
                &reader.logits(&picked)?,
            )?)?;
            for (k, &i) in group.iter().enumerate() {
                let sum: f64 = (0..q)
                    .map(|j| lp[k * q + j][question[j] as usize] as f64)
                    .sum();
                out[i] = sum / q as f64;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::shared_prefix;

    #[test]
    fn the_shared_prefix_is_the_longest_common_start() {
        assert_eq!(shared_prefix(&[]), 0);
        assert_eq!(shared_prefix(&[vec![1, 2, 3]]), 3);
        assert_eq!(
            shared_prefix(&[vec![1, 2, 3], vec![1, 2, 4], vec![1, 2]]),
            2
        );
        assert_eq!(shared_prefix(&[vec![5, 2], vec![1, 2]]), 0);
    }
}
