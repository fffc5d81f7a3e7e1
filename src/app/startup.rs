//! Opening the window: the app is built from the last saved project, then the actions asked on
//! the command line (`selfret gui --run ... --ask ...`) run as ordinary commands.

use super::dialogs::Dialogs;
use super::panels::Panels;
use super::state::STORAGE_KEY;
use super::{AppCommand, PanelKind, Project, SelfretApp, Shared};
use crate::worker::Worker;
use std::path::PathBuf;

/// What to do right after the window opens (from `selfret gui ...`): jobs are queued in order on
/// the worker, so a run opens before the question is asked.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    pub project: Option<PathBuf>,
    pub corpus: Option<PathBuf>,
    pub run: Option<PathBuf>,
    pub ask: Option<String>,
    /// With `ask`: score this passage for the question once it is answered.
    pub explain: Option<String>,
    /// With `ask`: show BM25's ranking beside the model's.
    pub compare_bm25: bool,
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
            shared: Shared {
                project,
                corpus: None,
                session_info: None,
                session: None,
                busy: None,
                errors: Default::default(),
                untitled: 0,
                progress: None,
                download: None,
                trained: false,
                loaded_run: None,
            },
            panels: Panels::default(),
            project_file: String::new(),
            dialogs: Dialogs::default(),
            jobs: Default::default(),
            worker,
            ctx: cc.egui_ctx.clone(),
            confirm_demo: false,
        };
        if let Some(p) = &startup.project {
            app.project_file = p.display().to_string();
            app.apply(AppCommand::OpenProject(p.clone()));
        } else {
            if let Some(c) = &startup.corpus {
                app.shared.project.corpus_path = c.display().to_string();
            }
            app.apply(AppCommand::LoadCorpus);
        }
        if let Some(r) = &startup.run {
            app.shared.project.run_dir = r.display().to_string();
            app.apply(AppCommand::OpenRun);
        }
        if let Some(q) = &startup.ask {
            app.panels.query.show_bm25 = startup.compare_bm25;
            app.panels.query.pending_explain = startup.explain.clone();
            app.panels.query.query_text = q.clone();
            app.apply(AppCommand::Query(q.clone()));
        }
        if let Some(e) = &startup.evaluate {
            app.shared.project.eval.queries_path = e.display().to_string();
            app.apply(AppCommand::RunEval);
        }
        if let Some(p) = startup.panel {
            app.shared.project.panel = p;
        }
        app
    }
}
