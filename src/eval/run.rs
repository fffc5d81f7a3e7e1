//! Runs every system of an evaluation over one query file: the baselines and, when a model is
//! loaded, Self-Retrieval through the real retrieval path. Shared by the CLI and the GUI.

use super::{score, QueryResult, SystemResult};
use crate::corpus::Corpus;
use crate::error::{Error, Result};
use crate::retrieve::{AnswerReader, RetrievalTrace, RetrieveOptions};
use crate::train::Query;
use crate::worker::session::QuerySession;
use std::path::PathBuf;
use std::time::Instant;

/// What to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalPlan {
    /// `bm25`, `dense`, `bm25+reader` (BM25's top passage given to the loaded model for the
    /// answer: the retriever + reader comparison).
    pub baselines: Vec<String>,
    pub retrieve: RetrieveOptions,
    pub dense_model: PathBuf,
    /// Docid beams, for a run of the docid mode.
    pub docid_beams: usize,
}

/// Progress: (system, queries done, queries in all).
pub type EvalProgress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// Sees every Self-Retrieval trace with its query (to keep them for `selfret tune`).
pub type TraceSink<'a> = &'a mut dyn FnMut(&Query, &RetrievalTrace);

fn timed(
    q: &Query,
    f: impl FnOnce() -> Result<(Vec<String>, Option<String>)>,
) -> Result<QueryResult> {
    let t = Instant::now();
    let (ranked, answer) = f()?;
    Ok(QueryResult {
        id: q.id.clone(),
        question: q.question.clone(),
        ranked,
        gold_rank: None,
        answer,
        latency_ms: t.elapsed().as_secs_f64() * 1e3,
        title_rank: None,
    })
}

/// Scores one system's results, with the rank of the first gold-titled passage per query.
fn score_with_titles(
    system: &str,
    corpus: &Corpus,
    queries: &[Query],
    mut results: Vec<QueryResult>,
) -> SystemResult {
    for (q, r) in queries.iter().zip(&mut results) {
        r.title_rank = super::title_rank(corpus, &r.ranked, &q.positive_ids);
    }
    let mut sys = score(system, queries, results);
    // Over the scored queries (score leaves the unscorable out).
    let n = sys.queries.len().max(1) as f64;
    let first = sys
        .queries
        .iter()
        .filter(|r| r.title_rank == Some(1))
        .count();
    sys.metrics.insert("title@1".into(), first as f64 / n);
    sys
}

/// Evaluates the baselines over `corpus` and Self-Retrieval over `session` (if any).
/// `cancel` is polled between queries; `on_trace` sees every Self-Retrieval trace.
pub fn run_eval(
    session: Option<&QuerySession>,
    corpus: &Corpus,
    queries: &[Query],
    plan: &EvalPlan,
    progress: EvalProgress<'_>,
    cancel: &mut dyn FnMut() -> bool,
    on_trace: TraceSink<'_>,
) -> Result<Vec<SystemResult>> {
    let ids = |idx: Vec<usize>| -> Vec<String> {
        idx.into_iter()
            .map(|i| corpus.passages[i].id.clone())
            .collect()
    };
    let mut systems = Vec::new();
    let n = queries.len();
    for b in &plan.baselines {
        let mut results = Vec::with_capacity(n);
        match b.as_str() {
            "bm25" => {
                let index = super::bm25::Bm25Index::new(corpus, 0.9, 0.4);
                for (k, q) in queries.iter().enumerate() {
                    results.push(timed(q, || Ok((ids(index.search(&q.question, 10)), None)))?);
                    progress("bm25", k + 1, n);
                }
            }
            "dense" => {
                progress("dense (embedding the corpus)", 0, n);
                let index =
                    super::dense::DenseIndex::new(&plan.dense_model, corpus).map_err(|e| {
                        Error::invalid(format!(
                            "dense baseline: {e} (scripts/fetch-dense.sh fetches the model)"
                        ))
                    })?;
                for (k, q) in queries.iter().enumerate() {
                    if cancel() {
                        return Err(Error::Cancelled);
                    }
                    results.push(timed(q, || {
                        Ok((ids(index.search(&q.question, 10)?), None))
                    })?);
                    progress("dense", k + 1, n);
                }
            }
            "bm25+reader" => {
                let s = session.ok_or_else(|| {
                    Error::invalid("the bm25+reader baseline needs a model (--run)")
                })?;
                let index = super::bm25::Bm25Index::new(corpus, 0.9, 0.4);
                let reader = s.answer_reader(plan.retrieve.answer_reader)?;
                let r = s.retriever();
                for (k, q) in queries.iter().enumerate() {
                    if cancel() {
                        return Err(Error::Cancelled);
                    }
                    results.push(timed(q, || {
                        let top = index.search(&q.question, 10);
                        let read = match reader {
                            AnswerReader::Base => plan.retrieve.answer_passages.max(1),
                            _ => 1,
                        };
                        let answer = match top.is_empty() {
                            false => Some(
                                r.answer_from(
                                    &q.question,
                                    &top[..read.min(top.len())],
                                    reader,
                                    plan.retrieve.max_answer_tokens,
                                )?
                                .0,
                            ),
                            true => None,
                        };
                        Ok((ids(top), answer))
                    })?);
                    progress("bm25+reader", k + 1, n);
                }
            }
            other => {
                return Err(Error::invalid(format!(
                    "unknown baseline `{other}` (bm25, dense, bm25+reader)"
                )))
            }
        }
        systems.push(score_with_titles(b, corpus, queries, results));
    }
    if let Some(s) = session.filter(|s| s.docids.is_some()) {
        // A docid run retrieves by docid; its base model never learned titles.
        let mut results = Vec::with_capacity(n);
        for (k, q) in queries.iter().enumerate() {
            if cancel() {
                return Err(Error::Cancelled);
            }
            if q.question.trim().is_empty() {
                results.push(timed(q, || Ok((Vec::new(), None)))?);
                continue;
            }
            let answer = plan
                .retrieve
                .answer
                .then_some(plan.retrieve.max_answer_tokens);
            results.push(timed(q, || {
                let trace = s
                    .docid_query(
                        &q.question,
                        plan.docid_beams,
                        answer,
                        plan.retrieve.answer_passages,
                    )
                    .ok_or_else(|| Error::invalid("not a docid run"))??;
                Ok((
                    trace.ranked_ids().into_iter().map(String::from).collect(),
                    trace.answer.map(|a| a.text),
                ))
            })?);
            progress("semantic-docids", k + 1, n);
        }
        systems.push(score_with_titles(
            "semantic-docids",
            corpus,
            queries,
            results,
        ));
        return Ok(systems);
    }
    if let Some(s) = session {
        let mut results = Vec::with_capacity(n);
        // (candidate is gold, 1 - P(reject)) over every assessed candidate: the verdict's AUC.
        let mut verdicts: Vec<(bool, f64)> = Vec::new();
        let opts = s.options_for_model(&plan.retrieve);
        for (k, q) in queries.iter().enumerate() {
            if cancel() {
                return Err(Error::Cancelled);
            }
            if q.question.trim().is_empty() {
                // Unscorable (left out of the metrics); nothing to ask the model.
                results.push(timed(q, || Ok((Vec::new(), None)))?);
                continue;
            }
            results.push(timed(q, || {
                let trace = s.query(&q.question, &opts, &mut |_| {})?;
                if plan.retrieve.assess && !q.positive_ids.is_empty() {
                    verdicts.extend(
                        trace
                            .candidates
                            .iter()
                            .map(|c| (q.positive_ids.contains(&c.passage_id), 1.0 - c.p_reject)),
                    );
                }
                on_trace(q, &trace);
                Ok((
                    trace.ranking.iter().map(|r| r.passage_id.clone()).collect(),
                    trace.answer.map(|a| a.text),
                ))
            })?);
            progress("self-retrieval", k + 1, n);
        }
        let mut sys = score_with_titles("self-retrieval", corpus, queries, results);
        if let Some(a) = super::auc(&verdicts) {
            sys.metrics.insert("assess_auc".into(), a);
        }
        systems.push(sys);
    }
    Ok(systems)
}
