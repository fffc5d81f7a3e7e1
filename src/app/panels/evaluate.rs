//! Evaluate panel: Self-Retrieval against BM25 (and dense) on a query file, side by side.

use crate::app::dialogs::{path_row, Dialogs, PathField};
use crate::app::{AppCommand, ErrorPlace, PanelKind, Shared};
use egui_plot::{Bar, BarChart, Legend, Plot};

const RIGHT: egui::Color32 = egui::Color32::from_rgb(60, 150, 80);
const WRONG: egui::Color32 = egui::Color32::from_rgb(200, 60, 60);

const METRICS: [&str; 7] = [
    "hits@1",
    "hits@5",
    "hits@10",
    "mrr@5",
    "title@1",
    "gold_in_candidates",
    "answer_em",
];

/// What each column means (shown on hover).
const HINTS: [&str; 7] = [
    "The gold passage is ranked first",
    "The gold passage is within the first 5",
    "The gold passage is within the first 10",
    "Mean reciprocal rank of the gold passage within the first 5",
    "The top passage's title is the gold passage's title: where a failure is a wrong title",
    "The gold passage is among the passages returned at all (for Self-Retrieval: generated under the trie)",
    "The generated answer equals a gold answer (SQuAD normalisation)",
];

/// The Evaluate panel's own state: the last evaluation's results and the running one's progress.
#[derive(Debug, Clone, Default)]
pub struct EvaluatePanel {
    pub results: Vec<crate::eval::SystemResult>,
    /// (system, queries done, total).
    pub progress: Option<(String, usize, usize)>,
    /// What the last run found wrong in its query file (unknown gold ids, unscorable queries).
    pub notes: Vec<String>,
    /// The query file of the evaluation in progress.
    pub running_query_file: Option<std::path::PathBuf>,
    /// The query file `results` were measured on.
    pub results_query_file: Option<std::path::PathBuf>,
    /// That file's gold answers by question, to mark each generated answer right or wrong.
    pub gold_answers: std::collections::HashMap<String, Vec<String>>,
}

/// How a generated answer compares with the gold answers (SQuAD exact match, as answer_em).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerMark {
    Right,
    Wrong,
    /// No answer, or no gold answer to compare with.
    Unjudged,
}

/// Marks `answer` against `gold` with the same exact match the answer_em column counts.
pub fn answer_mark(answer: Option<&str>, gold: Option<&[String]>) -> AnswerMark {
    match (answer, gold) {
        (Some(a), Some(g)) if !g.is_empty() => {
            if crate::eval::exact_match(a, g) {
                AnswerMark::Right
            } else {
                AnswerMark::Wrong
            }
        }
        _ => AnswerMark::Unjudged,
    }
}

/// The gold answers of a query file by question; empty when it cannot be read any more.
pub fn gold_answers(path: &std::path::Path) -> std::collections::HashMap<String, Vec<String>> {
    crate::train::data::load_queries(path)
        .map(|qs| qs.into_iter().map(|q| (q.question, q.answers)).collect())
        .unwrap_or_default()
}

impl EvaluatePanel {
    /// Draws the panel.
    pub fn ui(
        &mut self,
        shared: &mut Shared,
        dialogs: &Dialogs,
        ui: &mut egui::Ui,
        cmds: &mut Vec<AppCommand>,
    ) {
        ui.heading("Evaluate");
        let e = &mut shared.project.eval;
        path_row(
            ui,
            "Query file",
            &mut e.queries_path,
            "dev.jsonl",
            &[PathField::EvalQueries],
            dialogs,
            cmds,
        );
        ui.weak("JSONL with question, answers, positive_ids (e.g. ../shared/data/nq_open_oracle/dev.jsonl).");
        ui.add(egui::Slider::new(&mut e.limit, 0..=2000).text("Queries (0 = all)"));
        ui.horizontal(|ui| {
            ui.checkbox(&mut e.self_retrieval, "Self-Retrieval (loaded model)");
            ui.checkbox(&mut e.bm25, "BM25");
            ui.checkbox(&mut e.dense, "Dense (MiniLM)");
            ui.checkbox(&mut e.reader, "BM25 + reader (model answers)")
                .on_hover_text("BM25's top passage given to the loaded model for an answer");
        });
        if ui
            .add_enabled(!shared.is_busy(), egui::Button::new("Run evaluation"))
            .clicked()
        {
            cmds.push(AppCommand::RunEval);
        }
        for note in &self.notes {
            ui.colored_label(egui::Color32::from_rgb(190, 120, 30), note);
        }
        if let Some((system, done, total)) = &self.progress {
            ui.add(
                egui::ProgressBar::new(*done as f32 / (*total).max(1) as f32)
                    .text(format!("{system}: {done}/{total}")),
            );
        }
        if self.results.is_empty() {
            return;
        }
        ui.separator();
        let measured_on = self
            .results_query_file
            .as_ref()
            .map(|p| format!("Results on {}", p.display()))
            .unwrap_or_else(|| "Results".into());
        let failed = shared
            .errors
            .get(ErrorPlace::Panel(PanelKind::Evaluate))
            .is_some();
        if self.progress.is_some() {
            ui.weak(format!(
                "{measured_on} (the previous run; replaced when this one finishes)"
            ));
        } else if failed {
            ui.weak(format!(
                "{measured_on} (from the previous run: the last one failed)"
            ));
        } else {
            ui.weak(measured_on);
        }
        ui.columns(2, |cols| {
            egui::Grid::new("metrics-table")
                .striped(true)
                .show(&mut cols[0], |ui| {
                    ui.strong("system");
                    for (m, hint) in METRICS.iter().zip(HINTS) {
                        ui.strong(*m).on_hover_text(hint);
                    }
                    ui.strong("ms/query");
                    ui.end_row();
                    for s in &self.results {
                        ui.label(&s.system);
                        for m in METRICS {
                            ui.label(
                                s.metrics
                                    .get(m)
                                    .map(|v| format!("{v:.3}"))
                                    .unwrap_or("-".into()),
                            );
                        }
                        ui.label(format!(
                            "{:.1}",
                            s.metrics.get("latency_ms").copied().unwrap_or(0.0)
                        ));
                        ui.end_row();
                    }
                });
            Plot::new("metrics-chart")
                .legend(Legend::default())
                .height(200.0)
                .include_y(0.0)
                .include_y(1.0)
                .x_axis_formatter(|mark, _| {
                    let i = mark.value.round();
                    if (mark.value - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < METRICS.len() {
                        METRICS[i as usize].to_string()
                    } else {
                        String::new()
                    }
                })
                .show(&mut cols[1], |p| {
                    let n = self.results.len() as f64;
                    for (k, s) in self.results.iter().enumerate() {
                        let bars: Vec<Bar> = METRICS
                            .iter()
                            .enumerate()
                            .filter_map(|(i, m)| {
                                s.metrics.get(*m).map(|v| {
                                    Bar::new(i as f64 + (k as f64 - (n - 1.0) / 2.0) * 0.8 / n, *v)
                                        .name(*m)
                                })
                            })
                            .collect();
                        p.bar_chart(BarChart::new(s.system.clone(), bars).width(0.8 / n));
                    }
                });
        });
        ui.separator();
        let Some(sr) = self
            .results
            .iter()
            .find(|s| s.system == "self-retrieval")
            .or_else(|| self.results.first())
        else {
            return;
        };
        ui.strong(format!(
            "Per query ({}); click a question to inspect it",
            sr.system
        ));
        egui::ScrollArea::vertical()
            .id_salt("per-query")
            .show(ui, |ui| {
                egui::Grid::new("per-query-grid")
                    .striped(true)
                    .show(ui, |ui| {
                        ui.strong("gold passage")
                            .on_hover_text("Where the gold passage was ranked (hit@1: first)");
                        ui.strong("question");
                        ui.strong("answer").on_hover_text(
                            "The generated answer: √ equals a gold answer, × does not",
                        );
                        ui.end_row();
                        for q in &sr.queries {
                            let (mark, color) = match q.gold_rank {
                                Some(1) => {
                                    ("hit@1".to_string(), egui::Color32::from_rgb(60, 150, 80))
                                }
                                Some(r) => {
                                    (format!("rank {r}"), egui::Color32::from_rgb(190, 140, 40))
                                }
                                None => ("miss".to_string(), egui::Color32::from_rgb(200, 60, 60)),
                            };
                            ui.colored_label(color, mark);
                            if ui.link(&q.question).clicked() {
                                cmds.push(AppCommand::AskQuestion(q.question.clone()));
                            }
                            let gold = self.gold_answers.get(&q.question).map(|g| g.as_slice());
                            let answer = q.answer.as_deref();
                            let text = answer.unwrap_or("-");
                            match answer_mark(answer, gold) {
                                AnswerMark::Right => ui
                                    .colored_label(RIGHT, format!("√ {text}"))
                                    .on_hover_text("equals a gold answer"),
                                AnswerMark::Wrong => {
                                    ui.colored_label(WRONG, format!("× {text}")).on_hover_text(
                                        format!("gold: {}", gold.unwrap_or_default().join(" | ")),
                                    )
                                }
                                AnswerMark::Unjudged => ui.label(text),
                            };
                            ui.end_row();
                        }
                    });
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer is marked by exact match (after SQuAD normalisation), and not at all without
    /// an answer or a gold answer.
    #[test]
    fn answers_are_marked_right_or_wrong() {
        let gold = vec!["Karen Spärck Jones".to_string()];
        assert_eq!(
            answer_mark(Some("karen spärck jones."), Some(&gold)),
            AnswerMark::Right
        );
        assert_eq!(
            answer_mark(Some("Gerard Salton"), Some(&gold)),
            AnswerMark::Wrong
        );
        assert_eq!(answer_mark(None, Some(&gold)), AnswerMark::Unjudged);
        assert_eq!(answer_mark(Some("x"), Some(&[])), AnswerMark::Unjudged);
        assert_eq!(answer_mark(Some("x"), None), AnswerMark::Unjudged);
    }
}
