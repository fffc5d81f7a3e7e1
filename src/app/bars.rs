//! The bars around the panels: the top bar (model, device, job progress) and the left panel (the
//! panel list, marking panels that hold an error, and the project-file box with its errors).

use super::dialogs::PathField;
use super::errors::error_banner;
use super::{AppCommand, ErrorPlace, PanelKind, SelfretApp};
use crate::train::TrainEvent;
use crate::worker::Control;
use std::path::PathBuf;

impl SelfretApp {
    /// The heading, the loaded model, the job's progress with Cancel, and any error.
    pub(super) fn top_bar(&self, ui: &mut egui::Ui, cmds: &mut Vec<AppCommand>) {
        ui.horizontal(|ui| {
            ui.heading("selfret");
            ui.separator();
            ui.label(format!("project: {}", self.shared.project.name));
            ui.separator();
            ui.label(format!(
                "model: {}",
                self.shared.session_info.as_deref().unwrap_or("none loaded")
            ));
            ui.separator();
            ui.label(format!(
                "device: {}",
                crate::model::device_name(&crate::model::default_device())
            ));
            ui.separator();
            match &self.shared.busy {
                Some(label) => {
                    let frac = match &self.panels.train.view.last {
                        _ if self.shared.progress.is_some() => self
                            .shared
                            .progress
                            .as_ref()
                            .map(|(_, d, t)| *d as f32 / (*t).max(1) as f32)
                            .unwrap_or(0.0),
                        _ if self.shared.download.is_some() => self
                            .shared
                            .download
                            .as_ref()
                            .map(|(_, d, t)| *d as f32 / (*t).max(1) as f32)
                            .unwrap_or(0.0),
                        Some(TrainEvent::Step { step, .. })
                            if self.panels.train.view.running
                                && self.panels.train.view.total_steps > 0 =>
                        {
                            *step as f32 / self.panels.train.view.total_steps as f32
                        }
                        _ => 0.0,
                    };
                    // A paused run says so, not "training": its progress and ETA stand still.
                    let view = &self.panels.train.view;
                    let text = if view.paused && view.running && !view.pause_taken {
                        format!("{label}: pausing after the step in flight")
                    } else if view.paused && view.running {
                        match &view.last {
                            Some(TrainEvent::Step { step, .. }) => {
                                format!("paused at step {step} of {}", view.total_steps)
                            }
                            _ => format!("{label}: paused"),
                        }
                    } else {
                        label.clone()
                    };
                    ui.add(egui::ProgressBar::new(frac).desired_width(200.0).text(text));
                    if ui.button("Cancel").clicked() {
                        cmds.push(AppCommand::Control(Control::Cancel));
                    }
                }
                None => {
                    ui.label("idle");
                }
            }
        });
        if let Some(n) = &self.dialogs.notice {
            ui.weak(n.as_str());
        }
    }

    /// The panel list (a panel holding an error is marked) and the project-file box.
    pub(super) fn side_panel(&mut self, ui: &mut egui::Ui, cmds: &mut Vec<AppCommand>) {
        ui.add_space(6.0);
        for p in PanelKind::ALL {
            ui.horizontal(|ui| {
                if ui
                    .selectable_label(self.shared.project.panel == p, p.label())
                    .clicked()
                {
                    cmds.push(AppCommand::SwitchPanel(p));
                }
                if self.shared.errors.get(ErrorPlace::Panel(p)).is_some() {
                    ui.colored_label(ui.visuals().error_fg_color, "(!)")
                        .on_hover_text(format!("The {} panel shows an error", p.label()));
                }
            });
        }
        if self.shared.project.guide_hidden && ui.small_button("Show guide").clicked() {
            self.shared.project.guide_hidden = false;
        }
        ui.separator();
        let l = ui.label("Project file");
        ui.add(
            egui::TextEdit::singleline(&mut self.project_file)
                .hint_text("project.ron")
                .desired_width(110.0),
        )
        .labelled_by(l.id);
        // One pair: each acts on the typed path, or with none typed asks for one in a dialog.
        ui.vertical(|ui| {
            let idle = self.dialogs.open.is_none();
            if ui
                .add_enabled(idle, egui::Button::new("Open project"))
                .on_hover_text("Opens the project file typed above; with none typed, asks for one")
                .clicked()
            {
                cmds.push(project_file_command(
                    &self.project_file,
                    PathField::OpenProject,
                ));
            }
            if ui
                .add_enabled(idle, egui::Button::new("Save project"))
                .on_hover_text("Saves to the project file typed above; with none typed, asks where")
                .clicked()
            {
                cmds.push(project_file_command(
                    &self.project_file,
                    PathField::SaveProject,
                ));
            }
        });
        error_banner(ui, &self.shared.errors, ErrorPlace::Project, cmds);
    }
}

/// What Open project or Save project does with the project-file box: act on the typed path, or
/// with none typed, open the file dialog (its answer then opens or saves at once; a dialog that
/// cannot open says to type the path).
fn project_file_command(typed: &str, field: PathField) -> AppCommand {
    let typed = typed.trim();
    match (typed.is_empty(), field) {
        (true, _) => AppCommand::Browse(field),
        (false, PathField::SaveProject) => AppCommand::SaveProject(PathBuf::from(typed)),
        (false, _) => AppCommand::OpenProject(PathBuf::from(typed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typed path is acted on; an empty box asks for a path instead of doing nothing.
    #[test]
    fn open_and_save_act_on_the_typed_path_or_ask_for_one() {
        assert!(matches!(
            project_file_command(" my.ron ", PathField::OpenProject),
            AppCommand::OpenProject(p) if p == std::path::Path::new("my.ron")
        ));
        assert!(matches!(
            project_file_command("my.ron", PathField::SaveProject),
            AppCommand::SaveProject(p) if p == std::path::Path::new("my.ron")
        ));
        for field in [PathField::OpenProject, PathField::SaveProject] {
            assert!(matches!(
                project_file_command("  ", field),
                AppCommand::Browse(f) if f == field
            ));
        }
    }
}
