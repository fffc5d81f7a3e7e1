//! The training pipeline both front ends run: index (train) a model on a corpus into a run
//! directory — load, write pseudo-queries, mine negatives, build the examples, train with
//! checkpoints and a retrieval probe — and what a run directory records.

use crate::corpus::{load_path, Corpus, LoadOptions};
use crate::error::{Error, Result};
use crate::model::checkpoint::write_atomic;
use crate::model::source::tiny::{self, TinyOptions};
use crate::model::source::DownloadProgress;
use crate::model::{LoraConfig, ModelBundle, ModelSource, TrainMode};
use crate::prompts::PromptCodec;
use crate::retrieve::{RetrieveOptions, Retriever};
use crate::train::data::{load_queries, Query, TargetLength};
use crate::train::{
    train, DataBuilder, DataOptions, Example, TrainConfig, TrainControl, TrainEvent,
};
use crate::trie::CorpusTrie;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
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
    /// Write pseudo-queries for the passages with the starting model first, and train
    /// retrieval on the kept ones too (with no query file, they stand in for it).
    #[serde(default)]
    pub pseudo: Option<crate::train::pseudo::PseudoOptions>,
    pub data: DataOptions,
    pub train: TrainConfig,
    /// The second retrieval mode: docids generated through a retrieval pathway (see
    /// [`super::docid_run`]); `None`: titles and passages (Self-Retrieval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docids: Option<super::docid_run::DocidRun>,
}

/// Where a run keeps the questions its starting model wrote.
pub const PSEUDO_FILE: &str = "pseudo_queries.jsonl";

impl IndexSpec {
    /// Whether the run trains the reading task: it has a weight and people's questions to learn
    /// from (a supplied query file; the questions the base model wrote itself teach it nothing
    /// about how people ask, and were not measured).
    pub fn trains_reading(&self) -> bool {
        self.train.mix.reading > 0.0
            && self
                .queries
                .as_deref()
                .is_some_and(|q| q.file_name() != Some(std::ffi::OsStr::new(PSEUDO_FILE)))
    }

    /// Whether the run trains the answer: self-assessment with a weight, on supplied or written
    /// questions (their answer strings follow the acceptance verdict). A docid run trains
    /// answers in stage 2 (mode 2), from the passages its pathway draws.
    pub fn trains_answers(&self) -> bool {
        self.train.mix.assessment > 0.0
            && self.queries.is_some()
            && self.docids.as_ref().is_none_or(|d| d.stage2.is_some())
    }

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
            pseudo: None,
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
            docids: None,
        }
    }
}

/// The run's manifest: the spec plus provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub spec: IndexSpec,
    pub corpus_fingerprint: String,
    pub git_commit: Option<String>,
    /// What embedded the passages for the docid tree (the docid mode): MiniLM, or the model's
    /// own mean-pooled hidden states when MiniLM was not installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docid_embedder: Option<String>,
}

impl RunManifest {
    /// The file name in a run directory.
    pub const FILE: &'static str = "run.ron";

    /// Reads `run.ron` of a run directory; the error names the file and what is wrong.
    pub fn read(run: &Path) -> Result<RunManifest> {
        let path = run.join(Self::FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        ron::from_str(&text)
            .map_err(|e| Error::bad_file(&path, format!("invalid run manifest: {e}")))
    }
}

/// The events a run logged (`metrics.jsonl`); unreadable lines are skipped (a line cut short by
/// a killed process must not hide the rest).
pub fn read_history(run: &Path) -> Vec<TrainEvent> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<TrainEvent>(l).ok())
                .collect()
        })
        .unwrap_or_default()
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

/// Loads the base model for a spec (building the tiny model from the corpus when asked);
/// `progress` hears about Hub downloads.
pub fn load_base(
    spec: &IndexSpec,
    corpus: &Corpus,
    device: &Device,
    progress: Option<DownloadProgress<'_>>,
) -> Result<ModelBundle> {
    let mode = match (&spec.lora, &spec.docids, &spec.model) {
        (Some(l), _, _) => TrainMode::Lora(l.clone()),
        // A docid run on a pretrained model without LoRA warms up the pathway alone; the tiny
        // model knows nothing yet and learns with it.
        (None, Some(d), m) if *m != ModelSource::Tiny && !d.full => TrainMode::Retrieval,
        (None, _, _) => TrainMode::Full,
    };
    let weights = match &spec.model {
        ModelSource::Tiny => tiny::build(corpus.texts(), &spec.tiny, device)?,
        other => crate::model::source::load_weights(other, device, progress)?,
    };
    ModelBundle::from_weights(weights, spec.model.clone(), mode, device)
}

/// Builds the training examples of a spec from its corpus and (training) queries; `mined` holds
/// passages the model retrieved wrongly per question, used first as assessment negatives.
pub fn build_examples(
    spec: &IndexSpec,
    corpus: &Corpus,
    bundle: &ModelBundle,
    queries: &[Query],
    mined: &HashMap<String, Vec<String>>,
) -> Result<Vec<Example>> {
    let codec = PromptCodec::new(&bundle.tokenizer, bundle.special.eos)?;
    let builder = DataBuilder {
        tokenizer: &bundle.tokenizer,
        codec: &codec,
        corpus,
        opts: spec.data.clone(),
    };
    let mut examples = builder.indexing()?;
    if !queries.is_empty() {
        examples.extend(builder.retrieval(queries)?);
        if spec.train.mix.assessment > 0.0 {
            examples.extend(builder.assessment(queries, mined)?);
        }
        if spec.trains_reading() {
            examples.extend(builder.reading(queries)?);
        }
    }
    Ok(examples)
}

/// Where a run keeps the negatives mined by its starting model.
const MINED_FILE: &str = "mined_negatives.json";

/// The mined negatives a run kept (question -> wrongly retrieved passage ids), if it has them.
fn read_mined(path: &Path) -> Result<Option<HashMap<String, Vec<String>>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::bad_file(path, e.to_string()))
}

/// A run's examples: [`build_examples`] plus retrieval examples for the pseudo-queries kept
/// beside a separate query file.
fn build_run_examples(
    spec: &IndexSpec,
    corpus: &Corpus,
    bundle: &ModelBundle,
    queries: &[Query],
    mined: &HashMap<String, Vec<String>>,
    pseudo_queries: &[Query],
) -> Result<Vec<Example>> {
    let mut examples = build_examples(spec, corpus, bundle, queries, mined)?;
    if !pseudo_queries.is_empty() {
        let codec = PromptCodec::new(&bundle.tokenizer, bundle.special.eos)?;
        let builder = DataBuilder {
            tokenizer: &bundle.tokenizer,
            codec: &codec,
            corpus,
            opts: spec.data.clone(),
        };
        examples.extend(builder.retrieval(pseudo_queries)?);
    }
    Ok(examples)
}

/// The exact training examples of a finished (or started) run, rebuilt from what it keeps:
/// `run.ron`'s recipe, its pseudo-queries and mined negatives, and the tokenizer of `bundle`
/// (the run's checkpoint). Returns them with the run's corpus.
pub fn saved_run_examples(run: &Path, bundle: &ModelBundle) -> Result<(Vec<Example>, Corpus)> {
    let manifest = RunManifest::read(run)?;
    let spec = manifest.spec;
    if spec.docids.is_some() {
        return Err(Error::invalid(format!(
            "{} is a docid run: its targets are docid tokens, which have no text in the \
             tokenizer, so its examples cannot be written as prompt/completion text",
            run.display()
        )));
    }
    let corpus = load_path(&spec.corpus, &spec.load)?;
    if corpus.fingerprint() != manifest.corpus_fingerprint {
        return Err(Error::bad_file(
            &spec.corpus,
            format!(
                "the corpus changed since run {} was trained: its examples cannot be rebuilt",
                run.display()
            ),
        ));
    }
    let pseudo_path = run.join(PSEUDO_FILE);
    let pseudo_queries = if spec.pseudo.is_some()
        && std::fs::metadata(&pseudo_path).is_ok_and(|m| m.len() > 0)
        && spec.queries.as_deref() != Some(pseudo_path.as_path())
    {
        load_queries(&pseudo_path)?
    } else {
        Vec::new()
    };
    let (train_queries, _) = split_queries(&spec, &corpus, &mut Vec::new())?;
    let mined = read_mined(&run.join(MINED_FILE))?.unwrap_or_default();
    let examples = build_run_examples(
        &spec,
        &corpus,
        bundle,
        &train_queries,
        &mined,
        &pseudo_queries,
    )?;
    Ok((examples, corpus))
}

/// Splits the query file into training queries and the few held out for Hits@1 during
/// training (the last `eval_queries`, only when evaluation is on and enough queries exist).
/// Gold ids the corpus lacks are dropped first; what was dropped is reported in `report`.
pub fn split_queries(
    spec: &IndexSpec,
    corpus: &Corpus,
    report: &mut Vec<String>,
) -> Result<(Vec<Query>, Vec<Query>)> {
    let Some(path) = &spec.queries else {
        return Ok((Vec::new(), Vec::new()));
    };
    // A BEIR folder trains on its `train` split.
    let mut all = crate::train::data::load_queries_split(path, "train")?;
    for line in crate::eval::check_queries(&mut all, corpus).report() {
        report.push(format!("{}: {line}", path.display()));
    }
    let n = spec.train.eval_queries;
    if spec.train.eval_every == 0 || n == 0 || all.len() < 4 * n {
        return Ok((all, Vec::new()));
    }
    let held = all.split_off(all.len() - n);
    Ok((all, held))
}

/// What a [`Retriever`] borrows, built from a (possibly training) bundle: its prompt codec, the
/// corpus trie and an inference copy of the model (adapters merged).
pub(super) fn retrieval_parts(
    bundle: &ModelBundle,
    corpus: &Corpus,
) -> Result<(PromptCodec, CorpusTrie, crate::model::Llama)> {
    let codec = PromptCodec::new(&bundle.tokenizer, bundle.special.eos)?;
    let trie = CorpusTrie::build(corpus, &bundle.tokenizer, &codec)?;
    Ok((codec, trie, bundle.inference()?))
}

/// Runs the model's own retrieval for up to `limit` queries and keeps, per question, the
/// retrieved passages that are neither gold nor contain an answer string: the hard negatives
/// "passages the current model retrieves wrongly".
pub fn mine_negatives(
    bundle: &ModelBundle,
    corpus: &Corpus,
    queries: &[Query],
    limit: usize,
) -> Result<HashMap<String, Vec<String>>> {
    let (codec, trie, model) = retrieval_parts(bundle, corpus)?;
    let r = Retriever {
        base: None,
        model: &model,
        tokenizer: &bundle.tokenizer,
        codec: &codec,
        corpus,
        trie: &trie,
        title_prior: None,
        reading: None,
    };
    let mut out = HashMap::new();
    let asked = queries.iter().filter(|q| !q.question.trim().is_empty());
    for q in asked.take(limit) {
        let trace = r.retrieve(&q.question, &RetrieveOptions::light(), &mut |_| {})?;
        let wrong: Vec<String> = trace
            .ranked_ids()
            .into_iter()
            .filter(|id| !q.positive_ids.iter().any(|p| p == id))
            .filter(|id| {
                corpus.index_of(id).is_some_and(|i| {
                    let t = corpus.passages[i].text.to_lowercase();
                    !q.answers
                        .iter()
                        .any(|a| !a.is_empty() && t.contains(&a.to_lowercase()))
                })
            })
            .map(String::from)
            .collect();
        if !wrong.is_empty() {
            out.insert(q.question.clone(), wrong);
        }
    }
    Ok(out)
}

/// Adds Hits@1/Hits@5 on held-out queries, through the real retrieval path, to each evaluation.
struct RetrievalProbe<'a> {
    inner: &'a mut dyn TrainControl,
    corpus: &'a Corpus,
    queries: Vec<Query>,
    trie: Option<CorpusTrie>,
}

impl TrainControl for RetrievalProbe<'_> {
    fn should_cancel(&mut self) -> bool {
        self.inner.should_cancel()
    }
    fn save_requested(&mut self) -> bool {
        self.inner.save_requested()
    }
    fn is_paused(&self) -> bool {
        self.inner.is_paused()
    }
    fn evaluate(&mut self, bundle: &ModelBundle) -> Result<BTreeMap<String, f64>> {
        let mut out = self.inner.evaluate(bundle)?;
        if self.queries.is_empty() {
            return Ok(out);
        }
        let codec = PromptCodec::new(&bundle.tokenizer, bundle.special.eos)?;
        if self.trie.is_none() {
            self.trie = Some(CorpusTrie::build(self.corpus, &bundle.tokenizer, &codec)?);
        }
        let Some(trie) = self.trie.as_ref() else {
            return Ok(out);
        };
        let model = bundle.inference()?;
        let r = Retriever {
            base: None,
            model: &model,
            tokenizer: &bundle.tokenizer,
            codec: &codec,
            corpus: self.corpus,
            trie,
            title_prior: None,
            reading: None,
        };
        let (mut h1, mut h5, mut asked) = (0usize, 0usize, 0usize);
        for q in self
            .queries
            .iter()
            .filter(|q| !q.question.trim().is_empty())
        {
            asked += 1;
            let trace = r.retrieve(&q.question, &RetrieveOptions::light(), &mut |_| {})?;
            let ids = trace.ranked_ids();
            let hit = |k: usize| {
                ids.iter()
                    .take(k)
                    .any(|id| q.positive_ids.iter().any(|p| p == id))
            };
            h1 += hit(1) as usize;
            h5 += hit(5) as usize;
        }
        let n = asked.max(1) as f64;
        out.insert("hits@1".into(), h1 as f64 / n);
        out.insert("hits@5".into(), h5 as f64 / n);
        Ok(out)
    }
}

/// Mode 2's drawn docids of a stage-2 run: read from the run, or drawn now by the model the
/// run starts from and kept (so a resume trains on the same examples).
#[allow(clippy::too_many_arguments)]
fn stage2_draws(
    run: &Path,
    bundle: &ModelBundle,
    corpus: &Corpus,
    tree: &crate::docids::DocidTree,
    queries: &[Query],
    stage2: &super::docid_run::Stage2,
    control: &mut dyn TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<Vec<crate::train::docid_data::DrawnDocids>> {
    if let Some(drawn) = super::docid_run::read_drawn(run)? {
        return Ok(drawn);
    }
    let drawn = super::docid_run::draw_docids(
        bundle,
        corpus,
        tree,
        queries,
        stage2.draws,
        &mut |done, total| {
            on_event(TrainEvent::Preparing {
                stage: "drawing docids (mode 2)".into(),
                done,
                total,
            });
            control.should_cancel()
        },
    )?
    .ok_or(Error::Cancelled)?;
    super::docid_run::save_drawn(run, &drawn)?;
    Ok(drawn)
}

/// Runs (or resumes) indexing into `run`. Every event is also appended to `metrics.jsonl`.
pub fn run_index(
    spec: &IndexSpec,
    run: &Path,
    resume: bool,
    control: &mut dyn TrainControl,
    on_event: &mut dyn FnMut(TrainEvent),
    progress: Option<DownloadProgress<'_>>,
) -> Result<()> {
    let device = crate::model::default_device();
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    let corpus = load_path(&spec.corpus, &spec.load)?;
    let mut report = vec![corpus.load_report(usize::MAX)];
    write_atomic(&run.join("load_report.txt"), report.join("\n").as_bytes())?;
    let ckpt = checkpoint_dir(run);
    let mut bundle = if resume {
        if !ckpt.join("manifest.ron").is_file() {
            return Err(Error::bad_file(
                &ckpt,
                "nothing to resume: the run has no checkpoint (manifest.ron is missing); start it without resume",
            ));
        }
        ModelBundle::load_checkpoint(&ckpt, None, &device)?
    } else if let Some(stage2) = spec.docids.as_ref().and_then(|d| d.stage2.as_ref()) {
        super::docid_run::start_stage2(spec, stage2, run, &corpus, &device)?
    } else {
        load_base(spec, &corpus, &device, progress)?
    };
    let mut spec = spec.clone();
    let mut pseudo_queries: Vec<Query> = Vec::new();
    if let Some(opts) = &spec.pseudo {
        // Written once by the starting model and kept in the run (a resume reuses them).
        let path = run.join(PSEUDO_FILE);
        if !path.is_file() {
            let (codec, trie, model) = retrieval_parts(&bundle, &corpus)?;
            let r = Retriever {
                base: None,
                model: &model,
                tokenizer: &bundle.tokenizer,
                codec: &codec,
                corpus: &corpus,
                trie: &trie,
                title_prior: None,
                reading: None,
            };
            let mut cancelled = false;
            let qs = crate::train::pseudo::generate_pseudo_queries(
                &r,
                bundle.special.eos,
                opts,
                &mut |done, total| {
                    on_event(TrainEvent::Preparing {
                        stage: "writing pseudo-queries".into(),
                        done,
                        total,
                    });
                    cancelled = cancelled || control.should_cancel();
                    cancelled
                },
            )?;
            if cancelled {
                return Err(Error::Cancelled);
            }
            crate::train::pseudo::save_pseudo_queries(&path, &qs)?;
        }
        // No question kept (a model that writes none the filter accepts): train without.
        let kept = std::fs::metadata(&path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        if !kept {
            tracing::warn!("no pseudo-query was kept; training without them");
        } else if spec.queries.is_none() {
            spec.queries = Some(path);
        } else if spec.queries.as_deref() != Some(path.as_path()) {
            // (A resumed run whose query file already is this file has them once.)
            pseudo_queries = load_queries(&path)?;
        }
    }
    let spec = &spec;
    let (train_queries, held_queries) = split_queries(spec, &corpus, &mut report)?;
    write_atomic(&run.join("load_report.txt"), report.join("\n").as_bytes())?;
    // Negatives are mined once, by the model the run starts from, and kept in the run so a
    // resumed run sees exactly the same examples.
    let mined_path = run.join(MINED_FILE);
    let docid_tree = match &spec.docids {
        Some(settings) => {
            let tree = super::docid_run::run_tree(run, settings, &corpus, &bundle)?;
            if bundle.model.retrieval.is_none() {
                super::docid_run::open_pathway(&mut bundle, settings, &tree, spec.data.seed)?;
            }
            Some(tree)
        }
        None => None,
    };
    let mined: HashMap<String, Vec<String>> = if docid_tree.is_some() {
        // The docid mode has no self-assessment to train.
        HashMap::new()
    } else if let Some(m) = read_mined(&mined_path)? {
        m
    } else if spec.data.mine_queries > 0
        && !train_queries.is_empty()
        && spec.train.mix.assessment > 0.0
    {
        let m = mine_negatives(&bundle, &corpus, &train_queries, spec.data.mine_queries)?;
        let json = serde_json::to_string(&m).map_err(|e| Error::invalid(e.to_string()))?;
        write_atomic(&mined_path, json.as_bytes())?;
        m
    } else {
        HashMap::new()
    };
    let examples = match &docid_tree {
        Some(tree) => {
            let mut queries = train_queries.clone();
            queries.extend(pseudo_queries.iter().cloned());
            let drawn = match spec.docids.as_ref().and_then(|d| d.stage2.as_ref()) {
                Some(stage2) => stage2_draws(
                    run, &bundle, &corpus, tree, &queries, stage2, control, on_event,
                )?,
                None => Vec::new(),
            };
            super::docid_run::docid_examples(&bundle, &corpus, tree, &spec.data, &queries, &drawn)?
        }
        None => build_run_examples(
            spec,
            &corpus,
            &bundle,
            &train_queries,
            &mined,
            &pseudo_queries,
        )?,
    };
    let mut spec = spec.clone();
    if let Some(e) = spec.train.epochs {
        let per_epoch = crate::train::batches_per_epoch(&examples, &spec.train).max(1);
        spec.train.steps = ((per_epoch as f64) * e).ceil().max(1.0) as usize;
    }
    if resume && spec.train.steps as u64 <= bundle.step {
        // Nothing left to train: say so rather than re-save the checkpoint and report success.
        return Err(Error::invalid(format!(
            "{}: the run has already taken {} steps and its budget is {} steps, so resuming \
             would train nothing; give a larger budget (--steps or --epochs, or the Train panel's)",
            run.display(),
            bundle.step,
            spec.train.steps
        )));
    }
    if resume {
        // The budget a resumed run was planned with, when the new one differs, is said
        // (the schedule is stretched or shortened to the new one).
        // A garbage run.ron is refused rather than overwritten unread (it may be the only
        // record of how the checkpoint was trained); a missing one is simply rewritten.
        let planned = if run.join(RunManifest::FILE).is_file() {
            Some(RunManifest::read(run)?.spec.train.steps)
        } else {
            None
        };
        if let Some(planned) = planned.filter(|&p| p != spec.train.steps) {
            on_event(TrainEvent::BudgetChanged {
                step: bundle.step as usize,
                planned_steps: planned,
                total_steps: spec.train.steps,
            });
        }
    }
    let manifest = RunManifest {
        spec: spec.clone(),
        corpus_fingerprint: corpus.fingerprint(),
        git_commit: git_commit(),
        docid_embedder: docid_tree.as_ref().map(|t| t.embedder.clone()),
    };
    let text = ron::ser::to_string_pretty(&manifest, ron::ser::PrettyConfig::default())
        .map_err(|e| Error::invalid(e.to_string()))?;
    write_atomic(&run.join(RunManifest::FILE), text.as_bytes())?;
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
    let mut probe = RetrievalProbe {
        inner: control,
        corpus: &corpus,
        // The probe asks through titles and passages, which a docid run does not train.
        queries: match docid_tree {
            Some(_) => Vec::new(),
            None => held_queries,
        },
        trie: None,
    };
    train(
        &mut bundle,
        &examples,
        &spec.train,
        Some(&ckpt),
        &mut probe,
        &mut sink,
    )
}
