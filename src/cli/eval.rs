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
}

/// Arguments of `tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// Rank records written by `eval --traces`.
    #[arg(long)]
    pub traces: PathBuf,
    /// Settings to print, best first.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
}

/// Runs `tune`: every setting of the grid scored by MRR@5, the paper's formula and the
/// current defaults beside the best.
pub fn tune(a: TuneArgs) -> Result<()> {
    use crate::eval::tune::{evaluate, grid, read_records, Setting, TitleTerm};
    let records = read_records(&a.traces)?;
    if records.is_empty() {
        bail!("{}: no records", a.traces.display());
    }
    let defaults = RetrieveOptions::default();
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
    ];
    let mut scored: Vec<(Setting, crate::eval::tune::TuneMetrics)> = grid()
        .into_iter()
        .map(|s| (s, evaluate(&records, &s)))
        .collect();
    scored.sort_by(|a, b| {
        b.1.mrr5
            .total_cmp(&a.1.mrr5)
            .then(b.1.hits1.total_cmp(&a.1.hits1))
    });
    println!("{} queries from {}", records.len(), a.traces.display());
    println!("| setting | title term | tau | delta | passage weight | query weight | global assessment | hits@1 | hits@5 | mrr@5 | title@1 | gold in candidates |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let row = |name: &str, s: &Setting, m: &crate::eval::tune::TuneMetrics| {
        println!(
            "| {name} | {:?} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            s.title_term,
            s.weights.tau,
            s.weights.delta,
            s.weights.passage_weight,
            s.weights.query_weight,
            s.global_assessment,
            m.hits1,
            m.hits5,
            m.mrr5,
            m.title1,
            m.in_candidates
        )
    };
    for (name, s) in &named {
        row(name, s, &evaluate(&records, s));
    }
    for (k, (s, m)) in scored.iter().take(a.top).enumerate() {
        row(&format!("grid #{}", k + 1), s, m);
    }
    Ok(())
}

/// Runs `eval`.
pub fn eval(a: EvalArgs) -> Result<()> {
    // Before any work: a bad temperature would otherwise fail after the baselines ran.
    a.rank.options().validate()?;
    let mut queries = crate::train::data::load_queries_split(&a.queries, &a.split)?;
    if let Some(n) = a.limit {
        queries = if a.spread {
            crate::eval::spread_sample(queries, n)
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
    let bar = indicatif::ProgressBar::new(queries.len() as u64);
    let mut records = String::new();
    let systems = crate::eval::run::run_eval(
        session.as_ref(),
        &corpus,
        &queries,
        &plan,
        &mut |system, done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(system.to_string());
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
