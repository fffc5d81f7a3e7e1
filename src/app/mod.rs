//! The desktop app (eframe/egui), laid out like egui_demo_app: [`SelfretApp`] holds the
//! [`Shared`] state (the persisted [`Project`] and what the worker loaded), the [`Panels`] (each
//! owning its view state), the file dialogs and the background [`Worker`].
//!
//! Each frame: `logic` takes in worker events (`events.rs`); `ui` draws the bars (`bars.rs`) and
//! the current panel (`panels/`), which return [`AppCommand`]s; `apply` (`commands.rs`) then
//! runs them, the only place jobs are submitted. `state.rs` has the saved form, `startup.rs`
//! the command-line start.

mod bars;
mod commands;
pub mod dialogs;
mod errors;
mod events;
mod guide;
mod panels;
mod startup;
mod state;

pub use commands::{AppCommand, JobKind};
pub use errors::{ErrorPlace, Errors};
pub use guide::{GuideStep, TICK};
pub use panels::{
    CorpusPanel, EvaluatePanel, ModelPanel, Panels, PseudoView, QueryPanel, TrainPanel, TrainView,
};
pub use startup::Startup;
pub use state::{smollm2_path, EvalSettings, PanelKind, Project, Shared};

use crate::worker::Worker;
use dialogs::Dialogs;
use std::path::PathBuf;

/// The application: shared state, the panels' own state, and what talks to the outside.
pub struct SelfretApp {
    pub shared: Shared,
    pub panels: Panels,
    /// The left panel's project-file box.
    pub project_file: String,
    pub dialogs: Dialogs,
    /// The jobs submitted to the worker and not finished yet, oldest (the running one) first:
    /// an error the worker reports belongs to the front one.
    jobs: std::collections::VecDeque<JobKind>,
    worker: Worker,
    ctx: egui::Context,
    /// The guide's "Train the demo" asks before replacing the project's settings.
    confirm_demo: bool,
}

impl SelfretApp {
    /// True while a background job runs.
    pub fn is_busy(&self) -> bool {
        self.shared.is_busy()
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
            .show(ui, |ui| self.side_panel(ui, &mut cmds));
        egui::CentralPanel::default().show(ui, |ui| {
            self.guide(ui, &mut cmds);
            let kind = self.shared.project.panel;
            self.panels
                .ui(kind, &mut self.shared, &self.dialogs, ui, &mut cmds)
        });
        let dropped: Vec<PathBuf> = ui.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if let Some(p) = dropped.into_iter().next() {
            self.shared.project.corpus_path = p.display().to_string();
            cmds.push(AppCommand::LoadCorpus);
        }
        for c in cmds {
            self.apply(c);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, state::STORAGE_KEY, &self.shared.project);
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
