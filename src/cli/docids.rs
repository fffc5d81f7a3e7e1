//! `docids`: builds a corpus's hierarchical semantic docids (recursive k-means over passage
//! embeddings) and prints the tree with each cluster's label, so the structure the second
//! retrieval mode generates through can be read before any training.

use crate::corpus::{load_path, LoadOptions};
use crate::docids::{self, embed, DocidOptions, DocidTree};
use crate::model::ModelSource;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Which embeddings the clusters are built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbedderChoice {
    /// MiniLM when installed (scripts/fetch-dense.sh), else the model given with --model.
    Auto,
    /// all-MiniLM-L6-v2, the dense baseline's encoder.
    Minilm,
    /// Mean-pooled hidden states of --model.
    Model,
}

/// Arguments of `docids`.
#[derive(Debug, clap::Args)]
pub struct DocidsArgs {
    /// Corpus (JSONL, BEIR folder, or folder of documents).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Where to write the tree (JSON); an existing file is kept unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, default_value_t = EmbedderChoice::Auto)]
    pub embedder: EmbedderChoice,
    /// Model for `--embedder model` (tiny, .gguf, folder, hf:REPO).
    #[arg(long)]
    pub model: Option<String>,
    /// MiniLM folder.
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    /// Clusters per level.
    #[arg(long, default_value_t = DocidOptions::default().k)]
    pub k: usize,
    /// Split clusters with more passages than this.
    #[arg(long, default_value_t = DocidOptions::default().max_leaf)]
    pub max_leaf: usize,
    #[arg(long, default_value_t = DocidOptions::default().seed)]
    pub seed: u64,
    /// Levels of the tree to print (0: none).
    #[arg(long, default_value_t = 2)]
    pub show_levels: usize,
}

/// Runs `docids`.
pub fn docids(a: DocidsArgs) -> Result<()> {
    let options = DocidOptions {
        k: a.k,
        max_leaf: a.max_leaf,
        seed: a.seed,
        ..Default::default()
    };
    options.check()?;
    if a.out.exists() && !a.force {
        bail!(
            "{} exists: give another --out, or --force to replace it",
            a.out.display()
        );
    }
    let corpus = load_path(&a.corpus, &LoadOptions::default())?;
    eprintln!("{}", corpus.load_report(20));
    let minilm = a
        .minilm
        .clone()
        .unwrap_or_else(crate::eval::dense::default_dir);
    let use_minilm = match a.embedder {
        EmbedderChoice::Minilm => true,
        EmbedderChoice::Model => false,
        EmbedderChoice::Auto => minilm.join("config.json").is_file() || a.model.is_none(),
    };
    let started = std::time::Instant::now();
    let (rows, embedder) = if use_minilm {
        embed::with_minilm(&minilm, &corpus).with_context(|| {
            format!(
                "embedding with MiniLM from {} (run scripts/fetch-dense.sh, or give --embedder model --model SRC)",
                minilm.display()
            )
        })?
    } else {
        let Some(model) = &a.model else {
            bail!("--embedder model needs --model SRC");
        };
        let source: ModelSource = model.parse().map_err(anyhow::Error::msg)?;
        let spec = crate::worker::index::IndexSpec::new(a.corpus.clone(), source.clone());
        let device = crate::model::default_device();
        let bundle = crate::worker::index::load_base(&spec, &corpus, &device, None)?;
        let mut bar =
            super::progress::Progress::new(corpus.len() as u64, "{bar:30} {pos}/{len} {msg}");
        let rows = embed::with_model(
            &bundle.model,
            &bundle.tokenizer,
            bundle.special.pad,
            &corpus,
            &mut |done, total| bar.update("passages embedded", done as u64, total as u64, ""),
        )?;
        bar.finish_and_clear();
        (rows, format!("mean-pooled hidden states of {source}"))
    };
    let embedded = started.elapsed().as_secs_f64();
    let tree = DocidTree::build(&corpus, &rows, &embedder, options)?;
    tree.save(&a.out)?;
    println!(
        "{} passages -> {} clusters ({} leaves), docids of up to {} tokens, {} docid tokens; \
         embedded by {embedder} in {embedded:.1}s -> {}",
        corpus.len(),
        tree.clusters.len(),
        tree.leaves(),
        tree.depth(),
        tree.vocab().len(),
        a.out.display()
    );
    for c in tree
        .clusters
        .iter()
        .filter(|c| !c.path.is_empty() && c.path.len() <= a.show_levels)
    {
        println!(
            "{}{:<8} {:>5} passages  {}{}",
            "  ".repeat(c.path.len() - 1),
            docids::show(&c.path),
            c.size,
            c.label.join(", "),
            if c.leaf { "" } else { "  ..." }
        );
    }
    Ok(())
}
