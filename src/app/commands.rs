//! Commands: what panels and bars ask for, applied after the frame's UI code by one function,
//! [`SelfretApp::apply`], the only place that starts worker jobs.

use super::dialogs::{self, PathField};
use super::errors::{io_message, required_path, ErrorPlace};
use super::panels::TrainView;
use super::{PanelKind, Project, SelfretApp};
use crate::model::ModelSource;
use crate::worker::index::IndexSpec;
use crate::worker::{Control, Job};
use std::path::PathBuf;

/// What a panel asks for; applied after the frame's UI code.
#[must_use]
#[derive(Debug, Clone)]
pub enum AppCommand {
    LoadCorpus,
    StartTraining {
        resume: bool,
    },
    Control(Control),
    OpenRun,
    OpenUntrained,
    Query(String),
    ShowPassage(String),
    /// Open a passage the answer cites, with the answer's words marked in it and a link back
    /// to the query.
    ShowCited {
        id: String,
        answer: String,
    },
    /// Score a passage for the current question ("why not this passage?").
    Explain(String),
    /// BM25's ranking of the current question beside the model's.
    CompareBm25,
    /// Write the loaded run's model as a Hugging Face folder.
    ExportModel(PathBuf),
    /// The demo's one click: demo corpus, SmolLM2 with the quick preset, Start.
    TrainDemo,
    /// Open the demo run already trained in runs/demo.
    OpenDemo,
    SwitchPanel(PanelKind),
    RunEval,
    /// Put a question in the Query panel and run it.
    AskQuestion(String),
    SaveProject(PathBuf),
    OpenProject(PathBuf),
    /// Open a file dialog that fills in a path.
    Browse(PathField),
    GeneratePseudoQueries,
    /// Save the kept pseudo-queries and train with them.
    SavePseudoQueries,
    GenerateTitles,
    /// Close the error shown at that place.
    DismissError(ErrorPlace),
}

/// What a job handed to the worker was for: where its errors are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    LoadCorpus,
    Train,
    OpenRun,
    OpenUntrained,
    Query,
    Eval,
    PseudoQueries,
    Titles,
    Explain,
    Bm25,
    Export,
}

impl JobKind {
    /// The panel that started the job and shows its errors.
    pub fn place(self) -> ErrorPlace {
        ErrorPlace::Panel(match self {
            JobKind::LoadCorpus | JobKind::Titles => PanelKind::Corpus,
            JobKind::Train | JobKind::OpenRun | JobKind::PseudoQueries => PanelKind::Train,
            JobKind::OpenUntrained | JobKind::Export => PanelKind::Model,
            JobKind::Query | JobKind::Explain | JobKind::Bm25 => PanelKind::Query,
            JobKind::Eval => PanelKind::Evaluate,
        })
    }
}

impl SelfretApp {
    /// Applies one command (from a panel, a test or the menu).
    pub fn apply(&mut self, cmd: AppCommand) {
        match cmd {
            AppCommand::LoadCorpus => {
                match required_path("corpus path", &self.shared.project.corpus_path) {
                    Ok(path) => self.submit(
                        JobKind::LoadCorpus,
                        "loading corpus",
                        Job::LoadCorpus(path, Default::default()),
                    ),
                    Err(e) => self.shared.errors.set(JobKind::LoadCorpus.place(), e),
                }
            }
            AppCommand::StartTraining { resume } => match self.spec(resume) {
                Ok(spec) => {
                    if !resume {
                        self.panels.train.view = TrainView::default();
                    }
                    self.panels.train.view.running = true;
                    let run = PathBuf::from(self.shared.project.run_dir.trim());
                    let job = Job::Index {
                        spec: Box::new(spec),
                        run,
                        resume,
                    };
                    self.submit(JobKind::Train, "training", job);
                }
                Err(e) => self.shared.errors.set(JobKind::Train.place(), e),
            },
            AppCommand::Control(c) => {
                match c {
                    Control::Pause => self.panels.train.view.paused = true,
                    Control::Resume => {
                        self.panels.train.view.paused = false;
                        self.panels.train.view.pause_taken = false;
                    }
                    _ => {}
                }
                self.worker.control(c);
            }
            AppCommand::OpenRun => {
                match required_path("run directory", &self.shared.project.run_dir) {
                    Ok(run) => {
                        if let Some(spec) = run_settings(&run) {
                            self.shared.project.take_run_settings(&spec);
                        }
                        self.submit(JobKind::OpenRun, "opening run", Job::OpenRun(run));
                    }
                    Err(e) => self.shared.errors.set(JobKind::OpenRun.place(), e),
                }
            }
            AppCommand::OpenUntrained => {
                match self.shared.project.model_source.parse::<ModelSource>() {
                    Ok(source) => {
                        let job = Job::OpenUntrained {
                            source,
                            corpus: PathBuf::from(self.shared.project.corpus_path.trim()),
                        };
                        self.submit(JobKind::OpenUntrained, "loading model", job);
                    }
                    Err(e) => self.shared.errors.set(JobKind::OpenUntrained.place(), e),
                }
            }
            AppCommand::Query(q) => {
                let q = q.trim().to_string();
                if q.is_empty() {
                    return;
                }
                self.shared.project.query_history.retain(|h| h != &q);
                self.shared.project.query_history.insert(0, q.clone());
                self.shared.project.query_history.truncate(20);
                self.panels.query.trace = None;
                self.panels.query.docid_trace = None;
                // "wrote trace.json", the explanation and BM25's list were about the previous
                // question.
                self.panels.query.export_status = None;
                self.panels.query.explanation = None;
                self.panels.query.bm25 = None;
                self.panels.query.asked_with = Some(self.shared.project.retrieve.clone());
                let job = Job::Query {
                    text: q.clone(),
                    opts: self.shared.project.retrieve.clone(),
                };
                self.submit(JobKind::Query, "query", job);
                if self.panels.query.show_bm25 {
                    self.submit(JobKind::Bm25, "BM25", Job::Bm25 { query: q, k: 10 });
                }
            }
            AppCommand::ShowPassage(id) => self.show_passage(id, None),
            AppCommand::ShowCited { id, answer } => self.show_passage(id, Some(answer)),
            AppCommand::Explain(id) => {
                let id = id.trim().to_string();
                let place = JobKind::Explain.place();
                let Some(trace) = self
                    .panels
                    .query
                    .trace
                    .clone()
                    .filter(|_| self.panels.query.trace_done)
                else {
                    self.shared.errors.set(
                        place,
                        "ask a question first: a passage is scored for the current question",
                    );
                    return;
                };
                if self
                    .shared
                    .corpus
                    .as_ref()
                    .is_some_and(|c| c.index_of(&id).is_none())
                {
                    self.shared
                        .errors
                        .set(place, format!("no passage with id {id:?} in the corpus"));
                    return;
                }
                self.panels.query.explain_id = id.clone();
                self.panels.query.explanation = None;
                self.shared.project.panel = PanelKind::Query;
                let opts = self
                    .panels
                    .query
                    .asked_with
                    .clone()
                    .unwrap_or_else(|| self.shared.project.retrieve.clone());
                let job = Job::Explain {
                    trace: Box::new(trace),
                    passage_id: id.clone(),
                    opts,
                };
                self.submit(JobKind::Explain, &format!("scoring {id}"), job);
            }
            AppCommand::CompareBm25 => {
                if self.shared.is_busy() {
                    return;
                }
                if let Some(t) = &self.panels.query.trace {
                    let job = Job::Bm25 {
                        query: t.query.clone(),
                        k: 10,
                    };
                    self.submit(JobKind::Bm25, "BM25", job);
                }
            }
            AppCommand::ExportModel(out) => {
                self.panels.model.export_status = None;
                // The run whose model is loaded, not whatever the run field says now.
                let Some(run) = self.shared.loaded_run.clone() else {
                    let e = "open or train a run first: its model is what is exported";
                    self.shared.errors.set(JobKind::Export.place(), e);
                    return;
                };
                self.submit(JobKind::Export, "exporting", Job::Export { run, out });
            }
            AppCommand::OpenDemo => {
                let demo = Project::default();
                if self.shared.project.corpus_path != demo.corpus_path
                    || self.shared.corpus.is_none()
                {
                    self.shared.project.corpus_path = demo.corpus_path;
                    self.apply(AppCommand::LoadCorpus);
                }
                self.shared.project.run_dir = super::guide::demo_run().display().to_string();
                self.shared.project.eval.queries_path = demo.eval.queries_path;
                self.apply(AppCommand::OpenRun);
            }
            AppCommand::TrainDemo => {
                let demo = Project::default();
                let p = &mut self.shared.project;
                let reload = p.corpus_path != demo.corpus_path || self.shared.corpus.is_none();
                p.corpus_path = demo.corpus_path;
                p.model_source = demo.model_source;
                p.queries_path = demo.queries_path;
                p.eval.queries_path = demo.eval.queries_path;
                p.run_dir = demo.run_dir;
                p.apply_preset(crate::worker::preset::Preset::Quick);
                p.panel = PanelKind::Train;
                if reload {
                    self.apply(AppCommand::LoadCorpus);
                }
                let run = PathBuf::from(self.shared.project.run_dir.trim());
                if super::panels::holds_checkpoint(&run) {
                    // The same question Start asks: a trained model is never replaced silently.
                    self.panels.train.confirm_overwrite = Some(run);
                } else {
                    self.apply(AppCommand::StartTraining { resume: false });
                }
            }
            AppCommand::SwitchPanel(p) => self.shared.project.panel = p,
            AppCommand::RunEval => {
                let e = &self.shared.project.eval;
                let queries = match required_path("query file", &e.queries_path) {
                    Ok(q) => q,
                    Err(message) => {
                        self.shared.errors.set(JobKind::Eval.place(), message);
                        return;
                    }
                };
                let mut baselines = Vec::new();
                if e.bm25 {
                    baselines.push("bm25".to_string());
                }
                if e.dense {
                    baselines.push("dense".to_string());
                }
                if e.reader && self.shared.session.is_some() {
                    baselines.push("bm25+reader".to_string());
                }
                let plan = crate::eval::run::EvalPlan {
                    baselines,
                    retrieve: self.shared.project.retrieve.clone(),
                    dense_model: crate::eval::dense::default_dir(),
                    docid_beams: 10,
                };
                // The previous results stay on show until this run's replace them: a run that
                // fails leaves them. The notes are about the query file now being read.
                self.panels.evaluate.notes.clear();
                self.panels.evaluate.running_query_file = Some(queries.clone());
                let job = Job::Eval {
                    queries,
                    corpus: PathBuf::from(self.shared.project.corpus_path.trim()),
                    limit: (e.limit > 0).then_some(e.limit),
                    plan,
                    self_retrieval: e.self_retrieval,
                };
                self.submit(JobKind::Eval, "evaluating", job);
            }
            AppCommand::AskQuestion(q) => {
                self.panels.query.query_text = q.clone();
                self.shared.project.panel = PanelKind::Query;
                self.apply(AppCommand::Query(q));
            }
            AppCommand::SaveProject(path) => {
                let text = ron::ser::to_string_pretty(&self.shared.project, Default::default())
                    .unwrap_or_default();
                match crate::model::checkpoint::write_atomic(&path, text.as_bytes()) {
                    Ok(()) => self.shared.errors.dismiss(ErrorPlace::Project),
                    Err(e) => self.shared.errors.set(ErrorPlace::Project, e.to_string()),
                }
            }
            AppCommand::OpenProject(path) => match std::fs::read_to_string(&path)
                .map_err(|e| io_message(&path, &e))
                .and_then(|t| {
                    ron::from_str::<Project>(&t).map_err(|e| format!("{}: {e}", path.display()))
                })
                .and_then(|p| {
                    // NaN or negative temperatures parse as RON numbers; refuse them here, not
                    // at the first re-ranking.
                    p.retrieve
                        .validate()
                        .map(|_| p)
                        .map_err(|e| format!("{}: {e}", path.display()))
                }) {
                Ok(p) => {
                    self.shared.errors.dismiss(ErrorPlace::Project);
                    self.shared.project = p;
                    self.apply(AppCommand::LoadCorpus);
                }
                Err(e) => self.shared.errors.set(ErrorPlace::Project, e),
            },
            AppCommand::GeneratePseudoQueries => {
                self.panels.train.pseudo.items.clear();
                self.panels.train.pseudo.status = None;
                let job = Job::PseudoQueries(self.panels.train.pseudo.opts.clone());
                self.submit(JobKind::PseudoQueries, "writing pseudo-queries", job);
            }
            AppCommand::SavePseudoQueries => {
                let path = PathBuf::from(self.panels.train.pseudo.path.trim());
                match crate::train::pseudo::save_pseudo_queries(
                    &path,
                    &self.panels.train.pseudo.items,
                ) {
                    Ok(n) => {
                        self.shared.project.queries_path = path.display().to_string();
                        self.panels.train.pseudo.status = Some(format!(
                            "saved {n} questions to {}; training will use them",
                            path.display()
                        ));
                    }
                    Err(e) => self
                        .shared
                        .errors
                        .set(JobKind::PseudoQueries.place(), e.to_string()),
                }
            }
            AppCommand::GenerateTitles => {
                let src = PathBuf::from(self.shared.project.corpus_path.trim());
                let stem = src
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_else(|| "corpus".into());
                let out = src
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join(format!("{stem}.titled.jsonl"));
                self.submit(JobKind::Titles, "writing titles", Job::GenerateTitles(out));
            }
            AppCommand::Browse(field) => {
                let start = dialogs::start_dir(self.field_mut(field));
                self.dialogs.request(field, start, &self.ctx);
            }
            AppCommand::DismissError(place) => self.shared.errors.dismiss(place),
        }
    }

    /// Shows passage `id` in the Corpus panel; `answer` (from a citation) is marked in its text.
    /// Coming from the Query panel, the passage view links back to it.
    fn show_passage(&mut self, id: String, answer: Option<String>) {
        let corpus = &mut self.panels.corpus;
        corpus.from_query = self.shared.project.panel == PanelKind::Query;
        corpus.highlight = answer;
        corpus.selected_passage = Some(id.clone());
        corpus.filter = id;
        corpus.page = 0;
        self.shared.project.panel = PanelKind::Corpus;
    }

    /// Hands a job to the worker, remembering what it is for (where its errors go).
    fn submit(&mut self, kind: JobKind, busy: &str, job: Job) {
        self.jobs.push_back(kind);
        self.shared.busy = Some(busy.into());
        self.worker.submit(job);
    }

    /// The job the worker is running now (the oldest not finished).
    pub(super) fn running_job(&self) -> Option<JobKind> {
        self.jobs.front().copied()
    }

    /// The training job the project's settings describe (`resume`: to go on with the run in
    /// the run directory).
    pub(super) fn spec(&self, resume: bool) -> Result<IndexSpec, String> {
        let source: ModelSource = self.shared.project.model_source.parse()?;
        let mut spec = IndexSpec::new(PathBuf::from(&self.shared.project.corpus_path), source);
        spec.lora = self.shared.project.lora.then(|| crate::model::LoraConfig {
            rank: self.shared.project.lora_rank,
            alpha: 2.0 * self.shared.project.lora_rank as f64,
            ..Default::default()
        });
        spec.train.steps = self.shared.project.steps;
        spec.train.epochs =
            (self.shared.project.epochs > 0.0).then_some(self.shared.project.epochs);
        spec.train.mix = self.shared.project.mix;
        spec.data.target = match self.shared.project.target_words {
            0 => crate::train::data::TargetLength::Full,
            n => crate::train::data::TargetLength::FirstWords(n),
        };
        spec.train.lr = self.shared.project.lr;
        spec.train.batch_tokens = self.shared.project.batch_tokens;
        spec.data.sentences_per_passage = self.shared.project.sentences_per_passage;
        spec.pseudo = match self.shared.project.pseudo_per_passage {
            0 => None,
            n => Some(crate::train::pseudo::PseudoOptions {
                per_passage: n,
                ..Default::default()
            }),
        };
        if self.shared.project.retrieve_by_docids {
            spec.docids = Some(Default::default());
        }
        if !self.shared.project.queries_path.trim().is_empty() {
            spec.queries = Some(PathBuf::from(self.shared.project.queries_path.trim()));
        }
        let stage2 = self.shared.project.retrieve_by_docids && self.shared.project.docid_stage2;
        // A stage-2 run resumed goes on from its own checkpoint with its own settings: its
        // stage-1 run is not needed again (it may have moved).
        let own = match resume && stage2 {
            true => run_settings(std::path::Path::new(self.shared.project.run_dir.trim()))
                .filter(|s| s.docids.as_ref().is_some_and(|d| d.stage2.is_some())),
            false => None,
        };
        if let Some(own) = own {
            spec.model = own.model;
            spec.lora = own.lora;
            spec.queries = own.queries;
            spec.pseudo = own.pseudo;
            spec.docids = own.docids;
        } else if stage2 {
            let from = self.shared.project.docid_stage1_run.trim();
            if from.is_empty() {
                return Err(
                    "docid stage 2 continues a stage-1 run: choose it (Stage-1 run)".into(),
                );
            }
            crate::worker::docid_run::continue_stage1(
                &mut spec,
                std::path::Path::new(from),
                std::path::Path::new(self.shared.project.run_dir.trim()),
                crate::worker::docid_run::DEFAULT_DRAWS,
            )
            .map_err(|e| e.to_string())?;
        }
        spec.train.checkpoint_every = 50;
        spec.train.eval_every = 25;
        Ok(spec)
    }

    /// The text a path field edits: where its dialog starts, and what the chosen path fills in.
    pub(super) fn field_mut(&mut self, field: PathField) -> &mut String {
        match field {
            PathField::CorpusFile | PathField::CorpusFolder => &mut self.shared.project.corpus_path,
            PathField::ModelFile | PathField::ModelFolder => &mut self.shared.project.model_source,
            PathField::QueriesFile => &mut self.shared.project.queries_path,
            PathField::RunDir => &mut self.shared.project.run_dir,
            PathField::Stage1Run => &mut self.shared.project.docid_stage1_run,
            PathField::EvalQueries => &mut self.shared.project.eval.queries_path,
            PathField::OpenProject | PathField::SaveProject => &mut self.project_file,
            PathField::ExportTrace => &mut self.panels.query.export_path,
            PathField::PseudoQueries => &mut self.panels.train.pseudo.path,
        }
    }
}

/// The settings a run was trained with (its `run.ron`); `None` when the folder has none readable
/// (opening the run then reports what is wrong).
fn run_settings(run: &std::path::Path) -> Option<IndexSpec> {
    crate::worker::index::RunManifest::read(run)
        .ok()
        .map(|m| m.spec)
}
