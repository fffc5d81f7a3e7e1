//! Native file dialogs (rfd) run on their own thread so the window keeps drawing while one is
//! open. Where no dialog service exists (a bare X server, no desktop portal) the dialog returns
//! nothing at once; the path fields stay editable by hand, and the app says so.

use crossbeam_channel::{unbounded, Receiver, Sender};
use std::path::PathBuf;

/// Which path a dialog fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathField {
    CorpusFile,
    CorpusFolder,
    ModelFile,
    ModelFolder,
    QueriesFile,
    RunDir,
    /// The stage-1 docid run a stage-2 run continues.
    Stage1Run,
    EvalQueries,
    OpenProject,
    SaveProject,
    ExportTrace,
    PseudoQueries,
}

impl PathField {
    /// Button label (unique per field so tests and screen readers can find it).
    pub fn button_label(self) -> &'static str {
        match self {
            PathField::CorpusFile => "Browse corpus file",
            PathField::CorpusFolder => "Browse corpus folder",
            PathField::ModelFile => "Browse GGUF file",
            PathField::ModelFolder => "Browse model folder",
            PathField::QueriesFile => "Browse query file",
            PathField::RunDir => "Browse run directory",
            PathField::Stage1Run => "Browse stage-1 run",
            PathField::EvalQueries => "Browse evaluation queries",
            PathField::OpenProject => "Open project...",
            PathField::SaveProject => "Save project as...",
            PathField::ExportTrace => "Browse export file",
            PathField::PseudoQueries => "Browse pseudo-query file",
        }
    }

    fn dialog(self, start: Option<PathBuf>) -> rfd::FileDialog {
        let mut d = rfd::FileDialog::new().set_title(self.button_label());
        if let Some(dir) = start.filter(|p| p.is_dir()) {
            d = d.set_directory(dir);
        }
        match self {
            PathField::CorpusFile => d.add_filter("JSONL corpus", &["jsonl", "json"]),
            PathField::ModelFile => d.add_filter("GGUF model", &["gguf"]),
            PathField::QueriesFile | PathField::EvalQueries | PathField::PseudoQueries => {
                d.add_filter("JSONL queries", &["jsonl"])
            }
            PathField::OpenProject | PathField::SaveProject => {
                d.add_filter("selfret project", &["ron"])
            }
            PathField::ExportTrace => d.add_filter("JSON", &["json"]),
            _ => d,
        }
    }

    fn picks_folder(self) -> bool {
        matches!(
            self,
            PathField::CorpusFolder
                | PathField::ModelFolder
                | PathField::RunDir
                | PathField::Stage1Run
        )
    }

    fn saves(self) -> bool {
        matches!(
            self,
            PathField::SaveProject | PathField::ExportTrace | PathField::PseudoQueries
        )
    }
}

/// Open dialogs and their answers.
pub struct Dialogs {
    tx: Sender<(PathField, Option<PathBuf>)>,
    rx: Receiver<(PathField, Option<PathBuf>)>,
    /// The field whose dialog is open (one at a time).
    pub open: Option<PathField>,
    /// Said after a dialog returned nothing.
    pub notice: Option<String>,
}

impl Default for Dialogs {
    fn default() -> Self {
        let (tx, rx) = unbounded();
        Dialogs {
            tx,
            rx,
            open: None,
            notice: None,
        }
    }
}

impl Dialogs {
    /// Opens the dialog for `field` on a helper thread, starting in `start`'s folder.
    pub fn request(&mut self, field: PathField, start: Option<PathBuf>, ctx: &egui::Context) {
        if self.open.is_some() {
            return;
        }
        self.open = Some(field);
        self.notice = None;
        let tx = self.tx.clone();
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("selfret-dialog".into())
            .spawn(move || {
                let d = field.dialog(start);
                let picked = if field.picks_folder() {
                    d.pick_folder()
                } else if field.saves() {
                    d.save_file()
                } else {
                    d.pick_file()
                };
                let _ = tx.send((field, picked));
                ctx.request_repaint();
            });
        if spawned.is_err() {
            self.open = None;
            self.notice = Some("cannot open a file dialog: type the path instead".into());
        }
    }

    /// Answers of dialogs that closed since the last call.
    pub fn poll(&mut self) -> Vec<(PathField, PathBuf)> {
        let mut out = Vec::new();
        for (field, picked) in self.rx.try_iter() {
            self.open = None;
            match picked {
                Some(p) => out.push((field, p)),
                None => {
                    self.notice = Some(
                        "no path chosen (dialog cancelled, or no file-dialog service on this \
                         desktop): type the path in the field instead"
                            .into(),
                    )
                }
            }
        }
        out
    }
}

/// A "Browse" button for `field`; returns true when clicked.
pub fn browse_button(ui: &mut egui::Ui, field: PathField, dialogs: &Dialogs) -> bool {
    ui.add_enabled(
        dialogs.open.is_none(),
        egui::Button::new(field.button_label()),
    )
    .clicked()
}

/// The folder a dialog should start in for the path typed so far.
pub fn start_dir(typed: &str) -> Option<PathBuf> {
    let p = PathBuf::from(typed.trim());
    if typed.trim().is_empty() {
        return std::env::current_dir().ok();
    }
    if p.is_dir() {
        Some(p)
    } else {
        p.parent().map(PathBuf::from)
    }
}

/// A labelled path text field followed by one Browse button per field kind.
pub fn path_row(
    ui: &mut egui::Ui,
    label: &str,
    text: &mut String,
    hint: &str,
    fields: &[PathField],
    dialogs: &Dialogs,
    cmds: &mut Vec<super::AppCommand>,
) -> egui::Response {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        let r = ui
            .add(
                egui::TextEdit::singleline(text)
                    .hint_text(hint)
                    .desired_width(380.0),
            )
            .labelled_by(l.id);
        for &f in fields {
            if browse_button(ui, f, dialogs) {
                cmds.push(super::AppCommand::Browse(f));
            }
        }
        r
    })
    .inner
}
