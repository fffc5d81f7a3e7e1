//! `index`: train a model on a corpus into a run directory, with presets, a progress bar,
//! checkpoints and resume.

use super::{download_bar, report_load};
use crate::model::{LoraConfig, ModelSource, Projection};
use crate::train::data::TargetLength;
use crate::train::TrainEvent;
use crate::worker::index::{run_index, IndexSpec};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

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
    /// A whole training recipe: `quick` (about a hundred passages, ~12 min on 2 cores) or
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
    /// Task weights (indexing, retrieval, assessment, reading), e.g. `assessment=0,reading=1`;
    /// tasks not named keep their weight (the preset's).
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
    /// How the model retrieves: `titles` (Self-Retrieval: titles then passages under a trie)
    /// or `docids` (hierarchical semantic docids through a retrieval pathway: retrieval heads,
    /// MLP' and a docid head; on a pretrained model the base stays frozen unless --lora is
    /// given).
    #[arg(long, value_enum, default_value_t = Retriever::Titles)]
    pub retriever: Retriever,
    /// Docid tree: clusters per level (k).
    #[arg(long, default_value_t = 10)]
    pub docid_k: usize,
    /// Docid tree: a cluster with more passages than this is split again.
    #[arg(long, default_value_t = 30)]
    pub docid_leaf: usize,
    /// Retrieval heads per layer in the docid mode (rounded up to a multiple of the model's
    /// key/value heads).
    #[arg(long, default_value_t = 4)]
    pub retrieval_heads: usize,
    /// Docid training stage: 1 warms the pathway up (on a pretrained model its base stays
    /// frozen); 2 continues a stage-1 run (`--from`) with LoRA on the base and adds mode 2:
    /// the pathway draws docids for each training question, the passages holding its answer
    /// are rewarded, and the answer is trained on the passages drawn. Stage 2 takes the
    /// stage-1 run's model, tree and questions (unless --queries is given).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub docid_stage: u8,
    /// The stage-1 docid run stage 2 continues.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Docids the pathway draws per training question in stage 2.
    #[arg(long, default_value_t = crate::worker::docid_run::DEFAULT_DRAWS)]
    pub docid_draws: usize,
}

/// The two retrieval modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Retriever {
    Titles,
    Docids,
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

/// Task weights from `task=weight,...`: the tasks named change, the others keep `base`'s weight
/// (a preset's).
fn parse_mix(s: &str, base: crate::train::TaskMix) -> Result<crate::train::TaskMix> {
    let mut mix = base;
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
            "reading" => mix.reading = w,
            other => bail!("unknown task `{other}` (indexing, retrieval, assessment, reading)"),
        }
    }
    Ok(mix)
}

/// Runs `index`.
pub fn index(a: IndexArgs) -> Result<()> {
    let first = match (a.docid_stage, &a.from) {
        (2, Some(from)) if !a.resume => Some(
            crate::worker::index::RunManifest::read(from)
                .with_context(|| format!("{}: no stage-1 run to continue", from.display()))?,
        ),
        (2, None) if !a.resume => {
            bail!("--docid-stage 2 continues a stage-1 run: give it with --from RUN")
        }
        (1, Some(_)) if !a.resume => bail!("--from names the stage-1 run of --docid-stage 2"),
        _ => None,
    };
    // Stage 2 goes on with the stage-1 run's model.
    let source: ModelSource = match &first {
        Some(m) => m.spec.model.clone(),
        None => a.model.parse().map_err(anyhow::Error::msg)?,
    };
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
    if a.retriever == Retriever::Docids && first.is_none() {
        let mut d = crate::worker::docid_run::DocidRun {
            heads: a.retrieval_heads,
            ..Default::default()
        };
        d.full = a.full;
        d.tree.k = a.docid_k;
        d.tree.max_leaf = a.docid_leaf;
        d.tree.check()?;
        spec.docids = Some(d);
        // Stage 1 (the warm-up): only the new pathway trains, unless adapters are asked for.
        if a.lora.is_none() {
            spec.lora = None;
        }
        // The pathway starts from nothing: a larger step than adapters take.
        spec.train.lr = spec.train.lr.max(1e-3);
    }
    spec.queries = a.queries.clone();
    if let (Some(_), Some(from)) = (&first, &a.from) {
        crate::worker::docid_run::continue_stage1(&mut spec, from, &a.out, a.docid_draws)?;
    }
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
        spec.train.mix = parse_mix(m, spec.train.mix)?;
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
        let m = crate::worker::index::RunManifest::read(&a.out)
            .with_context(|| format!("{}: no run to resume", a.out.display()))?;
        spec = m.spec;
        // How often to save and probe is the user's to change; the recipe is the run's own.
        spec.train.checkpoint_every = a.checkpoint_every;
        spec.train.snapshot_minutes = a.snapshot_minutes.clone();
        spec.train.eval_every = a.eval_every;
        eprintln!(
            "resuming with the run's own recipe ({}); recipe flags given now are not applied",
            a.out.join("run.ron").display()
        );
        let done = crate::model::checkpoint::Manifest::read(&a.out.join("checkpoint"))
            .map(|m| m.step as usize)
            .unwrap_or(0);
        // A new budget on resume extends or shortens the run (its schedule follows).
        if let Some(s) = a.steps {
            if s <= done {
                bail!(
                    "{}: the run has already taken {done} steps, so a budget of {s} would train \
                     nothing; give more than {done} steps",
                    a.out.display()
                );
            }
            // (The run says the new budget when it starts: `BudgetChanged`.)
            spec.train.steps = s;
            spec.train.epochs = None;
        } else if let Some(e) = a.epochs {
            spec.train.epochs = Some(e);
        }
    } else if let Some(e) = a.epochs {
        spec.train.epochs = Some(e);
    }
    let mut bar =
        super::progress::Progress::new(spec.train.steps as u64, "{bar:30} {pos}/{len} {msg}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    struct CtrlC(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl crate::train::TrainControl for CtrlC {
        fn should_cancel(&mut self) -> bool {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }
    let corpus = crate::corpus::load_path(&spec.corpus, &spec.load)?;
    report_load(&corpus);
    if let Some(path) = &spec.queries {
        // A BEIR folder trains on its `train` split.
        let mut queries = crate::train::data::load_queries_split(path, "train")?;
        for line in crate::eval::check_queries(&mut queries, &corpus).report() {
            eprintln!("{}: {line}", path.display());
        }
    }
    drop(corpus);
    let started = std::time::Instant::now();
    let mut total_steps_seen = spec.train.steps as u64;
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
                total_steps_seen = total_steps as u64;
                bar.println(format!(
                    "{examples} training examples, {total_steps} steps, starting at step {start_step}"
                ));
                bar.update("step", start_step as u64, total_steps_seen, "");
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
                bar.update(
                    "step",
                    step as u64,
                    total_steps_seen,
                    format!(
                        "{:<10} loss {loss:.3} lr {lr:.1e} {tokens_per_s:.0} tok/s ETA {:.0}s",
                        task.name(),
                        eta_s
                    ),
                );
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
                bar.update(&stage, done as u64, total as u64, "")
            }
            TrainEvent::BudgetChanged {
                step,
                planned_steps,
                total_steps,
            } => bar.println(format!(
                "resuming at step {step} with a budget of {total_steps} steps (the run was \
                 planned for {planned_steps}; its schedule follows the new budget)"
            )),
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
