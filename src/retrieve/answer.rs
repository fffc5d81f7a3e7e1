//! The answer read from a passage: either in the format the self-assessment task trains (the
//! query, title and passage, then "Yes, it can answer the question. Answer:"), or by the base
//! model asked in its own instruction format. A run that never trained the answer (NQ's recipe
//! trains no self-assessment) has only seen that format in retrieval training, where a
//! question is followed by a title: asked for an answer there it repeats the question, while the
//! instruction-tuned base model reads the passage and answers (see [`AnswerReader`]).

use super::trace::Timings;
use super::{rows_to_vecs, Retriever};
use crate::error::Result;
use crate::generate::instruction_prompt;
use crate::model::tokenizer::encode;
use crate::model::{KvCache, Llama};
use crate::prompts::clean;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Who reads the answer out of the top passage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum AnswerReader {
    /// The trained format when the run trained answers (self-assessment on questions with
    /// answer strings), the base model otherwise; the session decides (`QuerySession`).
    #[default]
    Auto,
    /// The model, in the self-assessment task's format: after the acceptance verdict.
    Trained,
    /// The base model before fine-tuning (the model itself when it has no adapters), asked in
    /// its instruction format.
    Base,
}

impl AnswerReader {
    /// Every choice, in the order the Query panel lists them.
    pub const ALL: [AnswerReader; 3] = [
        AnswerReader::Auto,
        AnswerReader::Trained,
        AnswerReader::Base,
    ];

    /// A short label for menus and traces.
    pub fn label(self) -> &'static str {
        match self {
            AnswerReader::Auto => "as the run was trained",
            AnswerReader::Trained => "trained verdict format",
            AnswerReader::Base => "base model, instructed",
        }
    }
}

/// Passage tokens the instructed answer reads at most (passages are ~100-200 words).
const ANSWER_EXCERPT: usize = 384;
/// What the base model is asked. Demo dev, 48 questions, BM25's top passage read by
/// SmolLM2-135M-Instruct: answer EM 0.062 for "answer the question from the passage in a few
/// words", 0.125 for this (free or constrained to a span of the passage), 0.104 with a worked
/// example added, 0.000 without the "Answer:" lead (docs/benchmarks.md, session 21).
const ANSWER_INSTRUCTION: &str = "Read the passage, then answer the question with a short \
phrase copied from the passage: a name, a date, a number or a few words. Do not write a sentence.";
/// The same, for several passages (the answer is copied from one of them).
const ANSWER_INSTRUCTION_MANY: &str = "Read the passages, then answer the question with a short \
phrase copied from one of them: a name, a date, a number or a few words. Do not write a sentence.";

impl Retriever<'_> {
    /// The answer to `query` read from passage `pidx` by `reader`: the base model in its
    /// instruction format (`AnswerReader::Base`), or the model in the trained format
    /// (otherwise). The retriever + reader baseline and the docid mode answer through this.
    ///
    /// The base model reads every passage of `pidxs` (best first) and copies its answer from
    /// one of them; the trained format reads the first only. Returns the answer and the passage
    /// it came from. `pidxs` must not be empty.
    pub fn answer_from(
        &self,
        query: &str,
        pidxs: &[usize],
        reader: AnswerReader,
        max_tokens: usize,
    ) -> Result<(String, usize)> {
        let mut timings = Timings::default();
        let Some(&pidx) = pidxs.first() else {
            return Err(crate::error::Error::invalid("no passage to answer from"));
        };
        match reader {
            AnswerReader::Base => self.instructed_answer(query, pidxs, max_tokens, &mut timings),
            AnswerReader::Auto | AnswerReader::Trained => {
                let p = &self.corpus.passages[pidx];
                let mut ids = self.codec.query(self.tokenizer, query)?;
                ids.extend(self.codec.title(self.tokenizer, &p.title)?);
                ids.extend(self.codec.passage(self.tokenizer, &p.text)?);
                ids.extend_from_slice(&self.codec.assess_cue);
                ids.extend_from_slice(&self.codec.accept);
                let mut cache = self.model.new_cache();
                let text = self.greedy(self.model, &ids, &mut cache, max_tokens, &mut timings)?;
                Ok((text, pidx))
            }
        }
    }

    /// The base model's answer (the model itself when there is no base), asked
    /// [`ANSWER_INSTRUCTION`] in the model's chat format over the passages `pidxs` and read as a
    /// span of one of them: the answer and the passage it came from.
    pub(super) fn instructed_answer(
        &self,
        query: &str,
        pidxs: &[usize],
        max_tokens: usize,
        timings: &mut Timings,
    ) -> Result<(String, usize)> {
        let (ids, bodies) = self.answer_prompt(query, pidxs)?;
        // The excerpts end to end, a newline between them (it ends a span: no answer runs from
        // one passage into the next); `owner[k]` is the passage of position k.
        let newline = encode(self.tokenizer, "\n")?;
        let mut spans: Vec<u32> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        for (body, &p) in bodies.iter().zip(pidxs) {
            if !spans.is_empty() {
                spans.extend_from_slice(&newline);
                owner.extend(std::iter::repeat_n(p, newline.len()));
            }
            spans.extend_from_slice(body);
            owner.extend(std::iter::repeat_n(p, body.len()));
        }
        let reader = self.base.unwrap_or(self.model);
        let mut cache = reader.new_cache();
        let (text, start) = self.extract(reader, &ids, &spans, &mut cache, max_tokens, timings)?;
        let from = start
            .and_then(|k| owner.get(k).copied())
            .unwrap_or(pidxs[0]);
        Ok((text, from))
    }

    /// The instruction the base model answers (each passage's title and excerpt, then the
    /// question) and each excerpt's tokens as they appear in it. One passage is asked
    /// [`ANSWER_INSTRUCTION`], several [`ANSWER_INSTRUCTION_MANY`].
    pub fn answer_prompt(&self, query: &str, pidxs: &[usize]) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
        const MARK: &str = "\u{1}PASSAGE\u{1}";
        let instruction = if pidxs.len() > 1 {
            ANSWER_INSTRUCTION_MANY
        } else {
            ANSWER_INSTRUCTION
        };
        let mut text = instruction.to_string();
        for &pidx in pidxs {
            let p = &self.corpus.passages[pidx];
            text.push_str(&format!("\n\nTitle: {}\nPassage:{MARK}", clean(&p.title)));
        }
        text.push_str(&format!("\n\nQuestion: {}", clean(query)));
        let prompt = instruction_prompt(self.tokenizer, &text, "Answer:");
        let mut pieces = prompt.split(MARK);
        let mut ids = encode(self.tokenizer, pieces.next().unwrap_or(""))?;
        let mut bodies = Vec::with_capacity(pidxs.len());
        for (&pidx, piece) in pidxs.iter().zip(pieces) {
            let p = &self.corpus.passages[pidx];
            let mut body = encode(self.tokenizer, &format!(" {}", p.text.trim()))?;
            body.truncate(ANSWER_EXCERPT);
            ids.extend_from_slice(&body);
            ids.extend(encode(self.tokenizer, piece)?);
            bodies.push(body);
        }
        Ok((ids, bodies))
    }

    /// Greedy decoding by `reader` after `ids` constrained to a span of `passage` (token ids):
    /// the answer is always words of the cited passage, as the answers of extractive QA are.
    /// Returns the answer and where in `passage` the span read starts (None: no span).
    /// Each step takes the likeliest token that continues some occurrence of the span so far;
    /// the span ends when the likeliest way to end it (end of text or of turn, a newline or
    /// punctuation, among the model's top choices) beats every continuation.
    pub(super) fn extract(
        &self,
        reader: &Llama,
        ids: &[u32],
        passage: &[u32],
        cache: &mut KvCache,
        max_tokens: usize,
        timings: &mut Timings,
    ) -> Result<(String, Option<usize>)> {
        /// How many of the model's top tokens are checked for a way to end the span.
        const END_CHOICES: usize = 20;
        let end_of_turn = self.tokenizer.token_to_id("<|im_end|>");
        let ends = |t: u32| -> Result<bool> {
            if t == self.codec.eos || Some(t) == end_of_turn {
                return Ok(true);
            }
            let piece = self.tokenizer.decode(&[t], true)?;
            let piece = piece.trim_start_matches(' ');
            Ok(piece.is_empty()
                || piece.contains('\n')
                || piece.starts_with(['.', ',', ';', ':', '!', '?', ')']))
        };
        // Whether each passage token ends a span (it is known per position, once).
        let passage_ends: Vec<bool> = passage.iter().map(|&t| ends(t)).collect::<Result<_>>()?;
        // Positions where an occurrence of the span so far starts (none at an ending token).
        let mut starts: Vec<usize> = (0..passage.len()).filter(|&s| !passage_ends[s]).collect();
        let mut out: Vec<u32> = Vec::new();
        let mut order: Vec<usize> = Vec::new();
        let mut lp = last_logprobs(reader, ids, cache, timings)?;
        while out.len() < max_tokens {
            let k = out.len();
            let best_next = starts
                .iter()
                .map(|&s| s + k)
                .filter(|&at| at < passage.len())
                .max_by(|&a, &b| {
                    let (ta, tb) = (passage[a], passage[b]);
                    lp[ta as usize]
                        .total_cmp(&lp[tb as usize])
                        .then(tb.cmp(&ta))
                });
            let Some(at) = best_next else {
                break;
            };
            // Punctuation inside the passage ends the span too: answers are phrases.
            if passage_ends[at] {
                break;
            }
            let next = passage[at];
            if k > 0 {
                order.clear();
                order.extend(0..lp.len());
                let top = END_CHOICES.min(order.len());
                order.select_nth_unstable_by(top.saturating_sub(1), |&a, &b| {
                    lp[b].total_cmp(&lp[a])
                });
                let mut best_end = f32::NEG_INFINITY;
                for &t in &order[..top] {
                    if lp[t] > best_end && ends(t as u32)? {
                        best_end = lp[t];
                    }
                }
                if best_end > lp[next as usize] {
                    break;
                }
            }
            out.push(next);
            starts.retain(|&s| passage.get(s + k) == Some(&next));
            lp = last_logprobs(reader, &[next], cache, timings)?;
        }
        let text = self.tokenizer.decode(&out, true)?;
        let start = (!out.is_empty()).then(|| starts.first().copied()).flatten();
        Ok((text.trim().to_string(), start))
    }

    /// Greedy decoding by `reader` after `ids` until end-of-text (or the chat format's end of
    /// turn), a newline or `max_tokens`.
    pub(super) fn greedy(
        &self,
        reader: &Llama,
        ids: &[u32],
        cache: &mut KvCache,
        max_tokens: usize,
        timings: &mut Timings,
    ) -> Result<String> {
        let end_of_turn = self.tokenizer.token_to_id("<|im_end|>");
        let mut out: Vec<u32> = Vec::new();
        let mut lp = last_logprobs(reader, ids, cache, timings)?;
        for _ in 0..max_tokens {
            let next = lp
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .unwrap_or(self.codec.eos);
            if next == self.codec.eos || Some(next) == end_of_turn {
                break;
            }
            out.push(next);
            // A newline ends the answer; only the new token can have brought one.
            if self.tokenizer.decode(&[next], true)?.contains('\n') {
                break;
            }
            lp = last_logprobs(reader, &[next], cache, timings)?;
        }
        let text = self.tokenizer.decode(&out, true)?;
        Ok(text.lines().next().unwrap_or("").trim().to_string())
    }
}

/// The next-token log-probabilities after `ids`, continuing `cache`.
fn last_logprobs(
    reader: &Llama,
    ids: &[u32],
    cache: &mut KvCache,
    timings: &mut Timings,
) -> Result<Vec<f32>> {
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), reader.device())?;
    timings.count_pass(ids.len(), 1);
    Ok(
        rows_to_vecs(&reader.next_token_logprobs(&input, Some(cache))?)?
            .pop()
            .unwrap_or_default(),
    )
}
