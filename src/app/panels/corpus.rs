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
                ui.strong(format!("{} - {}", p.id, p.title));
                egui::ScrollArea::vertical()
                    .id_salt("passage-text")
                    .max_height(SELECTED_TEXT_HEIGHT)
                    .show(ui, |ui| ui.label(&p.text));
            }
        }
    }
}
