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
                cmds.push(AppCommand::TrainDemo);
            }
            if ui
                .small_button("Hide guide")
                .on_hover_text("The guide can be shown again from the side bar")
                .clicked()
            {
                self.shared.project.guide_hidden = true;
            }
        });
        match steps.iter().position(|s| !s.done) {
            Some(k) => ui.weak(format!("Next: {} {}", k + 1, steps[k].todo())),
            None => ui.weak("Every step done: try other questions, weights or corpora."),
        };
        ui.separator();
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
