//! Training examples of the docid mode: a question (or, for indexing, a passage's sentence or
//! title) in the docid prompt, the `<retrieve>` marker, then the passage's docid tokens, with
//! the loss on the docid. The same prompt is what [`crate::retrieve::docid`] decodes from.
//! Stage 2 adds mode 2: docids the pathway draws, rewarded by whether their passage answers,
//! and the answer read from them.

use super::data::{
    answer_in, holds_answer, DataBuilder, DataOptions, Example, Query, Task, Verdict,
};
use crate::corpus::Corpus;
use crate::docids::{DocidTree, DocidVocab};
use crate::error::Result;
use crate::prompts::PromptCodec;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

/// Where the docid mode's tokens sit in the model's input ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocidIds {
    pub vocab: DocidVocab,
    /// Id of the first docid token (the base vocabulary's size).
    pub first: u32,
    /// Id of the `<retrieve>` marker.
    pub retrieve: u32,
}

impl DocidIds {
    /// The prompt a question is decoded from: the docid prompt and the marker.
    pub fn prompt(&self, codec: &PromptCodec, tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        let mut ids = codec.docid_query(tok, text)?;
        ids.push(self.retrieve);
        Ok(ids)
    }
}

/// Builds docid examples for one corpus and tree.
pub struct DocidData<'a> {
    pub tokenizer: &'a Tokenizer,
    pub codec: &'a PromptCodec,
    pub corpus: &'a Corpus,
    pub tree: &'a DocidTree,
    pub ids: DocidIds,
    pub opts: DataOptions,
}

impl DocidData<'_> {
    fn example(&self, task: Task, text: &str, passage: usize) -> Result<Example> {
        let prompt = self.ids.prompt(self.codec, self.tokenizer, text)?;
        let target_start = prompt.len();
        let mut ids = prompt;
        ids.extend(
            self.ids
                .vocab
                .tokens(&self.tree.passages[passage].path, self.ids.first),
        );
        Ok(Example {
            task,
            ids,
            target_start,
        })
    }

    /// Indexing: sentences of every passage (6-49 words; all of them, or a sample, as the data
    /// options say) and its title -> its docid.
    pub fn indexing(&self) -> Result<Vec<Example>> {
        let mut rng = StdRng::seed_from_u64(self.opts.seed);
        let mut out = Vec::new();
        for (pidx, p) in self.corpus.passages.iter().enumerate() {
            for s in &self.opts.indexing_sentences(&p.text, &mut rng) {
                out.push(self.example(Task::Indexing, s, pidx)?);
            }
            if self.opts.title_items {
                out.push(self.example(Task::Indexing, &p.title, pidx)?);
            }
        }
        Ok(out)
    }

    /// Retrieval: each question -> the docid of each of its gold passages in the corpus.
    pub fn retrieval(&self, queries: &[Query]) -> Result<Vec<Example>> {
        let mut out = Vec::new();
        for q in queries.iter().filter(|q| !q.question.trim().is_empty()) {
            for pidx in q
                .positive_ids
                .iter()
                .filter_map(|id| self.corpus.index_of(id))
            {
                out.push(self.example(Task::Retrieval, &q.question, pidx)?);
            }
        }
        Ok(out)
    }
}

/// A passage the retrieval pathway drew for a training question in stage 2, and its reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrawnPassage {
    pub passage_id: String,
    /// Log-probability of its docid under the pathway that drew it.
    pub logprob: f64,
    /// 1 when the passage leads to the right answer (a gold passage of the question, or one
    /// holding one of its answer strings, which the trained reader copies out), else 0.
    pub reward: u8,
}

/// The passages the pathway drew for one training question (best first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrawnDocids {
    pub question: String,
    pub drawn: Vec<DrawnPassage>,
}

/// Stage 2's mode-2 examples from the drawn passages. The reward is 0 or 1, so the policy
/// gradient of the expected reward over the drawn docids is the log-likelihood gradient of
/// the rewarded ones: each becomes a question -> docid example (a gold passage of the question
/// is trained by mode 1 already and not repeated). The answer loss is trained conditioned on
/// every drawn passage: a rewarded one -> "can answer" + the answer it holds, the others ->
/// "cannot answer", so the reader learns to answer from what the pathway brings.
pub fn mode2_examples(
    docids: &DocidData<'_>,
    words: &DataBuilder<'_>,
    queries: &[Query],
    drawn: &[DrawnDocids],
) -> Result<Vec<Example>> {
    // The first question with answers of each text (written questions have none).
    let mut by_question: std::collections::HashMap<&str, &Query> = Default::default();
    for q in queries.iter().filter(|q| answerable(q)) {
        by_question.entry(q.question.as_str()).or_insert(q);
    }
    let mut out = Vec::new();
    for d in drawn {
        let Some(q) = by_question.get(d.question.as_str()) else {
            continue;
        };
        for p in &d.drawn {
            let Some(pidx) = docids.corpus.index_of(&p.passage_id) else {
                continue;
            };
            if p.reward > 0 {
                if !q.positive_ids.contains(&p.passage_id) {
                    out.push(docids.example(Task::Retrieval, &q.question, pidx)?);
                }
                let text = &docids.corpus.passages[pidx].text;
                let answer = answer_in(text, &q.answers).or(q.answers.first().map(String::as_str));
                out.push(words.verdict(&q.question, pidx, Verdict::Accept(answer))?);
            } else {
                out.push(words.verdict(&q.question, pidx, Verdict::Reject)?);
            }
        }
    }
    Ok(out)
}

/// Whether a question can train mode 2: it has a text and an answer string.
pub fn answerable(q: &Query) -> bool {
    !q.question.trim().is_empty() && q.answers.iter().any(|a| !a.trim().is_empty())
}

/// The reward of a drawn passage for a question: 1 for a gold passage or one holding an
/// answer string.
pub fn reward(corpus: &Corpus, passage: usize, q: &Query) -> u8 {
    let gold = q.positive_ids.contains(&corpus.passages[passage].id);
    u8::from(gold || holds_answer(&corpus.passages[passage].text, &q.answers))
}
