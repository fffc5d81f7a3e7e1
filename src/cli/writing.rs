//! `pseudo-queries` and `titles`: the model writes questions for passages, or titles for
//! passages that have none.

use super::ModelChoice;
use anyhow::Result;
use std::path::PathBuf;

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
    /// Keep a question when BM25 ranks its passage within this many.
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
    let session = a.model.open(true)?;
    let opts = crate::train::pseudo::PseudoOptions {
        per_passage: a.per_passage,
        max_passages: a.limit,
        keep_top: a.keep_top,
        ..Default::default()
    };
    let mut bar = super::progress::Progress::new(0, "{bar:30} {pos}/{len} {msg}");
    let qs = session.pseudo_queries(&opts, &mut |done, total| {
        bar.update("passages read", done as u64, total as u64, "");
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
    let session = a.model.open(true)?;
    let untitled = session.corpus.untitled().len();
    let mut bar = super::progress::Progress::new(untitled as u64, "{bar:30} {pos}/{len} {msg}");
    let n = session.write_titled_corpus(&a.out, &mut |done, total| {
        bar.update("titles written", done as u64, total as u64, "");
        false
    })?;
    bar.finish();
    println!(
        "{n} of {untitled} untitled documents got a generated title -> {}",
        a.out.display()
    );
    Ok(())
}
