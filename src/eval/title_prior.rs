//! The title prior's weight measured without the model: rank records that scored titles with
//! their prior (`eval --traces` with a title search) are reordered under each weight λ as the
//! retriever orders them (search log-prob − λ × prior), and the gold title's place is read,
//! including whether the candidate budget reaches it. `selfret tune` prints the table.

use super::tune::{RankRecord, TitleRecord};
use crate::retrieve::options::RetrieveOptions;
use crate::retrieve::score::title_order_key;
use serde::{Deserialize, Serialize};

/// The weights `selfret tune` tries.
pub const PRIOR_WEIGHTS: [f64; 5] = [0.0, 0.3, 0.5, 0.7, 1.0];

/// Where the gold title lands under one prior weight, over a set of records.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PriorReach {
    pub weight: f64,
    /// The gold title is the first title.
    pub first: f64,
    /// The gold title is among the first 10 / 100 titles.
    pub first10: f64,
    pub first100: f64,
    /// Mean reciprocal rank of the gold title, cut at 5.
    pub title_mrr5: f64,
    /// The candidate budget reads the gold title's passages (None when the records do not
    /// know how many passages their titles hold).
    pub within_budget: Option<f64>,
}

/// The records have priors to weigh (a title search with the prior read).
pub fn has_priors(records: &[RankRecord]) -> bool {
    records
        .iter()
        .any(|r| r.titles.iter().any(|t| t.prior_logprob.is_some()))
}

/// The titles of `r` in the order the retriever gives them under prior weight `weight`
/// (stable: the search order among equals).
pub fn ordered(r: &RankRecord, weight: f64) -> Vec<&TitleRecord> {
    let key = |t: &TitleRecord| title_order_key(t.search_logprob, t.prior_logprob, weight);
    let mut titles: Vec<&TitleRecord> = r.titles.iter().collect();
    titles.sort_by(|a, b| key(b).total_cmp(&key(a)));
    titles
}

/// Where the gold title lands under `weight` over `records`, with a candidate budget of
/// `budget` passages spent on the titles in order as the retriever spends it.
pub fn prior_reach(records: &[RankRecord], weight: f64, budget: usize) -> PriorReach {
    let options = RetrieveOptions {
        candidates: budget,
        ..RetrieveOptions::default()
    };
    let sized = records
        .iter()
        .all(|r| r.titles.iter().all(|t| t.passages > 0));
    let mut out = PriorReach {
        weight,
        ..PriorReach::default()
    };
    let mut within = 0.0;
    for r in records {
        let titles = ordered(r, weight);
        if let Some(rank) = titles.iter().position(|t| t.gold) {
            out.first += f64::from(rank == 0);
            out.first10 += f64::from(rank < 10);
            out.first100 += f64::from(rank < 100);
            if rank < 5 {
                out.title_mrr5 += 1.0 / (rank + 1) as f64;
            }
            let sizes: Vec<usize> = titles.iter().map(|t| t.passages).collect();
            within += f64::from(options.passage_searches(&sizes)[rank].0 > 0);
        }
    }
    let n = records.len().max(1) as f64;
    out.first /= n;
    out.first10 /= n;
    out.first100 /= n;
    out.title_mrr5 /= n;
    out.within_budget = sized.then_some(within / n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn title(search_logprob: f64, prior: f64, passages: usize, gold: bool) -> TitleRecord {
        TitleRecord {
            norm_prob: search_logprob.exp(),
            logprob: search_logprob,
            trie_logprob: search_logprob,
            search_logprob,
            prior_logprob: Some(prior),
            passages,
            gold,
        }
    }

    /// A rarely written gold title (prior -8) behind a commonly written one (prior -1): the
    /// search puts the common one first and the budget of 100 spends 60 on it, leaving no room
    /// for the gold title's 60; half the prior turns the order and the budget reaches it.
    #[test]
    fn the_prior_lifts_a_rarely_written_title_into_the_budget() {
        let records = vec![RankRecord {
            query_id: "q".into(),
            question: "?".into(),
            titles: vec![
                title(-2.0, -1.0, 60, false),
                title(-3.0, -8.0, 60, true),
                title(-9.0, -9.0, 5, false),
            ],
            candidates: Vec::new(),
        }];
        let plain = prior_reach(&records, 0.0, 100);
        assert_eq!(plain.first, 0.0);
        assert_eq!(plain.title_mrr5, 0.5);
        assert_eq!(plain.within_budget, Some(0.0));
        let weighted = prior_reach(&records, 0.5, 100);
        assert_eq!(weighted.first, 1.0);
        assert_eq!(weighted.within_budget, Some(1.0));
        // Records without title sizes say so instead of guessing.
        let mut unsized_records = records.clone();
        unsized_records[0].titles[0].passages = 0;
        assert_eq!(prior_reach(&unsized_records, 0.5, 100).within_budget, None);
    }
}
