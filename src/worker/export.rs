//! Exporting a run's model as a Hugging Face folder with a model card that says what it was
//! trained on, how, and with which prompts (the CLI's `export` and the Model panel's button).

use super::index::{checkpoint_dir, RunManifest};
use crate::error::{Error, Result};
use crate::model::checkpoint::BaseRef;
use crate::model::ModelSource;
use crate::model::{ModelBundle, TrainMode};
use crate::prompts::{ACCEPT, ASSESS_CUE, CONTENT_CUE, QUERY_PREFIX, REJECT, TITLE_CUE};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// selfret's own note in an exported folder (other tools ignore it): how to retrieve with the
/// model as its run did.
pub const EXPORT_MANIFEST: &str = "selfret.ron";

/// What `--model FOLDER` needs to rank as the run ranked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportManifest {
    /// False for a tiny model built from the corpus: it reads no language, so the query
    /// likelihood stays off, as for its run.
    pub reads_language: bool,
    /// The base model a LoRA run read the query likelihood with (a GGUF file, by path and
    /// checksum): the merged folder does not hold it.
    pub likelihood_base: Option<BaseRef>,
    /// The run trained the reading task: its own weights read the query likelihood by default.
    #[serde(default)]
    pub reads_questions: bool,
    /// The run trained the answer (self-assessment on answered questions): its own weights
    /// answer by default, the base model otherwise (exports from before this field: true).
    #[serde(default = "yes")]
    pub trains_answers: bool,
    /// The corpus the model was trained on.
    pub corpus_fingerprint: String,
}

fn yes() -> bool {
    true
}

impl ExportManifest {
    /// Reads `selfret.ron` from a model folder, if it has one.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        crate::model::checkpoint::read_optional_ron(&dir.join(EXPORT_MANIFEST), "export manifest")
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    pub folder: PathBuf,
    /// Optimiser steps the exported weights had taken.
    pub step: u64,
    pub parameters: usize,
    /// LoRA adapters were merged into the weights.
    pub merged_lora: bool,
}

/// Writes the model of `run` (its `checkpoint` folder, or a snapshot such as
/// `checkpoint-30min`) to `out` as a Hugging Face folder. An existing `out` is refused unless
/// `replace`: nothing a user made is overwritten without asking.
pub fn export_run(
    run: &Path,
    checkpoint: &str,
    out: &Path,
    replace: bool,
) -> Result<ExportSummary> {
    if out.exists() && !replace {
        return Err(Error::invalid(format!(
            "{} exists: choose another folder (or replace it)",
            out.display()
        )));
    }
    // Replacing a folder that holds the run (or lies inside it) would delete what is exported.
    let full = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (run_full, out_full) = (full(run), full(out));
    if out_full.starts_with(&run_full) || run_full.starts_with(&out_full) {
        return Err(Error::invalid(format!(
            "{} is the run folder {} or lies inside or around it: export to a folder of its own",
            out.display(),
            run.display()
        )));
    }
    let manifest = RunManifest::read(run)?;
    // The run's own file travels verbatim, so the export records exactly what trained it.
    let run_file = run.join(RunManifest::FILE);
    let run_text = std::fs::read(&run_file).map_err(|e| Error::io(&run_file, e))?;
    let ckpt = match checkpoint {
        "checkpoint" => checkpoint_dir(run),
        other => run.join(other),
    };
    let bundle = ModelBundle::load_checkpoint(
        &ckpt,
        Some(TrainMode::Frozen),
        &crate::model::default_device(),
    )?;
    let ckpt_manifest = crate::model::checkpoint::Manifest::read(&ckpt)?;
    if bundle.model.retrieval.is_some() {
        // A Hugging Face folder has no place for the retrieval heads and docid head: exporting
        // would drop them in silence.
        return Err(Error::invalid(format!(
            "{} is a docid run: its retrieval pathway has no Hugging Face form, so it cannot be \
             exported; query it with --run",
            run.display()
        )));
    }
    let merged_lora = matches!(ckpt_manifest.mode, TrainMode::Lora(_));
    let note = ExportManifest {
        reads_language: manifest.spec.model != ModelSource::Tiny,
        // The reference written at training time (an absolute path, the checksum of the file
        // trained on), not whatever sits at the recipe's path now. LoRA on a GGUF base only:
        // other bases are not kept apart from the merged weights.
        likelihood_base: match ckpt_manifest.mode {
            TrainMode::Lora(_) => BaseRef::read(&ckpt)?,
            _ => None,
        },
        reads_questions: manifest.spec.trains_reading(),
        trains_answers: manifest.spec.trains_answers(),
        corpus_fingerprint: manifest.corpus_fingerprint.clone(),
    };
    let card = model_card(run, &manifest, &ckpt_manifest, &bundle, &note);
    let note_text = ron::ser::to_string_pretty(&note, Default::default())
        .map_err(|e| Error::invalid(format!("writing {EXPORT_MANIFEST}: {e}")))?;
    let mut extra: Vec<(&str, Vec<u8>)> = vec![
        ("selfret-run.ron", run_text),
        (EXPORT_MANIFEST, note_text.into_bytes()),
    ];
    // The docid tree (second retrieval mode) travels with the model when the run has one.
    let docids = run.join("docids.json");
    if docids.is_file() {
        extra.push((
            "docids.json",
            std::fs::read(&docids).map_err(|e| Error::io(&docids, e))?,
        ));
    }
    crate::model::export::write_hf_folder(&bundle, out, &card, &extra)
        .map_err(|e| Error::invalid(format!("exporting to {}: {e}", out.display())))?;
    Ok(ExportSummary {
        folder: out.to_path_buf(),
        step: bundle.step,
        parameters: bundle.model.config.parameter_count(),
        merged_lora,
    })
}

/// The README.md of an exported folder.
fn model_card(
    run: &Path,
    manifest: &RunManifest,
    ckpt: &crate::model::checkpoint::Manifest,
    bundle: &ModelBundle,
    note: &ExportManifest,
) -> String {
    let spec = &manifest.spec;
    let name = run
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    let mode = match &ckpt.mode {
        TrainMode::Lora(l) => format!(
            "LoRA rank {} (alpha {}) on {}, merged into the weights",
            l.rank,
            l.alpha,
            l.targets
                .iter()
                .map(|t| format!("{t:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TrainMode::Full => "full fine-tuning".into(),
        TrainMode::Retrieval => "the retrieval pathway only (the base unchanged)".into(),
        TrainMode::Frozen => "no training".into(),
    };
    let (budget, mix_is) = match spec.train.epochs {
        Some(e) => (
            format!("{e} epochs ({} steps planned)", spec.train.steps),
            "passes per epoch",
        ),
        None => (format!("{} steps", spec.train.steps), "relative weights"),
    };
    let target = match spec.data.target {
        crate::train::data::TargetLength::Full => {
            "the whole passage, then the end token".to_string()
        }
        crate::train::data::TargetLength::FirstWords(n) => {
            format!("the passage's first {n} words (no end token)")
        }
    };
    let recipe = ron::ser::to_string_pretty(spec, Default::default()).unwrap_or_default();
    let eos = bundle
        .tokenizer
        .id_to_token(bundle.special.eos)
        .unwrap_or_else(|| format!("<{}>", bundle.special.eos));
    let q = |s: &str| s.replace('\n', "\\n");
    let likelihood = match (&note.likelihood_base, note.reads_language) {
        _ if note.reads_questions && note.reads_language => {
            "The run trained the reading task (passage -> question in the query-likelihood \
             prompt), so selfret reads the query likelihood with these weights by default."
                .to_string()
        }
        (_, false) => "This model was built from the corpus and reads no other language: \
                       selfret ranks with it without the query likelihood, as its run did."
            .to_string(),
        (Some(base), true) => format!(
            "By default selfret also ranks by the query likelihood, read with the base model as \
             it was before fine-tuning. This folder holds the merged weights only; `selfret.ron` \
             names the base file ({}, sha256 {}) so that selfret reads it as the run did when \
             that file is on the machine (else `--likelihood-tuned` reads it with these weights).",
            base.path.display(),
            base.sha256
        ),
        (None, true) => "selfret reads the query likelihood with these weights.".to_string(),
    };
    format!(
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- selfret\n- \
         self-retrieval\n- generative-retrieval\n---\n\n\
         # {name}: one corpus internalised by a language model\n\n\
         Fine-tuned with selfret to retrieve passages of one corpus by generating their titles \
         and text (Self-Retrieval, Tang et al., NeurIPS 2024). It answers only about that corpus.\n\n\
         ## Training\n\n\
         - base model: `{source}`\n\
         - {mode}\n\
         - steps taken: {step}; budget {budget}; learning rate {lr}; {batch} tokens per batch\n\
         - task mix ({mix_is}): indexing {ix}, retrieval {rt}, self-assessment {sa}, reading {rd}\n\
         - corpus: `{corpus}`, fingerprint `{fp}`\n\
         - selfret commit: {commit}\n\n\
         The whole recipe is in `selfret-run.ron`:\n\n```ron\n{recipe}\n```\n\n\
         ## Prompt formats\n\n\
         A sequence is made of segments, each tokenized on its own and the ids concatenated \
         (whitespace in questions and titles collapsed to single spaces):\n\n\
         1. `{qp}{{question}}{tc}`\n\
         2. ` {{title}}`\n\
         3. `{cc}`\n\
         4. ` {{passage}}` then the end token `{eos}`\n\n\
         - retrieval: 1 with the question, then 2-4 (the passage as {target})\n\
         - indexing: 1 with a sentence of the passage, or its title, in place of the question; \
         then 2-4 likewise\n\
         - self-assessment: 1-4 with the whole passage and its end token, then `{ac}`, then \
         `{acc} {{answer}}{eos}` (`{acc}{eos}` when the question has no answer string) or \
         `{rej}{eos}`\n\n\
         ## Retrieving with it\n\n\
         ```sh\nselfret query --model FOLDER --corpus {corpus} \"your question\"\n```\n\n\
         Retrieval is constrained by a token trie over that corpus's titles and passages, so it \
         needs the same corpus (the fingerprint above; selfret refuses another). {likelihood}\n",
        source = ckpt.source,
        step = bundle.step,
        lr = spec.train.lr,
        batch = spec.train.batch_tokens,
        ix = spec.train.mix.indexing,
        rt = spec.train.mix.retrieval,
        sa = spec.train.mix.assessment,
        rd = spec.train.mix.reading,
        corpus = spec.corpus.display(),
        fp = manifest.corpus_fingerprint,
        commit = manifest.git_commit.as_deref().unwrap_or("unknown"),
        qp = q(QUERY_PREFIX),
        tc = q(TITLE_CUE),
        cc = q(CONTENT_CUE),
        ac = q(ASSESS_CUE),
        acc = q(ACCEPT),
        rej = q(REJECT),
    )
}
