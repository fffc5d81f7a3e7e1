//! Worker events into state: each event updates the shared state or the panel it concerns
//! (a trace goes to the Query panel, loss points to the Train panel).

use super::dialogs::PathField;
use super::panels::TrainView;
use super::{AppCommand, ErrorPlace, JobKind, SelfretApp};
use crate::train::TrainEvent;
use crate::worker::Event;
use std::path::PathBuf;

impl SelfretApp {
    /// Takes in what the worker and the file dialogs reported since the last frame.
    pub(super) fn poll(&mut self) {
        for (field, path) in self.dialogs.poll() {
            self.on_path_chosen(field, path);
        }
        for ev in self.worker.poll() {
            match ev {
                Event::Started(label) => {
                    self.shared.busy = Some(label);
                    // A new attempt replaces the last one's error in the same place.
                    if let Some(job) = self.running_job() {
                        self.shared.errors.dismiss(job.place());
                    }
                }
                Event::Paused => self.panels.train.view.pause_taken = true,
                Event::CorpusLoaded(c) => {
                    self.forget_question();
                    self.shared.untitled = c.untitled().len();
                    self.shared.corpus = Some(c);
                    self.panels.corpus.matches = None;
                    self.panels.corpus.page = 0;
                }
                Event::Train(e) => self.panels.train.view.on_train_event(e),
                Event::SessionReady(info) => {
                    // What is loaded is the worker's to say: a stopped run keeps the model
                    // loaded before it, which may be another run's or none.
                    self.shared.trained = info.run.is_some();
                    self.shared.loaded_run = info.run.clone();
                    // The last question's results were the previous model's.
                    self.forget_question();
                    self.shared.session_info = Some(info.description.clone());
                    // Who reads the query likelihood follows how the model was trained, when
                    // that changes (a choice made for the same kind of model stays, and so does
                    // the project's own for a first model read by the base as usual).
                    let before = self
                        .shared
                        .session
                        .as_ref()
                        .map(|s| s.likelihood_base_default);
                    let now = info.likelihood_base_default;
                    if before.map_or(!now, |b| b != now) {
                        self.shared.project.retrieve.likelihood_base = now;
                    }
                    self.shared.session = Some(info);
                }
                Event::DocidTrace(trace) => {
                    self.panels.corpus.question = Some(trace.query.clone());
                    self.panels.query.trace = None;
                    self.panels.query.trace_done = true;
                    self.panels.query.docid_trace = Some(*trace);
                }
                Event::Trace { trace, done } => {
                    self.panels.query.docid_trace = None;
                    if done {
                        self.panels.corpus.question = Some(trace.query.clone());
                    }
                    self.panels.query.trace = Some(trace);
                    self.panels.query.trace_done = done;
                    if let Some(id) = self.panels.query.pending_explain.take_if(|_| done) {
                        self.apply(AppCommand::Explain(id));
                    }
                }
                Event::EvalProgress {
                    system,
                    done,
                    total,
                } => self.panels.evaluate.progress = Some((system, done, total)),
                Event::EvalNotes(notes) => self.panels.evaluate.notes = notes,
                Event::EvalDone(results) => {
                    let evaluate = &mut self.panels.evaluate;
                    evaluate.results = results;
                    evaluate.results_query_file = evaluate.running_query_file.take();
                    evaluate.gold_answers = evaluate
                        .results_query_file
                        .as_deref()
                        .map(super::panels::gold_answers)
                        .unwrap_or_default();
                    self.panels.evaluate.progress = None;
                }
                Event::Progress { label, done, total } => {
                    self.shared.progress = Some((label, done, total))
                }
                Event::PseudoQueries(items) => {
                    let kept = items.iter().filter(|q| q.keep).count();
                    self.panels.train.pseudo.status = Some(format!(
                        "{} questions written, {kept} kept (found again by retrieval)",
                        items.len()
                    ));
                    self.panels.train.pseudo.items = items;
                }
                Event::TitledCorpus { path, generated } => {
                    self.shared.project.corpus_path = path.display().to_string();
                    self.panels.corpus.titles_status = Some(format!(
                        "{generated} titles written by the model; corpus saved to {}",
                        path.display()
                    ));
                    self.apply(AppCommand::LoadCorpus);
                }
                Event::TrainHistory(events) => {
                    let view = &mut self.panels.train.view;
                    *view = TrainView {
                        log_scale: view.log_scale,
                        ..Default::default()
                    };
                    for e in events {
                        view.on_train_event(e);
                    }
                    view.running = false;
                }
                Event::Exported(s) => {
                    self.panels.model.export_status = Some(format!(
                        "wrote {} (step {}{})",
                        s.folder.display(),
                        s.step,
                        if s.merged_lora { ", LoRA merged" } else { "" }
                    ))
                }
                Event::Explanation(e) => self.panels.query.explanation = Some(e),
                Event::Bm25 { query, hits } => self.panels.query.bm25 = Some((query, hits)),
                Event::Download { file, done, total } => {
                    self.shared.download = Some((file, done, total))
                }
                Event::Error(e) => {
                    let place = self
                        .running_job()
                        .map(|job| job.place())
                        .unwrap_or(ErrorPlace::Panel(self.shared.project.panel));
                    self.shared.errors.set(place, e);
                }
                Event::Finished => {
                    let job = self.jobs.pop_front();
                    if job == Some(JobKind::Query) {
                        // A question that failed must not leave its passage to score for the
                        // next one.
                        self.panels.query.pending_explain = None;
                    }
                    if job == Some(JobKind::Eval) {
                        // A failed run leaves the previous results, and no progress bar.
                        self.panels.evaluate.progress = None;
                        self.panels.evaluate.running_query_file = None;
                    }
                    self.shared.download = None;
                    self.shared.progress = None;
                    // Queued jobs keep the app busy; their Started names them.
                    if self.jobs.is_empty() {
                        self.shared.busy = None;
                    }
                    self.panels.train.view.running = false;
                    self.panels.train.view.paused = false;
                    self.panels.train.view.pause_taken = false;
                }
            }
        }
    }

    /// Drops the last question's trace, explanation and BM25 list (another model or corpus
    /// now answers).
    fn forget_question(&mut self) {
        let q = &mut self.panels.query;
        q.trace = None;
        q.trace_done = false;
        q.explanation = None;
        q.bm25 = None;
        q.docid_trace = None;
        self.panels.corpus.question = None;
    }

    /// Fills in the path a dialog chose; a corpus loads and a project opens or saves at once.
    fn on_path_chosen(&mut self, field: PathField, path: PathBuf) {
        *self.field_mut(field) = path.display().to_string();
        match field {
            PathField::CorpusFile | PathField::CorpusFolder => self.apply(AppCommand::LoadCorpus),
            PathField::OpenProject => self.apply(AppCommand::OpenProject(path)),
            PathField::SaveProject => self.apply(AppCommand::SaveProject(path)),
            PathField::ModelFile
            | PathField::ModelFolder
            | PathField::QueriesFile
            | PathField::RunDir
            | PathField::Stage1Run
            | PathField::EvalQueries
            | PathField::ExportTrace
            | PathField::PseudoQueries => {}
        }
    }
}

impl TrainView {
    /// Adds one training event to the curves.
    pub(super) fn on_train_event(&mut self, e: TrainEvent) {
        match &e {
            TrainEvent::Started { total_steps, .. } => {
                self.total_steps = *total_steps;
                self.running = true;
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
                self.losses.push((*task, *step, *loss));
                self.lr.push([*step as f64, *lr]);
                self.speed.push([*step as f64, *tokens_per_s]);
                self.eta.push([*step as f64, *eta_s]);
            }
            TrainEvent::Checkpoint { step, path } => {
                // The final checkpoint can land on the step a periodic one just saved.
                let path = path.display().to_string();
                match self.checkpoints.iter_mut().find(|(s, _)| s == step) {
                    Some(entry) => entry.1 = path,
                    None => self.checkpoints.push((*step, path)),
                }
            }
            TrainEvent::Eval {
                step,
                losses,
                metrics,
            } => {
                for (k, v) in losses {
                    self.eval_losses.push((k.clone(), *step, *v));
                }
                for (k, v) in metrics {
                    self.eval_metrics.push((k.clone(), *step, *v));
                }
            }
            TrainEvent::BudgetChanged {
                step,
                planned_steps,
                total_steps,
            } => {
                self.total_steps = *total_steps;
                self.budget_note = Some(budget_note(*step, *planned_steps, *total_steps));
            }
            TrainEvent::Finished { .. } => self.running = false,
            TrainEvent::Preparing { .. } => self.running = true,
        }
        self.last = Some(e);
    }
}

/// What the Train panel says when a resumed run's budget is not the one it was planned with.
pub(super) fn budget_note(step: usize, planned: usize, total: usize) -> String {
    let how = if total > planned {
        "extended"
    } else {
        "shortened"
    };
    format!(
        "resumed at step {step}: budget {how} from {planned} to {total} steps (the learning-rate \
         schedule follows the new budget)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resume with a new budget is announced, and the step count follows it.
    #[test]
    fn a_changed_resume_budget_is_announced() {
        let mut view = TrainView::default();
        view.on_train_event(TrainEvent::BudgetChanged {
            step: 40,
            planned_steps: 60,
            total_steps: 90,
        });
        assert_eq!(view.total_steps, 90);
        let note = view.budget_note.as_deref().unwrap_or_default();
        assert!(note.contains("extended from 60 to 90"), "{note}");
        assert!(budget_note(40, 90, 60).contains("shortened"));
    }

    /// The final checkpoint, written on the step a periodic one already saved, is listed once.
    #[test]
    fn a_checkpoint_step_is_listed_once() {
        let mut view = TrainView::default();
        for step in [300, 600, 600] {
            view.on_train_event(TrainEvent::Checkpoint {
                step,
                path: PathBuf::from("runs/demo/checkpoint"),
            });
        }
        let steps: Vec<usize> = view.checkpoints.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [300, 600]);
    }
}
