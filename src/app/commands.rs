//! Commands: what panels and bars ask for, applied after the frame's UI code by one function,
//! [`SelfretApp::apply`], the only place that starts worker jobs.

use super::dialogs::{self, PathField};
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
    /// Close the error message.
    DismissError,
}

impl SelfretApp {
    /// Applies one command (from a panel, a test or the menu).
    pub fn apply(&mut self, cmd: AppCommand) {
        match cmd {
            AppCommand::LoadCorpus => {
                let path = PathBuf::from(self.shared.project.corpus_path.trim());
                self.worker
                    .submit(Job::LoadCorpus(path, Default::default()));
                self.shared.busy = Some("loading corpus".into());
            }
            AppCommand::StartTraining { resume } => match self.spec() {
                Ok(spec) => {
                    if !resume {
                        self.panels.train.view = TrainView::default();
                    }
                    self.panels.train.view.running = true;
                    self.shared.busy = Some("training".into());
                    self.worker.submit(Job::Index {
                        spec: Box::new(spec),
                        run: PathBuf::from(self.shared.project.run_dir.trim()),
                        resume,
                    });
                }
                Err(e) => self.shared.error = Some(e),
            },
            AppCommand::Control(c) => {
                match c {
                    Control::Pause => self.panels.train.view.paused = true,
                    Control::Resume => self.panels.train.view.paused = false,
                    _ => {}
                }
                self.worker.control(c);
            }
            AppCommand::OpenRun => {
                self.shared.busy = Some("opening run".into());
                self.worker.submit(Job::OpenRun(PathBuf::from(
                    self.shared.project.run_dir.trim(),
                )));
            }
            AppCommand::OpenUntrained => {
                match self.shared.project.model_source.parse::<ModelSource>() {
                    Ok(source) => {
                        self.shared.busy = Some("loading model".into());
                        self.worker.submit(Job::OpenUntrained {
                            source,
                            corpus: PathBuf::from(self.shared.project.corpus_path.trim()),
                        });
                    }
                    Err(e) => self.shared.error = Some(e),
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
                self.shared.busy = Some("query".into());
                self.worker.submit(Job::Query {
                    text: q,
                    opts: self.shared.project.retrieve.clone(),
                });
            }
            AppCommand::ShowPassage(id) => {
                self.panels.corpus.selected_passage = Some(id.clone());
                self.panels.corpus.filter = id;
                self.panels.corpus.page = 0;
                self.shared.project.panel = PanelKind::Corpus;
            }
            AppCommand::SwitchPanel(p) => self.shared.project.panel = p,
            AppCommand::RunEval => {
                let e = &self.shared.project.eval;
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
                };
                self.panels.evaluate.results.clear();
                self.panels.evaluate.notes.clear();
                self.shared.busy = Some("evaluating".into());
                self.worker.submit(Job::Eval {
                    queries: PathBuf::from(e.queries_path.trim()),
                    corpus: PathBuf::from(self.shared.project.corpus_path.trim()),
                    limit: (e.limit > 0).then_some(e.limit),
                    plan,
                    self_retrieval: e.self_retrieval,
                });
            }
            AppCommand::AskQuestion(q) => {
                self.panels.query.query_text = q.clone();
                self.shared.project.panel = PanelKind::Query;
                self.apply(AppCommand::Query(q));
            }
            AppCommand::SaveProject(path) => {
                let text = ron::ser::to_string_pretty(&self.shared.project, Default::default())
                    .unwrap_or_default();
                if let Err(e) = crate::model::checkpoint::write_atomic(&path, text.as_bytes()) {
                    self.shared.error = Some(e.to_string());
                }
            }
            AppCommand::OpenProject(path) => match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
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
                    self.shared.project = p;
                    self.apply(AppCommand::LoadCorpus);
                }
                Err(e) => self.shared.error = Some(e),
            },
            AppCommand::GeneratePseudoQueries => {
                self.shared.busy = Some("writing pseudo-queries".into());
                self.panels.train.pseudo.items.clear();
                self.panels.train.pseudo.status = None;
                self.worker
                    .submit(Job::PseudoQueries(self.panels.train.pseudo.opts.clone()));
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
                    Err(e) => self.shared.error = Some(e.to_string()),
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
                self.shared.busy = Some("writing titles".into());
                self.worker.submit(Job::GenerateTitles(out));
            }
            AppCommand::Browse(field) => {
                let start = dialogs::start_dir(self.field_mut(field));
                self.dialogs.request(field, start, &self.ctx);
            }
            AppCommand::DismissError => self.shared.error = None,
        }
    }

    /// The training job the project's settings describe.
    pub(super) fn spec(&self) -> Result<IndexSpec, String> {
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
        spec.train.checkpoint_every = 50;
        spec.train.eval_every = 25;
        if !self.shared.project.queries_path.trim().is_empty() {
            spec.queries = Some(PathBuf::from(self.shared.project.queries_path.trim()));
        }
        Ok(spec)
    }

    /// The text a path field edits: where its dialog starts, and what the chosen path fills in.
    pub(super) fn field_mut(&mut self, field: PathField) -> &mut String {
        match field {
            PathField::CorpusFile | PathField::CorpusFolder => &mut self.shared.project.corpus_path,
            PathField::ModelFile | PathField::ModelFolder => &mut self.shared.project.model_source,
            PathField::QueriesFile => &mut self.shared.project.queries_path,
            PathField::RunDir => &mut self.shared.project.run_dir,
            PathField::EvalQueries => &mut self.shared.project.eval.queries_path,
            PathField::OpenProject | PathField::SaveProject => &mut self.project_file,
            PathField::ExportTrace => &mut self.panels.query.export_path,
            PathField::PseudoQueries => &mut self.panels.train.pseudo.path,
        }
    }
}
