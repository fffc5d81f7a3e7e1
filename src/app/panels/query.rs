//! Query panel: the retrieval inspector. Title beams with probabilities, each passage expansion
//! token by token (chosen / forced / auto-completed), the score table, live tau and delta, answer.

use super::hints;
use crate::app::dialogs::{browse_button, Dialogs, PathField};
use crate::app::{AppCommand, Shared};
use crate::retrieve::{AnswerReader, RetrievalTrace, StepKind};

const CHOSEN: egui::Color32 = egui::Color32::from_rgb(40, 110, 200);
const FORCED: egui::Color32 = egui::Color32::from_rgb(130, 130, 130);
const AUTO: egui::Color32 = egui::Color32::from_rgb(60, 150, 80);
/// Widths of the ranking sliders' cells (slider, number box and name).
const SLIDER_CELL: f32 = 210.0;
const WEIGHT_CELL: f32 = 260.0;

/// Puts a control in a cell of fixed width, so a neighbour's growing number box cannot push it.
fn fixed_cell(
    ui: &mut egui::Ui,
    width: f32,
    add: impl FnOnce(&mut egui::Ui) -> egui::Response,
) -> egui::Response {
    ui.allocate_ui_with_layout(
        egui::vec2(width, ui.spacing().interact_size.y),
        egui::Layout::left_to_right(egui::Align::Center),
        |ui| {
            ui.set_min_width(width);
            add(ui)
        },
    )
    .inner
}

/// The Query panel's own state: the question, its trace and the score table's view of it.
#[derive(Debug, Clone)]
pub struct QueryPanel {
    pub query_text: String,
    pub trace: Option<RetrievalTrace>,
    /// The trace is complete (it arrives stage by stage).
    pub trace_done: bool,
    /// Score table sort: (column, descending).
    pub score_sort: (usize, bool),
    pub export_path: String,
    pub export_status: Option<String>,
    /// The passage typed for "why not this passage?".
    pub explain_id: String,
    /// The options the current question ran with: "why not this passage?" scores with them,
    /// so the passage is read as its rivals were (checkboxes apply to the next question).
    pub asked_with: Option<crate::retrieve::RetrieveOptions>,
    /// A passage to score as soon as the running question is answered (`gui --explain`).
    pub pending_explain: Option<String>,
    /// How the model scores that passage for the current question.
    pub explanation: Option<Box<crate::retrieve::Explanation>>,
    /// Show BM25's ranking beside the model's.
    pub show_bm25: bool,
    /// BM25's top passages for a question: (question, hits).
    pub bm25: Option<(String, Vec<crate::worker::Bm25Hit>)>,
    /// The last question's docid beams (a run of the docid mode).
    pub docid_trace: Option<crate::retrieve::docid::DocidTrace>,
}

impl Default for QueryPanel {
    fn default() -> Self {
        QueryPanel {
            query_text: String::new(),
            trace: None,
            trace_done: false,
            score_sort: (0, false),
            export_path: "trace.json".into(),
            export_status: None,
            explain_id: String::new(),
            explanation: None,
            pending_explain: None,
            asked_with: None,
            show_bm25: false,
            bm25: None,
            docid_trace: None,
        }
    }
}

impl QueryPanel {
    /// Draws the panel.
    pub fn ui(
        &mut self,
        shared: &mut Shared,
        dialogs: &Dialogs,
        ui: &mut egui::Ui,
        cmds: &mut Vec<AppCommand>,
    ) {
        ui.heading("Query");
        if shared.session_info.is_none() {
            ui.weak("Load a model first: train one (Train panel), open a run, or load a model without training.");
        }
        ui.horizontal(|ui| {
            let l = ui.label("Question");
            let r = ui
                .add(egui::TextEdit::singleline(&mut self.query_text).desired_width(480.0))
                .labelled_by(l.id);
            let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui
                .add_enabled(!shared.is_busy(), egui::Button::new("Search"))
                .clicked()
                || (enter && !shared.is_busy())
            {
                cmds.push(AppCommand::Query(self.query_text.clone()));
            }
        });
        if !shared.project.query_history.is_empty() {
            ui.horizontal_wrapped(|ui| {
                ui.weak("history:");
                for h in shared.project.query_history.clone().iter().take(6) {
                    if ui.small_button(h).clicked() {
                        self.query_text = h.clone();
                    }
                }
            });
        }
        ui.horizontal(|ui| {
            ui.add(
                egui::Slider::new(&mut shared.project.retrieve.titles, 1..=5000)
                    .logarithmic(true)
                    .text("Title beams"),
            )
            .on_hover_text(hints::TITLE_BEAMS);
            ui.add(
                egui::Slider::new(&mut shared.project.retrieve.candidates, 0..=500)
                    .text("Candidate budget"),
            )
            .on_hover_text(hints::CANDIDATE_BUDGET);
            // The paper's j beams per title apply only without a budget.
            let per_title = shared.project.retrieve.candidates == 0;
            ui.add_enabled(
                per_title,
                egui::Slider::new(&mut shared.project.retrieve.passages, 1..=60)
                    .text("Passage beams"),
            )
            .on_hover_text(hints::PASSAGE_BEAMS)
            .on_disabled_hover_text(hints::PASSAGE_BEAMS_UNUSED);
            ui.add_enabled(
                per_title,
                egui::Checkbox::new(
                    &mut shared.project.retrieve.passage_beam,
                    "full passage beam search",
                ),
            )
            .on_hover_text(hints::PASSAGE_BEAM_SEARCH)
            .on_disabled_hover_text(hints::PASSAGE_BEAMS_UNUSED);
        });
        ui.horizontal(|ui| {
            ui.add(
                egui::Slider::new(&mut shared.project.retrieve.title_prior, 0.0..=2.0)
                    .fixed_decimals(2)
                    .text("title prior"),
            )
            .on_hover_text(hints::TITLE_PRIOR);
            ui.add(
                egui::Slider::new(&mut shared.project.retrieve.answer_passages, 1..=5)
                    .text("answer passages"),
            )
            .on_hover_text(hints::ANSWER_PASSAGES);
        });
        // Each slider in a cell of fixed width, with a fixed number of decimals: moving tau
        // does not shift delta sideways as its number box widens.
        let mut changed = false;
        let r = &mut shared.project.retrieve;
        ui.horizontal(|ui| {
            changed |= fixed_cell(ui, SLIDER_CELL, |ui| {
                ui.add(
                    egui::Slider::new(&mut r.tau, 0.01..=5.0)
                        .logarithmic(true)
                        .fixed_decimals(2)
                        .text("tau"),
                )
                .on_hover_text(hints::TAU)
            })
            .changed();
            changed |= fixed_cell(ui, SLIDER_CELL, |ui| {
                ui.add(
                    egui::Slider::new(&mut r.delta, 0.01..=5.0)
                        .logarithmic(true)
                        .fixed_decimals(2)
                        .text("delta"),
                )
                .on_hover_text(hints::DELTA)
            })
            .changed();
            changed |= fixed_cell(ui, WEIGHT_CELL, |ui| {
                ui.add(
                    egui::Slider::new(&mut r.passage_weight, 0.0..=3.0)
                        .fixed_decimals(2)
                        .text("passage weight"),
                )
                .on_hover_text(hints::PASSAGE_WEIGHT)
            })
            .changed();
            changed |= fixed_cell(ui, WEIGHT_CELL, |ui| {
                ui.add(
                    egui::Slider::new(&mut r.query_weight, 0.0..=32.0)
                        .fixed_decimals(1)
                        .text("query weight"),
                )
                .on_hover_text(hints::QUERY_WEIGHT)
            })
            .changed();
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut r.assess, "self-assessment")
                .on_hover_text("Read the model's own verdict P(reject) for every candidate (the paper's reranking; applies to the next question). Off by default: on new questions it does not separate passages at this model size, the query likelihood does.");
            ui.checkbox(&mut r.likelihood, "read query likelihood")
                .on_hover_text("Read how probable the question is after each candidate (one more pass over the candidates; applies to the next question). A tiny model built from the corpus reads no language and never uses it.");
            ui.checkbox(&mut r.likelihood_base, "with the base model")
                .on_hover_text("Read the query likelihood with the model as it was before fine-tuning (LoRA runs; about as much memory again). Off: with the fine-tuned weights, the default for a run trained with the reading task, whose own weights learned the corpus's questions.");
            egui::ComboBox::from_label("answer read by")
                .selected_text(r.answer_reader.label())
                .show_ui(ui, |ui| {
                    for choice in AnswerReader::ALL {
                        ui.selectable_value(&mut r.answer_reader, choice, choice.label());
                    }
                })
                .response
                .on_hover_text("Who reads the answer out of the top passage (applies to the next question). As the run was trained: its own weights when it trained answers (self-assessment on answered questions), otherwise the base model, asked to answer from the passage in its instruction format; a run that never trained answers repeats the question in the trained format.");
        });
        let weights = shared.project.retrieve.weights();
        if let Some(d) = &self.docid_trace {
            ui.separator();
            super::docids::docid_beams_ui(ui, d, shared.corpus.as_deref());
            return;
        }
        let Some(trace) = self.trace.as_mut() else {
            return;
        };
        if changed || trace.weights() != weights {
            trace.rerank(weights);
        }
        if let Some(e) = self.explanation.as_deref_mut() {
            if e.placed.weights() != weights {
                e.rerank(weights);
            }
        }
        ui.separator();
        if !self.trace_done {
            ui.weak("retrieving ... (results appear as each stage completes)");
        }
        if let Some(ans) = &trace.answer {
            ui.horizontal(|ui| {
                ui.strong("Answer:");
                ui.label(&ans.text)
                    .on_hover_text(format!("read by: {}", ans.reader.label()));
                for id in &ans.cited {
                    if ui
                        .link(format!("[{id}]"))
                        .on_hover_text("Open the cited passage with the answer marked")
                        .clicked()
                    {
                        cmds.push(AppCommand::ShowCited {
                            id: id.clone(),
                            answer: ans.text.clone(),
                        });
                    }
                }
                if ans.read.len() > 1 {
                    ui.weak(format!("(read from {})", ans.read.join(", ")));
                }
            });
        }
        let t = &trace.timings;
        ui.weak(t.summary(" | "));
        ui.horizontal(|ui| {
            let l = ui.label("Passage id");
            let r = ui
                .add(
                    egui::TextEdit::singleline(&mut self.explain_id)
                        .hint_text("the gold passage, say")
                        .desired_width(200.0),
                )
                .labelled_by(l.id);
            let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            let ready = self.trace_done && !shared.is_busy() && !self.explain_id.trim().is_empty();
            let why = ui
                .add_enabled(ready, egui::Button::new("Why not this passage?"))
                .on_hover_text(hints::WHY_NOT);
            if why.clicked() || (enter && ready) {
                cmds.push(AppCommand::Explain(self.explain_id.clone()));
            }
            ui.separator();
            let toggle = ui
                .add_enabled(
                    !shared.is_busy(),
                    egui::Checkbox::new(&mut self.show_bm25, "Side by side with BM25"),
                )
                .on_hover_text(hints::SIDE_BY_SIDE);
            let have = self.bm25.as_ref().is_some_and(|(q, _)| *q == trace.query);
            if toggle.changed() && self.show_bm25 && !have && self.trace_done {
                cmds.push(AppCommand::CompareBm25);
            }
        });
        ui.horizontal(|ui| {
            ui.colored_label(CHOSEN, "chosen by the model");
            ui.colored_label(FORCED, "forced by the trie");
            ui.colored_label(AUTO, "auto-completed");
        });
        egui::ScrollArea::vertical()
            .id_salt("trace")
            .show(ui, |ui| {
                if let Some(e) = self
                    .explanation
                    .as_deref()
                    .filter(|e| e.placed.query == trace.query)
                {
                    super::inspect::explanation_view(ui, e, cmds);
                    ui.separator();
                }
                if let Some((_, hits)) = self
                    .bm25
                    .as_ref()
                    .filter(|(q, _)| self.show_bm25 && *q == trace.query)
                {
                    super::inspect::bm25_view(ui, trace, hits, cmds);
                    ui.separator();
                }
                ui.horizontal(|ui| {
                    ui.strong("Ranking");
                    ui.weak("(click a column to sort)");
                    let l = ui.label("Export to");
                    ui.add(egui::TextEdit::singleline(&mut self.export_path).desired_width(200.0))
                        .labelled_by(l.id);
                    let field = PathField::ExportTrace;
                    if browse_button(ui, field, dialogs) {
                        cmds.push(AppCommand::Browse(field));
                    }
                    if ui.button("Export trace JSON").clicked() {
                        let result = serde_json::to_string_pretty(&*trace)
                            .map_err(|e| e.to_string())
                            .and_then(|json| {
                                crate::model::checkpoint::write_atomic(
                                    std::path::Path::new(self.export_path.trim()),
                                    json.as_bytes(),
                                )
                                .map_err(|e| e.to_string())
                            });
                        self.export_status = Some(match result {
                            Ok(()) => format!("wrote {}", self.export_path.trim()),
                            Err(e) => format!("export failed: {e}"),
                        });
                    }
                    if let Some(st) = &self.export_status {
                        ui.weak(st);
                    }
                });
                const COLUMNS: [&str; 12] = [
                    "rank",
                    "passage",
                    "title",
                    "log P(title)",
                    "log P(passage)",
                    "P(reject)",
                    "log P(question)",
                    "S_T",
                    "S_gen",
                    "S_P",
                    "S_Q",
                    "S",
                ];

                let mut rows: Vec<&crate::retrieve::PassageCandidate> =
                    trace.candidates.iter().collect();
                let key = |c: &crate::retrieve::PassageCandidate, col: usize| -> f64 {
                    match col {
                        3 => trace.titles[c.title_rank].logprob,
                        4 => c.passage_logprob,
                        5 => c.p_reject,
                        6 => c.query_logprob,
                        7 => trace.titles[c.title_rank].s_t,
                        8 => c.s_gen,
                        9 => c.s_p,
                        10 => c.s_q,
                        11 => c.s,
                        _ => c.rank as f64,
                    }
                };
                let (col, desc) = self.score_sort;
                rows.sort_by(|a, b| {
                    let o = match col {
                        1 => a.passage_id.cmp(&b.passage_id),
                        2 => a.title.cmp(&b.title),
                        _ => key(a, col).total_cmp(&key(b, col)),
                    };
                    if desc {
                        o.reverse()
                    } else {
                        o
                    }
                });
                egui::Grid::new("score-table")
                    .striped(true)
                    .num_columns(COLUMNS.len())
                    .show(ui, |ui| {
                        for (k, h) in COLUMNS.iter().enumerate() {
                            let arrow = if self.score_sort.0 == k {
                                if self.score_sort.1 {
                                    " v"
                                } else {
                                    " ^"
                                }
                            } else {
                                ""
                            };
                            if ui
                                .selectable_label(self.score_sort.0 == k, format!("{h}{arrow}"))
                                .on_hover_text(hints::SCORE_COLUMNS[k])
                                .clicked()
                            {
                                self.score_sort = if self.score_sort.0 == k {
                                    (k, !self.score_sort.1)
                                } else {
                                    (k, k >= 3)
                                };
                            }
                        }
                        ui.end_row();
                        for c in rows {
                            ui.label(c.rank.to_string());
                            if ui.link(&c.passage_id).clicked() {
                                cmds.push(AppCommand::ShowPassage(c.passage_id.clone()));
                            }
                            ui.label(&c.title);
                            ui.label(format!("{:.3}", trace.titles[c.title_rank].logprob));
                            ui.label(format!("{:.3}", c.passage_logprob));
                            ui.label(format!("{:.3}", c.p_reject));
                            ui.label(format!("{:.3}", c.query_logprob));
                            ui.label(format!("{:.3}", trace.titles[c.title_rank].s_t));
                            ui.label(format!("{:.3}", c.s_gen));
                            ui.label(format!("{:.3}", c.s_p));
                            ui.label(format!("{:.3}", c.s_q));
                            ui.label(format!("{:.4}", c.s));
                            ui.end_row();
                        }
                    });
                ui.separator();
                ui.strong("Title beams and passage expansions");
                for (tr, title) in trace.titles.iter().enumerate() {
                    let read = trace.candidates.iter().any(|c| c.title_rank == tr);
                    let prior = title
                        .prior_logprob
                        .map(|p| format!(", prior {p:.2}"))
                        .unwrap_or_default();
                    egui::CollapsingHeader::new(format!(
                        "{}  (log P {:.2}{prior}, S_T {:.3}){}",
                        title.title,
                        title.logprob,
                        title.s_t,
                        if read {
                            ""
                        } else {
                            "  — passages not read: the candidate budget was spent"
                        }
                    ))
                    .id_salt(("title", tr))
                    .default_open(tr == 0)
                    .show(ui, |ui| {
                        token_line(ui, &title.steps);
                        for c in trace.candidates.iter().filter(|c| c.title_rank == tr) {
                            ui.horizontal(|ui| {
                                ui.weak(format!(
                                    "#{} {} log P(passage) {:.2}, P(reject) {:.2}:",
                                    c.rank, c.passage_id, c.passage_logprob, c.p_reject
                                ));
                            });
                            token_line(ui, &c.steps);
                        }
                    });
                }
            });
    }
}

/// One line of tokens, coloured by how each was produced, with its log-probabilities on hover.
pub(super) fn token_line(ui: &mut egui::Ui, steps: &[crate::retrieve::TokenStep]) {
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing.x = 0.0;
        for (k, s) in steps.iter().enumerate() {
            let color = match s.kind {
                StepKind::Chosen => CHOSEN,
                StepKind::Forced => FORCED,
                StepKind::AutoComplete => AUTO,
            };
            // Long auto-completed tails are elided after a while to keep the view readable.
            if s.kind == StepKind::AutoComplete && k > 40 {
                ui.colored_label(AUTO, " ...");
                break;
            }
            let lp = s
                .logprob
                .map(|l| format!("{l:.3}"))
                .unwrap_or_else(|| "not computed".into());
            let kind = match s.kind {
                StepKind::Chosen => "chosen by the model",
                StepKind::Forced => "forced by the trie",
                StepKind::AutoComplete => "auto-completed (the prefix was unique)",
            };
            let mut hover = format!(
                "{:?} ({kind}) | log p {lp} | log p under the trie {:.3} | {} tokens allowed",
                s.piece, s.trie_logprob, s.alternatives
            );
            if !s.rivals.is_empty() {
                let others: Vec<String> = s
                    .rivals
                    .iter()
                    .map(|r| format!("{:?} {:.3}", r.piece, r.logprob))
                    .collect();
                hover.push_str(&format!("\nthe trie also allowed: {}", others.join(", ")));
            }
            // A newline in the text breaks the line, as the text reads, instead of showing as
            // a literal "\n".
            for (n, part) in s.piece.split('\n').enumerate() {
                if n > 0 {
                    ui.end_row();
                }
                if !part.is_empty() {
                    let text = egui::RichText::new(part).color(color).monospace();
                    ui.label(text).on_hover_text(hover.as_str());
                }
            }
        }
    });
}
