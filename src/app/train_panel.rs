//! Train panel: hyperparameters, Start / Pause / Cancel / Save now, live loss curves per task.

use super::{AppCommand, SelfretApp};
use crate::train::{Task, TrainEvent};
use crate::worker::Control;
use egui_plot::{Legend, Line, Plot, Points};

/// Draws the panel.
pub fn show(app: &mut SelfretApp, ui: &mut egui::Ui, cmds: &mut Vec<AppCommand>) {
    ui.heading("Train");
    ui.horizontal(|ui| {
        let l = ui.label("Run directory");
        ui.add(egui::TextEdit::singleline(&mut app.project.run_dir).desired_width(380.0))
            .labelled_by(l.id);
    });
    ui.horizontal(|ui| {
        let l = ui.label("Query file (optional)");
        ui.add(
            egui::TextEdit::singleline(&mut app.project.queries_path)
                .hint_text("train.jsonl with question/answers/positive_ids")
                .desired_width(380.0),
        )
        .labelled_by(l.id);
    });
    ui.add(
        egui::Slider::new(&mut app.project.steps, 10..=5000)
            .logarithmic(true)
            .text("Steps"),
    );
    ui.add(
        egui::Slider::new(&mut app.project.lr, 1e-5..=1e-2)
            .logarithmic(true)
            .text("Learning rate"),
    );
    ui.add(
        egui::Slider::new(&mut app.project.batch_tokens, 256..=8192)
            .logarithmic(true)
            .text("Batch tokens"),
    );
    let running = app.train.running;
    ui.horizontal(|ui| {
        if ui
            .add_enabled(!app.is_busy(), egui::Button::new("Start"))
            .clicked()
        {
            cmds.push(AppCommand::StartTraining { resume: false });
        }
        if ui
            .add_enabled(!app.is_busy(), egui::Button::new("Resume run"))
            .clicked()
        {
            cmds.push(AppCommand::StartTraining { resume: true });
        }
        let pause_label = if app.train.paused {
            "Continue"
        } else {
            "Pause"
        };
        if ui
            .add_enabled(running, egui::Button::new(pause_label))
            .clicked()
        {
            cmds.push(AppCommand::Control(if app.train.paused {
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
            .add_enabled(!app.is_busy(), egui::Button::new("Open run"))
            .clicked()
        {
            cmds.push(AppCommand::OpenRun);
        }
    });
    match &app.train.last {
        Some(TrainEvent::Step {
            step,
            loss,
            lr,
            tokens_per_s,
            eta_s,
            task,
            ..
        }) => {
            ui.label(format!(
                "step {step}/{}  {} loss {loss:.4}  lr {lr:.2e}  {tokens_per_s:.0} tokens/s  ETA {eta_s:.0} s",
                app.train.total_steps,
                task.name()
            ));
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
    ui.horizontal(|ui| {
        ui.label(format!("loss points: {}", app.train.losses.len()));
        ui.checkbox(&mut app.train.log_scale, "Log scale");
    });
    let log = app.train.log_scale;
    let y = move |l: f64| if log { l.max(1e-6).log10() } else { l };
    Plot::new("loss-plot")
        .legend(Legend::default())
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
            for task in Task::ALL {
                let pts: Vec<[f64; 2]> = app
                    .train
                    .losses
                    .iter()
                    .filter(|(t, _, _)| *t == task)
                    .map(|(_, s, l)| [*s as f64, y(*l)])
                    .collect();
                if !pts.is_empty() {
                    p.line(Line::new(task.name(), pts));
                }
                let held: Vec<[f64; 2]> = app
                    .train
                    .eval_losses
                    .iter()
                    .filter(|(t, _, _)| t == task.name())
                    .map(|(_, s, l)| [*s as f64, y(*l)])
                    .collect();
                if !held.is_empty() {
                    p.points(Points::new(format!("{} (held-out)", task.name()), held).radius(3.0));
                }
            }
        });
    for c in app.train.checkpoints.iter().rev().take(3) {
        ui.weak(format!("checkpoint {c}"));
    }
}
