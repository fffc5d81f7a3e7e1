//! Training examples of the docid mode: a question (or, for indexing, a passage's sentence or
//! title) in the docid prompt, the `<retrieve>` marker, then the passage's docid tokens, with
//! the loss on the docid. The same prompt is what [`crate::retrieve::docid`] decodes from.

use super::data::{DataOptions, Example, Query, Task};
use crate::corpus::Corpus;
use crate::docids::{DocidTree, DocidVocab};
use crate::error::Result;
use crate::prompts::PromptCodec;
use rand::rngs::StdRng;
use rand::SeedableRng;
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
