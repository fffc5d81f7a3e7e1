//! "Why not this passage?": how the model scores any passage the user picks for a question it
//! has already run, whether or not the beams reached it. The passage's title and text are forced
//! through the tries (one teacher-forced pass gives every token's log-probability, its
//! log-probability under the trie and how many tokens the trie allowed there), then its query
//! likelihood and self-assessment are read as the pipeline would, and it is placed among the
//! query's candidates with the same ranking formula.

use super::trace::{
    PassageCandidate, RetrievalTrace, StepKind, Timings, TitleCandidate, TokenStep,
};
use super::{
    fill_title_scores, rows_to_vecs, search_logprob, trie_logprob, RetrieveOptions, Retriever,
};
use crate::error::{Error, Result};
use crate::trie::TokenTrie;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// What the model makes of one chosen passage for a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub passage_id: String,
    pub title: String,
    /// The title's tokens, forced through the title trie.
    pub title_steps: Vec<TokenStep>,
    /// log P(title | query).
    pub title_logprob: f64,
    /// exp(mean token log-probability), what S_T is computed from.
    pub title_norm_prob: f64,
    /// 1-based rank of the title among the query's title beams, when a beam found it.
    pub title_beam_rank: Option<usize>,
    /// 1-based place its probability takes among the beams' titles (where it would stand).
    pub title_place: usize,
    /// The passage's tokens after its title, forced through the title's passage trie.
    pub passage_steps: Vec<TokenStep>,
    /// log P_trie(passage | query, title).
    pub passage_logprob: f64,
    /// Mean question log-probability after reading the passage (0 when not computed).
    pub query_logprob: f64,
    /// P(reject) from self-assessment (0.5 when assessment is off).
    pub p_reject: f64,
    /// True when the passage was already among the query's candidates.
    pub was_candidate: bool,
    /// Its scores and rank among the candidates once it is added (1-based).
    pub s_t: f64,
    pub s_gen: f64,
    pub s_p: f64,
    pub s_q: f64,
    pub s: f64,
    pub rank: usize,
    /// The query's candidates with this passage among them, ranked.
    pub placed: RetrievalTrace,
}

impl Explanation {
    /// Re-ranks the placed candidates at new weights (tau, delta, the passage and query
    /// weights moved after the question ran) and takes the passage's new scores and rank.
    pub fn rerank(&mut self, w: super::score::RankWeights) {
        self.placed.rerank(w);
        if let Some(c) = self
            .placed
            .candidates
            .iter()
            .find(|c| c.passage_id == self.passage_id)
        {
            self.s_t = self.placed.titles[c.title_rank].s_t;
            self.s_gen = c.s_gen;
            self.s_p = c.s_p;
            self.s_q = c.s_q;
            self.s = c.s;
            self.rank = c.rank;
        }
    }
}

/// Walks `seq` through `trie`, turning each position's log-probability row into a step: the
/// token, its log-probability, how many tokens the trie allowed and its log-probability
/// renormalised over them (0 when only one was allowed, as in the beam search).
fn forced_steps(
    trie: &TokenTrie,
    seq: &[u32],
    rows: &[Vec<f32>],
    piece: &dyn Fn(u32) -> String,
) -> Result<Vec<TokenStep>> {
    let mut cursor = trie.root();
    let mut steps = Vec::with_capacity(seq.len());
    for (&token, lp) in seq.iter().zip(rows) {
        let logprob = lp.get(token as usize).copied();
        let (kind, alternatives, trie_lp) = if trie.unique_item(cursor).is_some() {
            (StepKind::AutoComplete, 1, 0.0)
        } else {
            let allowed = trie.allowed(cursor);
            match allowed.len() {
                0 => return Err(Error::invalid("the passage left the trie")),
                1 => (StepKind::Forced, 1, 0.0),
                n => {
                    let vals = allowed.iter().map(|&t| lp[t as usize] as f64);
                    let norm = super::score::log_sum_exp(vals);
                    (
                        StepKind::Chosen,
                        n as u32,
                        (lp[token as usize] as f64 - norm) as f32,
                    )
                }
            }
        };
        steps.push(TokenStep {
            token,
            piece: piece(token),
            kind,
            logprob,
            alternatives,
            trie_logprob: trie_lp,
            rivals: match kind {
                StepKind::Chosen => {
                    let mut r = super::trace::rivals(trie.allowed(cursor), lp, token);
                    for x in &mut r {
                        x.piece = piece(x.token);
                    }
                    r
                }
                _ => Vec::new(),
            },
        });
        cursor = trie
            .advance(cursor, token)
            .ok_or_else(|| Error::invalid("the passage left the trie"))?;
    }
    Ok(steps)
}

impl Retriever<'_> {
    /// Scores passage `passage_index` for the query of `trace` (which this retriever ran with
    /// `opts`) and places it among the trace's candidates.
    pub fn explain(
        &self,
        trace: &RetrievalTrace,
        passage_index: usize,
        opts: &RetrieveOptions,
    ) -> Result<Explanation> {
        let passage = self.corpus.passages.get(passage_index).ok_or_else(|| {
            Error::invalid(format!("no passage number {passage_index} in the corpus"))
        })?;
        let t_idx = self.corpus.title_of[passage_index];
        let item = self.corpus.by_title[t_idx]
            .iter()
            .position(|&p| p == passage_index)
            .ok_or_else(|| Error::invalid("the passage is missing from its title's list"))?;
        let title_seq = self.trie.titles.sequence(t_idx as u32).to_vec();
        let ptrie = &self.trie.passages[t_idx];
        let passage_seq = ptrie.sequence(item as u32).to_vec();

        // One teacher-forced pass over prompt + title + passage.
        let prompt = self.codec.query(self.tokenizer, &trace.query)?;
        let mut row = prompt.clone();
        row.extend_from_slice(&title_seq);
        row.extend_from_slice(&passage_seq);
        let mut timings = Timings::default();
        let input = Tensor::from_vec(row.clone(), (1, row.len()), self.model.device())?;
        let hidden = self.model.hidden(&input, None)?.squeeze(0)?;
        let first = prompt.len() - 1;
        let n = title_seq.len() + passage_seq.len();
        timings.count_pass(row.len(), n);
        let picked = hidden.narrow(0, first, n)?;
        let lp = rows_to_vecs(&crate::kernels::loss::log_softmax(
            &self.model.logits(&picked)?,
        )?)?;
        let piece = |t: u32| self.piece(t);
        let title_steps = forced_steps(
            &self.trie.titles,
            &title_seq,
            &lp[..title_seq.len()],
            &piece,
        )?;
        let passage_steps = forced_steps(ptrie, &passage_seq, &lp[title_seq.len()..], &piece)?;

        let mut title = TitleCandidate {
            title_index: t_idx,
            title: self.corpus.titles[t_idx].clone(),
            trie_logprob: trie_logprob(&title_steps),
            steps: title_steps,
            logprob: 0.0,
            norm_prob: 0.0,
            search_logprob: 0.0,
            prior_logprob: self.title_prior.map(|p| p[t_idx]),
            s_t: 0.0,
        };
        fill_title_scores(&mut title);
        title.search_logprob = search_logprob(&title.steps);
        let title_beam_rank = trace
            .titles
            .iter()
            .position(|t| t.title_index == t_idx)
            .map(|r| r + 1);
        let title_place = 1 + trace
            .titles
            .iter()
            .filter(|t| t.title_index != t_idx && t.norm_prob > title.norm_prob)
            .count();

        let mut candidate = PassageCandidate {
            passage_index,
            passage_id: passage.id.clone(),
            title_rank: 0,
            title: passage.title.clone(),
            text: passage.text.clone(),
            passage_logprob: trie_logprob(&passage_steps),
            generated_logprob: passage_steps
                .iter()
                .filter(|s| s.kind != StepKind::AutoComplete)
                .filter_map(|s| s.logprob.map(f64::from))
                .sum(),
            steps: passage_steps,
            query_logprob: 0.0,
            p_reject: 0.5,
            s_gen: 0.0,
            s_p: 0.0,
            s_q: 0.0,
            s: 0.0,
            rank: 0,
        };
        if opts.likelihood {
            let reader = match (opts.likelihood_base, self.base) {
                (true, Some(base)) => base,
                _ => self.model,
            };
            candidate.query_logprob =
                self.query_logprobs(reader, &trace.query, &[passage_index], &mut timings)?[0];
        }
        if opts.assess {
            let mut cache = self.model.new_cache();
            self.forward_last(std::slice::from_ref(&prompt), &mut cache, &mut timings)?;
            let mut verdict = title_seq.clone();
            verdict.extend(self.verdict_row(&candidate));
            let v = self.verdicts(
                &cache,
                &[verdict],
                &[Vec::new()],
                (&[0], &[0.0]),
                1,
                &mut timings,
            )?;
            candidate.p_reject = v.p_reject[0];
        }

        // Place it: the trace's own candidate when the beams found it, else a new one.
        let mut placed = trace.clone();
        let was_candidate = placed
            .candidates
            .iter()
            .any(|c| c.passage_index == passage_index);
        if !was_candidate {
            let tr = match title_beam_rank {
                Some(r) => r - 1,
                None => {
                    placed.titles.push(title.clone());
                    placed.titles.len() - 1
                }
            };
            candidate.title_rank = tr;
            placed.candidates.push(candidate.clone());
        }
        placed.rerank(trace.weights());
        let c = placed
            .candidates
            .iter()
            .find(|c| c.passage_index == passage_index)
            .ok_or_else(|| Error::invalid("the placed passage went missing"))?;
        let s_t = placed.titles[c.title_rank].s_t;
        Ok(Explanation {
            passage_id: passage.id.clone(),
            title: passage.title.clone(),
            title_logprob: title.logprob,
            title_norm_prob: title.norm_prob,
            title_steps: title.steps,
            title_beam_rank,
            title_place,
            passage_logprob: candidate.passage_logprob,
            passage_steps: candidate.steps,
            query_logprob: if was_candidate {
                c.query_logprob
            } else {
                candidate.query_logprob
            },
            p_reject: if was_candidate {
                c.p_reject
            } else {
                candidate.p_reject
            },
            was_candidate,
            s_t,
            s_gen: c.s_gen,
            s_p: c.s_p,
            s_q: c.s_q,
            s: c.s,
            rank: c.rank,
            placed,
        })
    }
}
