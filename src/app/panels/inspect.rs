//! Two views of the Query panel for inspecting a ranking: "why not this passage?" (how the model
//! scores a passage the user picks, placed in the ranking) and BM25's top ten beside the model's,
//! with the passages both found marked.

use super::query::token_line;
use crate::app::AppCommand;
use crate::retrieve::{Explanation, RetrievalTrace};
use crate::worker::Bm25Hit;

/// Marks a passage both rankings hold.
const BOTH: egui::Color32 = egui::Color32::from_rgb(60, 150, 80);

/// The explanation of one passage: its title's place, its tokens forced through the trie, each
/// score, and the rank it gets among the candidates.
pub fn explanation_view(ui: &mut egui::Ui, e: &Explanation, cmds: &mut Vec<AppCommand>) {
    ui.horizontal(|ui| {
        ui.strong("Why not");
        if ui.link(&e.passage_id).clicked() {
            cmds.push(AppCommand::ShowPassage(e.passage_id.clone()));
        }
        ui.strong(format!("({})?", e.title));
    });
    let beams = e.placed.titles.len() - usize::from(e.title_beam_rank.is_none());
    let title_place = match e.title_beam_rank {
        Some(r) => format!("title beam {r} of {beams}"),
        None => format!(
            "not among the {beams} title beams; its probability would place it {} of {}",
            e.title_place,
            beams + 1
        ),
    };
    ui.label(format!(
        "Title: log P {:.3} (mean token probability {:.3}), {title_place}",
        e.title_logprob, e.title_norm_prob
    ));
    token_line(ui, &e.title_steps);
    ui.label(format!(
        "Passage after the title, forced through the trie: log P {:.3}",
        e.passage_logprob
    ));
    token_line(ui, &e.passage_steps);
    ui.label(format!(
        "log P(question | passage) {:.3}, P(reject) {:.3}",
        e.query_logprob, e.p_reject
    ));
    let n = e.placed.candidates.len();
    let how = if e.was_candidate {
        "it was already a candidate"
    } else {
        "added to the candidates to place it"
    };
    ui.label(format!(
        "S_T {:.3}, S_gen {:.3}, S_P {:.3}, S_Q {:.3}, S {:.4}: rank {} of {n} ({how})",
        e.s_t, e.s_gen, e.s_p, e.s_q, e.s, e.rank
    ));
    if let Some(top) = e
        .placed
        .ranking
        .first()
        .filter(|t| t.passage_id != e.passage_id)
    {
        ui.weak(format!(
            "The model's first passage, {}, has S {:.4}.",
            top.passage_id, top.s
        ));
    }
}

/// The model's top ten and BM25's side by side; a passage in both lists is marked.
pub fn bm25_view(
    ui: &mut egui::Ui,
    trace: &RetrievalTrace,
    hits: &[Bm25Hit],
    cmds: &mut Vec<AppCommand>,
) {
    let model: Vec<(&str, &str)> = trace
        .ranking
        .iter()
        .take(10)
        .map(|r| (r.passage_id.as_str(), r.title.as_str()))
        .collect();
    let in_model = |id: &str| model.iter().any(|(m, _)| *m == id);
    let in_bm25 = |id: &str| hits.iter().any(|h| h.passage_id == id);
    let overlap = model.iter().filter(|(id, _)| in_bm25(id)).count();
    ui.label(format!(
        "Side by side with BM25: {overlap} of the model's top {} are in BM25's top {}",
        model.len(),
        hits.len()
    ));
    egui::Grid::new("bm25-side-by-side")
        .striped(true)
        .num_columns(3)
        .show(ui, |ui| {
            ui.strong("rank");
            ui.strong("self-retrieval");
            ui.strong("BM25");
            ui.end_row();
            for k in 0..model.len().max(hits.len()) {
                ui.label((k + 1).to_string());
                let mut cell =
                    |ui: &mut egui::Ui, entry: Option<(&str, &str)>, both: bool| match entry {
                        Some((id, title)) => {
                            ui.horizontal(|ui| {
                                if ui.link(id).on_hover_text(title).clicked() {
                                    cmds.push(AppCommand::ShowPassage(id.to_string()));
                                }
                                if both {
                                    ui.colored_label(BOTH, "(both)");
                                }
                            });
                        }
                        None => {
                            ui.label("");
                        }
                    };
                let m = model.get(k).copied();
                cell(ui, m, m.is_some_and(|(id, _)| in_bm25(id)));
                let b = hits
                    .get(k)
                    .map(|h| (h.passage_id.as_str(), h.title.as_str()));
                cell(ui, b, b.is_some_and(|(id, _)| in_model(id)));
                ui.end_row();
            }
        });
}
