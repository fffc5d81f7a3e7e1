//! Pseudo-queries for corpora that come without queries: the base model writes a few questions
//! per passage, and a question is kept only when the model's own retrieval finds its passage
//! again, so retrieval training sees questions the model can already connect to their source.

use super::data::Query;
use crate::corpus::Corpus;
use crate::error::{Error, Result};
use crate::retrieve::generate::{generate, instruction_prompt, GenerateOptions};
use crate::retrieve::{RetrieveOptions, Retriever};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// How many questions to write and how strict the filter is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PseudoOptions {
    /// Questions sampled per passage.
    pub per_passage: usize,
    /// Passages used (0: all), taken evenly across the corpus.
    pub max_passages: usize,
    /// Kept when the source passage ranks within this many retrieved passages.
    pub keep_top: usize,
    pub temperature: f64,
    pub seed: u64,
}

impl Default for PseudoOptions {
    fn default() -> Self {
        PseudoOptions {
            per_passage: 2,
            max_passages: 0,
            keep_top: 3,
            temperature: 0.7,
            seed: 5,
        }
    }
}

/// One generated question and what the filter made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PseudoQuery {
    pub query: Query,
    /// Rank (1-based) of the source passage in the model's own retrieval, if found.
    pub rank: Option<usize>,
    /// Passes the filter (the user may flip it before saving).
    pub keep: bool,
}

/// Passage indices to write questions for: all, or `max` spread evenly.
fn chosen_passages(n: usize, max: usize) -> Vec<usize> {
    if max == 0 || max >= n {
        return (0..n).collect();
    }
    (0..max).map(|k| k * n / max).collect()
}

fn tidy_question(raw: &str) -> Option<String> {
    let q = raw
        .trim()
        .trim_start_matches("Question:")
        .trim()
        .trim_matches('"')
        .trim();
    // Keep up to the first question mark: models often run on after it.
    let q = match q.find('?') {
        Some(i) => &q[..=i],
        None => q,
    };
    let words = q.split_whitespace().count();
    // Broken bytes (a partial character) or control characters mean the text is not usable.
    let clean = !q.chars().any(|c| c == '\u{FFFD}' || c.is_control());
    (clean && (3..=40).contains(&words)).then(|| q.to_string())
}

/// Writes and filters pseudo-queries with `retriever`'s model over its corpus. `progress(done,
/// total)` returns true to stop early (what is done so far is returned).
pub fn generate_pseudo_queries(
    retriever: &Retriever<'_>,
    eos: u32,
    opts: &PseudoOptions,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<PseudoQuery>> {
    let corpus: &Corpus = retriever.corpus;
    let tok = retriever.tokenizer;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let gen = GenerateOptions {
        max_tokens: 40,
        temperature: opts.temperature,
        ..Default::default()
    };
    let ropts = RetrieveOptions::light();
    let chosen = chosen_passages(corpus.len(), opts.max_passages);
    let mut out = Vec::new();
    for (k, &pidx) in chosen.iter().enumerate() {
        if progress(k, chosen.len()) {
            break;
        }
        let p = &corpus.passages[pidx];
        let excerpt: Vec<&str> = p.text.split_whitespace().take(180).collect();
        let prompt = instruction_prompt(
            tok,
            &format!(
                "Read the passage and write one short question that it answers.\n\nTitle: {}\nPassage: {}",
                p.title,
                excerpt.join(" ")
            ),
            "Question:",
        );
        let mut seen: Vec<String> = Vec::new();
        for raw in generate(
            retriever.model,
            tok,
            eos,
            &prompt,
            opts.per_passage,
            &gen,
            &mut rng,
        )? {
            let Some(q) = tidy_question(&raw) else {
                continue;
            };
            if seen.iter().any(|s| s.eq_ignore_ascii_case(&q)) {
                continue;
            }
            seen.push(q.clone());
            let trace = retriever.retrieve(&q, &ropts, &mut |_| {})?;
            let rank = trace
                .ranked_ids()
                .iter()
                .position(|id| *id == p.id)
                .map(|r| r + 1);
            out.push(PseudoQuery {
                query: Query {
                    id: format!("pseudo-{}-{}", p.id, seen.len()),
                    question: q,
                    answers: Vec::new(),
                    positive_ids: vec![p.id.clone()],
                    answer_passage_ids: Vec::new(),
                },
                rank,
                keep: rank.is_some_and(|r| r <= opts.keep_top),
            });
        }
    }
    progress(chosen.len(), chosen.len());
    Ok(out)
}

/// Writes the kept queries as a query file (the format `--queries` reads), atomically.
pub fn save_pseudo_queries(path: &Path, queries: &[PseudoQuery]) -> Result<usize> {
    let mut buf = Vec::new();
    let mut n = 0;
    for q in queries.iter().filter(|q| q.keep) {
        let line = serde_json::to_string(&q.query).map_err(|e| Error::invalid(e.to_string()))?;
        writeln!(buf, "{line}").map_err(|e| Error::io(path, e))?;
        n += 1;
    }
    crate::model::checkpoint::write_atomic(path, &buf)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_cut_at_the_question_mark_and_bounded() {
        assert_eq!(
            tidy_question(" Who built the SMART system? It was Salton."),
            Some("Who built the SMART system?".into())
        );
        assert_eq!(tidy_question("Why?"), None);
        assert_eq!(tidy_question("What is \u{FFFD} here?"), None);
        assert_eq!(
            tidy_question("Question: \"What is recall in evaluation?\""),
            Some("What is recall in evaluation?".into())
        );
    }

    #[test]
    fn passages_are_spread_evenly() {
        assert_eq!(chosen_passages(10, 0), (0..10).collect::<Vec<_>>());
        assert_eq!(chosen_passages(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(chosen_passages(3, 5), vec![0, 1, 2]);
    }
}
