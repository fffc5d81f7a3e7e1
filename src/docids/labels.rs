//! Cluster labels: the terms most characteristic of a cluster, by TF-IDF with the cluster as one
//! document against the rest of the corpus (term frequency inside the cluster times the log
//! inverse frequency among the passages outside it), so a label names what sets the cluster
//! apart: words used everywhere score near zero, words found only inside score highest.

use std::collections::HashMap;

/// English function words: frequent everywhere, so in a large cluster their raw frequency can
/// outweigh their low inverse frequency; they never name a topic.
const FUNCTION_WORDS: &[&str] = &[
    "about", "after", "all", "also", "and", "any", "are", "been", "before", "being", "but", "can",
    "could", "did", "does", "during", "each", "for", "from", "had", "has", "have", "her", "hers",
    "him", "his", "how", "into", "its", "may", "more", "most", "not", "one", "only", "other",
    "our", "over", "she", "some", "such", "than", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "those", "through", "under", "until", "was", "were", "what", "when",
    "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your",
];

/// Lowercased alphabetic words of at least three letters, function words left out.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| w.chars().count() >= 3)
        .map(|w| w.to_lowercase())
        .filter(|w| !FUNCTION_WORDS.contains(&w.as_str()))
}

/// Passage frequencies of every term, computed once per corpus.
pub struct TermStats {
    df: HashMap<String, usize>,
    passages: usize,
    /// Each passage's term counts.
    counts: Vec<HashMap<String, usize>>,
}

impl TermStats {
    /// Counts terms in each text (title and passage text together).
    pub fn new(texts: &[String]) -> Self {
        let mut df: HashMap<String, usize> = HashMap::new();
        let counts: Vec<HashMap<String, usize>> = texts
            .iter()
            .map(|t| {
                let mut c: HashMap<String, usize> = HashMap::new();
                for w in words(t) {
                    *c.entry(w).or_default() += 1;
                }
                for w in c.keys() {
                    *df.entry(w.clone()).or_default() += 1;
                }
                c
            })
            .collect();
        TermStats {
            df,
            passages: texts.len(),
            counts,
        }
    }

    /// The `top` terms of the passages `members`, best first (ties broken alphabetically).
    pub fn label(&self, members: &[usize], top: usize) -> Vec<String> {
        // Per term: count inside the cluster, and passages inside that hold it.
        let mut tf: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut total = 0usize;
        for &m in members {
            for (w, &c) in &self.counts[m] {
                let e = tf.entry(w.as_str()).or_default();
                e.0 += c;
                e.1 += 1;
                total += c;
            }
        }
        let n = self.passages as f64;
        let mut scored: Vec<(f64, &str)> = tf
            .into_iter()
            .map(|(w, (c, inside))| {
                let outside = self.df.get(w).copied().unwrap_or(inside) - inside;
                let idf = ((n + 1.0) / (outside as f64 + 1.0)).ln();
                (c as f64 / total.max(1) as f64 * idf, w)
            })
            .filter(|(s, _)| *s > 0.0)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        scored
            .into_iter()
            .take(top)
            .map(|(_, w)| w.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_what_sets_a_cluster_apart() {
        let texts: Vec<String> = [
            "the cat sat on the mat with the cat",
            "the cat and the kitten",
            "the dog barked at the postman",
            "the dog and the puppy",
            "the sparrow sang in the tree",
            "the heron waited by the pond",
            "the trout swam up the stream",
            "the salmon leapt at the weir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let stats = TermStats::new(&texts);
        let cats = stats.label(&[0, 1], 2);
        assert_eq!(cats[0], "cat");
        assert!(!cats.contains(&"the".to_string()), "{cats:?}");
        assert_eq!(stats.label(&[2, 3], 1), vec!["dog".to_string()]);
    }
}
