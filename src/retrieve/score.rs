//! Reranking from numbers the model already produced, so the weights can move live.
//!
//! The paper's score is S = S_T x S_P with S_T = softmax over title beams of (length-normalised
//! title probability) / tau and S_P = softmax within a title of (1 - P(reject)) / delta. The
//! passage term adds what the model knows of the passage itself: its log-probability under the
//! trie (the model's distribution renormalised over the tokens the trie allowed, so it is a
//! distribution over the title's passages). Within a title the candidates are ranked by
//! softmax((1 - P(reject)) / delta + w x log P_trie(passage)); with w = 0 that is the paper's S_P.
//!
//! The query-likelihood term reads the other direction: how likely the model finds the question
//! after reading the passage (mean log-probability of its tokens, see
//! [`super::likelihood`]). It is comparable across titles, so it enters over all candidates:
//! S = softmax over candidates of (ln S_within + q x QL); with q = 0 the ranking above is
//! unchanged.

/// Numerically stable softmax of `xs / temperature`.
pub fn softmax_with_temperature(xs: &[f64], temperature: f64) -> Vec<f64> {
    let t = temperature.max(1e-6);
    let scaled: Vec<f64> = xs.iter().map(|x| x / t).collect();
    softmax(&scaled)
}

/// Numerically stable softmax.
pub fn softmax(xs: &[f64]) -> Vec<f64> {
    if xs.is_empty() {
        return Vec::new();
    }
    let max = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = xs.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// log(sum(exp(xs))), stable; negative infinity for no values.
pub fn log_sum_exp(xs: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + xs.map(|x| (x - max).exp()).sum::<f64>().ln()
}

/// S_T for each title from its length-normalised sequence probability.
pub fn title_scores(norm_probs: &[f64], tau: f64) -> Vec<f64> {
    softmax_with_temperature(norm_probs, tau)
}

/// S_P for the passages of one title from their rejection probabilities (the paper).
pub fn passage_scores(p_reject: &[f64], delta: f64) -> Vec<f64> {
    let acceptance: Vec<f64> = p_reject.iter().map(|p| 1.0 - p).collect();
    softmax_with_temperature(&acceptance, delta)
}

/// The weights of the ranking: the paper's two temperatures and the passage term's weight.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RankWeights {
    pub tau: f64,
    pub delta: f64,
    /// Weight of log P_trie(passage) inside a title (0: the paper's S_P alone).
    pub passage_weight: f64,
    /// Weight of the query likelihood over all candidates (0: not used).
    #[serde(default)]
    pub query_weight: f64,
}

/// What orders titles for the candidate budget: the title search's log-probability less
/// `weight` times the title's prior (how readily it is written after an empty question).
pub fn title_order_key(search_logprob: f64, prior_logprob: Option<f64>, weight: f64) -> f64 {
    search_logprob - weight * prior_logprob.unwrap_or(0.0)
}

/// What the ranking needs of one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CandidateInput {
    /// Index of its title among the title beams.
    pub title: usize,
    pub p_reject: f64,
    /// log P_trie(passage | query, title).
    pub passage_logprob: f64,
    /// Mean log P(question token | passage): the query likelihood (0 when not computed).
    pub query_logprob: f64,
}

/// The terms of one candidate's score.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CandidateScores {
    /// softmax within the title of w x log P_trie(passage) (uniform when w = 0).
    pub s_gen: f64,
    /// softmax within the title of (1 - P(reject)) / delta (the paper's S_P).
    pub s_p: f64,
    /// softmax over all candidates of q x QL (uniform when q = 0).
    pub s_q: f64,
    /// softmax over candidates of ln(S_T x softmax within the title of ((1 - P(reject)) / delta
    /// + w x log P_trie(passage))) + q x QL.
    pub s: f64,
}

/// S_T per title and every candidate's terms.
pub fn combined_scores(
    title_norm_probs: &[f64],
    candidates: &[CandidateInput],
    w: RankWeights,
) -> (Vec<f64>, Vec<CandidateScores>) {
    let s_t = title_scores(title_norm_probs, w.tau);
    let out = scores_under_titles(|t| s_t.get(t).copied(), candidates, w);
    (s_t, out)
}

/// Every candidate's terms given its title's S_T (`title_score`; a title it does not know
/// leaves its candidates at zero). Candidates are grouped by title in one pass, so the cost
/// follows the candidates, not the titles: a trace scores every title of a large corpus and
/// reads the passages of a hundred.
pub fn scores_under_titles(
    title_score: impl Fn(usize) -> Option<f64>,
    candidates: &[CandidateInput],
    w: RankWeights,
) -> Vec<CandidateScores> {
    let mut out = vec![CandidateScores::default(); candidates.len()];
    let delta = w.delta.max(1e-6);
    // Stable: within a title, candidates keep their order.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| candidates[i].title);
    for members in order.chunk_by(|&a, &b| candidates[a].title == candidates[b].title) {
        let Some(st) = title_score(candidates[members[0]].title) else {
            continue;
        };
        let rej: Vec<f64> = members.iter().map(|&i| candidates[i].p_reject).collect();
        let gen: Vec<f64> = members
            .iter()
            .map(|&i| w.passage_weight * candidates[i].passage_logprob)
            .collect();
        let joint: Vec<f64> = rej
            .iter()
            .zip(&gen)
            .map(|(p, g)| (1.0 - p) / delta + g)
            .collect();
        let (s_p, s_gen, within) = (
            passage_scores(&rej, w.delta),
            softmax(&gen),
            softmax(&joint),
        );
        for (k, &i) in members.iter().enumerate() {
            out[i] = CandidateScores {
                s_gen: s_gen[k],
                s_p: s_p[k],
                s_q: 0.0,
                s: st * within[k],
            };
        }
    }
    let likelihood: Vec<f64> = candidates
        .iter()
        .map(|c| w.query_weight * c.query_logprob)
        .collect();
    for (o, q) in out.iter_mut().zip(softmax(&likelihood)) {
        o.s_q = q;
    }
    if w.query_weight != 0.0 {
        let joint: Vec<f64> = out
            .iter()
            .zip(&likelihood)
            .map(|(o, l)| o.s.max(f64::MIN_POSITIVE).ln() + l)
            .collect();
        for (o, s) in out.iter_mut().zip(softmax(&joint)) {
            o.s = s;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn cand(title: usize, p_reject: f64, passage_logprob: f64) -> CandidateInput {
        CandidateInput {
            title,
            p_reject,
            passage_logprob,
            query_logprob: 0.0,
        }
    }

    fn weights(tau: f64, delta: f64, passage_weight: f64) -> RankWeights {
        RankWeights {
            tau,
            delta,
            passage_weight,
            query_weight: 0.0,
        }
    }

    #[test]
    fn hand_computed_softmax() {
        // softmax([1, 0] / 0.5) = [e^2, 1] / (e^2 + 1)
        let s = softmax_with_temperature(&[1.0, 0.0], 0.5);
        let e2 = 2f64.exp();
        assert!(close(s[0], e2 / (e2 + 1.0)) && close(s[1], 1.0 / (e2 + 1.0)));
        // Uniform inputs give uniform outputs at any temperature.
        let u = softmax_with_temperature(&[0.3, 0.3, 0.3], 0.1);
        assert!(u.iter().all(|x| close(*x, 1.0 / 3.0)));
        assert!(close(log_sum_exp([0.0f64, 0.0].into_iter()), 2f64.ln()));
        assert_eq!(log_sum_exp(std::iter::empty()), f64::NEG_INFINITY);
    }

    #[test]
    fn passage_scores_prefer_low_rejection() {
        // (1 - [0.1, 0.6]) / 0.4 = [2.25, 1.0] -> e^1.25 / (e^1.25 + 1)
        let s = passage_scores(&[0.1, 0.6], 0.4);
        let e = 1.25f64.exp();
        assert!(close(s[0], e / (e + 1.0)));
        assert!(s[0] > s[1]);
    }

    #[test]
    fn tau_changes_the_order() {
        // Title A is likelier than B, but only B holds a passage the model accepts.
        let titles = [0.9, 0.6];
        let cands = [
            cand(0, 0.90, -1.0),
            cand(0, 0.95, -1.0),
            cand(1, 0.05, -1.0),
            cand(1, 0.90, -1.0),
        ];
        let order = |tau: f64| {
            let (_, s) = combined_scores(&titles, &cands, weights(tau, 0.4, 0.0));
            let mut idx: Vec<usize> = (0..s.len()).collect();
            idx.sort_by(|&a, &b| s[b].s.total_cmp(&s[a].s));
            idx
        };
        // Small tau: the title decides, A's passages first.
        assert_eq!(order(0.01)[0], 0);
        // Large tau: titles weigh alike, self-assessment puts B's accepted passage first.
        assert_eq!(order(100.0)[0], 2);
    }

    #[test]
    fn zero_passage_weight_is_the_papers_formula() {
        let titles = [0.7, 0.4, 0.2];
        let cands = [
            cand(0, 0.3, -0.1),
            cand(0, 0.8, -4.0),
            cand(0, 0.5, -7.5),
            cand(1, 0.2, -0.01),
            cand(2, 0.6, -2.0),
            cand(2, 0.1, -0.5),
        ];
        let (tau, delta) = (0.4, 0.4);
        let (s_t, s) = combined_scores(&titles, &cands, weights(tau, delta, 0.0));
        // S = softmax(title / tau)[t] x softmax((1 - P(reject)) / delta within t), by hand.
        let e = |x: f64| x.exp();
        let z_t: f64 = titles.iter().map(|n| e(n / tau)).sum();
        for (i, c) in cands.iter().enumerate() {
            let st = e(titles[c.title] / tau) / z_t;
            let z_p: f64 = cands
                .iter()
                .filter(|o| o.title == c.title)
                .map(|o| e((1.0 - o.p_reject) / delta))
                .sum();
            let sp = e((1.0 - c.p_reject) / delta) / z_p;
            assert!(close(s_t[c.title], st));
            assert!(close(s[i].s_p, sp));
            assert!(close(s[i].s, st * sp), "candidate {i}");
        }
        // The uniform passage term: each of title 0's three candidates has S_gen 1/3.
        assert!(s[..3].iter().all(|c| close(c.s_gen, 1.0 / 3.0)));
    }

    #[test]
    fn passage_term_puts_the_likeliest_passage_first_when_assessment_is_neutral() {
        // One title, three passages the model generates with log-probabilities -0.04, -4.0
        // and -7.9 (the demo's card-catalogues example), and a self-assessment that cannot
        // tell them apart (P(reject) equal): the likeliest passage ranks first.
        let cands = [
            cand(0, 0.66, -4.0),
            cand(0, 0.66, -0.04),
            cand(0, 0.66, -7.9),
        ];
        let (_, s) = combined_scores(&[0.9], &cands, weights(0.4, 0.4, 1.0));
        assert!(s[1].s > s[0].s && s[0].s > s[2].s);
        assert!(s[1].s_gen > 0.9);
        // Without the passage term, the three tie.
        let (_, flat) = combined_scores(&[0.9], &cands, weights(0.4, 0.4, 0.0));
        assert!(close(flat[0].s, flat[1].s) && close(flat[1].s, flat[2].s));
        // Scores within the title still sum to S_T.
        let total: f64 = s.iter().map(|c| c.s).sum();
        assert!(close(total, 1.0));
    }

    #[test]
    fn query_likelihood_reorders_across_titles_and_zero_weight_changes_nothing() {
        // Title 0 is far likelier, but the question is far likelier after title 1's passage.
        let titles = [0.95, 0.5];
        let mut cands = [cand(0, 0.5, -0.5), cand(0, 0.5, -1.0), cand(1, 0.5, -0.7)];
        let ql = [-3.0, -3.2, -1.0];
        for (c, q) in cands.iter_mut().zip(ql) {
            c.query_logprob = q;
        }
        let base = weights(0.4, 0.4, 0.5);
        let (_, without) = combined_scores(&titles, &cands, base);
        let mut plain = cands;
        for c in plain.iter_mut() {
            c.query_logprob = 0.0;
        }
        let (_, reference) = combined_scores(&titles, &plain, base);
        // q = 0: the likelihoods are ignored and S is the ranking without them.
        for (a, b) in without.iter().zip(&reference) {
            assert!(close(a.s, b.s));
        }
        assert!(without[0].s > without[2].s);
        let with = RankWeights {
            query_weight: 2.0,
            ..base
        };
        let (_, s) = combined_scores(&titles, &cands, with);
        assert!(s[2].s > s[0].s && s[0].s > s[1].s);
        let total: f64 = s.iter().map(|c| c.s).sum();
        assert!(close(total, 1.0));
        // S_Q alone: softmax(2 x QL).
        let z: f64 = ql.iter().map(|q| (2.0 * q).exp()).sum();
        assert!(close(s[2].s_q, (-2.0f64).exp() / z));
    }
}
