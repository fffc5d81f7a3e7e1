//! The ranking's weights searched without the model: each evaluated query's retrieval numbers
//! (titles, candidates, P(reject), likelihoods) are kept as a [`RankRecord`], and any setting of
//! the weights is scored on them in microseconds. `selfret eval --traces` writes the records,
//! `selfret tune` searches them.

use crate::corpus::Corpus;
use crate::retrieve::score::{log_sum_exp, scores_under_titles, CandidateInput, RankWeights};
use crate::retrieve::RetrievalTrace;
use crate::train::Query;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// One title beam's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TitleRecord {
    pub norm_prob: f64,
    pub logprob: f64,
    pub trie_logprob: f64,
    /// The title search's score (what orders titles for the candidate budget).
    #[serde(default)]
    pub search_logprob: f64,
    /// The title's prior (log-probability of the same tokens after an empty question).
    #[serde(default)]
    pub prior_logprob: Option<f64>,
    /// Passages under the title (what the candidate budget spends on it; 0 in records
    /// written before it was kept).
    #[serde(default)]
    pub passages: usize,
    /// The title is a gold passage's title.
    pub gold: bool,
}

/// One candidate's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    pub passage_id: String,
    pub title_rank: usize,
    pub p_reject: f64,
    pub passage_logprob: f64,
    #[serde(default)]
    pub query_logprob: f64,
    pub gold: bool,
}

impl CandidateRecord {
    /// The numbers the ranking reads.
    pub fn input(&self) -> CandidateInput {
        CandidateInput {
            title: self.title_rank,
            p_reject: self.p_reject,
            passage_logprob: self.passage_logprob,
            query_logprob: self.query_logprob,
        }
    }
}

/// What the ranking of one query can be recomputed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankRecord {
    pub query_id: String,
    pub question: String,
    pub titles: Vec<TitleRecord>,
    pub candidates: Vec<CandidateRecord>,
}

impl RankRecord {
    /// The record of `trace`, the retrieval of query `q` over `corpus`.
    pub fn new(q: &Query, trace: &RetrievalTrace, corpus: &Corpus) -> Self {
        let gold_titles: Vec<&str> = q
            .positive_ids
            .iter()
            .filter_map(|g| corpus.index_of(g))
            .map(|i| corpus.passages[i].title.as_str())
            .collect();
        RankRecord {
            query_id: q.id.clone(),
            question: q.question.clone(),
            titles: trace
                .titles
                .iter()
                .map(|t| TitleRecord {
                    norm_prob: t.norm_prob,
                    logprob: t.logprob,
                    trie_logprob: t.trie_logprob,
                    search_logprob: t.search_logprob,
                    prior_logprob: t.prior_logprob,
                    passages: corpus.by_title[t.title_index].len(),
                    gold: gold_titles.contains(&t.title.as_str()),
                })
                .collect(),
            candidates: trace
                .candidates
                .iter()
                .map(|c| CandidateRecord {
                    passage_id: c.passage_id.clone(),
                    title_rank: c.title_rank,
                    p_reject: c.p_reject,
                    passage_logprob: c.passage_logprob,
                    query_logprob: c.query_logprob,
                    gold: q.positive_ids.contains(&c.passage_id),
                })
                .collect(),
        }
    }
}

/// What the title term is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TitleTerm {
    /// exp(mean token log-probability) (the paper).
    NormProb,
    /// The mean token log-probability.
    MeanLogprob,
    /// log P_trie(title): the model's distribution renormalised over the trie, summed.
    TrieLogprob,
}

/// A full setting of the ranking: the product's weights plus variants measured against them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub weights: RankWeights,
    pub title_term: TitleTerm,
    /// Weight of (1 - P(reject)) / delta across titles too (0: within titles only, the paper).
    pub global_assessment: f64,
}

/// Ranking metrics of one setting over the records.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TuneMetrics {
    pub hits1: f64,
    pub hits5: f64,
    pub mrr5: f64,
    pub title1: f64,
    pub in_candidates: f64,
}

impl TitleTerm {
    /// The value the title softmax reads for `t`.
    fn value(self, t: &TitleRecord) -> f64 {
        match self {
            TitleTerm::NormProb => t.norm_prob,
            TitleTerm::MeanLogprob if t.norm_prob > 0.0 => t.norm_prob.ln(),
            TitleTerm::MeanLogprob => f64::NEG_INFINITY,
            TitleTerm::TrieLogprob => t.trie_logprob,
        }
    }
}

/// The temperature as the title softmax uses it.
fn title_temperature(tau: f64) -> f64 {
    tau.max(1e-6)
}

/// log of the title softmax's denominator for `r` under `term` and `tau`: with it, S_T of one
/// title costs one exp, whatever the number of titles.
fn title_log_norm(r: &RankRecord, term: TitleTerm, tau: f64) -> f64 {
    let t = title_temperature(tau);
    log_sum_exp(r.titles.iter().map(|x| term.value(x) / t))
}

/// The candidates of `r` ranked under `s`: (candidate index, score), best first.
pub fn rank(r: &RankRecord, s: &Setting) -> Vec<(usize, f64)> {
    rank_with_norm(r, s, title_log_norm(r, s.title_term, s.weights.tau))
}

fn rank_with_norm(r: &RankRecord, s: &Setting, log_norm: f64) -> Vec<(usize, f64)> {
    let t = title_temperature(s.weights.tau);
    let title_score = |i: usize| {
        r.titles
            .get(i)
            .map(|x| (s.title_term.value(x) / t - log_norm).exp())
    };
    let inputs: Vec<CandidateInput> = r.candidates.iter().map(CandidateRecord::input).collect();
    let scores = scores_under_titles(title_score, &inputs, s.weights);
    let delta = s.weights.delta.max(1e-6);
    let mut out: Vec<(usize, f64)> = scores
        .iter()
        .zip(&r.candidates)
        .enumerate()
        .map(|(i, (sc, c))| {
            let v = sc.s.max(1e-300).ln() + s.global_assessment * (1.0 - c.p_reject) / delta;
            (i, v)
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// Hits@1/5, MRR@5, title@1 and gold-in-candidates of setting `s` over `records`.
pub fn evaluate(records: &[RankRecord], s: &Setting) -> TuneMetrics {
    metrics(records, s, |k| {
        title_log_norm(&records[k], s.title_term, s.weights.tau)
    })
}

fn metrics(records: &[RankRecord], s: &Setting, log_norm: impl Fn(usize) -> f64) -> TuneMetrics {
    let mut m = TuneMetrics::default();
    for (k, r) in records.iter().enumerate() {
        let order = rank_with_norm(r, s, log_norm(k));
        if let Some(p) = order.iter().position(|&(i, _)| r.candidates[i].gold) {
            m.in_candidates += 1.0;
            if p < 5 {
                m.mrr5 += 1.0 / (p + 1) as f64;
                m.hits5 += 1.0;
            }
            if p == 0 {
                m.hits1 += 1.0;
            }
        }
        if let Some(&(i, _)) = order.first() {
            let t = r.candidates[i].title_rank;
            if r.titles.get(t).is_some_and(|t| t.gold) {
                m.title1 += 1.0;
            }
        }
    }
    let n = records.len().max(1) as f64;
    for v in [
        &mut m.hits1,
        &mut m.hits5,
        &mut m.mrr5,
        &mut m.title1,
        &mut m.in_candidates,
    ] {
        *v /= n;
    }
    m
}

/// Records ready for many settings: each record's title normaliser is computed once per title
/// term and temperature, so a setting costs what its candidates cost. A trace that scored every
/// title of NQ (2,467 a question) made the grid read 30,870 x 2,467 titles per question.
pub struct TuneSet {
    records: Vec<RankRecord>,
    /// (title term, tau's bits) -> each record's log normaliser.
    norms: std::collections::HashMap<(TitleTerm, u64), Vec<f64>>,
}

impl TuneSet {
    /// Prepares `records` for the temperatures `taus` (others are computed when asked for).
    pub fn new(records: Vec<RankRecord>, taus: &[f64]) -> Self {
        let terms = [
            TitleTerm::NormProb,
            TitleTerm::MeanLogprob,
            TitleTerm::TrieLogprob,
        ];
        let keys: Vec<(TitleTerm, f64)> = terms
            .iter()
            .flat_map(|&term| taus.iter().map(move |&tau| (term, tau)))
            .collect();
        let norms = keys
            .par_iter()
            .map(|&(term, tau)| {
                let v = records
                    .iter()
                    .map(|r| title_log_norm(r, term, tau))
                    .collect();
                ((term, tau.to_bits()), v)
            })
            .collect();
        TuneSet { records, norms }
    }

    pub fn records(&self) -> &[RankRecord] {
        &self.records
    }

    /// The same numbers as [`evaluate`] on the records.
    pub fn evaluate(&self, s: &Setting) -> TuneMetrics {
        match self.norms.get(&(s.title_term, s.weights.tau.to_bits())) {
            Some(norms) => metrics(&self.records, s, |k| norms[k]),
            None => evaluate(&self.records, s),
        }
    }
}

/// The temperatures [`grid`] tries.
pub const GRID_TEMPERATURES: [f64; 7] = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2];

/// Every setting of a grid over the temperatures, the passage weight, the title term and the
/// global assessment weight.
pub fn grid() -> Vec<Setting> {
    let temps = GRID_TEMPERATURES;
    let weights = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0];
    let globals = [0.0, 0.25, 0.5, 1.0, 2.0];
    let query_weights = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0];
    let mut out = Vec::new();
    for title_term in [
        TitleTerm::NormProb,
        TitleTerm::MeanLogprob,
        TitleTerm::TrieLogprob,
    ] {
        for &tau in &temps {
            for &delta in &temps {
                for &passage_weight in &weights {
                    for &global_assessment in &globals {
                        for &query_weight in &query_weights {
                            out.push(Setting {
                                weights: RankWeights {
                                    tau,
                                    delta,
                                    passage_weight,
                                    query_weight,
                                },
                                title_term,
                                global_assessment,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Reads records written one JSON object a line; bad lines are named.
pub fn read_records(path: &std::path::Path) -> crate::Result<Vec<RankRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| crate::Error::BadLine {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("not a rank record: {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RankRecord {
        let t = |norm_prob: f64, gold: bool| TitleRecord {
            norm_prob,
            logprob: norm_prob.ln() * 3.0,
            trie_logprob: norm_prob.ln(),
            search_logprob: norm_prob.ln(),
            prior_logprob: None,
            passages: 1,
            gold,
        };
        let c = |id: &str, title_rank, p_reject, passage_logprob, gold| CandidateRecord {
            passage_id: id.into(),
            title_rank,
            p_reject,
            passage_logprob,
            query_logprob: 0.0,
            gold,
        };
        RankRecord {
            query_id: "q".into(),
            question: "q".into(),
            titles: vec![t(0.8, true), t(0.3, false)],
            candidates: vec![
                c("a", 0, 0.5, -3.0, false),
                c("b", 0, 0.5, -0.1, true),
                c("c", 1, 0.1, -0.2, false),
            ],
        }
    }

    #[test]
    fn the_passage_term_moves_the_gold_passage_up() {
        let r = vec![record()];
        let paper = Setting {
            weights: RankWeights {
                tau: 0.4,
                delta: 0.4,
                passage_weight: 0.0,
                query_weight: 0.0,
            },
            title_term: TitleTerm::NormProb,
            global_assessment: 0.0,
        };
        // Neutral assessment inside title 0: the paper ties a and b, the first stays first.
        let m = evaluate(&r, &paper);
        assert_eq!(
            (m.hits1, m.mrr5, m.title1, m.in_candidates),
            (0.0, 0.5, 1.0, 1.0)
        );
        let with_passage = Setting {
            weights: RankWeights {
                passage_weight: 1.0,
                ..paper.weights
            },
            ..paper
        };
        assert_eq!(evaluate(&r, &with_passage).hits1, 1.0);
        // A strong global assessment weight lets title 1's accepted passage win.
        let global = Setting {
            global_assessment: 20.0,
            ..with_passage
        };
        assert_eq!(rank(&r[0], &global)[0].0, 2);
        assert!(grid().len() > 1000);
    }

    /// The prepared set ranks exactly as the plain scoring does, for every setting of the grid,
    /// including titles that have no candidate (they count in the title softmax only).
    #[test]
    fn the_prepared_set_ranks_as_the_plain_scoring() {
        use crate::retrieve::score::combined_scores;
        let mut r = record();
        for k in 0..50 {
            r.titles.push(TitleRecord {
                norm_prob: 0.01 + 0.01 * k as f64,
                logprob: -1.0,
                trie_logprob: -2.0 - k as f64 * 0.1,
                search_logprob: -2.0,
                prior_logprob: None,
                passages: 1,
                gold: false,
            });
        }
        r.candidates[2].title_rank = 40;
        let records = vec![r.clone(), record()];
        let set = TuneSet::new(records.clone(), &GRID_TEMPERATURES);
        for s in grid() {
            assert_eq!(set.evaluate(&s), evaluate(&records, &s), "{s:?}");
        }
        // The title softmax over every title, the candidates grouped by title: the same scores as
        // the product's own combination.
        let s = Setting {
            global_assessment: 0.0,
            ..grid()[100]
        };
        let values: Vec<f64> = r.titles.iter().map(|t| t.norm_prob).collect();
        let inputs: Vec<CandidateInput> = r.candidates.iter().map(CandidateRecord::input).collect();
        let (_, product) = combined_scores(&values, &inputs, s.weights);
        for (i, score) in rank(&r, &s) {
            let want = product[i].s.max(1e-300).ln();
            assert!((score - want).abs() < 1e-9, "{score} {want}");
        }
    }
}
