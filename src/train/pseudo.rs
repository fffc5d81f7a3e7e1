//! Pseudo-queries: the base model writes a few questions for every passage, and a question is
//! kept when a filter finds its passage again from it, so retrieval training sees, for every
//! passage, questions that point to it (DSI-QG and NCI found generated queries per document the
//! strongest single lever of generative retrieval). The default filter is BM25 (the question
//! must share enough distinctive words with its passage: it drops generic and invented
//! questions at no model cost); the model's own retrieval is the stricter, slower choice.

use super::data::Query;
use crate::corpus::Corpus;
use crate::error::{Error, Result};
use crate::generate::{generate_batch, GenerateOptions};
use crate::prompts::QuestionPrompt;
use crate::retrieve::{RetrieveOptions, Retriever};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Which retriever must find a question's passage for the question to be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PseudoFilter {
    /// BM25 over the corpus (fast; the default).
    #[default]
    Bm25,
    /// The model's own retrieval (titles and passages, no assessment).
    SelfRetrieval,
    /// Keep every well-formed question.
    None,
}

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
    #[serde(default)]
    pub filter: PseudoFilter,
    /// Passages whose prompts run as one batch.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_batch() -> usize {
    16
}

impl Default for PseudoOptions {
    fn default() -> Self {
        PseudoOptions {
            per_passage: 3,
            max_passages: 0,
            keep_top: 5,
            temperature: 0.8,
            seed: 5,
            filter: PseudoFilter::Bm25,
            batch: default_batch(),
        }
    }
}

/// One generated question and what the filter made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PseudoQuery {
    pub query: Query,
    /// Rank (1-based) of the source passage in the filter's retrieval, if found.
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

/// Passage tokens a prompt keeps at least when cut to its batch's length.
const MIN_EXCERPT: usize = 48;

/// Writes and filters pseudo-queries with `retriever`'s model over its corpus. Prompts run in
/// batches of passages of similar length, each cut to its batch's shortest (a few tokens off
/// the end of an excerpt). `progress(done, total)` returns true to stop early (what is done so
/// far is returned).
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
        stop_after: Some('?'),
        ..Default::default()
    };
    let chosen = chosen_passages(corpus.len(), opts.max_passages);
    let parts: Vec<QuestionPrompt> = chosen
        .iter()
        .map(|&i| {
            let p = &corpus.passages[i];
            QuestionPrompt::new(tok, &p.title, &p.text)
        })
        .collect::<Result<_>>()?;
    let mut order: Vec<usize> = (0..chosen.len()).collect();
    order.sort_by_key(|&k| (parts[k].len(), k));
    let bm25 = (opts.filter == PseudoFilter::Bm25)
        .then(|| crate::eval::bm25::Bm25Index::new(corpus, 0.9, 0.4));
    let ropts = RetrieveOptions::light();
    // Questions per chosen passage, filled batch by batch in length order.
    let mut written: Vec<Vec<PseudoQuery>> = vec![Vec::new(); chosen.len()];
    let mut done = 0;
    // Batches of prompts in length order, cut to the batch's shortest; a prompt joins only if
    // its instruction and cue fit that length with room for some of its passage. At most 64
    // sample rows decode together (their caches grow with every step).
    let per_batch = opts.batch.min(64 / opts.per_passage.max(1)).max(1);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &k in &order {
        let fixed = parts[k].head.len() + parts[k].tail.len();
        let fits = groups.last().is_some_and(|g| {
            let shortest = parts[g[0]].len();
            g.len() < per_batch && fixed + MIN_EXCERPT.min(parts[k].body.len()) <= shortest
        });
        match groups.last_mut() {
            Some(g) if fits => g.push(k),
            _ => groups.push(vec![k]),
        }
    }
    for group in &groups {
        if progress(done, chosen.len()) {
            break;
        }
        let len = group.iter().map(|&k| parts[k].len()).min().unwrap_or(0);
        let prompts: Vec<Vec<u32>> = group.iter().map(|&k| parts[k].ids(len)).collect();
        let samples = generate_batch(
            retriever.model,
            tok,
            eos,
            &prompts,
            opts.per_passage,
            &gen,
            &mut rng,
        )?;
        for (&k, raws) in group.iter().zip(samples) {
            let p = &corpus.passages[chosen[k]];
            let mut seen: Vec<String> = Vec::new();
            for raw in raws {
                let Some(q) = tidy_question(&raw) else {
                    continue;
                };
                if seen.iter().any(|s| s.eq_ignore_ascii_case(&q)) {
                    continue;
                }
                seen.push(q.clone());
                let rank = match (&bm25, opts.filter) {
                    (Some(index), _) => index
                        .search(&q, opts.keep_top.max(1))
                        .iter()
                        .position(|&i| i == chosen[k])
                        .map(|r| r + 1),
                    (None, PseudoFilter::SelfRetrieval) => retriever
                        .retrieve(&q, &ropts, &mut |_| {})?
                        .ranked_ids()
                        .iter()
                        .position(|id| *id == p.id)
                        .map(|r| r + 1),
                    (None, _) => None,
                };
                let keep = match opts.filter {
                    PseudoFilter::None => true,
                    _ => rank.is_some_and(|r| r <= opts.keep_top),
                };
                written[k].push(PseudoQuery {
                    query: Query {
                        id: format!("pseudo-{}-{}", p.id, seen.len()),
                        question: q,
                        answers: Vec::new(),
                        positive_ids: vec![p.id.clone()],
                        answer_passage_ids: Vec::new(),
                        relevance: Default::default(),
                    },
                    rank,
                    keep,
                });
            }
        }
        done += group.len();
    }
    progress(done, chosen.len());
    Ok(written.into_iter().flatten().collect())
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
