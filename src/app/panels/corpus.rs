//! Corpus panel: choose and load a collection, see what was skipped, browse passages.

use super::human_bytes;
use crate::app::dialogs::{path_row, Dialogs, PathField};
use crate::app::{AppCommand, Shared};

const PAGE: usize = 25;
/// Height of the selected passage's text below the table (it scrolls beyond).
const SELECTED_TEXT_HEIGHT: f32 = 150.0;

/// The Corpus panel's own state: the passage table's filter, page and selection.
#[derive(Debug, Clone, Default)]
pub struct CorpusPanel {
    pub filter: String,
    pub page: usize,
    /// Passage indices matching the filter: (filter, corpus size, matches).
    pub matches: Option<(String, usize, Vec<usize>)>,
    pub selected_passage: Option<String>,
    /// What the last title generation did.
    pub titles_status: Option<String>,
    /// Words to mark in the selected passage (the answer that cited it).
    pub highlight: Option<String>,
    /// The selected passage was opened from the Query panel (a link leads back).
    pub from_query: bool,
    /// The last question the Query panel ran: a selected passage can be scored for it.
    pub question: Option<String>,
}

/// Byte range of the first case-insensitive occurrence of `needle` in `text` (ASCII case
/// folding keeps byte offsets, so the range is valid in `text`).
pub fn find_span(text: &str, needle: &str) -> Option<std::ops::Range<usize>> {
    let needle = needle.trim();
    if needle.is_empty() {
        return None;
    }
    let start = text
        .to_ascii_lowercase()
        .find(&needle.to_ascii_lowercase())?;
    Some(start..start + needle.len())
}

/// `text` with `span` drawn on a highlight (the answer inside its passage).
fn marked_text(ui: &egui::Ui, text: &str, span: std::ops::Range<usize>) -> egui::text::LayoutJob {
    let font = egui::TextStyle::Body.resolve(ui.style());
    let plain = egui::TextFormat::simple(font.clone(), ui.visuals().text_color());
    let marked = egui::TextFormat {
        background: egui::Color32::from_rgb(250, 215, 90),
        color: egui::Color32::BLACK,
        ..egui::TextFormat::simple(font, ui.visuals().text_color())
    };
    let mut job = egui::text::LayoutJob::default();
    job.append(&text[..span.start], 0.0, plain.clone());
    job.append(&text[span.clone()], 0.0, marked);
    job.append(&text[span.end..], 0.0, plain);
    job.wrap.max_width = ui.available_width();
    job
}

impl CorpusPanel {
    /// Draws the panel.
    pub fn ui(
        &mut self,
        shared: &mut Shared,
        dialogs: &Dialogs,
        ui: &mut egui::Ui,
        cmds: &mut Vec<AppCommand>,
    ) {
        ui.heading("Corpus");
        ui.horizontal(|ui| {
            path_row(
                ui,
                "Corpus path",
                &mut shared.project.corpus_path,
                "corpus.jsonl, a BEIR folder or a folder of documents",
                &[PathField::CorpusFile, PathField::CorpusFolder],
                dialogs,
                cmds,
            );
            if ui
                .add_enabled(!shared.is_busy(), egui::Button::new("Load"))
                .clicked()
            {
                cmds.push(AppCommand::LoadCorpus);
            }
        });
        ui.weak("A .jsonl file ({id,title,text}), a BEIR folder, or a folder of .txt/.md/.pdf. Files can be dropped on the window.");
        let Some(corpus) = shared.corpus.clone() else {
            ui.label("No corpus loaded.");
            return;
        };
        ui.separator();
        let words: usize = corpus.passages.iter().map(|p| p.words()).sum();
        ui.label(format!(
            "{} passages, {} titles, {} words, {} skipped items",
            corpus.len(),
            corpus.titles.len(),
            words,
            corpus.skipped_count()
        ));
        let untitled = shared.untitled;
        if untitled > 0 || self.titles_status.is_some() {
            ui.horizontal(|ui| {
                if untitled > 0 {
                    ui.label(format!(
                        "{untitled} documents have no title (their first words stand in)."
                    ));
                    if ui
                        .add_enabled(
                            !shared.is_busy() && shared.session.is_some(),
                            egui::Button::new("Generate titles with the model"),
                        )
                        .on_disabled_hover_text("load a pretrained model in the Model panel first")
                        .clicked()
                    {
                        cmds.push(AppCommand::GenerateTitles);
                    }
                }
                if let Some(s) = &self.titles_status {
                    ui.weak(s.as_str());
                }
            });
        }
        if let Some(info) = &shared.session {
            let t = &info.trie;
            ui.label(format!(
                "trie: {} titles, {} passages, {} tokens, {} nodes, {} ({:.2} bytes/token)",
                t.titles,
                t.passages,
                t.corpus_tokens,
                t.nodes,
                human_bytes(t.bytes),
                t.bytes_per_token()
            ));
        }
        if let Some(tree) = shared
            .session
            .as_ref()
            .and_then(|s| s.docid_tree.as_deref())
        {
            egui::CollapsingHeader::new("Docid tree").show(ui, |ui| {
                super::docids::docid_tree_ui(ui, tree, &corpus);
            });
        }
        egui::CollapsingHeader::new("Files")
            .default_open(corpus.skipped_count() > 0)
            .show(ui, |ui| {
                for f in &corpus.files {
                    ui.label(format!(
                        "{}: {} loaded, {} skipped",
                        f.path.display(),
                        f.loaded,
                        f.skipped.len()
                    ));
                    for s in f.skipped.iter().take(20) {
                        let at = s.line.map(|l| format!("line {l}: ")).unwrap_or_default();
                        ui.colored_label(
                            egui::Color32::from_rgb(190, 120, 40),
                            format!("    {at}{}", s.reason),
                        );
                    }
                }
            });
        ui.horizontal(|ui| {
            let l = ui.label("Search passages");
            if ui
                .add(egui::TextEdit::singleline(&mut self.filter).desired_width(300.0))
                .labelled_by(l.id)
                .changed()
            {
                self.page = 0;
            }
        });
        // The scan over every passage runs only when the filter or the corpus changes.
        let stale = self
            .matches
            .as_ref()
            .is_none_or(|(f, n, _)| *f != self.filter || *n != corpus.len());
        if stale {
            let needle = self.filter.to_lowercase();
            let matches: Vec<usize> = (0..corpus.len())
                .filter(|&i| {
                    let p = &corpus.passages[i];
                    needle.is_empty()
                        || p.id.to_lowercase().contains(&needle)
                        || p.title.to_lowercase().contains(&needle)
                        || p.text.to_lowercase().contains(&needle)
                })
                .collect();
            self.matches = Some((self.filter.clone(), corpus.len(), matches));
        }
        let total = self.matches.as_ref().map_or(0, |m| m.2.len());
        let pages = total.div_ceil(PAGE).max(1);
        self.page = self.page.min(pages - 1);
        ui.horizontal(|ui| {
            if ui
                .add_enabled(self.page > 0, egui::Button::new("Previous page"))
                .clicked()
            {
                self.page -= 1;
            }
            ui.label(format!(
                "page {} of {pages} ({} matches)",
                self.page + 1,
                total
            ));
            if ui
                .add_enabled(self.page + 1 < pages, egui::Button::new("Next page"))
                .clicked()
            {
                self.page += 1;
            }
        });
        let page: Vec<usize> = self
            .matches
            .as_ref()
            .map(|m| {
                m.2.iter()
                    .skip(self.page * PAGE)
                    .take(PAGE)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        // The table takes the height left (minus room for the selected passage's text) and its
        // scroll bar always shows, so a page with more rows than fit says so.
        let reserve = if self.selected_passage.is_some() {
            SELECTED_TEXT_HEIGHT + 40.0
        } else {
            0.0
        };
        ui.scope(|ui| {
            // A solid bar beside the rows, not one floating over them only while hovered.
            ui.spacing_mut().scroll = egui::style::ScrollStyle::solid();
            egui::ScrollArea::vertical()
                .id_salt("passages")
                .max_height((ui.available_height() - reserve).max(200.0))
                .auto_shrink([false, true])
                .scroll_bar_visibility(egui::scroll_area::ScrollBarVisibility::AlwaysVisible)
                .show(ui, |ui| {
                    egui::Grid::new("passage-table")
                        .striped(true)
                        .num_columns(3)
                        .show(ui, |ui| {
                            ui.strong("id");
                            ui.strong("title");
                            ui.strong("words");
                            ui.end_row();
                            for &i in &page {
                                let p = &corpus.passages[i];
                                let selected =
                                    self.selected_passage.as_deref() == Some(p.id.as_str());
                                if ui.selectable_label(selected, &p.id).clicked() {
                                    self.selected_passage = Some(p.id.clone());
                                    self.highlight = None;
                                }
                                ui.label(&p.title);
                                ui.label(p.words().to_string());
                                ui.end_row();
                            }
                        });
                });
        });
        if let Some(id) = &self.selected_passage {
            if let Some(i) = corpus.index_of(id) {
                let p = &corpus.passages[i];
                ui.separator();
                ui.horizontal(|ui| {
                    ui.strong(format!("{} - {}", p.id, p.title));
                    if self.from_query && ui.link("Back to the query").clicked() {
                        cmds.push(AppCommand::SwitchPanel(crate::app::PanelKind::Query));
                    }
                    let can_explain = shared.session.is_some() && self.question.is_some();
                    let why = ui
                        .add_enabled(
                            can_explain && !shared.is_busy(),
                            egui::Button::new("Why not this passage?"),
                        )
                        .on_hover_text(
                            "Scores this passage for the Query panel's question: its title's and \
                             its own log-probabilities, P(reject), and where it would rank",
                        )
                        .on_disabled_hover_text("ask a question in the Query panel first");
                    if why.clicked() {
                        cmds.push(AppCommand::Explain(p.id.clone()));
                    }
                });
                let span = self
                    .highlight
                    .as_deref()
                    .and_then(|a| find_span(&p.text, a));
                if let (Some(answer), None) = (&self.highlight, &span) {
                    ui.weak(format!(
                        "(the answer \"{answer}\" is not in the passage's words)"
                    ));
                }
                egui::ScrollArea::vertical()
                    .id_salt("passage-text")
                    .max_height(SELECTED_TEXT_HEIGHT)
                    .show(ui, |ui| match span {
                        Some(span) => ui.label(marked_text(ui, &p.text, span)),
                        None => ui.label(&p.text),
                    });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::find_span;

    #[test]
    fn the_answer_is_found_in_its_passage_whatever_its_case() {
        let text = "Karen Spärck Jones proposed IDF in 1972.";
        assert_eq!(find_span(text, "in 1972"), Some(33..40));
        assert_eq!(
            &text[find_span(text, "PROPOSED idf").unwrap()],
            "proposed IDF"
        );
        assert_eq!(find_span(text, "  "), None);
        assert_eq!(find_span(text, "1973"), None);
    }
}
