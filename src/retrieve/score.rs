//! Self-Retrieval's reranking: S = softmax(title score / tau) x softmax((1 - P(reject)) / delta).
//! Pure functions over numbers the model already produced, so tau and delta can move live.

/// Numerically stable softmax of `xs / temperature`.
pub fn softmax_with_temperature(xs: &[f64], temperature: f64) -> Vec<f64> {
    if xs.is_empty() {
        return Vec::new();
    }
    let t = temperature.max(1e-6);
    let max = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = xs.iter().map(|x| ((x - max) / t).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// S_T for each title from its length-normalised sequence probability.
pub fn title_scores(norm_probs: &[f64], tau: f64) -> Vec<f64> {
    softmax_with_temperature(norm_probs, tau)
}

/// S_P for the passages of one title from their rejection probabilities.
pub fn passage_scores(p_reject: &[f64], delta: f64) -> Vec<f64> {
    let acceptance: Vec<f64> = p_reject.iter().map(|p| 1.0 - p).collect();
    softmax_with_temperature(&acceptance, delta)
}

/// S_T per title, and (S_P, S) per candidate `(title index, P(reject))`; S_P is a softmax within
/// each title's candidates.
pub fn combined_scores(
    title_norm_probs: &[f64],
    candidates: &[(usize, f64)],
    tau: f64,
    delta: f64,
) -> (Vec<f64>, Vec<(f64, f64)>) {
    let s_t = title_scores(title_norm_probs, tau);
    let mut out = vec![(0.0, 0.0); candidates.len()];
    for (t, st) in s_t.iter().enumerate() {
        let members: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].0 == t)
            .collect();
        let rej: Vec<f64> = members.iter().map(|&i| candidates[i].1).collect();
        for (k, sp) in passage_scores(&rej, delta).into_iter().enumerate() {
            out[members[k]] = (sp, st * sp);
        }
    }
    (s_t, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
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
        let cands = [(0, 0.90), (0, 0.95), (1, 0.05), (1, 0.90)];
        let order = |tau: f64| {
            let (_, s) = combined_scores(&titles, &cands, tau, 0.4);
            let mut idx: Vec<usize> = (0..s.len()).collect();
            idx.sort_by(|&a, &b| s[b].1.total_cmp(&s[a].1));
            idx
        };
        // Small tau: the title decides, A's passages first.
        assert_eq!(order(0.01)[0], 0);
        // Large tau: titles weigh alike, self-assessment puts B's accepted passage first.
        assert_eq!(order(100.0)[0], 2);
    }
}
