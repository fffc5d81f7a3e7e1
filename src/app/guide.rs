//! The getting-started strip above every panel: the order of work (1 Corpus -> 2 Model -> 3 Train
//! -> 4 Query -> 5 Evaluate), each step ticked once done, and the demo's one-click path. A new
//! user sees what to do next; anyone can hide it (the choice is saved with the project).

use super::{AppCommand, PanelKind, SelfretApp};

/// Shown before a finished step's name.
pub const TICK: &str = "\u{221a}";

/// One step of the guide: the panel where it is done and whether it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuideStep {
    pub panel: PanelKind,
    pub done: bool,
}

impl GuideStep {
    /// The step's button text: its number and panel, ticked when done ("√ 1 Corpus").
    pub fn label(self, number: usize) -> String {
        let name = self.panel.label();
        if self.done {
            format!("{TICK} {number} {name}")
        } else {
            format!("{number} {name}")
        }
    }

    /// What to do in this step, for the line after the steps.
    fn todo(self) -> &'static str {
        match self.panel {
            PanelKind::Corpus => "load a collection (the demo corpus loads by itself)",
            PanelKind::Model => "choose the model to train (SmolLM2-135M by default)",
            PanelKind::Train => "train it on the corpus, or open a trained run",
            PanelKind::Query => "ask a question and inspect how the model ranked the passages",
            PanelKind::Evaluate => {
                "measure it against BM25 and dense retrieval on held-out questions"
            }
        }
    }
}

impl SelfretApp {
    /// The five steps and whether each is done, from what the app holds now.
    pub fn guide_steps(&self) -> [GuideStep; 5] {
        let s = &self.shared;
        let model_chosen = s.session.is_some()
            || match s.project.model_source.parse::<crate::model::ModelSource>() {
                Ok(
                    crate::model::ModelSource::Gguf(path)
                    | crate::model::ModelSource::HfFolder(path),
                ) => path.exists(),
                Ok(_) => true,
                Err(_) => false,
            };
        let step = |panel, done| GuideStep { panel, done };
        [
            step(PanelKind::Corpus, s.corpus.is_some()),
            step(PanelKind::Model, model_chosen),
            step(PanelKind::Train, s.trained),
            step(PanelKind::Query, self.panels.query.trace.is_some()),
            step(
                PanelKind::Evaluate,
                !self.panels.evaluate.results.is_empty(),
            ),
        ]
    }

    /// Draws the strip (unless hidden): the steps as buttons to their panels, the next step in
    /// words, the demo's one-click start, and Hide.
    pub(super) fn guide(&mut self, ui: &mut egui::Ui, cmds: &mut Vec<AppCommand>) {
        if self.shared.project.guide_hidden {
            return;
        }
        let steps = self.guide_steps();
        ui.horizontal_wrapped(|ui| {
            ui.strong("Getting started:");
            for (k, step) in steps.iter().enumerate() {
                if k > 0 {
                    ui.weak("->");
                }
                let current = self.shared.project.panel == step.panel;
                if ui
                    .selectable_label(current, step.label(k + 1))
                    .on_hover_text(step.todo())
                    .clicked()
                {
                    cmds.push(AppCommand::SwitchPanel(step.panel));
                }
            }
            ui.separator();
            let demo = ui
                .add_enabled(
                    !self.shared.is_busy(),
                    egui::Button::new("Train the demo (SmolLM2, quick preset)"),
                )
                .on_hover_text(
                    "Loads the demo corpus, picks SmolLM2-135M with the quick preset and the demo's \
                     training questions, and starts training (about 13 minutes on a 2-core CPU)",
                );
            if demo.clicked() {
                if self.is_demo_project() {
                    cmds.push(AppCommand::TrainDemo);
                } else {
                    self.confirm_demo = true;
                }
            }
            let trained_demo = demo_run();
            if super::panels::holds_checkpoint(&trained_demo)
                && self.shared.loaded_run.as_deref() != Some(trained_demo.as_path())
                && ui
                    .add_enabled(!self.shared.is_busy(), egui::Button::new("Open the trained demo"))
                    .on_hover_text(format!(
                        "Opens the demo run already trained in {}",
                        trained_demo.display()
                    ))
                    .clicked()
            {
                cmds.push(AppCommand::OpenDemo);
            }
            if ui
                .small_button("Hide guide")
                .on_hover_text("The guide can be shown again from the side bar")
                .clicked()
            {
                self.shared.project.guide_hidden = true;
            }
        });
        self.demo_dialog(ui.ctx(), cmds);
        match steps.iter().position(|s| !s.done) {
            Some(k) => ui.weak(format!("Next: {} {}", k + 1, steps[k].todo())),
            None => ui.weak("Every step done: try other questions, weights or corpora."),
        };
        ui.separator();
    }
}

/// Where the demo's first run is trained (later ones go beside it, `demo-2`, ...).
pub fn demo_run() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("runs/demo")
}

impl SelfretApp {
    /// The project already trains the demo: its corpus, model and questions are the demo's.
    fn is_demo_project(&self) -> bool {
        let demo = super::Project::default();
        let p = &self.shared.project;
        p.corpus_path == demo.corpus_path
            && p.model_source == demo.model_source
            && p.queries_path == demo.queries_path
    }

    /// Asks before the demo's settings replace a project the user set up.
    fn demo_dialog(&mut self, ctx: &egui::Context, cmds: &mut Vec<AppCommand>) {
        if !self.confirm_demo {
            return;
        }
        egui::Window::new("Train the demo?")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
            .show(ctx, |ui| {
                ui.label(
                    "This replaces the project's corpus, model, question files and training \
                     settings with the demo's. To keep them, save the project first (side bar).",
                );
                ui.horizontal(|ui| {
                    if ui.button("Replace and train").clicked() {
                        cmds.push(AppCommand::TrainDemo);
                        self.confirm_demo = false;
                    }
                    if ui.button("Cancel").clicked() {
                        self.confirm_demo = false;
                    }
                });
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_step_is_ticked() {
        let open = GuideStep {
            panel: PanelKind::Train,
            done: false,
        };
        assert_eq!(open.label(3), "3 Train");
        let done = GuideStep { done: true, ..open };
        assert_eq!(done.label(3), format!("{TICK} 3 Train"));
    }
}
