//! Evaluation: ranking metrics (Hits@k, MRR@k, strict and lenient), answer exact match with
//! SQuAD-style normalisation, and the BM25 and dense baselines, all over the same passages.

pub mod bm25;
pub mod dense;
pub mod graded;
pub mod run;
pub mod title_prior;
pub mod tune;

use crate::train::Query;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD's rule).
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// True when the prediction equals one of the gold answers after normalisation.
pub fn exact_match(prediction: &str, answers: &[String]) -> bool {
    let p = normalize_answer(prediction);
    answers.iter().any(|a| normalize_answer(a) == p)
}

/// True when a normalised gold answer occurs inside the normalised prediction.
pub fn answer_contained(prediction: &str, answers: &[String]) -> bool {
    let p = format!(" {} ", normalize_answer(prediction));
    answers.iter().any(|a| {
        let a = normalize_answer(a);
        !a.is_empty() && p.contains(&format!(" {a} "))
    })
}

/// What one system returned for one query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    pub id: String,
    pub question: String,
    /// Passage ids, best first.
    pub ranked: Vec<String>,
    /// 1-based rank of the first gold passage (strict), if retrieved.
    pub gold_rank: Option<usize>,
    pub answer: Option<String>,
    pub latency_ms: f64,
    /// 1-based rank of the first passage whose title is a gold passage's title, if any.
    #[serde(default)]
    pub title_rank: Option<usize>,
}

/// Metrics of one system over a query set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemResult {
    pub system: String,
    pub metrics: BTreeMap<String, f64>,
    pub queries: Vec<QueryResult>,
}

fn rank_of(ranked: &[String], gold: &[String]) -> Option<usize> {
    ranked
        .iter()
        .position(|id| gold.contains(id))
        .map(|p| p + 1)
}

/// Rank (1-based) of the first passage in `ranked` whose title is the title of a gold passage.
pub fn title_rank(
    corpus: &crate::corpus::Corpus,
    ranked: &[String],
    gold: &[String],
) -> Option<usize> {
    let gold_titles: Vec<usize> = gold
        .iter()
        .filter_map(|g| corpus.index_of(g))
        .map(|i| corpus.title_of[i])
        .collect();
    ranked
        .iter()
        .position(|id| {
            corpus
                .index_of(id)
                .is_some_and(|i| gold_titles.contains(&corpus.title_of[i]))
        })
        .map(|p| p + 1)
}

/// Area under the ROC curve of `scores` separating positives from negatives (ties count half):
/// the chance that a random positive scores above a random negative. None without both kinds.
pub fn auc(labelled: &[(bool, f64)]) -> Option<f64> {
    let mut v: Vec<(f64, bool)> = labelled.iter().map(|&(p, s)| (s, p)).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = v.iter().filter(|x| x.1).count();
    let neg = v.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    // Rank-sum (Mann-Whitney) with average ranks over ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0;
        rank_sum += avg * v[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// What [`check_queries`] found in a query file against a corpus.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryCheck {
    /// Gold passage ids that are not in the corpus (removed from their queries).
    pub unknown_ids: Vec<String>,
    /// Ids of queries left with no gold passage or no question: left out of the metrics.
    pub unscorable: Vec<String>,
}

impl QueryCheck {
    /// An error when none of `total` queries can be scored: a table of zeros would read as a
    /// result (a query file for another corpus, say).
    pub fn refuse_if_nothing_scorable(&self, total: usize) -> crate::error::Result<()> {
        if total == 0 || self.unscorable.len() < total {
            return Ok(());
        }
        let why = match self.unknown_ids.first() {
            Some(first) => format!(
                "{} of their gold passage ids are not in the corpus (first: {first})",
                self.unknown_ids.len()
            ),
            None => "they have no gold passage ids or no question".to_string(),
        };
        Err(crate::error::Error::invalid(format!(
            "none of the {total} queries can be scored: {why}; is this the query file for this \
             corpus?"
        )))
    }

    /// Lines for the user, naming the first few of each kind (none when all is well).
    pub fn report(&self) -> Vec<String> {
        let first = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let mut lines = Vec::new();
        if !self.unknown_ids.is_empty() {
            lines.push(format!(
                "warning: {} gold passage ids are not in the corpus (first: {}); they are dropped",
                self.unknown_ids.len(),
                first(&self.unknown_ids)
            ));
        }
        if !self.unscorable.is_empty() {
            lines.push(format!(
                "{} queries have no gold passage in the corpus or no question: metrics leave \
                 them out and retrieval training cannot use them (first: {})",
                self.unscorable.len(),
                first(&self.unscorable)
            ));
        }
        lines
    }
}

/// Drops gold ids the corpus does not hold, so a query can only be scored against passages
/// that exist, and lists the queries that are then unscorable (which [`score`] leaves out).
pub fn check_queries(queries: &mut [Query], corpus: &crate::corpus::Corpus) -> QueryCheck {
    let mut check = QueryCheck::default();
    for q in queries.iter_mut() {
        q.positive_ids.retain(|id| {
            let known = corpus.index_of(id).is_some();
            if !known {
                check.unknown_ids.push(id.clone());
            }
            known
        });
        if q.positive_ids.is_empty() || q.question.trim().is_empty() {
            check.unscorable.push(q.id.clone());
        }
    }
    check
}

/// Computes every metric for ranked results against the queries. Queries without a gold
/// passage or without a question cannot be scored and are left out (counted as
/// `unscorable`).
pub fn score(system: &str, queries: &[Query], results: Vec<QueryResult>) -> SystemResult {
    let total = results.len();
    let (queries, results): (Vec<&Query>, Vec<QueryResult>) = queries
        .iter()
        .zip(results)
        .filter(|(q, _)| !q.positive_ids.is_empty() && !q.question.trim().is_empty())
        .unzip();
    let unscorable = total - results.len();
    let n = results.len().max(1) as f64;
    let mut m = BTreeMap::new();
    let mut strict = Vec::new();
    let mut lenient = Vec::new();
    let mut em = 0usize;
    let mut contained = 0usize;
    let mut answered = 0usize;
    let mut latency = 0.0;
    let mut in_candidates = 0usize;
    let mut out = Vec::with_capacity(results.len());
    for (q, mut r) in queries.iter().zip(results) {
        let s = rank_of(&r.ranked, &q.positive_ids);
        let lenient_gold = if q.answer_passage_ids.is_empty() {
            &q.positive_ids
        } else {
            &q.answer_passage_ids
        };
        strict.push(s);
        lenient.push(rank_of(&r.ranked, lenient_gold));
        r.gold_rank = s;
        in_candidates += s.is_some() as usize;
        if let Some(a) = &r.answer {
            answered += 1;
            em += exact_match(a, &q.answers) as usize;
            contained += answer_contained(a, &q.answers) as usize;
        }
        latency += r.latency_ms;
        out.push(r);
    }
    for (prefix, ranks) in [("", &strict), ("lenient_", &lenient)] {
        for k in [1usize, 5, 10] {
            let hits = ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count();
            m.insert(format!("{prefix}hits@{k}"), hits as f64 / n);
        }
        for k in [5usize, 10] {
            let mrr: f64 = ranks
                .iter()
                .map(|r| match r {
                    Some(r) if *r <= k => 1.0 / *r as f64,
                    _ => 0.0,
                })
                .sum();
            m.insert(format!("{prefix}mrr@{k}"), mrr / n);
        }
    }
    if answered > 0 {
        m.insert("answer_em".into(), em as f64 / answered as f64);
        m.insert(
            "answer_contained".into(),
            contained as f64 / answered as f64,
        );
    }
    // Graded judgements (BEIR qrels): nDCG@10 and Recall@100 beside the binary metrics.
    if queries.iter().any(|q| !q.relevance.is_empty()) {
        let (mut ndcg, mut recall) = (0.0, 0.0);
        for (q, r) in queries.iter().zip(&out) {
            let binary;
            let rel = if q.relevance.is_empty() {
                binary = q.positive_ids.iter().map(|p| (p.clone(), 1)).collect();
                &binary
            } else {
                &q.relevance
            };
            ndcg += graded::ndcg_at(&r.ranked, rel, 10);
            recall += graded::recall_at(&r.ranked, rel, 100);
        }
        m.insert("ndcg@10".into(), ndcg / n);
        m.insert("recall@100".into(), recall / n);
    }
    m.insert("gold_in_candidates".into(), in_candidates as f64 / n);
    m.insert("latency_ms".into(), latency / n);
    m.insert("queries".into(), out.len() as f64);
    if unscorable > 0 {
        m.insert("unscorable".into(), unscorable as f64);
    }
    SystemResult {
        system: system.to_string(),
        metrics: m,
        queries: out,
    }
}

/// The columns printed by `selfret eval`: ranking, then where a failure lies (the title, or
/// the gold passage never among the candidates), then answers and time.
pub const TABLE_COLUMNS: [&str; 10] = [
    "hits@1",
    "hits@5",
    "hits@10",
    "mrr@5",
    "title@1",
    "gold_in_candidates",
    "lenient_mrr@5",
    "answer_em",
    "assess_auc",
    "latency_ms",
];

/// Columns added after MRR@5 when the queries carry graded judgements.
pub const GRADED_COLUMNS: [&str; 2] = ["ndcg@10", "recall@100"];

/// A Markdown table with one row per system (with nDCG@10 and Recall@100 when any system has
/// them).
pub fn table(systems: &[SystemResult]) -> String {
    let graded = systems.iter().any(|s| s.metrics.contains_key("ndcg@10"));
    let mut columns: Vec<&str> = Vec::new();
    for c in TABLE_COLUMNS {
        columns.push(c);
        if c == "mrr@5" && graded {
            columns.extend(GRADED_COLUMNS);
        }
    }
    let mut s = format!(
        "| system | {} |\n|---|{}\n",
        columns.join(" | "),
        "---|".repeat(columns.len())
    );
    for sys in systems {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match sys.metrics.get(*c) {
                Some(v) if *c == "latency_ms" => format!("{v:.1}"),
                Some(v) => format!("{v:.3}"),
                None => "-".into(),
            })
            .collect();
        s.push_str(&format!("| {} | {} |\n", sys.system, cells.join(" | ")));
    }
    s
}

/// `n` items spread evenly over `items` (the `offset`-th, then every len/n-th after it), in
/// order: a representative slice of a query file that lists queries document by document.
/// Picks past the end are dropped; while `offset` is below len/n, different offsets pick
/// disjoint items.
pub fn spread_sample<T>(items: Vec<T>, n: usize, offset: usize) -> Vec<T> {
    let (len, n) = (items.len(), n.min(items.len()));
    let mut picks = (0..n).map(|k| k * len / n + offset).peekable();
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| {
            if picks.peek() == Some(&i) {
                picks.next();
                Some(item)
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_normalisation() {
        assert_eq!(normalize_answer("The  Denver Broncos!"), "denver broncos");
        assert!(exact_match("an apple", &["Apple".into()]));
        assert!(!exact_match("apple pie", &["apple".into()]));
        assert!(answer_contained(
            "it was the Denver Broncos.",
            &["Denver Broncos".into()]
        ));
        assert!(!answer_contained("fourth", &["four".into()]));
    }

    #[test]
    fn hand_computed_metrics() {
        let q = |id: &str, pos: &str| Query {
            id: id.into(),
            question: id.into(),
            answers: vec!["x".into()],
            positive_ids: vec![pos.into()],
            answer_passage_ids: vec![],
            relevance: Default::default(),
        };
        let queries = vec![q("a", "p1"), q("b", "p2"), q("c", "p3")];
        let r = |ranked: &[&str], ans: &str| QueryResult {
            id: String::new(),
            question: String::new(),
            ranked: ranked.iter().map(|s| s.to_string()).collect(),
            gold_rank: None,
            answer: Some(ans.into()),
            latency_ms: 3.0,
            title_rank: None,
        };
        // Gold at rank 1, rank 3, and missing.
        let res = score(
            "t",
            &queries,
            vec![
                r(&["p1", "p9"], "x"),
                r(&["p8", "p7", "p2"], "y"),
                r(&["p5"], "x"),
            ],
        );
        let m = &res.metrics;
        assert!((m["hits@1"] - 1.0 / 3.0).abs() < 1e-12);
        assert!((m["hits@5"] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m["mrr@5"] - (1.0 + 1.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((m["answer_em"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(res.queries[1].gold_rank, Some(3));
        assert_eq!(res.queries[2].gold_rank, None);
        assert!((m["gold_in_candidates"] - 2.0 / 3.0).abs() < 1e-12);
        assert!(!m.contains_key("title@1"));
        // A query without a gold passage is left out of the metrics and counted.
        let mut with_empty = queries.clone();
        with_empty[2].positive_ids.clear();
        let res = score(
            "t",
            &with_empty,
            vec![r(&["p1"], "x"), r(&["p9"], "x"), r(&["p3"], "x")],
        );
        assert_eq!(res.metrics["queries"], 2.0);
        assert_eq!(res.metrics["unscorable"], 1.0);
        assert_eq!(res.metrics["hits@1"], 0.5);
    }

    #[test]
    fn auc_by_hand() {
        // Positives 0.9 and 0.4; negatives 0.5 and 0.1: of 4 pairs, 3 are ordered right.
        let v = [(true, 0.9), (true, 0.4), (false, 0.5), (false, 0.1)];
        assert!((auc(&v).unwrap() - 0.75).abs() < 1e-12);
        // A tie counts half.
        assert!((auc(&[(true, 0.5), (false, 0.5)]).unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(auc(&[(true, 0.5)]), None);
    }

    #[test]
    fn spread_sample_takes_evenly_spaced_items_in_order() {
        assert_eq!(super::spread_sample((0..10).collect(), 3, 0), vec![0, 3, 6]);
        assert_eq!(
            super::spread_sample((0..10).collect(), 4, 0),
            vec![0, 2, 5, 7]
        );
        assert_eq!(super::spread_sample((0..3).collect(), 5, 0), vec![0, 1, 2]);
        assert!(super::spread_sample((0..3).collect::<Vec<i32>>(), 0, 0).is_empty());
        // An offset shifts every pick; below len/n the samples share nothing.
        assert_eq!(super::spread_sample((0..10).collect(), 3, 1), vec![1, 4, 7]);
        assert_eq!(super::spread_sample((0..10).collect(), 3, 2), vec![2, 5, 8]);
        let fit: Vec<usize> = super::spread_sample((0..381).collect(), 120, 0);
        let check: Vec<usize> = super::spread_sample((0..381).collect(), 120, 1);
        assert_eq!((fit.len(), check.len()), (120, 120));
        assert!(fit.iter().all(|i| !check.contains(i)));
        // Past the end, picks are dropped rather than wrapped.
        assert_eq!(super::spread_sample((0..3).collect(), 3, 1), vec![1, 2]);
    }

    /// Gold ids the corpus lacks are dropped; a query left with none, or without a question,
    /// is named as unscorable, and the scoring leaves it out.
    #[test]
    fn queries_are_checked_against_the_corpus() {
        use crate::corpus::{Corpus, Passage};
        let corpus = Corpus::from_passages(
            vec![Passage {
                id: "p1".into(),
                title: "T".into(),
                text: "text".into(),
            }],
            Vec::new(),
        );
        let q = |id: &str, question: &str, pos: &[&str]| Query {
            id: id.into(),
            question: question.into(),
            answers: vec![],
            positive_ids: pos.iter().map(|s| s.to_string()).collect(),
            answer_passage_ids: vec![],
            relevance: Default::default(),
        };
        let mut queries = vec![
            q("good", "what?", &["p1", "gone"]),
            q("unknown", "what?", &["nowhere"]),
            q("blank", "  ", &["p1"]),
        ];
        let check = check_queries(&mut queries, &corpus);
        assert_eq!(
            check.unknown_ids,
            vec!["gone".to_string(), "nowhere".to_string()]
        );
        assert_eq!(
            check.unscorable,
            vec!["unknown".to_string(), "blank".to_string()]
        );
        assert_eq!(queries[0].positive_ids, vec!["p1".to_string()]);
        let report = check.report().join("\n");
        assert!(
            report.contains("first: gone, nowhere") && report.contains("first: unknown, blank"),
            "{report}"
        );
        let results = queries
            .iter()
            .map(|q| QueryResult {
                id: q.id.clone(),
                question: q.question.clone(),
                ranked: vec!["p1".into()],
                gold_rank: None,
                answer: None,
                latency_ms: 1.0,
                title_rank: None,
            })
            .collect();
        let res = score("s", &queries, results);
        assert_eq!(res.metrics["unscorable"], 2.0);
        assert_eq!(res.metrics["hits@1"], 1.0);
    }
}
