//! Graded-relevance metrics for query sets with judgements (BEIR qrels): nDCG@k, the BEIR
//! headline metric, and Recall@k.

use std::collections::BTreeMap;

/// nDCG@k with the graded judgements (gain = grade, discount log2(rank + 1), as trec_eval and
/// BEIR compute it); 0 when nothing is relevant.
pub fn ndcg_at(ranked: &[String], relevance: &BTreeMap<String, u32>, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, id)| relevance.get(id).copied().unwrap_or(0) as f64 / (i as f64 + 2.0).log2())
        .sum();
    let mut ideal: Vec<u32> = relevance.values().copied().filter(|&g| g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &g)| g as f64 / (i as f64 + 2.0).log2())
        .sum();
    if idcg > 0.0 {
        dcg / idcg
    } else {
        0.0
    }
}

/// The share of relevant passages (grade above zero) among the first `k` ranked.
pub fn recall_at(ranked: &[String], relevance: &BTreeMap<String, u32>, k: usize) -> f64 {
    let relevant = relevance.values().filter(|&&g| g > 0).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|id| relevance.get(*id).is_some_and(|&g| g > 0))
        .count();
    found as f64 / relevant as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    fn ids(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ndcg_and_recall_match_a_hand_computation() {
        let r = rel(&[("a", 2), ("b", 1), ("c", 0)]);
        // Ranked b, x, a: DCG = 1/log2(2) + 0 + 2/log2(4) = 1 + 1 = 2;
        // ideal a, b: IDCG = 2/1 + 1/log2(3) = 2.6309.
        let got = ndcg_at(&ids(&["b", "x", "a"]), &r, 10);
        let want = 2.0 / (2.0 + 1.0 / 3f64.log2());
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!((ndcg_at(&ids(&["a", "b"]), &r, 10) - 1.0).abs() < 1e-12);
        // Cut at 1: only b counts: 1 / 2.
        assert!((ndcg_at(&ids(&["b", "a"]), &r, 1) - 0.5).abs() < 1e-12);
        assert_eq!(recall_at(&ids(&["b", "x", "c"]), &r, 100), 0.5);
        assert_eq!(recall_at(&ids(&["x", "a", "b"]), &r, 1), 0.0);
        assert_eq!(ndcg_at(&ids(&["a"]), &rel(&[("a", 0)]), 10), 0.0);
    }
}
