//! The docid mode's retrieval: a beam search over docid tokens, read through the retrieval
//! pathway and scored by the docid head, constrained by the docid trie so every beam ends on a
//! real passage. Each step records its level, index, log-probability and cluster label, so the
//! path down the cluster tree can be shown.

use crate::corpus::Corpus;
use crate::docids::{self, DocidTree};
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::prompts::PromptCodec;
use crate::train::docid_data::DocidIds;
use crate::trie::{Cursor, TokenTrie};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

/// One generated docid token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocidStep {
    pub level: usize,
    pub index: u16,
    /// Its log-probability under the docid head (over the whole docid vocabulary).
    pub logprob: f64,
    /// The cluster it names (top terms); empty at a leaf's passage number.
    pub label: Vec<String>,
}

/// A finished beam: a passage and the path to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocidBeam {
    pub passage_id: String,
    pub title: String,
    /// As people read it, `3-7-12`.
    pub docid: String,
    pub steps: Vec<DocidStep>,
    /// Sum of the steps' log-probabilities: the ranking score.
    pub logprob: f64,
}

/// What one docid query did, best beam first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocidTrace {
    pub query: String,
    pub beams: Vec<DocidBeam>,
    pub ms: f64,
    /// The answer read from the top passages (with the pathway closed: the model's own reading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<DocidAnswer>,
}

/// An answer and the passage it cites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocidAnswer {
    pub text: String,
    /// The passage the answer comes from.
    pub passage_id: String,
    /// Every passage the reader was given, best first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
}

impl DocidTrace {
    /// Passage ids, best first.
    pub fn ranked_ids(&self) -> Vec<&str> {
        self.beams.iter().map(|b| b.passage_id.as_str()).collect()
    }
}

/// What the docid search borrows.
pub struct DocidRetriever<'a> {
    /// An inference copy with a retrieval pathway.
    pub model: &'a Llama,
    pub tokenizer: &'a Tokenizer,
    pub codec: &'a PromptCodec,
    pub corpus: &'a Corpus,
    pub tree: &'a DocidTree,
    /// Over docid token offsets (`tree.trie(0)`), item `i` being passage `i`.
    pub trie: &'a TokenTrie,
    pub ids: DocidIds,
}

struct Partial {
    cursor: Cursor,
    offsets: Vec<u32>,
    logprobs: Vec<f64>,
    total: f64,
    /// Row of the cache this beam continues from.
    row: usize,
}

impl DocidRetriever<'_> {
    /// The `beams` best docids for `query` (fewer when the corpus has fewer passages).
    pub fn retrieve(&self, query: &str, beams: usize) -> Result<DocidTrace> {
        let started = std::time::Instant::now();
        if query.trim().is_empty() {
            return Err(Error::invalid("the question is empty: type a question"));
        }
        let beams = beams.max(1);
        let dev = self.model.device();
        let prompt = self.ids.prompt(self.codec, self.tokenizer, query)?;
        let mut cache = self.model.new_cache();
        let input = Tensor::new(prompt.as_slice(), dev)?.unsqueeze(0)?;
        let mut rows = self.model.docid_logprobs(&input, Some(&mut cache))?;
        let mut active = vec![Partial {
            cursor: self.trie.root(),
            offsets: Vec::new(),
            logprobs: Vec::new(),
            total: 0.0,
            row: 0,
        }];
        let mut finished: Vec<(u32, Partial)> = Vec::new();
        while !active.is_empty() {
            let lp: Vec<Vec<f32>> = rows.to_vec2()?;
            // Every allowed continuation of every live beam, and the finished beams, compete
            // for the `beams` places.
            let mut grown: Vec<(Option<u32>, Partial)> = Vec::new();
            for beam in &active {
                // Below the point where a prefix names one passage the trie keeps no
                // children: the passage's own next token is the only continuation.
                let next: &[u32] = match self.trie.unique_item(beam.cursor) {
                    Some(_) => {
                        let rest = self.trie.completion(beam.cursor);
                        &rest[..rest.len().min(1)]
                    }
                    None => self.trie.allowed(beam.cursor),
                };
                for &offset in next {
                    let Some(cursor) = self.trie.advance(beam.cursor, offset) else {
                        continue;
                    };
                    let l = lp[beam.row][offset as usize] as f64;
                    let mut offsets = beam.offsets.clone();
                    offsets.push(offset);
                    let mut logprobs = beam.logprobs.clone();
                    logprobs.push(l);
                    grown.push((
                        self.trie.finished_item(cursor),
                        Partial {
                            cursor,
                            offsets,
                            logprobs,
                            total: beam.total + l,
                            row: beam.row,
                        },
                    ));
                }
            }
            grown.extend(finished.drain(..).map(|(item, p)| (Some(item), p)));
            grown.sort_by(|a, b| b.1.total.total_cmp(&a.1.total));
            grown.truncate(beams);
            let mut next = Vec::new();
            for (item, p) in grown {
                match item {
                    Some(item) => finished.push((item, p)),
                    None => next.push(p),
                }
            }
            if next.is_empty() {
                break;
            }
            let parents: Vec<u32> = next.iter().map(|p| p.row as u32).collect();
            cache = cache.select(&parents)?;
            let tokens: Vec<u32> = next
                .iter()
                .map(|p| self.ids.first + p.offsets[p.offsets.len() - 1])
                .collect();
            for (r, p) in next.iter_mut().enumerate() {
                p.row = r;
            }
            let input = Tensor::new(tokens.as_slice(), dev)?.unsqueeze(1)?;
            rows = self.model.docid_logprobs(&input, Some(&mut cache))?;
            active = next;
        }
        finished.sort_by(|a, b| b.1.total.total_cmp(&a.1.total));
        let beams = finished
            .into_iter()
            .map(|(item, p)| self.beam(item as usize, p))
            .collect::<Result<Vec<_>>>()?;
        Ok(DocidTrace {
            query: query.to_string(),
            beams,
            ms: started.elapsed().as_secs_f64() * 1e3,
            answer: None,
        })
    }

    fn beam(&self, passage: usize, p: Partial) -> Result<DocidBeam> {
        let vocab = self.ids.vocab;
        let doc = self
            .corpus
            .passages
            .get(passage)
            .ok_or_else(|| Error::invalid(format!("docid item {passage} is not a passage")))?;
        let path: Vec<u16> = p.offsets.iter().map(|&o| vocab.split(o).1).collect();
        let steps = p
            .offsets
            .iter()
            .zip(&p.logprobs)
            .enumerate()
            .map(|(level, (&o, &logprob))| DocidStep {
                level,
                index: vocab.split(o).1,
                logprob,
                label: self
                    .tree
                    .cluster(&path[..=level])
                    .map(|c| c.label.clone())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(DocidBeam {
            passage_id: doc.id.clone(),
            title: doc.title.clone(),
            docid: docids::show(&path),
            steps,
            logprob: p.total,
        })
    }
}
