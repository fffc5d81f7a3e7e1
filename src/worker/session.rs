//! Opening a run directory (or an untrained model over a corpus) for querying: the
//! [`QuerySession`] that the CLI, the app and evaluation ask.

use super::index::{checkpoint_dir, load_base, IndexSpec, RunManifest};
use crate::corpus::{load_path, Corpus, LoadOptions};
use crate::error::{Error, Result};
use crate::model::checkpoint::write_atomic;
use crate::model::source::DownloadProgress;
use crate::model::{ModelBundle, ModelSource, TrainMode};
use crate::prompts::PromptCodec;
use crate::retrieve::{AnswerReader, RetrievalTrace, RetrieveOptions, Retriever};
use crate::trie::CorpusTrie;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// A model, its corpus and trie, ready to answer queries.
pub struct QuerySession {
    pub bundle: ModelBundle,
    pub model: crate::model::Llama,
    pub corpus: Corpus,
    pub codec: PromptCodec,
    pub trie: CorpusTrie,
    /// The base model without adapters (LoRA runs only), made the first time a query asks for
    /// it (about as much memory again as the model).
    base: std::sync::OnceLock<Option<crate::model::Llama>>,
    /// Each title's prior by title index, read the first time a query needs it.
    title_priors: std::sync::OnceLock<Vec<f64>>,
    /// Passages the query likelihood has read, kept for later questions.
    pub reading: crate::retrieve::reading::ReadingCache,
    /// The model reads language (a tiny model built from the corpus does not).
    reads_language: bool,
    /// The run trained the reading task (passage -> question), so its own weights read the
    /// query likelihood better than the base model's (see [`Self::likelihood_base_default`]).
    reads_questions: bool,
    /// The model learned to answer in the trained format (see [`Self::answer_reader`]).
    trains_answers: bool,
    /// Where the base model for the query likelihood comes from when the bundle has no
    /// adapters to take off: an exported folder's base file (the folder, its reference).
    likelihood_base: Option<(std::path::PathBuf, crate::model::checkpoint::BaseRef)>,
    /// BM25 over the same corpus, built the first time a query is compared with it.
    bm25: std::sync::OnceLock<crate::eval::bm25::Bm25Index>,
    /// The run folder the model was opened from (`None`: an untrained or exported model).
    pub run: Option<std::path::PathBuf>,
    /// A docid run's tree, trie and token ids: the session retrieves by docid.
    pub docids: Option<DocidParts>,
}

/// What a docid run's session retrieves with.
pub struct DocidParts {
    pub tree: crate::docids::DocidTree,
    /// Over docid token offsets, item `i` being passage `i`.
    pub trie: crate::trie::TokenTrie,
    pub ids: crate::train::docid_data::DocidIds,
}

impl QuerySession {
    /// Opens a run directory written by indexing.
    pub fn open_run(run: &Path) -> Result<Self> {
        Self::open_run_at(run, &checkpoint_dir(run))
    }

    /// Opens a run directory with one of its checkpoint folders (a learning-curve snapshot,
    /// `checkpoint-30min`, say).
    pub fn open_run_at(run: &Path, checkpoint: &Path) -> Result<Self> {
        let manifest = RunManifest::read(run)?;
        let corpus = load_path(&manifest.spec.corpus, &manifest.spec.load)?;
        let bundle = ModelBundle::load_checkpoint(
            checkpoint,
            Some(TrainMode::Frozen),
            &crate::model::default_device(),
        )?;
        let docids = match &manifest.spec.docids {
            Some(_) => {
                let tree =
                    crate::docids::DocidTree::load(&run.join(crate::docids::FILE_NAME), &corpus)?;
                let ids = super::docid_run::docid_ids(&bundle, &tree)?;
                Some(DocidParts {
                    trie: tree.trie(0),
                    tree,
                    ids,
                })
            }
            None => None,
        };
        let mut session = Self::new(bundle, corpus)?;
        session.reads_questions = manifest.spec.trains_reading();
        session.trains_answers = manifest.spec.trains_answers();
        session.run = Some(run.to_path_buf());
        session.docids = docids;
        Ok(session)
    }

    /// Wraps a loaded model and corpus (builds the trie).
    pub fn new(bundle: ModelBundle, corpus: Corpus) -> Result<Self> {
        let codec = PromptCodec::new(&bundle.tokenizer, bundle.special.eos)?;
        let trie = CorpusTrie::build(&corpus, &bundle.tokenizer, &codec)?;
        let model = bundle.inference()?;
        model.prepare_products()?;
        let bundle_reads_language = bundle.source != ModelSource::Tiny;
        Ok(QuerySession {
            bundle,
            model,
            corpus,
            codec,
            trie,
            base: Default::default(),
            title_priors: Default::default(),
            reading: crate::retrieve::reading::ReadingCache::new(
                crate::retrieve::reading::DEFAULT_READING_CACHE_MB,
            ),
            bm25: Default::default(),
            reads_language: bundle_reads_language,
            reads_questions: false,
            trains_answers: false,
            likelihood_base: None,
            run: None,
            docids: None,
        })
    }

    /// Opens an un-fine-tuned model over a corpus.
    pub fn open_untrained(
        source: &ModelSource,
        corpus_path: &Path,
        progress: Option<DownloadProgress<'_>>,
    ) -> Result<Self> {
        let corpus = load_path(corpus_path, &LoadOptions::default())?;
        let spec = IndexSpec::new(corpus_path.to_path_buf(), source.clone());
        let device = crate::model::default_device();
        let mut bundle = load_base(&spec, &corpus, &device, progress)?;
        bundle.mode = TrainMode::Frozen;
        let mut session = Self::new(bundle, corpus)?;
        // A folder selfret exported says how its run retrieved.
        if let ModelSource::HfFolder(dir) = source {
            if let Some(note) = super::export::ExportManifest::read(dir)? {
                if note.corpus_fingerprint != session.corpus.fingerprint() {
                    return Err(Error::bad_file(
                        corpus_path,
                        format!(
                            "not the corpus the model in {} was trained on (its {} names \
                             fingerprint {}): its trie would not match what the model learned",
                            dir.display(),
                            super::export::EXPORT_MANIFEST,
                            note.corpus_fingerprint
                        ),
                    ));
                }
                session.reads_language = note.reads_language;
                session.reads_questions = note.reads_questions;
                session.trains_answers = note.trains_answers;
                session.likelihood_base = note.likelihood_base.map(|b| (dir.clone(), b));
            }
        }
        Ok(session)
    }

    /// The docid retriever of a docid run's session.
    pub fn docid_retriever(&self) -> Option<crate::retrieve::docid::DocidRetriever<'_>> {
        let d = self.docids.as_ref()?;
        Some(crate::retrieve::docid::DocidRetriever {
            model: &self.model,
            tokenizer: &self.bundle.tokenizer,
            codec: &self.codec,
            corpus: &self.corpus,
            tree: &d.tree,
            trie: &d.trie,
            ids: d.ids,
        })
    }

    /// A docid run's answer to `query`: its `beams` best docids and, when the model reads
    /// language or its run trained answers and `answer_tokens` is given, an answer read with
    /// the pathway closed from the top `answer_passages` passages (the base model copies it
    /// from one of them; a run that trained answers reads the top one). `None` when the session
    /// is not a docid run.
    pub fn docid_query(
        &self,
        query: &str,
        beams: usize,
        answer_tokens: Option<usize>,
        answer_passages: usize,
    ) -> Option<Result<crate::retrieve::docid::DocidTrace>> {
        let r = self.docid_retriever()?;
        Some((|| {
            let started = std::time::Instant::now();
            let mut trace = r.retrieve(query, beams)?;
            let top: Vec<usize> = trace
                .beams
                .iter()
                .take(answer_passages.max(1))
                .filter_map(|b| self.corpus.index_of(&b.passage_id))
                .collect();
            // A model that reads language answers; one that only memorised the corpus answers
            // when its run trained answers (stage 2 of a docid run).
            let answers = self.reads_language || self.trains_answers;
            if let (Some(max), false, true) = (answer_tokens, top.is_empty(), answers) {
                let reader = self.answer_reader(AnswerReader::Auto)?;
                let read = match reader {
                    AnswerReader::Base => &top[..],
                    _ => &top[..1],
                };
                let (text, from) = self.retriever().answer_from(query, read, reader, max)?;
                trace.answer = Some(crate::retrieve::docid::DocidAnswer {
                    text,
                    passage_id: self.corpus.passages[from].id.clone(),
                    read: read
                        .iter()
                        .map(|&p| self.corpus.passages[p].id.clone())
                        .collect(),
                });
            }
            trace.ms = started.elapsed().as_secs_f64() * 1e3;
            Ok(trace)
        })())
    }

    /// A retriever over this session's model, corpus and trie.
    pub fn retriever(&self) -> Retriever<'_> {
        Retriever {
            base: self.base.get().and_then(|b| b.as_ref()),
            model: &self.model,
            tokenizer: &self.bundle.tokenizer,
            codec: &self.codec,
            corpus: &self.corpus,
            trie: &self.trie,
            title_prior: self.title_priors.get().map(|p| p.as_slice()),
            reading: Some(&self.reading),
        }
    }

    /// The titles' priors ([`Retriever::title_priors`]), read once with a title search as wide
    /// as the default and kept: every query's trace records them, and
    /// [`RetrieveOptions::title_prior`] weighs them in.
    pub fn title_priors(&self) -> Result<&[f64]> {
        if self.title_priors.get().is_none() {
            let prior = self
                .retriever()
                .title_priors(crate::retrieve::options::DEFAULT_TITLES)?;
            let _ = self.title_priors.set(prior);
        }
        Ok(self.title_priors.get().map(|p| p.as_slice()).unwrap_or(&[]))
    }

    /// Writes pseudo-queries for this corpus with this model (see [`crate::train::pseudo`]).
    pub fn pseudo_queries(
        &self,
        opts: &crate::train::pseudo::PseudoOptions,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<crate::train::pseudo::PseudoQuery>> {
        crate::train::pseudo::generate_pseudo_queries(
            &self.retriever(),
            self.bundle.special.eos,
            opts,
            progress,
        )
    }

    /// Gives every title-less passage group (titles that are only the first words of their
    /// text) a title written by the model, and writes the whole corpus as JSONL to `out`.
    /// Returns how many titles were generated. `progress(done, total)` returns true to stop;
    /// nothing is written then.
    pub fn write_titled_corpus(
        &self,
        out: &Path,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<usize> {
        let c = &self.corpus;
        let untitled = c.untitled();
        let mut new_titles: HashMap<usize, String> = HashMap::new();
        for (k, &t) in untitled.iter().enumerate() {
            if progress(k, untitled.len()) {
                return Err(Error::Cancelled);
            }
            let first = c.by_title[t][0];
            if let Some(title) = crate::generate::title_for(
                &self.model,
                &self.bundle.tokenizer,
                self.bundle.special.eos,
                &c.passages[first].text,
            )? {
                new_titles.insert(t, title);
            }
        }
        progress(untitled.len(), untitled.len());
        let mut buf = Vec::new();
        for (i, p) in c.passages.iter().enumerate() {
            let title = new_titles.get(&c.title_of[i]).unwrap_or(&p.title);
            let line = serde_json::json!({"id": p.id, "title": title, "text": p.text});
            writeln!(buf, "{line}").map_err(|e| Error::io(out, e))?;
        }
        write_atomic(out, &buf)?;
        Ok(new_titles.len())
    }

    /// Runs retrieval for one query.
    pub fn query(
        &self,
        q: &str,
        opts: &RetrieveOptions,
        progress: &mut dyn FnMut(&RetrievalTrace),
    ) -> Result<RetrievalTrace> {
        if opts.likelihood && opts.likelihood_base {
            self.base_model()?;
        }
        self.title_priors()?;
        if !opts.answer {
            return self.retriever().retrieve(q, opts, progress);
        }
        // Resolved only when an answer is asked for: the base model it may need is a second
        // copy of the weights.
        let opts = RetrieveOptions {
            answer_reader: self.answer_reader(opts.answer_reader)?,
            ..opts.clone()
        };
        self.retriever().retrieve(q, &opts, progress)
    }

    /// Who reads answers for a choice of `reader`: `Auto` becomes the trained format when the
    /// model learned it (or reads no language: a model built from the corpus knows no other),
    /// the base model otherwise. A run that trained no answer repeats the question in the
    /// trained format (NQ's recipe), while the instruction-tuned base model reads the passage.
    /// Makes the base model when it will be needed.
    pub fn answer_reader(&self, reader: AnswerReader) -> Result<AnswerReader> {
        let resolved = match reader {
            AnswerReader::Auto if self.trains_answers || !self.reads_language => {
                AnswerReader::Trained
            }
            AnswerReader::Auto => AnswerReader::Base,
            other => other,
        };
        if resolved == AnswerReader::Base {
            self.base_model()?;
        }
        Ok(resolved)
    }

    /// How the model scores the passage `passage_id` for the query of `trace` (run with
    /// `opts`), placed among its candidates: "why not this passage?".
    pub fn explain(
        &self,
        trace: &RetrievalTrace,
        passage_id: &str,
        opts: &RetrieveOptions,
    ) -> Result<crate::retrieve::Explanation> {
        let pidx = self.corpus.index_of(passage_id).ok_or_else(|| {
            Error::invalid(format!("no passage with id {passage_id:?} in the corpus"))
        })?;
        if opts.likelihood && opts.likelihood_base {
            self.base_model()?;
        }
        self.title_priors()?;
        self.retriever().explain(trace, pidx, opts)
    }

    /// BM25's top `k` passages for `query` over the session's corpus (the lexical baseline the
    /// Query panel shows beside the model's ranking), best first.
    pub fn bm25_top(&self, query: &str, k: usize) -> Vec<usize> {
        self.bm25
            .get_or_init(|| crate::eval::bm25::Bm25Index::new(&self.corpus, 0.9, 0.4))
            .search(query, k)
    }

    /// Whether the model knows a language to read passages with: a tiny model built from the
    /// corpus does not (it only memorises the corpus), so its query likelihood would be noise
    /// weighted into the ranking. The entry points (CLI, app) leave it out for such a model.
    pub fn reads_language(&self) -> bool {
        self.reads_language
    }

    /// Whether the base model should read the query likelihood unless the user says otherwise:
    /// yes, except for a run that trained the reading task, whose own weights learned to read
    /// its corpus's questions (retrieval training alone moves them the wrong way).
    pub fn likelihood_base_default(&self) -> bool {
        !self.reads_questions
    }

    /// The options a query runs with on this model: the query likelihood off for a model that
    /// does not read (see [`Self::reads_language`]).
    pub fn options_for_model(&self, opts: &RetrieveOptions) -> RetrieveOptions {
        RetrieveOptions {
            likelihood: opts.likelihood && self.reads_language(),
            ..opts.clone()
        }
    }

    /// The base model without adapters, made once; None for a model without adapters (its
    /// fine-tuned weights are all there is).
    pub fn base_model(&self) -> Result<Option<&crate::model::Llama>> {
        if self.base.get().is_none() {
            let base = if let Some((folder, base)) = &self.likelihood_base {
                base.verify(folder).map_err(|_| {
                    Error::bad_file(
                        folder.join(super::export::EXPORT_MANIFEST),
                        format!(
                            "the base model this export reads the query likelihood with, {} \
                             (sha256 {}), is missing or changed: put it back, or read the \
                             likelihood with the exported weights (--likelihood-tuned, or untick \
                             \"with the base model\" in the Query panel)",
                            base.path.display(),
                            base.sha256
                        ),
                    )
                })?;
                let device = crate::model::default_device();
                let source = ModelSource::Gguf(base.path.clone());
                let w = crate::model::source::load_weights(&source, &device, None)?;
                let b = ModelBundle::from_weights(w, source, TrainMode::Frozen, &device)?
                    .inference()?;
                b.prepare_products()?;
                Some(b)
            } else if self.bundle.model.lora_weights().is_empty() {
                None
            } else {
                let b = self.bundle.model.without_lora().for_inference()?;
                b.prepare_products()?;
                Some(b)
            };
            let _ = self.base.set(base);
        }
        Ok(self.base.get().and_then(|b| b.as_ref()))
    }
}
