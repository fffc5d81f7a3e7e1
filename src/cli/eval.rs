//! `eval`: Self-Retrieval against BM25 and dense retrieval on a query file; `tune`: the ranking's
//! weights searched on the records `eval --traces` wrote.

use super::{report_load, RankArgs};
use crate::retrieve::RetrieveOptions;
use crate::worker::session::QuerySession;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Run directory made by `index` (Self-Retrieval); without it only baselines run.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// The run's checkpoint folder to evaluate (e.g. a learning-curve snapshot
    /// `checkpoint-30min`).
    #[arg(long, requires = "run", default_value = "checkpoint")]
    pub checkpoint: String,
    /// Corpus (defaults to the run's corpus).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Evaluate this model over --corpus instead of a run: an exported or elsewhere-trained
    /// Hugging Face folder, a GGUF file, `tiny` or `hf:OWNER/NAME`.
    #[arg(long, conflicts_with = "run", requires = "corpus")]
    pub model: Option<String>,
    /// Query file with `question`, `answers`, `positive_ids` (and optional `answer_passage_ids`),
    /// or a BEIR folder (`queries.jsonl` and `qrels/{split}.tsv`; graded qrels add nDCG@10 and
    /// Recall@100).
    #[arg(long)]
    pub queries: PathBuf,
    /// The qrels split of a BEIR folder given as --queries.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Comma-separated baselines: bm25, dense, bm25+reader (BM25's top passage answered by
    /// the run's model; needs --run).
    #[arg(long, default_value = "bm25,dense")]
    pub baselines: String,
    /// Evaluate only the first N queries.
    #[arg(long)]
    pub limit: Option<usize>,
    /// With --limit, take the N queries spread evenly over the file instead of the first N
    /// (query files are often grouped by document).
    #[arg(long, requires = "limit")]
    pub spread: bool,
    /// With --spread, shift every pick this many queries further: with fewer than half the
    /// file taken, offsets 0 and 1 give disjoint samples (one to fit the ranking on, one to
    /// check it on).
    #[arg(long, requires = "spread", default_value_t = 0)]
    pub spread_offset: usize,
    /// Write systems, metrics and per-query results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub rank: RankArgs,
    /// With `--candidates 0`: passage beams as a full beam search inside each title (instead of
    /// j first tokens each finished greedily).
    #[arg(long)]
    pub passage_beam: bool,
    /// Write every Self-Retrieval trace with its query's gold passages as JSON lines (for
    /// `selfret tune`, which searches the ranking weights without the model).
    #[arg(long)]
    pub traces: Option<PathBuf>,
    /// Skip answer generation.
    #[arg(long)]
    pub no_answer: bool,
    /// Folder of the dense model (default models/all-MiniLM-L6-v2).
    #[arg(long)]
    pub dense_model: Option<PathBuf>,
    /// Memory for passages the query likelihood has read, kept for later questions (MB;
    /// SmolLM2-135M takes about 5 MB a passage; 0 reads each passage for every question).
    #[arg(long, default_value_t = crate::retrieve::reading::DEFAULT_READING_CACHE_MB)]
    pub reading_cache_mb: usize,
}

/// Arguments of `tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// Rank records written by `eval --traces`; repeat it to fit one setting to several sets
    /// (the grid is ordered by their mean MRR@5).
    #[arg(long, required = true)]
    pub traces: Vec<PathBuf>,
    /// Records to check the settings on without fitting to them (e.g. `eval --spread
    /// --spread-offset 1` on the same dev file): shown beside the fitted sets, never used to
    /// order the grid.
    #[arg(long)]
    pub check: Vec<PathBuf>,
    /// Settings to print, best first.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
}

/// Runs `tune`: every setting of the grid scored by its mean MRR@5 over the fitted sets, the
/// paper's formula and the current defaults beside the best, each also on the check sets.
pub fn tune(a: TuneArgs) -> Result<()> {
    use crate::eval::tune::{
        grid, read_records, Setting, TitleTerm, TuneMetrics, TuneSet, GRID_TEMPERATURES,
    };
    use rayon::prelude::*;
    let defaults = RetrieveOptions::default();
    // The grid's temperatures, the paper's and the defaults' have their title normalisers ready.
    let taus: Vec<f64> = GRID_TEMPERATURES
        .iter()
        .copied()
        .chain([0.4, defaults.tau])
        .collect();
    let read = |paths: &[PathBuf]| -> Result<Vec<(String, TuneSet)>> {
        paths
            .iter()
            .map(|p| {
                let records = read_records(p)?;
                if records.is_empty() {
                    bail!("{}: no records", p.display());
                }
                Ok((p.display().to_string(), TuneSet::new(records, &taus)))
            })
            .collect()
    };
    let fitted = read(&a.traces)?;
    let checked = read(&a.check)?;
    let named = [
        (
            "paper (tau 0.4, delta 0.4)",
            Setting {
                weights: crate::retrieve::score::RankWeights {
                    tau: 0.4,
                    delta: 0.4,
                    passage_weight: 0.0,
                    query_weight: 0.0,
                },
                title_term: TitleTerm::NormProb,
                global_assessment: 0.0,
            },
        ),
        (
            "defaults",
            Setting {
                weights: defaults.weights(),
                title_term: TitleTerm::NormProb,
                global_assessment: 0.0,
            },
        ),
        // Ablations of the defaults, exact on the same candidates: neither term changes which
        // passages become candidates, only their order.
        (
            "defaults without the passage term",
            Setting {
                weights: crate::retrieve::score::RankWeights {
                    passage_weight: 0.0,
                    ..defaults.weights()
                },
                title_term: TitleTerm::NormProb,
                global_assessment: 0.0,
            },
        ),
        (
            "defaults without the query likelihood",
            Setting {
                weights: crate::retrieve::score::RankWeights {
                    query_weight: 0.0,
                    ..defaults.weights()
                },
                title_term: TitleTerm::NormProb,
                global_assessment: 0.0,
            },
        ),
    ];
    let mean_mrr = |s: &Setting| {
        fitted.iter().map(|(_, r)| r.evaluate(s).mrr5).sum::<f64>() / fitted.len() as f64
    };
    let mut scored: Vec<(Setting, f64)> =
        grid().into_par_iter().map(|s| (s, mean_mrr(&s))).collect();
    scored.sort_by(|x, y| y.1.total_cmp(&x.1));
    let sets: Vec<(&str, &str, &TuneSet)> = fitted
        .iter()
        .map(|(n, r)| ("fit", n.as_str(), r))
        .chain(checked.iter().map(|(n, r)| ("check", n.as_str(), r)))
        .collect();
    for (k, (role, name, records)) in sets.iter().enumerate() {
        let gold = records.evaluate(&named[1].1).in_candidates;
        println!(
            "set {} ({role}): {} queries from {name}, gold in candidates {gold:.3}",
            k + 1,
            records.records().len()
        );
    }
    let set_headers: String = (1..=sets.len())
        .map(|k| format!(" set {k} hits@1 | set {k} mrr@5 | set {k} title@1 |"))
        .collect();
    println!(
        "| setting | title term | tau | delta | passage weight | query weight | global assessment |{set_headers} mean mrr@5 (fit) |"
    );
    println!(
        "|---|---|---|---|---|---|---|{}---|",
        "---|".repeat(3 * sets.len())
    );
    let row = |name: &str, s: &Setting| {
        let per_set: Vec<TuneMetrics> = sets.iter().map(|(_, _, r)| r.evaluate(s)).collect();
        let cells: String = per_set
            .iter()
            .map(|m| format!(" {:.3} | {:.3} | {:.3} |", m.hits1, m.mrr5, m.title1))
            .collect();
        println!(
            "| {name} | {:?} | {} | {} | {} | {} | {} |{cells} {:.3} |",
            s.title_term,
            s.weights.tau,
            s.weights.delta,
            s.weights.passage_weight,
            s.weights.query_weight,
            s.global_assessment,
            mean_mrr(s)
        )
    };
    for (name, s) in &named {
        row(name, s);
    }
    for (k, (s, _)) in scored.iter().take(a.top).enumerate() {
        row(&format!("grid #{}", k + 1), s);
    }
    print_prior_reach(&sets, defaults.candidates);
    Ok(())
}

/// The title prior's weight on records that read it: where the gold title lands under each
/// weight, and whether the candidate budget reaches it.
fn print_prior_reach(sets: &[(&str, &str, &crate::eval::tune::TuneSet)], budget: usize) {
    use crate::eval::title_prior::{has_priors, prior_reach, PRIOR_WEIGHTS};
    let with_priors: Vec<(usize, &crate::eval::tune::TuneSet)> = sets
        .iter()
        .enumerate()
        .filter(|(_, (_, _, r))| has_priors(r.records()))
        .map(|(k, (_, _, r))| (k + 1, *r))
        .collect();
    if with_priors.is_empty() {
        return;
    }
    println!();
    println!(
        "The title prior (titles ordered by search log-prob minus the weight times the prior, \
         before a budget of {budget} candidates):"
    );
    let headers: String = with_priors
        .iter()
        .map(|(k, _)| {
            format!(
                " set {k} gold title first | first 10 | first 100 | title mrr@5 | within budget |"
            )
        })
        .collect();
    println!("| title prior weight |{headers}");
    println!("|---|{}", "---|".repeat(5 * with_priors.len()));
    for weight in PRIOR_WEIGHTS {
        let cells: String = with_priors
            .iter()
            .map(|(_, r)| {
                let m = prior_reach(r.records(), weight, budget);
                let within = m
                    .within_budget
                    .map_or("-".to_string(), |v| format!("{v:.3}"));
                format!(
                    " {:.3} | {:.3} | {:.3} | {:.3} | {within} |",
                    m.first, m.first10, m.first100, m.title_mrr5
                )
            })
            .collect();
        println!("| {weight} |{cells}");
    }
}

/// Runs `eval`.
pub fn eval(a: EvalArgs) -> Result<()> {
    // Before any work: a bad temperature would otherwise fail after the baselines ran.
    a.rank.options().validate()?;
    let mut queries = crate::train::data::load_queries_split(&a.queries, &a.split)?;
    if let Some(n) = a.limit {
        queries = if a.spread {
            crate::eval::spread_sample(queries, n, a.spread_offset)
        } else {
            queries.into_iter().take(n).collect()
        };
    }
    let session = match (&a.run, &a.model, &a.corpus) {
        (Some(run), _, _) => Some(QuerySession::open_run_at(run, &run.join(&a.checkpoint))?),
        (None, Some(model), Some(corpus)) => {
            let source: crate::model::ModelSource = model.parse().map_err(anyhow::Error::msg)?;
            Some(QuerySession::open_untrained(&source, corpus, None)?)
        }
        _ => None,
    };
    if let Some(s) = &session {
        s.reading.set_capacity_mb(a.reading_cache_mb);
    }
    let corpus = match (&a.corpus, &session) {
        (Some(c), _) => crate::corpus::load_path(c, &Default::default())?,
        (None, Some(s)) => s.corpus.clone(),
        (None, None) => bail!("give --run DIR or --corpus FILE"),
    };
    report_load(&corpus);
    eprintln!("{} queries over {} passages", queries.len(), corpus.len());
    let check = crate::eval::check_queries(&mut queries, &corpus);
    for line in check.report() {
        eprintln!("{line}");
    }
    check
        .refuse_if_nothing_scorable(queries.len())
        .with_context(|| format!("{}", a.queries.display()))?;
    let plan = crate::eval::run::EvalPlan {
        baselines: a
            .baselines
            .split(',')
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect(),
        retrieve: RetrieveOptions {
            passage_beam: a.passage_beam,
            answer: !a.no_answer,
            ..a.rank.options_for(session.as_ref())
        },
        dense_model: a
            .dense_model
            .clone()
            .unwrap_or_else(crate::eval::dense::default_dir),
        docid_beams: a.rank.docid_beams,
    };
    if let Some(s) = &session {
        if plan.retrieve.likelihood && !s.reads_language() {
            eprintln!("a tiny model reads no language: ranking without the query likelihood");
        }
    }
    let mut bar =
        super::progress::Progress::new(queries.len() as u64, "{bar:30} {pos}/{len} {msg}");
    let mut records = String::new();
    let systems = crate::eval::run::run_eval(
        session.as_ref(),
        &corpus,
        &queries,
        &plan,
        &mut |system, done, total| {
            bar.update(&format!("{system}: queries"), done as u64, total as u64, "");
        },
        &mut || false,
        &mut |q, trace| {
            if a.traces.is_some() && !q.positive_ids.is_empty() {
                let r = crate::eval::tune::RankRecord::new(q, trace, &corpus);
                if let Ok(line) = serde_json::to_string(&r) {
                    records.push_str(&line);
                    records.push('\n');
                }
            }
        },
    )?;
    if let Some(path) = &a.traces {
        crate::model::checkpoint::write_atomic(path, records.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    bar.finish_and_clear();
    if let Some(s) = &session {
        let r = s.reading.stats();
        if r.hits + r.misses > 0 {
            eprintln!(
                "query likelihood: {} of {} passage readings reused; {} passages kept ({} MB)",
                r.hits,
                r.hits + r.misses,
                r.passages,
                r.bytes >> 20
            );
        }
    }
    println!("{}", crate::eval::table(&systems));
    if let Some(out) = &a.json {
        let json = serde_json::json!({
            "queries_file": a.queries,
            "run": a.run,
            "systems": systems,
        });
        crate::model::checkpoint::write_atomic(
            out,
            serde_json::to_string_pretty(&json)?.as_bytes(),
        )?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
