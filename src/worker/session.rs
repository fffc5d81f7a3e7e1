//! The jobs both front ends run: index (train) a model on a corpus into a run directory, and open a
//! run directory (or an untrained model over a corpus) for querying.

use crate::corpus::{load_path, Corpus, LoadOptions};
use crate::error::{Error, Result};
use crate::model::checkpoint::write_atomic;
use crate::model::tiny::{self, TinyOptions};
use crate::model::{LoraConfig, ModelBundle, ModelSource, TrainMode};
use crate::prompts::PromptCodec;
use crate::retrieve::{RetrievalTrace, RetrieveOptions, Retriever};
use crate::train::data::{load_queries, TargetLength};
use crate::train::{
    train, DataBuilder, DataOptions, Example, TrainConfig, TrainControl, TrainEvent,
};
use crate::trie::CorpusTrie;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Everything needed to (re)start an indexing run; saved as `run.ron` in the run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSpec {
    pub corpus: PathBuf,
    pub load: LoadOptions,
    pub model: ModelSource,
    pub tiny: TinyOptions,
    /// `None`: full fine-tune.
    pub lora: Option<LoraConfig>,
    pub queries: Option<PathBuf>,
    pub data: DataOptions,
    pub train: TrainConfig,
}

impl IndexSpec {
    /// Defaults for a corpus and a model source: full training for the tiny model, LoRA otherwise.
    pub fn new(corpus: PathBuf, model: ModelSource) -> Self {
        let pretrained = model != ModelSource::Tiny;
        IndexSpec {
            corpus,
            load: LoadOptions::default(),
            tiny: TinyOptions::default(),
            lora: pretrained.then(LoraConfig::default),
            model,
            queries: None,
            data: DataOptions {
                target: if pretrained {
                    TargetLength::FirstWords(10)
                } else {
                    TargetLength::Full
                },
                ..Default::default()
            },
            train: TrainConfig {
                lr: if pretrained { 2e-4 } else { 1e-3 },
                ..Default::default()
            },
        }
    }
}

/// The run's manifest: the spec plus provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub spec: IndexSpec,
    pub corpus_fingerprint: String,
    pub git_commit: Option<String>,
}

/// Folder of the model checkpoint inside a run directory.
pub fn checkpoint_dir(run: &Path) -> PathBuf {
    run.join("checkpoint")
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Loads the base model for a spec (building the tiny model from the corpus when asked).
pub fn load_base(spec: &IndexSpec, corpus: &Corpus, device: &Device) -> Result<ModelBundle> {
    let mode = match &spec.lora {
        Some(l) => TrainMode::Lora(l.clone()),
        None => TrainMode::Full,
    };
    let weights = match &spec.model {
        ModelSource::Tiny => tiny::build(corpus.texts(), &spec.tiny, device)?,
        other => crate::model::source::load_weights(other, device, None)?,
    };
    ModelBundle::from_weights(weights, spec.model.clone(), mode, device)
}

/// Builds the training examples of a spec.
pub fn build_examples(
    spec: &IndexSpec,
    corpus: &Corpus,
    bundle: &ModelBundle,
) -> Result<Vec<Example>> {
    let codec = PromptCodec::new(&bundle.tokenizer, bundle.special.eos)?;
    let builder = DataBuilder {
        tokenizer: &bundle.tokenizer,
        codec: &codec,
        corpus,
        opts: spec.data.clone(),
    };
    let mut examples = builder.indexing()?;
    if let Some(q) = &spec.queries {
        let queries = load_queries(q)?;
        examples.extend(builder.retrieval(&queries)?);
        examples.extend(builder.assessment(&queries)?);
    }
    Ok(examples)
}

/// Runs (or resumes) indexing into `run`. Every event is also appended to `metrics.jsonl`.
pub fn run_index(
    spec: &IndexSpec,
    run: &Path,
    resume: bool,
    control: &mut dyn TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<()> {
    let device = crate::model::default_device();
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    let corpus = load_path(&spec.corpus, &spec.load)?;
    let ckpt = checkpoint_dir(run);
    let mut bundle = if resume && ckpt.join("manifest.ron").is_file() {
        ModelBundle::load_checkpoint(&ckpt, None, &device)?
    } else {
        load_base(spec, &corpus, &device)?
    };
    let manifest = RunManifest {
        spec: spec.clone(),
        corpus_fingerprint: corpus.fingerprint(),
        git_commit: git_commit(),
    };
    let text = ron::ser::to_string_pretty(&manifest, ron::ser::PrettyConfig::default())
        .map_err(|e| Error::invalid(e.to_string()))?;
    write_atomic(&run.join("run.ron"), text.as_bytes())?;
    let examples = build_examples(spec, &corpus, &bundle)?;
    let metrics_path = run.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let mut sink = |e: TrainEvent| {
        if let Ok(line) = serde_json::to_string(&e) {
            let _ = writeln!(metrics, "{line}");
        }
        on_event(e);
    };
    train(
        &mut bundle,
        &examples,
        &spec.train,
        Some(&ckpt),
        control,
        &mut sink,
    )
}

/// A model, its corpus and trie, ready to answer queries.
pub struct QuerySession {
    pub bundle: ModelBundle,
    pub model: crate::model::Llama,
    pub corpus: Corpus,
    pub codec: PromptCodec,
    pub trie: CorpusTrie,
}

impl QuerySession {
    /// Opens a run directory written by indexing.
    pub fn open_run(run: &Path) -> Result<Self> {
        let path = run.join("run.ron");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let manifest: RunManifest = ron::from_str(&text)
            .map_err(|e| Error::bad_file(&path, format!("invalid run manifest: {e}")))?;
        let corpus = load_path(&manifest.spec.corpus, &manifest.spec.load)?;
        let bundle = ModelBundle::load_checkpoint(
            &checkpoint_dir(run),
            Some(TrainMode::Frozen),
            &crate::model::default_device(),
        )?;
        Self::new(bundle, corpus)
    }

    /// Wraps a loaded model and corpus (builds the trie).
    pub fn new(bundle: ModelBundle, corpus: Corpus) -> Result<Self> {
        let codec = PromptCodec::new(&bundle.tokenizer, bundle.special.eos)?;
        let trie = CorpusTrie::build(&corpus, &bundle.tokenizer, &codec)?;
        let model = bundle.inference()?;
        Ok(QuerySession {
            bundle,
            model,
            corpus,
            codec,
            trie,
        })
    }

    /// Opens an un-fine-tuned model over a corpus.
    pub fn open_untrained(source: &ModelSource, corpus_path: &Path) -> Result<Self> {
        let corpus = load_path(corpus_path, &LoadOptions::default())?;
        let spec = IndexSpec::new(corpus_path.to_path_buf(), source.clone());
        let device = crate::model::default_device();
        let mut bundle = load_base(&spec, &corpus, &device)?;
        bundle.mode = TrainMode::Frozen;
        Self::new(bundle, corpus)
    }

    /// Runs retrieval for one query.
    pub fn query(
        &self,
        q: &str,
        opts: &RetrieveOptions,
        progress: &mut dyn FnMut(&RetrievalTrace),
    ) -> Result<RetrievalTrace> {
        let r = Retriever {
            model: &self.model,
            tokenizer: &self.bundle.tokenizer,
            codec: &self.codec,
            corpus: &self.corpus,
            trie: &self.trie,
        };
        r.retrieve(q, opts, progress)
    }
}
