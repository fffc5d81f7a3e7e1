//! Query likelihood: how probable the model finds the user's question after reading a
//! candidate passage, in the prompt it writes pseudo-queries with ("Read the passage and write
//! one short question that it answers"). Generating the passage from the question (the
//! retrieval pathway) asks the model to recall a document; this asks it to read one, which a
//! language model does well on questions it never saw, so it is the ranking's strongest
//! signal on new questions (measured: docs/benchmarks.md). The score is the mean log-probability
//! of the question's tokens. A passage read once is kept ([`super::reading`]): the next
//! question about it costs only its own tokens.

use super::reading::Reader;
use super::{length_batches, rows_to_vecs, Retriever, Timings};
use crate::error::{Error, Result};
use crate::model::tokenizer::encode;
use crate::model::{KvCache, Llama};
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
/// Passages whose caches one batch of question rows continues.
const READ_ROWS: usize = 32;

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
    /// `reader` (the retriever's model or its base) for each passage index in `passages`.
    ///
    /// Each passage's prompt up to its last token is read once and kept in the reading cache
    /// (when the retriever has one); the question then continues every passage's cache in
    /// batches of rows of different cached lengths, from the prompt's last token on.
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
        let who = match std::ptr::eq(reader, self.model) {
            true => Reader::Own,
            false => Reader::Base,
        };
        let prompts = passages
            .iter()
            .map(|&pidx| {
                let p = &self.corpus.passages[pidx];
                let prompt = reading_prompt(self.tokenizer, &p.title, &p.text)?;
                if prompt.len() < 2 {
                    return Err(Error::invalid("the reading prompt is empty"));
                }
                Ok(prompt)
            })
            .collect::<Result<Vec<_>>>()?;
        // Rows of similar length share a batch (less padding to read and to skip).
        let mut order: Vec<usize> = (0..passages.len()).collect();
        order.sort_by_key(|&i| prompts[i].len());
        let q = question.len();
        let mut out = vec![0.0; passages.len()];
        for chunk in order.chunks(READ_ROWS) {
            let items: Vec<(usize, &[u32])> = chunk
                .iter()
                .map(|&i| (passages[i], &prompts[i][..prompts[i].len() - 1]))
                .collect();
            let caches = self.reading_caches(reader, who, &items, timings)?;
            let (mut stacked, lens) = KvCache::stack(&caches)?;
            drop(caches);
            // Each row reads its prompt's last token, then the question but its last token:
            // the distributions before every question token.
            let flat: Vec<u32> = chunk
                .iter()
                .flat_map(|&i| {
                    let last = prompts[i][prompts[i].len() - 1];
                    std::iter::once(last).chain(question[..q - 1].iter().copied())
                })
                .collect();
            let input = Tensor::from_vec(flat, (chunk.len(), q), reader.device())?;
            let hidden = reader.hidden_ragged(&input, &mut stacked, &lens)?;
            timings.count_pass(chunk.len() * q, chunk.len() * q);
            let h = hidden.dim(2)?;
            let lp = rows_to_vecs(&crate::kernels::loss::log_softmax(
                &reader.logits(&hidden.reshape((chunk.len() * q, h))?)?,
            )?)?;
            for (k, &i) in chunk.iter().enumerate() {
                let sum: f64 = (0..q)
                    .map(|j| lp[k * q + j][question[j] as usize] as f64)
                    .sum();
                out[i] = sum / q as f64;
            }
        }
        Ok(out)
    }

    /// The cache of each `(passage, prompt)` after reading `prompt` with `reader`: kept ones
    /// from the reading cache, the others read in right-padded batches (from one reading of
    /// the instruction they all open with) and kept for later queries.
    fn reading_caches(
        &self,
        reader: &Llama,
        who: Reader,
        items: &[(usize, &[u32])],
        timings: &mut Timings,
    ) -> Result<Vec<KvCache>> {
        let mut caches: Vec<Option<KvCache>> = items
            .iter()
            .map(|&(pidx, _)| self.reading.and_then(|r| r.get(pidx, who)))
            .collect();
        timings.likelihood_reused += caches.iter().filter(|c| c.is_some()).count();
        let missing: Vec<usize> = (0..items.len()).filter(|&i| caches[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(caches.into_iter().flatten().collect());
        }
        let rows: Vec<Vec<u32>> = missing.iter().map(|&i| items[i].1.to_vec()).collect();
        // Every row opens with the same instruction: read once, each batch continues it. At
        // least one token of every row is left to its batch.
        let shared = shared_prefix(&rows).min(rows.iter().map(Vec::len).min().unwrap_or(1) - 1);
        let mut prefix = reader.new_cache();
        if shared > 0 {
            let input = Tensor::from_vec(rows[0][..shared].to_vec(), (1, shared), reader.device())?;
            reader.hidden(&input, Some(&mut prefix))?;
            timings.count_pass(shared, 0);
        }
        for group in length_batches(&rows, CALL_TOKENS, BATCH_ROWS) {
            let max = group.iter().map(|&i| rows[i].len()).max().unwrap_or(0) - shared;
            let mut flat = Vec::with_capacity(group.len() * max);
            for &i in &group {
                let rest = &rows[i][shared..];
                flat.extend_from_slice(rest);
                flat.extend(std::iter::repeat_n(self.codec.eos, max - rest.len()));
            }
            let input = Tensor::from_vec(flat, (group.len(), max), reader.device())?;
            let mut cache = match shared {
                0 => reader.new_cache(),
                _ => prefix.select(&vec![0u32; group.len()])?,
            };
            reader.hidden(&input, Some(&mut cache))?;
            timings.count_pass(group.len() * max, 0);
            for (k, &i) in group.iter().enumerate() {
                let own = cache.select(&[k as u32])?.truncate(rows[i].len())?;
                if let Some(r) = self.reading {
                    r.insert(items[missing[i]].0, who, &own)?;
                }
                caches[missing[i]] = Some(own);
            }
        }
        caches
            .into_iter()
            .map(|c| c.ok_or_else(|| Error::invalid("a passage was not read")))
            .collect()
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
