//! Train panel: hyperparameters, Start / Pause / Cancel / Save now, live loss curves per task.

use super::hints;
use crate::app::dialogs::{path_row, Dialogs, PathField};
use crate::app::{AppCommand, Shared};
use crate::train::{Task, TrainEvent};
use crate::worker::preset::Preset;
use crate::worker::Control;
use egui_plot::{Line, MarkerShape, Plot, Points};

/// The Train panel's own state: the run's curves and the pseudo-queries under review.
#[derive(Debug, Clone, Default)]
pub struct TrainPanel {
    pub view: TrainView,
    pub pseudo: PseudoView,
    /// A run folder that already holds a trained model, shown in a dialog before Start
    /// trains over it.
    pub confirm_overwrite: Option<std::path::PathBuf>,
}

/// Whether `run` holds a checkpoint (Start from scratch would replace it).
pub fn holds_checkpoint(run: &std::path::Path) -> bool {
    run.join("checkpoint").join("manifest.ron").is_file()
}

/// The first of `run-2`, `run-3`, ... that does not exist yet: a new folder beside `run`.
pub fn fresh_run_dir(run: &std::path::Path) -> std::path::PathBuf {
    let name = run
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    (2..)
        .map(|k| run.with_file_name(format!("{name}-{k}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| run.to_path_buf())
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
    /// Checkpoints written: (step, folder), one per step.
    pub checkpoints: Vec<(usize, String)>,
    pub running: bool,
    pub paused: bool,
    /// The worker confirmed the pause: the step in flight when Pause was pressed is done.
    pub pause_taken: bool,
    /// Said when a resumed run goes on with a budget other than the one it was planned with.
    pub budget_note: Option<String>,
}

impl TrainPanel {
    /// Asks before Start trains over a folder that holds a model: overwrite it, resume it, or
    /// train into a new folder beside it.
    fn overwrite_dialog(
        &mut self,
        shared: &mut Shared,
        ctx: &egui::Context,
        cmds: &mut Vec<AppCommand>,
    ) {
        let Some(run) = self.confirm_overwrite.clone() else {
            return;
        };
        let fresh = fresh_run_dir(&run);
        egui::Window::new("The run folder holds a trained model")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
            .show(ctx, |ui| {
                ui.label(format!(
                    "{} already holds a checkpoint. Starting from scratch replaces it.",
                    run.display()
                ));
                ui.horizontal(|ui| {
                    if ui.button("Use a new folder").clicked() {
                        shared.project.run_dir = fresh.display().to_string();
                        cmds.push(AppCommand::StartTraining { resume: false });
                        self.confirm_overwrite = None;
                    }
                    if ui.button("Resume it").clicked() {
                        cmds.push(AppCommand::StartTraining { resume: true });
                        self.confirm_overwrite = None;
                    }
                    if ui.button("Overwrite").clicked() {
                        cmds.push(AppCommand::StartTraining { resume: false });
                        self.confirm_overwrite = None;
                    }
                    if ui.button("Cancel").clicked() {
                        self.confirm_overwrite = None;
                    }
                });
                ui.weak(format!("A new folder would be {}", fresh.display()));
            });
    }

    /// Draws the panel.
    pub fn ui(
        &mut self,
        shared: &mut Shared,
        dialogs: &Dialogs,
        ui: &mut egui::Ui,
        cmds: &mut Vec<AppCommand>,
    ) {
        self.overwrite_dialog(shared, ui.ctx(), cmds);
        ui.heading("Train");
        path_row(
            ui,
            "Run directory",
            &mut shared.project.run_dir,
            "runs/my-run",
            &[PathField::RunDir],
            dialogs,
            cmds,
        );
        path_row(
            ui,
            "Query file (optional)",
            &mut shared.project.queries_path,
            "train.jsonl with question/answers/positive_ids",
            &[PathField::QueriesFile],
            dialogs,
            cmds,
        );
        ui.horizontal(|ui| {
            ui.label("Preset").on_hover_text(hints::PRESET);
            for preset in Preset::ALL {
                let selected = shared.project.preset == Some(preset);
                if ui
                    .selectable_label(selected, preset.name())
                    .on_hover_text(preset.describe())
                    .clicked()
                {
                    shared.project.apply_preset(preset);
                }
            }
            match shared.project.preset {
                Some(p) => ui.weak(format!("{}: {}", p.name(), p.describe())),
                None => ui.weak("custom settings"),
            };
        });
        ui.horizontal(|ui| {
            let mut by_epochs = shared.project.epochs > 0.0;
            ui.label("Budget").on_hover_text(hints::BUDGET);
            if ui.radio(!by_epochs, "steps").clicked() {
                by_epochs = false;
                shared.project.epochs = 0.0;
            }
            if ui.radio(by_epochs, "epochs").clicked() && !by_epochs {
                shared.project.epochs = 1.0;
            }
            if shared.project.epochs > 0.0 {
                ui.add(egui::Slider::new(&mut shared.project.epochs, 0.1..=20.0).text("Epochs"));
            } else {
                ui.add(
                    egui::Slider::new(&mut shared.project.steps, 10..=5000)
                        .logarithmic(true)
                        .text("Steps"),
                );
            }
        });
        ui.horizontal(|ui| {
            ui.add(
                egui::Slider::new(&mut shared.project.sentences_per_passage, 0..=20)
                    .text("Indexing sentences per passage (0 = all)"),
            )
            .on_hover_text(hints::SENTENCES_PER_PASSAGE);
            ui.add(
                egui::Slider::new(&mut shared.project.pseudo_per_passage, 0..=10)
                    .text("Generated questions per passage"),
            )
            .on_hover_text(hints::PSEUDO_PER_PASSAGE);
        });
        ui.horizontal(|ui| {
            ui.label("Task mix").on_hover_text(hints::TASK_MIX);
            let mix = &mut shared.project.mix;
            ui.add(egui::Slider::new(&mut mix.indexing, 0.0..=4.0).text("Indexing"))
                .on_hover_text(hints::MIX_INDEXING);
            ui.add(egui::Slider::new(&mut mix.retrieval, 0.0..=4.0).text("Retrieval"))
                .on_hover_text(hints::MIX_RETRIEVAL);
            ui.add(egui::Slider::new(&mut mix.assessment, 0.0..=4.0).text("Assessment"))
                .on_hover_text(hints::MIX_ASSESSMENT);
            ui.add(egui::Slider::new(&mut mix.reading, 0.0..=4.0).text("Reading"))
                .on_hover_text(hints::MIX_READING);
        });
        ui.horizontal(|ui| {
            ui.add(
                egui::Slider::new(&mut shared.project.target_words, 0..=200)
                    .text("Indexing target words (0 = whole passage)"),
            )
            .on_hover_text(hints::TARGET_WORDS);
            ui.add_enabled(
                shared.project.lora,
                egui::Slider::new(&mut shared.project.lora_rank, 1..=64).text("LoRA rank"),
            )
            .on_hover_text(hints::LORA_RANK)
            .on_disabled_hover_text(format!(
                "{} Turn on LoRA in the Model panel to set it.",
                hints::LORA_RANK
            ));
        });
        ui.horizontal(|ui| {
            ui.label("Retriever");
            let docids = &mut shared.project.retrieve_by_docids;
            ui.radio_value(docids, false, "titles and passages (Self-Retrieval)")
                .on_hover_text(hints::RETRIEVER_TITLES);
            let picked = ui
                .radio_value(docids, true, "semantic docids (Retrieval as Reasoning)")
                .on_hover_text(hints::RETRIEVER_DOCIDS);
            if picked.clicked() {
                // The pathway starts from nothing: a larger step than adapters take (the
                // command line does the same).
                shared.project.lr = shared.project.lr.max(1e-3);
            }
        });
        if shared.project.retrieve_by_docids {
            ui.horizontal(|ui| {
                ui.label("Docid stage");
                let stage2 = &mut shared.project.docid_stage2;
                ui.radio_value(stage2, false, "1: warm up the pathway")
                    .on_hover_text(hints::DOCID_STAGE1);
                ui.radio_value(stage2, true, "2: LoRA + answers from drawn docids")
                    .on_hover_text(hints::DOCID_STAGE2);
            });
            if shared.project.docid_stage2 {
                path_row(
                    ui,
                    "Stage-1 run",
                    &mut shared.project.docid_stage1_run,
                    "runs/my-docid-run",
                    &[PathField::Stage1Run],
                    dialogs,
                    cmds,
                );
            }
        }
        ui.add(
            egui::Slider::new(&mut shared.project.lr, 1e-5..=1e-2)
                .logarithmic(true)
                .text("Learning rate"),
        )
        .on_hover_text(hints::LEARNING_RATE);
        ui.add(
            egui::Slider::new(&mut shared.project.batch_tokens, 256..=8192)
                .logarithmic(true)
                .text("Batch tokens"),
        )
        .on_hover_text(hints::BATCH_TOKENS);
        let running = self.view.running;
        ui.horizontal(|ui| {
            if ui
                .add_enabled(!shared.is_busy(), egui::Button::new("Start"))
                .clicked()
            {
                let run = std::path::PathBuf::from(shared.project.run_dir.trim());
                if holds_checkpoint(&run) {
                    self.confirm_overwrite = Some(run);
                } else {
                    cmds.push(AppCommand::StartTraining { resume: false });
                }
            }
            if ui
                .add_enabled(!shared.is_busy(), egui::Button::new("Resume run"))
                .clicked()
            {
                cmds.push(AppCommand::StartTraining { resume: true });
            }
            let pause_label = if self.view.paused {
                "Continue"
            } else {
                "Pause"
            };
            if ui
                .add_enabled(running, egui::Button::new(pause_label))
                .clicked()
            {
                cmds.push(AppCommand::Control(if self.view.paused {
                    Control::Resume
                } else {
                    Control::Pause
                }));
            }
            if ui
                .add_enabled(running, egui::Button::new("Save now"))
                .clicked()
            {
                cmds.push(AppCommand::Control(Control::SaveNow));
            }
            if ui
                .add_enabled(running, egui::Button::new("Stop training"))
                .clicked()
            {
                cmds.push(AppCommand::Control(Control::Cancel));
            }
            if ui
                .add_enabled(!shared.is_busy(), egui::Button::new("Open run"))
                .clicked()
            {
                cmds.push(AppCommand::OpenRun);
            }
        });
        pseudo_section(&mut self.pseudo, shared, dialogs, ui, cmds);
        match &self.view.last {
            Some(TrainEvent::Step {
                step,
                loss,
                lr,
                tokens_per_s,
                eta_s,
                task,
                ..
            }) => {
                // Paused, the last step's ETA would stand still as if time were not passing.
                let when = if self.view.paused && running {
                    "paused (Continue to go on)".to_string()
                } else {
                    format!("{tokens_per_s:.0} tokens/s  ETA {eta_s:.0} s")
                };
                ui.label(format!(
                    "step {step}/{}  {} loss {loss:.4}  lr {lr:.2e}  {when}",
                    self.view.total_steps,
                    task.name()
                ));
            }
            Some(TrainEvent::Preparing { stage, done, total }) => {
                ui.label(format!("preparing: {stage} {done}/{total}"));
            }
            Some(TrainEvent::Finished { step, cancelled }) => {
                ui.label(format!(
                    "{} at step {step}",
                    if *cancelled { "stopped" } else { "finished" }
                ));
            }
            Some(other) => {
                ui.label(format!("{other:?}"));
            }
            None => {
                ui.label("not started");
            }
        }
        if let Some(note) = &self.view.budget_note {
            ui.label(note);
        }
        ui.horizontal(|ui| {
            ui.label(format!("loss points: {}", self.view.losses.len()));
            ui.checkbox(&mut self.view.log_scale, "Log scale");
        });
        self.loss_plot(ui);
        if !self.view.eval_metrics.is_empty() {
            let last: Vec<String> = ["hits@1", "hits@5"]
                .iter()
                .filter_map(|k| {
                    self.view
                        .eval_metrics
                        .iter()
                        .rev()
                        .find(|(n, _, _)| n == k)
                        .map(|(n, s, v)| format!("{n} {v:.2} (step {s})"))
                })
                .collect();
            ui.label(format!("held-out retrieval: {}", last.join(", ")));
        }
        ui.columns(3, |cols| {
            small_plot(
                &mut cols[0],
                "lr-plot",
                "learning rate",
                &self.view.lr,
                None,
            );
            small_plot(
                &mut cols[1],
                "speed-plot",
                "tokens/s",
                &self.view.speed,
                None,
            );
            let hits: Vec<[f64; 2]> = self
                .view
                .eval_metrics
                .iter()
                .filter(|(n, _, _)| n == "hits@1")
                .map(|(_, s, v)| [*s as f64, *v])
                .collect();
            if hits.is_empty() {
                small_plot(&mut cols[2], "eta-plot", "ETA (s)", &self.view.eta, None);
            } else {
                // A share: drawn on 0..1 with every measurement marked, so one or two
                // evaluations show as points, not as nothing.
                small_plot(
                    &mut cols[2],
                    "hits-plot",
                    "held-out Hits@1",
                    &hits,
                    Some((0.0, 1.0)),
                );
            }
        });
        for (step, path) in self.view.checkpoints.iter().rev().take(3) {
            ui.weak(format!("checkpoint at step {step}: {path}"));
        }
    }

    /// The loss per task against the step, each task in its own fixed colour, held-out losses
    /// as dots in their task's colour; the legend is a row above the plot, off the lines.
    fn loss_plot(&self, ui: &mut egui::Ui) {
        if self.view.losses.is_empty() && self.view.eval_losses.is_empty() {
            ui.add_sized(
                [ui.available_width(), 80.0],
                egui::Label::new(
                    "No steps yet: the loss of each task is drawn here once training runs.",
                ),
            );
            return;
        }
        let log = self.view.log_scale;
        let y = move |l: f64| if log { l.max(1e-6).log10() } else { l };
        let series: Vec<TaskSeries> = Task::ALL
            .into_iter()
            .map(|task| {
                let trained = self
                    .view
                    .losses
                    .iter()
                    .filter(|(t, _, _)| *t == task)
                    .map(|(_, s, l)| [*s as f64, y(*l)])
                    .collect();
                let held = self
                    .view
                    .eval_losses
                    .iter()
                    .filter(|(t, _, _)| t == task.name())
                    .map(|(_, s, l)| [*s as f64, y(*l)])
                    .collect();
                (task, trained, held)
            })
            .collect();
        ui.horizontal(|ui| {
            for (task, trained, _) in &series {
                if !trained.is_empty() {
                    ui.colored_label(task_color(*task), format!("— {}", task.name()));
                }
            }
            if series.iter().any(|(_, _, held)| !held.is_empty()) {
                ui.weak("• held-out loss (dots in its task's colour)");
            }
        });
        Plot::new("loss-plot")
            .height(260.0)
            .x_axis_label("step")
            .y_axis_label(if log { "loss (log10)" } else { "loss" })
            .y_axis_formatter(move |m, _| {
                if log {
                    format!("{:.3}", 10f64.powf(m.value))
                } else {
                    format!("{:.2}", m.value)
                }
            })
            .show(ui, |p| {
                for (task, trained, held) in series {
                    if !trained.is_empty() {
                        p.line(Line::new(task.name(), trained).color(task_color(task)));
                    }
                    if !held.is_empty() {
                        p.points(
                            Points::new(format!("{} (held-out)", task.name()), held)
                                .shape(MarkerShape::Circle)
                                .radius(4.0)
                                .color(task_color(task)),
                        );
                    }
                }
            });
    }
}

/// One task's training losses and held-out losses, as plot points.
type TaskSeries = (Task, Vec<[f64; 2]>, Vec<[f64; 2]>);

/// Each task's colour, the same in every frame and every run (egui_plot's automatic colours
/// follow the order series appear in, which changes between refreshes).
pub fn task_color(task: Task) -> egui::Color32 {
    match task {
        Task::Indexing => egui::Color32::from_rgb(66, 133, 244),
        Task::Retrieval => egui::Color32::from_rgb(234, 134, 0),
        Task::Assessment => egui::Color32::from_rgb(52, 168, 83),
        Task::Reading => egui::Color32::from_rgb(171, 71, 188),
    }
}

/// A compact plot of one series against the step, every point marked; `y_range` fixes the
/// axis (a share is drawn on 0..1). With no points, a line saying so instead of empty axes.
fn small_plot(
    ui: &mut egui::Ui,
    id: &str,
    name: &str,
    points: &[[f64; 2]],
    y_range: Option<(f64, f64)>,
) {
    ui.label(name);
    if points.is_empty() {
        ui.weak("no steps yet");
        return;
    }
    let mut plot = Plot::new(id)
        .height(120.0)
        .x_axis_label("step")
        .allow_scroll(false);
    if let Some((lo, hi)) = y_range {
        plot = plot.include_y(lo).include_y(hi);
    }
    plot.show(ui, |p| {
        p.line(Line::new(name.to_string(), points.to_vec()));
        p.points(Points::new(name.to_string(), points.to_vec()).radius(2.5));
    });
}

/// Pseudo-queries: written by the loaded model, filtered by its own retrieval, reviewed and
/// edited here, then saved as the query file training uses.
fn pseudo_section(
    pseudo: &mut PseudoView,
    shared: &Shared,
    dialogs: &Dialogs,
    ui: &mut egui::Ui,
    cmds: &mut Vec<AppCommand>,
) {
    egui::CollapsingHeader::new("Pseudo-queries (corpus without queries)")
        .default_open(!pseudo.items.is_empty())
        .show(ui, |ui| {
            ui.weak(
                "The loaded model writes questions for passages; a question is kept when the \
                 model's own retrieval finds its passage again. Load a pretrained model first.",
            );
            let o = &mut pseudo.opts;
            ui.horizontal(|ui| {
                ui.add(egui::Slider::new(&mut o.per_passage, 1..=5).text("Questions per passage"));
                ui.add(egui::Slider::new(&mut o.max_passages, 0..=500).text("Passages (0 = all)"));
                ui.add(egui::Slider::new(&mut o.keep_top, 1..=10).text("Keep if found in top"))
                    .on_hover_text(hints::KEEP_TOP);
            });
            ui.horizontal(|ui| {
                if ui
                    .add_enabled(
                        !shared.is_busy() && shared.session.is_some(),
                        egui::Button::new("Write pseudo-queries"),
                    )
                    .clicked()
                {
                    cmds.push(AppCommand::GeneratePseudoQueries);
                }
                if let Some((label, done, total)) = &shared.progress {
                    ui.label(format!("{label}: {done}/{total} passages"));
                }
            });
            if let Some(s) = &pseudo.status {
                ui.label(s.as_str());
            }
            if pseudo.items.is_empty() {
                return;
            }
            egui::ScrollArea::vertical()
                .id_salt("pseudo")
                .max_height(200.0)
                .show(ui, |ui| {
                    egui::Grid::new("pseudo-grid").striped(true).show(ui, |ui| {
                        ui.strong("");
                        ui.strong("passage");
                        ui.strong("question (editable)");
                        ui.strong("rank");
                        ui.end_row();
                        for q in pseudo.items.iter_mut() {
                            ui.checkbox(&mut q.keep, "keep");
                            let l = ui.label(q.query.positive_ids.join(", "));
                            ui.add(
                                egui::TextEdit::singleline(&mut q.query.question)
                                    .desired_width(420.0),
                            )
                            .labelled_by(l.id);
                            ui.label(q.rank.map(|r| r.to_string()).unwrap_or("-".into()));
                            ui.end_row();
                        }
                    });
                });
            path_row(
                ui,
                "Save to",
                &mut pseudo.path,
                "pseudo_queries.jsonl",
                &[PathField::PseudoQueries],
                dialogs,
                cmds,
            );
            if ui.button("Save and train with them").clicked() {
                cmds.push(AppCommand::SavePseudoQueries);
            }
        });
}
