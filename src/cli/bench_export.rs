//! `bench export --run DIR`: does an exported folder hold the model its run retrieves with, as
//! other tools read it? The run is exported to a scratch folder, which selfret and Hugging Face
//! transformers (bench/hf_logprobs.py, in the reference environment) then both load; all three
//! read the run's own prompt formats, and the table prints how far their log-probabilities lie
//! apart: every prompt token's, and the whole next-token distribution after the prompt.

use super::bench::{reference_python, BenchArgs};
use crate::model::ModelSource;
use crate::retrieve::likelihood::{question_ids, reading_prompt};
use crate::worker::export::export_run;
use crate::worker::session::QuerySession;
use anyhow::{Context, Result};
use candle_core::Tensor;
use std::path::PathBuf;

/// Log-probabilities of one prompt under one model.
struct PromptLogprobs {
    /// log P(ids[t + 1] | ids[..=t]) for every position but the last.
    tokens: Vec<f32>,
    /// log P(v | the whole prompt) for every vocabulary id v.
    last: Vec<f32>,
}

fn logprobs(session: &QuerySession, ids: &[u32]) -> Result<PromptLogprobs> {
    let model = &session.model;
    let x = Tensor::from_vec(ids.to_vec(), (1, ids.len()), model.device())?;
    let logits = model.forward(&x, None)?.squeeze(0)?;
    let logp = crate::kernels::loss::log_softmax(&logits)?.to_vec2::<f32>()?;
    let tokens = (0..ids.len() - 1)
        .map(|t| logp[t][ids[t + 1] as usize])
        .collect();
    let last = logp.last().cloned().unwrap_or_default();
    Ok(PromptLogprobs { tokens, last })
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The run's prompt formats on its own corpus: retrieval (question -> title -> passage) and
/// reading (passage -> question).
fn prompts(session: &QuerySession) -> Result<Vec<(String, Vec<u32>)>> {
    let tok = &session.bundle.tokenizer;
    let codec = &session.codec;
    let passages = &session.corpus.passages;
    anyhow::ensure!(!passages.is_empty(), "the run's corpus has no passages");
    let mut out = Vec::new();
    for p in [&passages[0], &passages[passages.len() / 2]] {
        let question = format!("what does the passage about {} say", p.title);
        let mut retrieval = codec.query(tok, &question)?;
        retrieval.extend(codec.title(tok, &p.title)?);
        retrieval.extend(codec.passage(tok, &p.text)?);
        out.push((format!("retrieval, {}", p.id), retrieval));
        let mut reading = reading_prompt(tok, &p.title, &p.text)?;
        reading.extend(question_ids(tok, &question)?);
        out.push((format!("reading, {}", p.id), reading));
    }
    Ok(out)
}

/// Runs the check and prints its table.
pub fn bench_export(a: &BenchArgs) -> Result<()> {
    let run = a
        .run
        .as_ref()
        .context("bench export needs --run DIR: the trained run to export and compare")?;
    let scratch = tempfile::Builder::new()
        .prefix("selfret-export-")
        .tempdir()?;
    let folder = scratch.path().join("model");
    let summary = export_run(run, "checkpoint", &folder, false)?;
    let ours = QuerySession::open_run(run)?;
    let corpus = crate::worker::index::RunManifest::read(run)?.spec.corpus;
    let exported =
        QuerySession::open_untrained(&ModelSource::HfFolder(folder.clone()), &corpus, None)?;
    let prompts = prompts(&ours)?;
    let prompt_file = scratch.path().join("prompts.json");
    let ids: Vec<&Vec<u32>> = prompts.iter().map(|(_, ids)| ids).collect();
    std::fs::write(
        &prompt_file,
        serde_json::to_vec(&serde_json::json!({ "prompts": ids }))?,
    )?;

    let python = reference_python()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(python)
        .arg(root.join("bench/hf_logprobs.py"))
        .arg("--model")
        .arg(&folder)
        .arg("--prompts")
        .arg(&prompt_file)
        .output()
        .context("running bench/hf_logprobs.py")?;
    anyhow::ensure!(
        out.status.success(),
        "bench/hf_logprobs.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let reference: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or("{}")).context("hf_logprobs output")?;
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64())
                    .map(|x| x as f32)
                    .collect()
            })
            .unwrap_or_default()
    };

    println!(
        "\n## export: {} (step {}, {} parameters{}) read by selfret and by transformers {}",
        run.display(),
        summary.step,
        summary.parameters,
        if summary.merged_lora {
            ", LoRA merged"
        } else {
            ""
        },
        reference["transformers"].as_str().unwrap_or("?")
    );
    println!(
        "(max |difference| of log-probabilities; \"run\" is selfret on the run's checkpoint, \
         its adapters merged at load as for querying; \"export\" is selfret on the folder)"
    );
    println!("| prompt | tokens | run vs export, prompt tokens | run vs export, next token | run vs transformers, prompt tokens | run vs transformers, next token | export vs transformers, next token |");
    println!("|---|---|---|---|---|---|---|");
    for (k, (name, ids)) in prompts.iter().enumerate() {
        let run_lp = logprobs(&ours, ids)?;
        let exp_lp = logprobs(&exported, ids)?;
        let hf_tokens = floats(&reference["token_logprobs"][k]);
        let hf_last = floats(&reference["last"][k]);
        anyhow::ensure!(
            hf_tokens.len() == run_lp.tokens.len() && hf_last.len() == run_lp.last.len(),
            "transformers returned {} token and {} vocabulary log-probabilities for prompt {k}, \
             selfret {} and {}",
            hf_tokens.len(),
            hf_last.len(),
            run_lp.tokens.len(),
            run_lp.last.len()
        );
        println!(
            "| {name} | {} | {:.2e} | {:.2e} | {:.2e} | {:.2e} | {:.2e} |",
            ids.len(),
            max_abs_diff(&run_lp.tokens, &exp_lp.tokens),
            max_abs_diff(&run_lp.last, &exp_lp.last),
            max_abs_diff(&run_lp.tokens, &hf_tokens),
            max_abs_diff(&run_lp.last, &hf_last),
            max_abs_diff(&exp_lp.last, &hf_last),
        );
    }
    Ok(())
}
