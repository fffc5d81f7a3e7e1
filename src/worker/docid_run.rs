//! A docid run (the second retrieval mode): its settings in the run's spec, its docid tree
//! (built once, kept in the run as `docids.json`), the retrieval pathway given to the model, and
//! its training examples.

use crate::corpus::Corpus;
use crate::docids::{self, embed, DocidOptions, DocidTree};
use crate::error::{Error, Result};
use crate::model::retrieval::RetrievalConfig;
use crate::model::ModelBundle;
use crate::prompts::PromptCodec;
use crate::train::data::{DataOptions, Query};
use crate::train::docid_data::{DocidData, DocidIds};
use crate::train::Example;
use serde::{Deserialize, Serialize};
use std::path::Path;

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
}

impl Default for DocidRun {
    fn default() -> Self {
        DocidRun {
            tree: DocidOptions::default(),
            heads: 4,
            minilm: true,
            full: false,
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
/// docid, supplied and written).
pub fn docid_examples(
    bundle: &ModelBundle,
    corpus: &Corpus,
    tree: &DocidTree,
    data: &DataOptions,
    queries: &[Query],
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
    Ok(out)
}
