//! The desktop app (eframe/egui). One persisted [`Project`], panels in their own files that return
//! [`AppCommand`]s applied once per frame, and a background [`Worker`] polled every frame.

mod corpus_panel;
pub mod dialogs;
mod evaluate_panel;
mod model_panel;
mod query_panel;
mod train_panel;

use crate::corpus::Corpus;
use crate::model::ModelSource;
use crate::retrieve::{RetrievalTrace, RetrieveOptions};
use crate::train::{Task, TrainEvent};
use crate::worker::preset::Preset;
use crate::worker::session::IndexSpec;
use crate::worker::{Control, Event, Job, Worker};
use dialogs::{Dialogs, PathField};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// The panels of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
pub enum PanelKind {
    #[default]
    Corpus,
    Model,
    Train,
    Query,
    Evaluate,
}

impl PanelKind {
    const ALL: [PanelKind; 5] = [
        PanelKind::Corpus,
        PanelKind::Model,
        PanelKind::Train,
        PanelKind::Query,
        PanelKind::Evaluate,
    ];
    fn label(self) -> &'static str {
        match self {
            PanelKind::Corpus => "Corpus",
            PanelKind::Model => "Model",
            PanelKind::Train => "Train",
            PanelKind::Query => "Query",
            PanelKind::Evaluate => "Evaluate",
        }
    }
}

/// Everything the user set up; saved between sessions (and to .ron project files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    pub corpus_path: String,
    pub model_source: String,
    pub run_dir: String,
    pub lora: bool,
    pub lora_rank: usize,
    pub steps: usize,
    pub lr: f64,
    pub batch_tokens: usize,
    pub queries_path: String,
    pub retrieve: RetrieveOptions,
    pub panel: PanelKind,
    pub query_history: Vec<String>,
    #[serde(default)]
    pub eval: EvalSettings,
    #[serde(default)]
    pub mix: crate::train::TaskMix,
    /// Indexing target: words of the passage after the title (0: the whole passage).
    #[serde(default)]
    pub target_words: usize,
    /// Budget in passes over the data instead of steps (0: use `steps`).
    #[serde(default)]
    pub epochs: f64,
    /// Indexing sentences per passage (0: all of them).
    #[serde(default = "three")]
    pub sentences_per_passage: usize,
    /// Questions the base model writes per passage for retrieval training (0: none).
    #[serde(default)]
    pub pseudo_per_passage: usize,
    /// The preset the training settings were last filled from (None: set by hand).
    #[serde(default)]
    pub preset: Option<Preset>,
}

fn three() -> usize {
    3
}

/// The model `scripts/fetch-model.sh` fetches, the demo's default.
pub fn smollm2_path() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .display()
        .to_string()
}

impl Project {
    /// Fills the training settings from a preset (for the current corpus and model): the
    /// form then shows what will run, and any field can still be changed.
    pub fn apply_preset(&mut self, preset: Preset) {
        let source = self.model_source.parse().unwrap_or(ModelSource::Tiny);
        let mut spec = IndexSpec::new(PathBuf::from(&self.corpus_path), source);
        preset.apply(&mut spec);
        self.lora = spec.lora.is_some();
        if let Some(l) = &spec.lora {
            self.lora_rank = l.rank;
        }
        self.lr = spec.train.lr;
        self.batch_tokens = spec.train.batch_tokens;
        self.mix = spec.train.mix;
        self.epochs = spec.train.epochs.unwrap_or(0.0);
        self.target_words = match spec.data.target {
            crate::train::data::TargetLength::Full => 0,
            crate::train::data::TargetLength::FirstWords(n) => n,
        };
        self.sentences_per_passage = spec.data.sentences_per_passage;
        self.pseudo_per_passage = spec.pseudo.map(|p| p.per_passage).unwrap_or(0);
        self.preset = Some(preset);
    }
}

/// The Evaluate panel's choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    pub queries_path: String,
    pub limit: usize,
    pub bm25: bool,
    pub dense: bool,
    pub self_retrieval: bool,
    /// BM25's top passage answered by the loaded model.
    #[serde(default)]
    pub reader: bool,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            queries_path: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("corpora/ir_history.queries.jsonl")
                .display()
                .to_string(),
            limit: 50,
            bm25: true,
            dense: false,
            self_retrieval: true,
            reader: false,
        }
    }
}

impl Default for Project {
    fn default() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut project = Project {
            name: "demo".into(),
            corpus_path: root.join("corpora/ir_history.jsonl").display().to_string(),
            model_source: smollm2_path(),
            run_dir: root.join("runs/demo").display().to_string(),
            lora: false,
            lora_rank: 8,
            steps: 300,
            lr: 1e-3,
            batch_tokens: 2048,
            queries_path: String::new(),
            retrieve: RetrieveOptions::default(),
            panel: PanelKind::Corpus,
            query_history: Vec::new(),
            eval: EvalSettings::default(),
            mix: Default::default(),
            target_words: 0,
            epochs: 0.0,
            sentences_per_passage: 3,
            pseudo_per_passage: 0,
            preset: None,
        };
        // The demo: SmolLM2 with the quick preset, trained on the demo's queries and evaluated
        // on its dev questions (never trained on).
        project.queries_path = root
            .join("corpora/ir_history.queries.jsonl")
            .display()
            .to_string();
        project.eval.queries_path = root
            .join("corpora/ir_history.dev.jsonl")
            .display()
            .to_string();
        project.apply_preset(Preset::Quick);
        project
    }
}

/// What a panel asks for; applied after the frame's UI code.
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

/// Pseudo-queries being reviewed before they are saved as a query file.
#[derive(Debug, Clone)]
pub struct PseudoView {
    pub path: String,
    pub opts: crate::train::pseudo::PseudoOptions,
    pub items: Vec<crate::train::pseudo::PseudoQuery>,
    pub status: Option<String>,
}

impl Default for PseudoView {
    fn default() -> Self {
        PseudoView {
            path: "pseudo_queries.jsonl".into(),
            opts: crate::train::pseudo::PseudoOptions {
                max_passages: 30,
                ..Default::default()
            },
            items: Vec::new(),
            status: None,
        }
    }
}

/// Training progress gathered from worker events.
#[derive(Debug, Clone, Default)]
pub struct TrainView {
    pub losses: Vec<(Task, usize, f64)>,
    /// Held-out losses: (task name, step, loss).
    pub eval_losses: Vec<(String, usize, f64)>,
    /// Plot losses on a log10 axis.
    pub log_scale: bool,
    pub lr: Vec<[f64; 2]>,
    /// Tokens per second by step.
    pub speed: Vec<[f64; 2]>,
    /// Seconds left by step.
    pub eta: Vec<[f64; 2]>,
    /// Retrieval metrics on held-out queries: (name, step, value).
    pub eval_metrics: Vec<(String, usize, f64)>,
    pub last: Option<TrainEvent>,
    pub total_steps: usize,
    pub checkpoints: Vec<String>,
    pub running: bool,
    pub paused: bool,
}

/// The application state.
pub struct SelfretApp {
    pub project: Project,
    worker: Worker,
    pub corpus: Option<Arc<Corpus>>,
    pub session_info: Option<String>,
    /// Details of the loaded model (parameters, trie size).
    pub session: Option<crate::worker::SessionInfo>,
    pub busy: Option<String>,
    pub error: Option<String>,
    pub train: TrainView,
    pub trace: Option<RetrievalTrace>,
    pub trace_done: bool,
    pub query_text: String,
    pub corpus_filter: String,
    pub corpus_page: usize,
    /// Passage indices matching the corpus filter: (filter, corpus size, matches).
    pub corpus_matches: Option<(String, usize, Vec<usize>)>,
    pub selected_passage: Option<String>,
    pub project_file: String,
    pub eval_progress: Option<(String, usize, usize)>,
    /// Score table sort: (column, descending).
    pub score_sort: (usize, bool),
    pub export_path: String,
    pub export_status: Option<String>,
    pub eval_results: Vec<crate::eval::SystemResult>,
    pub dialogs: Dialogs,
    pub pseudo: PseudoView,
    pub titles_status: Option<String>,
    /// Documents of the loaded corpus whose title only stands in (counted once per load).
    pub untitled: usize,
    /// Progress of other jobs: (label, done, total).
    pub progress: Option<(String, usize, usize)>,
    /// Hub download progress: (file, bytes so far, total bytes).
    pub download: Option<(String, u64, u64)>,
    ctx: egui::Context,
}

const STORAGE_KEY: &str = "selfret-project";

/// What to do right after the window opens (from `selfret gui ...`): jobs are queued in order on
/// the worker, so a run opens before the question is asked.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    pub project: Option<PathBuf>,
    pub corpus: Option<PathBuf>,
    pub run: Option<PathBuf>,
    pub ask: Option<String>,
    pub evaluate: Option<PathBuf>,
    pub panel: Option<PanelKind>,
}

impl SelfretApp {
    /// Creates the app, reopening the last project when one was saved.
    pub fn new(cc: &eframe::CreationContext<'_>) -> Self {
        Self::with_startup(cc, Startup::default())
    }

    /// Creates the app and performs the startup actions.
    pub fn with_startup(cc: &eframe::CreationContext<'_>, startup: Startup) -> Self {
        let project = cc
            .storage
            .and_then(|s| eframe::get_value::<Project>(s, STORAGE_KEY))
            .unwrap_or_default();
        let ctx = cc.egui_ctx.clone();
        let worker = Worker::spawn(Box::new(move || ctx.request_repaint()));
        let mut app = SelfretApp {
            project,
            worker,
            corpus: None,
            session_info: None,
            session: None,
            busy: None,
            error: None,
            train: TrainView::default(),
            trace: None,
            trace_done: false,
            query_text: String::new(),
            corpus_filter: String::new(),
            corpus_page: 0,
            corpus_matches: None,
            selected_passage: None,
            project_file: String::new(),
            eval_progress: None,
            score_sort: (0, false),
            export_path: "trace.json".into(),
            export_status: None,
            eval_results: Vec::new(),
            dialogs: Dialogs::default(),
            pseudo: PseudoView::default(),
            titles_status: None,
            untitled: 0,
            progress: None,
            download: None,
            ctx: cc.egui_ctx.clone(),
        };
        if let Some(p) = &startup.project {
            app.project_file = p.display().to_string();
            app.apply(AppCommand::OpenProject(p.clone()));
        } else {
            if let Some(c) = &startup.corpus {
                app.project.corpus_path = c.display().to_string();
            }
            app.apply(AppCommand::LoadCorpus);
        }
        if let Some(r) = &startup.run {
            app.project.run_dir = r.display().to_string();
            app.apply(AppCommand::OpenRun);
        }
        if let Some(q) = &startup.ask {
            app.query_text = q.clone();
            app.apply(AppCommand::Query(q.clone()));
        }
        if let Some(e) = &startup.evaluate {
            app.project.eval.queries_path = e.display().to_string();
            app.apply(AppCommand::RunEval);
        }
        if let Some(p) = startup.panel {
            app.project.panel = p;
        }
        app
    }

    /// True while a background job runs.
    pub fn is_busy(&self) -> bool {
        self.busy.is_some()
    }

    fn poll(&mut self) {
        for (field, path) in self.dialogs.poll() {
            self.on_path_chosen(field, path);
        }
        for ev in self.worker.poll() {
            match ev {
                Event::Started(label) => {
                    self.busy = Some(label);
                    self.error = None;
                }
                Event::CorpusLoaded(c) => {
                    self.untitled = c.untitled().len();
                    self.corpus = Some(c);
                    self.corpus_matches = None;
                    self.corpus_page = 0;
                }
                Event::Train(e) => self.on_train_event(e),
                Event::SessionReady(info) => {
                    self.session_info = Some(info.description.clone());
                    self.session = Some(info);
                }
                Event::Trace { trace, done } => {
                    self.trace = Some(trace);
                    self.trace_done = done;
                }
                Event::EvalProgress {
                    system,
                    done,
                    total,
                } => self.eval_progress = Some((system, done, total)),
                Event::EvalDone(results) => {
                    self.eval_results = results;
                    self.eval_progress = None;
                }
                Event::Progress { label, done, total } => {
                    self.progress = Some((label, done, total))
                }
                Event::PseudoQueries(items) => {
                    let kept = items.iter().filter(|q| q.keep).count();
                    self.pseudo.status = Some(format!(
                        "{} questions written, {kept} kept (found again by retrieval)",
                        items.len()
                    ));
                    self.pseudo.items = items;
                }
                Event::TitledCorpus { path, generated } => {
                    self.project.corpus_path = path.display().to_string();
                    self.titles_status = Some(format!(
                        "{generated} titles written by the model; corpus saved to {}",
                        path.display()
                    ));
                    self.apply(AppCommand::LoadCorpus);
                }
                Event::TrainHistory(events) => {
                    self.train = TrainView {
                        log_scale: self.train.log_scale,
                        ..Default::default()
                    };
                    for e in events {
                        self.on_train_event(e);
                    }
                    self.train.running = false;
                }
                Event::Download { file, done, total } => self.download = Some((file, done, total)),
                Event::Error(e) => self.error = Some(e),
                Event::Finished => {
                    self.download = None;
                    self.progress = None;
                    self.busy = None;
                    self.train.running = false;
                    self.train.paused = false;
                }
            }
        }
    }

    fn on_path_chosen(&mut self, field: PathField, path: PathBuf) {
        let text = path.display().to_string();
        match field {
            PathField::CorpusFile | PathField::CorpusFolder => {
                self.project.corpus_path = text;
                self.apply(AppCommand::LoadCorpus);
            }
            PathField::ModelFile | PathField::ModelFolder => self.project.model_source = text,
            PathField::QueriesFile => self.project.queries_path = text,
            PathField::RunDir => self.project.run_dir = text,
            PathField::EvalQueries => self.project.eval.queries_path = text,
            PathField::OpenProject => {
                self.project_file = text;
                self.apply(AppCommand::OpenProject(path));
            }
            PathField::SaveProject => {
                self.project_file = text;
                self.apply(AppCommand::SaveProject(path));
            }
            PathField::ExportTrace => self.export_path = text,
            PathField::PseudoQueries => self.pseudo.path = text,
        }
    }

    /// The path currently typed in `field` (where its dialog starts).
    fn field_text(&self, field: PathField) -> &str {
        match field {
            PathField::CorpusFile | PathField::CorpusFolder => &self.project.corpus_path,
            PathField::ModelFile | PathField::ModelFolder => &self.project.model_source,
            PathField::QueriesFile => &self.project.queries_path,
            PathField::RunDir => &self.project.run_dir,
            PathField::EvalQueries => &self.project.eval.queries_path,
            PathField::OpenProject | PathField::SaveProject => &self.project_file,
            PathField::ExportTrace => &self.export_path,
            PathField::PseudoQueries => &self.pseudo.path,
        }
    }

    fn on_train_event(&mut self, e: TrainEvent) {
        match &e {
            TrainEvent::Started { total_steps, .. } => {
                self.train.total_steps = *total_steps;
                self.train.running = true;
            }
            TrainEvent::Step {
                step,
                task,
                loss,
                lr,
                tokens_per_s,
                eta_s,
                ..
            } => {
                self.train.losses.push((*task, *step, *loss));
                self.train.lr.push([*step as f64, *lr]);
                self.train.speed.push([*step as f64, *tokens_per_s]);
                self.train.eta.push([*step as f64, *eta_s]);
            }
            TrainEvent::Checkpoint { step, path } => self
                .train
                .checkpoints
                .push(format!("step {step}: {}", path.display())),
            TrainEvent::Eval {
                step,
                losses,
                metrics,
            } => {
                for (k, v) in losses {
                    self.train.eval_losses.push((k.clone(), *step, *v));
                }
                for (k, v) in metrics {
                    self.train.eval_metrics.push((k.clone(), *step, *v));
                }
            }
            TrainEvent::Finished { .. } => self.train.running = false,
            TrainEvent::Preparing { .. } => self.train.running = true,
        }
        self.train.last = Some(e);
    }

    fn spec(&self) -> Result<IndexSpec, String> {
        let source: ModelSource = self.project.model_source.parse()?;
        let mut spec = IndexSpec::new(PathBuf::from(&self.project.corpus_path), source);
        spec.lora = self.project.lora.then(|| crate::model::LoraConfig {
            rank: self.project.lora_rank,
            alpha: 2.0 * self.project.lora_rank as f64,
            ..Default::default()
        });
        spec.train.steps = self.project.steps;
        spec.train.epochs = (self.project.epochs > 0.0).then_some(self.project.epochs);
        spec.train.mix = self.project.mix;
        spec.data.target = match self.project.target_words {
            0 => crate::train::data::TargetLength::Full,
            n => crate::train::data::TargetLength::FirstWords(n),
        };
        spec.train.lr = self.project.lr;
        spec.train.batch_tokens = self.project.batch_tokens;
        spec.data.sentences_per_passage = self.project.sentences_per_passage;
        spec.pseudo = match self.project.pseudo_per_passage {
            0 => None,
            n => Some(crate::train::pseudo::PseudoOptions {
                per_passage: n,
                ..Default::default()
            }),
        };
        spec.train.checkpoint_every = 50;
        spec.train.eval_every = 25;
        if !self.project.queries_path.trim().is_empty() {
            spec.queries = Some(PathBuf::from(self.project.queries_path.trim()));
        }
        Ok(spec)
    }

    /// Applies one command (from a panel, a test or the menu).
    pub fn apply(&mut self, cmd: AppCommand) {
        match cmd {
            AppCommand::LoadCorpus => {
                let path = PathBuf::from(self.project.corpus_path.trim());
                self.worker
                    .submit(Job::LoadCorpus(path, Default::default()));
                self.busy = Some("loading corpus".into());
            }
            AppCommand::StartTraining { resume } => match self.spec() {
                Ok(spec) => {
                    if !resume {
                        self.train = TrainView::default();
                    }
                    self.train.running = true;
                    self.busy = Some("training".into());
                    self.worker.submit(Job::Index {
                        spec: Box::new(spec),
                        run: PathBuf::from(self.project.run_dir.trim()),
                        resume,
                    });
                }
                Err(e) => self.error = Some(e),
            },
            AppCommand::Control(c) => {
                match c {
                    Control::Pause => self.train.paused = true,
                    Control::Resume => self.train.paused = false,
                    _ => {}
                }
                self.worker.control(c);
            }
            AppCommand::OpenRun => {
                self.busy = Some("opening run".into());
                self.worker
                    .submit(Job::OpenRun(PathBuf::from(self.project.run_dir.trim())));
            }
            AppCommand::OpenUntrained => match self.project.model_source.parse::<ModelSource>() {
                Ok(source) => {
                    self.busy = Some("loading model".into());
                    self.worker.submit(Job::OpenUntrained {
                        source,
                        corpus: PathBuf::from(self.project.corpus_path.trim()),
                    });
                }
                Err(e) => self.error = Some(e),
            },
            AppCommand::Query(q) => {
                let q = q.trim().to_string();
                if q.is_empty() {
                    return;
                }
                self.project.query_history.retain(|h| h != &q);
                self.project.query_history.insert(0, q.clone());
                self.project.query_history.truncate(20);
                self.trace = None;
                self.busy = Some("query".into());
                self.worker.submit(Job::Query {
                    text: q,
                    opts: self.project.retrieve.clone(),
                });
            }
            AppCommand::ShowPassage(id) => {
                self.selected_passage = Some(id.clone());
                self.corpus_filter = id;
                self.corpus_page = 0;
                self.project.panel = PanelKind::Corpus;
            }
            AppCommand::SwitchPanel(p) => self.project.panel = p,
            AppCommand::RunEval => {
                let e = &self.project.eval;
                let mut baselines = Vec::new();
                if e.bm25 {
                    baselines.push("bm25".to_string());
                }
                if e.dense {
                    baselines.push("dense".to_string());
                }
                if e.reader && self.session.is_some() {
                    baselines.push("bm25+reader".to_string());
                }
                let plan = crate::eval::run::EvalPlan {
                    baselines,
                    retrieve: self.project.retrieve.clone(),
                    dense_model: crate::eval::dense::default_dir(),
                };
                self.eval_results.clear();
                self.busy = Some("evaluating".into());
                self.worker.submit(Job::Eval {
                    queries: PathBuf::from(e.queries_path.trim()),
                    corpus: PathBuf::from(self.project.corpus_path.trim()),
                    limit: (e.limit > 0).then_some(e.limit),
                    plan,
                    self_retrieval: e.self_retrieval,
                });
            }
            AppCommand::AskQuestion(q) => {
                self.query_text = q.clone();
                self.project.panel = PanelKind::Query;
                self.apply(AppCommand::Query(q));
            }
            AppCommand::SaveProject(path) => {
                let text = ron::ser::to_string_pretty(&self.project, Default::default())
                    .unwrap_or_default();
                if let Err(e) = crate::model::checkpoint::write_atomic(&path, text.as_bytes()) {
                    self.error = Some(e.to_string());
                }
            }
            AppCommand::OpenProject(path) => match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    ron::from_str::<Project>(&t).map_err(|e| format!("{}: {e}", path.display()))
                }) {
                Ok(p) => {
                    self.project = p;
                    self.apply(AppCommand::LoadCorpus);
                }
                Err(e) => self.error = Some(e),
            },
            AppCommand::GeneratePseudoQueries => {
                self.busy = Some("writing pseudo-queries".into());
                self.pseudo.items.clear();
                self.pseudo.status = None;
                self.worker
                    .submit(Job::PseudoQueries(self.pseudo.opts.clone()));
            }
            AppCommand::SavePseudoQueries => {
                let path = PathBuf::from(self.pseudo.path.trim());
                match crate::train::pseudo::save_pseudo_queries(&path, &self.pseudo.items) {
                    Ok(n) => {
                        self.project.queries_path = path.display().to_string();
                        self.pseudo.status = Some(format!(
                            "saved {n} questions to {}; training will use them",
                            path.display()
                        ));
                    }
                    Err(e) => self.error = Some(e.to_string()),
                }
            }
            AppCommand::GenerateTitles => {
                let src = PathBuf::from(self.project.corpus_path.trim());
                let stem = src
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_else(|| "corpus".into());
                let out = src
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join(format!("{stem}.titled.jsonl"));
                self.busy = Some("writing titles".into());
                self.worker.submit(Job::GenerateTitles(out));
            }
            AppCommand::Browse(field) => {
                let start = dialogs::start_dir(self.field_text(field));
                self.dialogs.request(field, start, &self.ctx);
            }
            AppCommand::DismissError => self.error = None,
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui, cmds: &mut Vec<AppCommand>) {
        ui.horizontal(|ui| {
            ui.heading("selfret");
            ui.separator();
            ui.label(format!("project: {}", self.project.name));
            ui.separator();
            ui.label(format!(
                "model: {}",
                self.session_info.as_deref().unwrap_or("none loaded")
            ));
            ui.separator();
            ui.label(format!(
                "device: {}",
                crate::model::device_name(&crate::model::default_device())
            ));
            ui.separator();
            match &self.busy {
                Some(label) => {
                    let frac = match &self.train.last {
                        _ if self.progress.is_some() => self
                            .progress
                            .as_ref()
                            .map(|(_, d, t)| *d as f32 / (*t).max(1) as f32)
                            .unwrap_or(0.0),
                        _ if self.download.is_some() => self
                            .download
                            .as_ref()
                            .map(|(_, d, t)| *d as f32 / (*t).max(1) as f32)
                            .unwrap_or(0.0),
                        Some(TrainEvent::Step { step, .. })
                            if self.train.running && self.train.total_steps > 0 =>
                        {
                            *step as f32 / self.train.total_steps as f32
                        }
                        _ => 0.0,
                    };
                    // A paused run says so (its progress and ETA stand still).
                    let text = if self.train.paused && self.train.running {
                        format!("{label}: paused")
                    } else {
                        label.clone()
                    };
                    ui.add(egui::ProgressBar::new(frac).desired_width(160.0).text(text));
                    if ui.button("Cancel").clicked() {
                        cmds.push(AppCommand::Control(Control::Cancel));
                    }
                }
                None => {
                    ui.label("idle");
                }
            }
        });
        if let Some(e) = &self.error {
            ui.horizontal(|ui| {
                ui.colored_label(egui::Color32::from_rgb(200, 60, 60), format!("error: {e}"));
                if ui.small_button("Dismiss").clicked() {
                    cmds.push(AppCommand::DismissError);
                }
            });
        }
        if let Some(n) = &self.dialogs.notice {
            ui.weak(n.as_str());
        }
    }
}

impl eframe::App for SelfretApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.poll();
        if self.is_busy() {
            // Keep the progress display fresh without a busy loop (workers also request repaints).
            ctx.request_repaint_after(std::time::Duration::from_millis(250));
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let mut cmds = Vec::new();
        egui::Panel::top("top").show(ui, |ui| self.top_bar(ui, &mut cmds));
        egui::Panel::left("panels")
            .resizable(false)
            .default_size(120.0)
            .show(ui, |ui| {
                ui.add_space(6.0);
                for p in PanelKind::ALL {
                    if ui
                        .selectable_label(self.project.panel == p, p.label())
                        .clicked()
                    {
                        cmds.push(AppCommand::SwitchPanel(p));
                    }
                }
                ui.separator();
                let l = ui.label("Project file");
                ui.add(
                    egui::TextEdit::singleline(&mut self.project_file)
                        .hint_text("project.ron")
                        .desired_width(110.0),
                )
                .labelled_by(l.id);
                ui.horizontal(|ui| {
                    if ui.button("Save").clicked() && !self.project_file.is_empty() {
                        cmds.push(AppCommand::SaveProject(PathBuf::from(&self.project_file)));
                    }
                    if ui.button("Open").clicked() && !self.project_file.is_empty() {
                        cmds.push(AppCommand::OpenProject(PathBuf::from(&self.project_file)));
                    }
                });
                for field in [PathField::OpenProject, PathField::SaveProject] {
                    if dialogs::browse_button(ui, field, &self.dialogs) {
                        cmds.push(AppCommand::Browse(field));
                    }
                }
            });
        egui::CentralPanel::default().show(ui, |ui| match self.project.panel {
            PanelKind::Corpus => corpus_panel::show(self, ui, &mut cmds),
            PanelKind::Model => model_panel::show(self, ui, &mut cmds),
            PanelKind::Train => train_panel::show(self, ui, &mut cmds),
            PanelKind::Query => query_panel::show(self, ui, &mut cmds),
            PanelKind::Evaluate => evaluate_panel::show(self, ui, &mut cmds),
        });
        let dropped: Vec<PathBuf> = ui.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if let Some(p) = dropped.into_iter().next() {
            self.project.corpus_path = p.display().to_string();
            cmds.push(AppCommand::LoadCorpus);
        }
        for c in cmds {
            self.apply(c);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.project);
    }
}

/// The window icon (assets/icon.png, drawn by scripts/make-icon.py), built into the binary.
const ICON_PNG: &[u8] = include_bytes!("../../assets/icon.png");

/// The window icon, decoded; `None` (the platform's default icon) if it would not decode.
pub fn window_icon() -> Option<egui::IconData> {
    eframe::icon_data::from_png_bytes(ICON_PNG).ok()
}

/// Opens the window.
pub fn run(startup: Startup) -> anyhow::Result<()> {
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("selfret")
        .with_app_id("selfret")
        .with_inner_size([1280.0, 800.0])
        .with_min_inner_size([700.0, 450.0]);
    if let Some(icon) = window_icon() {
        viewport = viewport.with_icon(icon);
    }
    let opts = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    eframe::run_native(
        "selfret",
        opts,
        Box::new(move |cc| Ok(Box::new(SelfretApp::with_startup(cc, startup)))),
    )
    .map_err(|e| {
        anyhow::anyhow!("cannot open the window: {e} (no display? use the CLI: selfret --help)")
    })
}
