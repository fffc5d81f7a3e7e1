//! `export-data`: the exact training examples of a run as `{"prompt", "completion", "task"}`
//! JSON lines, the prompt-completion format Hugging Face TRL's SFTTrainer reads, so the same
//! fine-tune can run on other hardware. Each line also carries its token counts under the
//! run's tokenizer, so a trainer elsewhere can check it sees the same sequences.

use crate::model::{ModelBundle, TrainMode};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Run directory made by `index`.
    #[arg(long)]
    pub run: PathBuf,
    /// The run's checkpoint folder to export (e.g. a learning-curve snapshot `checkpoint-30min`).
    #[arg(long, default_value = "checkpoint")]
    pub checkpoint: String,
    /// Folder to write; an existing folder is kept unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs `export`: the run's model as a Hugging Face folder.
pub fn export(a: ExportArgs) -> Result<()> {
    let s = crate::worker::export::export_run(&a.run, &a.checkpoint, &a.out, a.force)?;
    let merged = if s.merged_lora {
        ", LoRA merged into the weights"
    } else {
        ""
    };
    println!(
        "wrote {} ({} parameters, step {}{merged}): {}",
        s.folder.display(),
        s.parameters,
        s.step,
        crate::model::export::EXPORTED_FILES.join(", ")
    );
    Ok(())
}

/// Arguments of `export-data`.
#[derive(Debug, clap::Args)]
pub struct ExportDataArgs {
    /// Run directory made by `index`.
    #[arg(long)]
    pub run: PathBuf,
    /// JSONL file to write; an existing file is kept unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

/// One exported example.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ExportedExample {
    pub prompt: String,
    pub completion: String,
    pub task: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Runs `export-data`.
pub fn export_data(a: ExportDataArgs) -> Result<()> {
    if a.out.exists() && !a.force {
        bail!(
            "{} exists: give another --out, or --force to replace it",
            a.out.display()
        );
    }
    let ckpt = crate::worker::index::checkpoint_dir(&a.run);
    let bundle = ModelBundle::load_checkpoint(
        &ckpt,
        Some(TrainMode::Frozen),
        &crate::model::default_device(),
    )
    .with_context(|| format!("opening the run's checkpoint {}", ckpt.display()))?;
    let (examples, _) = crate::worker::index::saved_run_examples(&a.run, &bundle)?;
    let mut buf = Vec::new();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for e in &examples {
        let (prompt, completion) = e.ids.split_at(e.target_start.min(e.ids.len()));
        let decode = |ids: &[u32]| {
            bundle
                .tokenizer
                .decode(ids, false)
                .map_err(|err| anyhow::anyhow!("decoding an example: {err}"))
        };
        let line = ExportedExample {
            prompt: decode(prompt)?,
            completion: decode(completion)?,
            task: e.task.name().to_string(),
            prompt_tokens: prompt.len(),
            completion_tokens: completion.len(),
        };
        serde_json::to_writer(&mut buf, &line)?;
        buf.push(b'\n');
        *counts.entry(e.task.name()).or_default() += 1;
    }
    crate::model::checkpoint::write_atomic(&a.out, &buf)?;
    let mut out = std::io::stdout().lock();
    let by_task: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    writeln!(
        out,
        "{} examples ({}) -> {}",
        examples.len(),
        by_task.join(", "),
        a.out.display()
    )?;
    Ok(())
}
