//! A docid run (the second retrieval mode): its settings in the run's spec, its docid tree
//! (built once, kept in the run as `docids.json`), the retrieval pathway given to the model, and
//! its training examples.

use crate::corpus::Corpus;
use crate::docids::{self, embed, DocidOptions, DocidTree};
use crate::error::{Error, Result};
use crate::model::retrieval::RetrievalConfig;
use crate::model::ModelBundle;
use crate::prompts::PromptCodec;
use crate::train::data::{DataBuilder, DataOptions, Query};
use crate::train::docid_data::{mode2_examples, DocidData, DocidIds, DrawnDocids, DrawnPassage};
use crate::train::Example;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How a docid run's tree and pathway are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocidRun {
    pub tree: DocidOptions,
    /// Retrieval query heads per layer asked for (rounded up to a multiple of the model's
    /// key/value heads).
    pub heads: usize,
    /// Embed passages with the dense baseline's MiniLM when it is installed (else the model).
    pub minilm: bool,
    /// Train every weight of a pretrained model with the pathway (otherwise its base stays
    /// frozen unless LoRA is asked for; the tiny model always trains whole).
    #[serde(default)]
    pub full: bool,
    /// Stage 2 (modes 1 + 2), continuing a stage-1 run; `None`: stage 1, the warm-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage2: Option<Stage2>,
}

/// Stage 2 of a docid run: LoRA on the base (the tiny model trains whole) and the pathway go on
/// from a stage-1 run's checkpoint, and mode 2 trains on the docids the pathway draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage2 {
    /// The stage-1 run (its checkpoint, tree and pathway).
    pub from: PathBuf,
    /// Docids the pathway draws per training question (its best beams).
    pub draws: usize,
}

/// Makes `spec` a stage-2 run continuing the stage-1 run `from`: its model, tree and pathway
/// settings, and its questions when `spec` names none. Adapters or full training stay as
/// `spec` says.
pub fn continue_stage1(
    spec: &mut super::index::IndexSpec,
    from: &Path,
    run: &Path,
    draws: usize,
) -> Result<()> {
    if same_folder(from, run) {
        return Err(same_run(run));
    }
    let (first, mut d) = read_stage1(from)?;
    d.stage2 = Some(Stage2 {
        from: std::path::absolute(from).map_err(|e| Error::io(from, e))?,
        draws: draws.max(1),
    });
    spec.docids = Some(d);
    spec.model = first.spec.model.clone();
    spec.tiny = first.spec.tiny.clone();
    // Adapters stage 1 trained go on training (with their own rank and targets); fresh ones
    // are added only where stage 1 had none.
    if first.spec.lora.is_some() {
        spec.lora = first.spec.lora.clone();
    }
    // The questions stage 1 wrote are reused (copied into the new run), not written again.
    spec.pseudo = first.spec.pseudo.clone();
    if spec.queries.is_none() {
        // Not the questions stage 1 wrote itself (they have no answers, and come with
        // `pseudo`).
        spec.queries = first.spec.queries.clone().filter(|q| {
            let written = q.file_name() == Some(std::ffi::OsStr::new(super::index::PSEUDO_FILE))
                && q.parent().is_some_and(|dir| same_folder(dir, from));
            !written
        });
    }
    if spec.queries.is_none() {
        return Err(Error::invalid(
            "stage 2 trains on questions with answers: give a query file (the stage-1 run had none)",
        ));
    }
    Ok(())
}

/// A stage-1 run's manifest and docid settings; refused when it is not a docid run.
fn read_stage1(from: &Path) -> Result<(super::index::RunManifest, DocidRun)> {
    let first = super::index::RunManifest::read(from)?;
    match first.spec.docids.clone() {
        Some(d) => Ok((first, d)),
        None => Err(Error::bad_file(
            from.join(super::index::RunManifest::FILE),
            "not a docid run: stage 2 continues a run trained with the docid retriever",
        )),
    }
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn same_run(run: &Path) -> Error {
    Error::invalid(format!(
        "{}: stage 2 writes a new run; give another output folder than the stage-1 run",
        run.display()
    ))
}

/// Where a stage-2 run keeps the docids its starting model drew (a resume reuses them).
pub const DRAWN_FILE: &str = "drawn_docids.json";

/// Docids drawn per training question in stage 2 unless asked otherwise: the paper's reader
/// takes two or three passages.
pub const DEFAULT_DRAWS: usize = 3;

impl Default for DocidRun {
    fn default() -> Self {
        DocidRun {
            tree: DocidOptions::default(),
            heads: 4,
            minilm: true,
            full: false,
            stage2: None,
        }
    }
}

/// The tree of a run: `docids.json` when the run has one (a resume, or one built by
/// `selfret docids` into the run), else built now from MiniLM embeddings when installed, or
/// the model's mean-pooled hidden states, and saved there.
pub fn run_tree(
    run: &Path,
    settings: &DocidRun,
    corpus: &Corpus,
    bundle: &ModelBundle,
) -> Result<DocidTree> {
    let path = run.join(docids::FILE_NAME);
    if path.is_file() {
        let tree = DocidTree::load(&path, corpus)?;
        if tree.options != settings.tree {
            return Err(Error::bad_file(
                &path,
                format!(
                    "built with k {} and leaves of {}, not the k {} and leaves of {} asked for: \
                     remove it to build the tree again, or ask for its settings",
                    tree.options.k, tree.options.max_leaf, settings.tree.k, settings.tree.max_leaf
                ),
            ));
        }
        return Ok(tree);
    }
    let minilm = crate::eval::dense::default_dir();
    let (rows, embedder) = if settings.minilm && minilm.join("config.json").is_file() {
        embed::with_minilm(&minilm, corpus)?
    } else {
        let rows = embed::with_model(
            &bundle.model.for_inference()?,
            &bundle.tokenizer,
            bundle.special.pad,
            corpus,
            &mut |_, _| {},
        )?;
        (
            rows,
            format!("mean-pooled hidden states of {}", bundle.source),
        )
    };
    let tree = DocidTree::build(corpus, &rows, &embedder, settings.tree)?;
    tree.save(&path)?;
    Ok(tree)
}

/// Where the model's docid tokens are, from its pathway and the tree.
pub fn docid_ids(bundle: &ModelBundle, tree: &DocidTree) -> Result<DocidIds> {
    let cfg = &bundle.model.config;
    let path = bundle
        .model
        .retrieval
        .as_ref()
        .ok_or_else(|| Error::invalid("the model has no retrieval pathway"))?;
    let vocab = tree.vocab();
    if path.config.docid_tokens != vocab.len() {
        return Err(Error::invalid(format!(
            "the model's pathway has {} docid tokens and the tree needs {}: they were not made \
             together",
            path.config.docid_tokens,
            vocab.len()
        )));
    }
    Ok(DocidIds {
        vocab,
        first: path.config.first_docid(cfg),
        retrieve: path.config.retrieve_marker(cfg),
    })
}

/// Gives a new run's model its retrieval pathway, sized for the tree.
pub fn open_pathway(
    bundle: &mut ModelBundle,
    settings: &DocidRun,
    tree: &DocidTree,
    seed: u64,
) -> Result<()> {
    let vocab = tree.vocab();
    let mut cfg = RetrievalConfig::new(&bundle.model.config, vocab.len());
    cfg.heads = settings.heads;
    bundle.open_retrieval(&cfg, |t| vocab.split(t as u32).1, seed)
}

/// The run's examples: indexing (sentences and titles -> docid) and retrieval (questions ->
/// docid, supplied and written); in stage 2 also mode 2's, from the docids drawn.
pub fn docid_examples(
    bundle: &ModelBundle,
    corpus: &Corpus,
    tree: &DocidTree,
    data: &DataOptions,
    queries: &[Query],
    drawn: &[DrawnDocids],
) -> Result<Vec<Example>> {
    let codec = PromptCodec::new(&bundle.tokenizer, bundle.special.eos)?;
    let builder = DocidData {
        tokenizer: &bundle.tokenizer,
        codec: &codec,
        corpus,
        tree,
        ids: docid_ids(bundle, tree)?,
        opts: data.clone(),
    };
    let mut out = builder.indexing()?;
    out.extend(builder.retrieval(queries)?);
    if !drawn.is_empty() {
        let words = DataBuilder {
            tokenizer: &bundle.tokenizer,
            codec: &codec,
            corpus,
            opts: data.clone(),
        };
        out.extend(mode2_examples(&builder, &words, queries, drawn)?);
    }
    Ok(out)
}

/// The model a stage-2 run starts from: the stage-1 run's checkpoint, pathway included, with
/// fresh adapters when `spec` asks for LoRA (else every weight trains), at step 0. The stage-1
/// run must be a docid run over this corpus; its tree and written questions are copied into
/// `run`.
pub fn start_stage2(
    spec: &super::index::IndexSpec,
    stage2: &Stage2,
    run: &Path,
    corpus: &Corpus,
    device: &candle_core::Device,
) -> Result<ModelBundle> {
    let from = &stage2.from;
    let (first, _) = read_stage1(from)?;
    if first.corpus_fingerprint != corpus.fingerprint() {
        return Err(Error::bad_file(
            from.join(super::index::RunManifest::FILE),
            format!(
                "trained on another corpus (fingerprint {}) than {}: its docids name other \
                 passages",
                first.corpus_fingerprint,
                spec.corpus.display()
            ),
        ));
    }
    if same_folder(from, run) {
        return Err(same_run(run));
    }
    // The tree, and the questions the stage-1 model wrote when it wrote any.
    for (name, needed) in [
        (docids::FILE_NAME, true),
        (super::index::PSEUDO_FILE, false),
    ] {
        // A fresh start replaces what an earlier run left in the folder.
        let (source, target) = (from.join(name), run.join(name));
        if !needed && !source.is_file() {
            continue;
        }
        let bytes = std::fs::read(&source).map_err(|e| Error::io(&source, e))?;
        crate::model::checkpoint::write_atomic(&target, &bytes)?;
    }
    // Draws an earlier run left were made by another model: this one draws its own.
    let stale = run.join(DRAWN_FILE);
    if stale.is_file() {
        std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
    }
    let mode = match &spec.lora {
        Some(l) => crate::model::TrainMode::Lora(l.clone()),
        None => crate::model::TrainMode::Full,
    };
    // Adapters of stage 1 are loaded as they were made: another rank or set of targets would
    // not fit them (`continue_stage1` carries them over).
    let saved = crate::model::checkpoint::Manifest::read(&super::index::checkpoint_dir(from))?;
    if let crate::model::TrainMode::Lora(had) = &saved.mode {
        if mode != saved.mode {
            return Err(Error::invalid(format!(
                "the stage-1 run {} trained LoRA adapters (rank {}); stage 2 goes on with them, \
                 so it needs the same LoRA settings",
                from.display(),
                had.rank
            )));
        }
    }
    let mut bundle =
        ModelBundle::load_checkpoint(&super::index::checkpoint_dir(from), Some(mode), device)?;
    if bundle.model.retrieval.is_none() {
        return Err(Error::bad_file(
            super::index::checkpoint_dir(from),
            "the checkpoint has no retrieval pathway",
        ));
    }
    bundle.step = 0;
    bundle.training_seconds = 0.0;
    Ok(bundle)
}

/// Mode 2's draws: for each training question with an answer string, the pathway's `draws`
/// best docids (constrained to real passages), each rewarded by whether its passage holds an
/// answer. `progress(done, total)` returning true cancels (`Ok(None)`).
pub fn draw_docids(
    bundle: &ModelBundle,
    corpus: &Corpus,
    tree: &DocidTree,
    queries: &[Query],
    draws: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Option<Vec<DrawnDocids>>> {
    let codec = PromptCodec::new(&bundle.tokenizer, bundle.special.eos)?;
    let model = bundle.inference()?;
    model.prepare_products()?;
    let trie = tree.trie(0);
    let retriever = crate::retrieve::docid::DocidRetriever {
        model: &model,
        tokenizer: &bundle.tokenizer,
        codec: &codec,
        corpus,
        tree,
        trie: &trie,
        ids: docid_ids(bundle, tree)?,
    };
    let answerable: Vec<&Query> = queries
        .iter()
        .filter(|q| crate::train::docid_data::answerable(q))
        .collect();
    let mut out = Vec::with_capacity(answerable.len());
    for (i, q) in answerable.iter().enumerate() {
        if progress(i, answerable.len()) {
            return Ok(None);
        }
        let trace = retriever.retrieve(&q.question, draws)?;
        let drawn = trace
            .beams
            .iter()
            .filter_map(|b| {
                let pidx = corpus.index_of(&b.passage_id)?;
                Some(DrawnPassage {
                    passage_id: b.passage_id.clone(),
                    logprob: b.logprob,
                    reward: crate::train::docid_data::reward(corpus, pidx, q),
                })
            })
            .collect();
        out.push(DrawnDocids {
            question: q.question.clone(),
            drawn,
        });
    }
    progress(answerable.len(), answerable.len());
    Ok(Some(out))
}

/// Reads a stage-2 run's drawn docids (`None`: not drawn yet).
pub fn read_drawn(run: &Path) -> Result<Option<Vec<DrawnDocids>>> {
    let path = run.join(DRAWN_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::bad_file(&path, format!("not a list of drawn docids: {e}")))
}

/// Keeps the drawn docids in the run.
pub fn save_drawn(run: &Path, drawn: &[DrawnDocids]) -> Result<()> {
    let json = serde_json::to_string_pretty(drawn).map_err(|e| Error::invalid(e.to_string()))?;
    crate::model::checkpoint::write_atomic(&run.join(DRAWN_FILE), json.as_bytes())
}
