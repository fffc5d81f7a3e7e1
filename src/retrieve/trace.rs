//! What a query did, step by step: every token of every beam (chosen or forced by the trie),
//! every candidate's scores, the ranking, the answer and the timings. The Query panel shows it,
//! `--traces` keeps it, and `tune` re-ranks it without the model.

use super::score;
use serde::{Deserialize, Serialize};

/// How a generated token came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    /// The model picked it among several tokens the trie allowed.
    Chosen,
    /// The trie allowed only this token.
    Forced,
    /// Appended without a model call once the prefix identified one item.
    AutoComplete,
}

/// One token of a title or passage expansion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenStep {
    pub token: u32,
    pub piece: String,
    pub kind: StepKind,
    /// The model's log-probability of the token (unconstrained softmax), when it was computed.
    pub logprob: Option<f32>,
    /// How many tokens the trie allowed at this point.
    pub alternatives: u32,
    /// The token's log-probability under the trie: the model's distribution renormalised over
    /// the tokens the trie allowed (0 when only one was allowed).
    #[serde(default)]
    pub trie_logprob: f32,
    /// The likeliest other tokens the trie allowed here (at most [`RIVALS`]), best first: what
    /// the model would have written instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rivals: Vec<Rival>,
}

/// How many rivals a step keeps.
pub const RIVALS: usize = 3;

/// A token the trie allowed at a step besides the one taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rival {
    pub token: u32,
    pub piece: String,
    pub logprob: f32,
}

/// The [`RIVALS`] likeliest tokens of `allowed` other than `taken`, under `logprobs`, best
/// first (pieces are filled in later).
pub fn rivals(allowed: &[u32], logprobs: &[f32], taken: u32) -> Vec<Rival> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(RIVALS + 1);
    for &t in allowed.iter().filter(|&&t| t != taken) {
        let lp = logprobs
            .get(t as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        if best.len() == RIVALS && best.last().is_some_and(|&(_, worst)| lp <= worst) {
            continue;
        }
        let at = best.partition_point(|&(_, l)| l >= lp);
        best.insert(at, (t, lp));
        best.truncate(RIVALS);
    }
    best.into_iter()
        .map(|(token, logprob)| Rival {
            token,
            piece: String::new(),
            logprob,
        })
        .collect()
}

/// A title from the beam search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TitleCandidate {
    pub title_index: usize,
    pub title: String,
    pub steps: Vec<TokenStep>,
    /// log P(title segment | query), summed over its tokens (over those the beam search read
    /// for a title the candidate budget leaves out: its auto-completed tail is never read).
    pub logprob: f64,
    /// exp(mean token log-probability): the length-normalised sequence probability.
    pub norm_prob: f64,
    /// log P_trie(title | query): the sum of its tokens' log-probabilities under the trie.
    #[serde(default)]
    pub trie_logprob: f64,
    /// The title search's score: log P of the tokens it read (up to where the title is unique),
    /// which orders the titles for the candidate budget.
    #[serde(default)]
    pub search_logprob: f64,
    /// log P of the same tokens after an empty question: the title's prior (None when not
    /// computed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_logprob: Option<f64>,
    pub s_t: f64,
}

/// A passage candidate under one of the titles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassageCandidate {
    pub passage_index: usize,
    pub passage_id: String,
    /// Index into `RetrievalTrace::titles`.
    pub title_rank: usize,
    pub title: String,
    pub text: String,
    pub steps: Vec<TokenStep>,
    /// Sum of log-probabilities of the tokens the model generated (not auto-completed ones).
    pub generated_logprob: f64,
    /// log P_trie(passage | query, title): how likely the model generates this passage among
    /// the title's passages (its tokens' log-probabilities under the trie).
    #[serde(default)]
    pub passage_logprob: f64,
    /// Mean log-probability of the question's tokens after reading this passage (the query
    /// likelihood; 0 when not computed).
    #[serde(default)]
    pub query_logprob: f64,
    pub p_reject: f64,
    /// The passage term alone, within the title (see [`score`]).
    #[serde(default)]
    pub s_gen: f64,
    pub s_p: f64,
    /// The query-likelihood term alone, over all candidates.
    #[serde(default)]
    pub s_q: f64,
    pub s: f64,
    /// 1-based final rank.
    pub rank: usize,
}

/// One line of the final ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedPassage {
    pub passage_id: String,
    pub title: String,
    pub text: String,
    pub s_t: f64,
    #[serde(default)]
    pub s_gen: f64,
    pub s_p: f64,
    #[serde(default)]
    pub s_q: f64,
    pub s: f64,
}

/// The generated answer and the passages it was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    /// The passage the answer comes from.
    pub cited: Vec<String>,
    /// Every passage the reader was given, best first (the cited one among them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    /// Who read it: the trained format or the base model ([`super::AnswerReader`]).
    #[serde(default)]
    pub reader: super::AnswerReader,
}

/// The size of one batched forward pass, so a benchmark can replay a query's matrix work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ForwardPass {
    /// Token positions run through the transformer body.
    pub rows: usize,
    /// Positions of those projected onto the vocabulary.
    pub logit_rows: usize,
}

/// Wall time per stage, milliseconds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    pub titles_ms: f64,
    pub passages_ms: f64,
    pub assess_ms: f64,
    #[serde(default)]
    pub likelihood_ms: f64,
    /// Passages whose query likelihood continued a reading kept from an earlier question.
    #[serde(default)]
    pub likelihood_reused: usize,
    pub answer_ms: f64,
    /// Model forward passes (batched) over all stages.
    pub forward_calls: usize,
    /// Token positions run through the transformer body, over all stages.
    pub tokens_forwarded: usize,
    /// Positions projected onto the vocabulary.
    pub logit_rows: usize,
    /// Every forward pass, in order.
    #[serde(default)]
    pub passes: Vec<ForwardPass>,
}

impl Timings {
    /// One line of where the time went, its parts joined by `sep`.
    pub fn summary(&self, sep: &str) -> String {
        let reused = match self.likelihood_reused {
            0 => String::new(),
            n => format!(" ({n} passages read before)"),
        };
        [
            format!("titles {:.0} ms", self.titles_ms),
            format!("passages {:.0} ms", self.passages_ms),
            format!("assessment {:.0} ms", self.assess_ms),
            format!("query likelihood {:.0} ms{reused}", self.likelihood_ms),
            format!("answer {:.0} ms", self.answer_ms),
            format!(
                "{} forward passes over {} token positions",
                self.forward_calls, self.tokens_forwarded
            ),
        ]
        .join(sep)
    }

    pub(super) fn count_pass(&mut self, rows: usize, logit_rows: usize) {
        self.forward_calls += 1;
        self.tokens_forwarded += rows;
        self.logit_rows += logit_rows;
        self.passes.push(ForwardPass { rows, logit_rows });
    }
}

/// Everything retrieval computed for one query, serialisable for export and the GUI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RetrievalTrace {
    pub query: String,
    pub tau: f64,
    pub delta: f64,
    #[serde(default)]
    pub passage_weight: f64,
    #[serde(default)]
    pub query_weight: f64,
    pub titles: Vec<TitleCandidate>,
    pub candidates: Vec<PassageCandidate>,
    /// Best first.
    pub ranking: Vec<RankedPassage>,
    pub answer: Option<Answer>,
    pub timings: Timings,
}

impl RetrievalTrace {
    /// The weights the ranking was last computed with.
    pub fn weights(&self) -> score::RankWeights {
        score::RankWeights {
            tau: self.tau,
            delta: self.delta,
            passage_weight: self.passage_weight,
            query_weight: self.query_weight,
        }
    }

    /// Recomputes S_T, S_gen, S_P, S and the ranking for new weights, without the model.
    pub fn rerank(&mut self, w: score::RankWeights) {
        self.tau = w.tau;
        self.delta = w.delta;
        self.passage_weight = w.passage_weight;
        self.query_weight = w.query_weight;
        let norm: Vec<f64> = self.titles.iter().map(|t| t.norm_prob).collect();
        let cands: Vec<score::CandidateInput> = self
            .candidates
            .iter()
            .map(|c| score::CandidateInput {
                title: c.title_rank,
                p_reject: c.p_reject,
                passage_logprob: c.passage_logprob,
                query_logprob: c.query_logprob,
            })
            .collect();
        let (s_t, s) = score::combined_scores(&norm, &cands, w);
        for (t, st) in self.titles.iter_mut().zip(s_t) {
            t.s_t = st;
        }
        for (c, sc) in self.candidates.iter_mut().zip(s) {
            c.s_gen = sc.s_gen;
            c.s_p = sc.s_p;
            c.s_q = sc.s_q;
            c.s = sc.s;
        }
        let mut order: Vec<usize> = (0..self.candidates.len()).collect();
        order.sort_by(|&a, &b| {
            self.candidates[b]
                .s
                .total_cmp(&self.candidates[a].s)
                .then(a.cmp(&b))
        });
        self.ranking = order
            .iter()
            .enumerate()
            .map(|(r, &i)| {
                let c = &mut self.candidates[i];
                c.rank = r + 1;
                RankedPassage {
                    passage_id: c.passage_id.clone(),
                    title: c.title.clone(),
                    text: c.text.clone(),
                    s_t: self.titles[c.title_rank].s_t,
                    s_gen: c.s_gen,
                    s_p: c.s_p,
                    s_q: c.s_q,
                    s: c.s,
                }
            })
            .collect();
    }

    /// Passage ids, best first.
    pub fn ranked_ids(&self) -> Vec<&str> {
        self.ranking.iter().map(|r| r.passage_id.as_str()).collect()
    }
}

#[cfg(test)]
mod rival_tests {
    use super::rivals;

    /// The likeliest allowed tokens other than the one taken, best first, at most three.
    #[test]
    fn rivals_are_the_likeliest_other_allowed_tokens() {
        let lp = [-0.5, -3.0, -1.0, -2.0, -0.1, -4.0];
        let r = rivals(&[0, 1, 2, 3, 5], &lp, 0);
        let tokens: Vec<u32> = r.iter().map(|r| r.token).collect();
        // Token 4 is likeliest but not allowed; token 0 was taken.
        assert_eq!(tokens, [2, 3, 1]);
        assert_eq!(r[0].logprob, -1.0);
        assert!(rivals(&[3], &lp, 3).is_empty());
    }
}
