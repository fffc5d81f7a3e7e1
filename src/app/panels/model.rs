//! Model panel: pick the base model and how to train it.

use super::hints;
use crate::app::dialogs::{path_row, Dialogs, PathField};
use crate::app::{AppCommand, Shared};
use crate::model::ModelSource;

/// The Model panel: everything it shows lives in the project or the loaded session.
#[derive(Debug, Clone, Default)]
pub struct ModelPanel;

impl ModelPanel {
    /// Draws the panel.
    pub fn ui(
        &mut self,
        shared: &mut Shared,
        dialogs: &Dialogs,
        ui: &mut egui::Ui,
        cmds: &mut Vec<AppCommand>,
    ) {
        ui.heading("Model");
        path_row(
            ui,
            "Model source",
            &mut shared.project.model_source,
            "tiny, model.gguf, a folder or hf:OWNER/NAME",
            &[PathField::ModelFile, PathField::ModelFolder],
            dialogs,
            cmds,
        );
        ui.weak("`tiny` (trained from scratch on the corpus, no download), a .gguf file, a Hugging Face folder, or hf:OWNER/NAME.");
        ui.horizontal(|ui| {
            for (label, src) in [
                ("Tiny", "tiny".to_string()),
                ("SmolLM2-135M (GGUF)", crate::app::smollm2_path()),
            ] {
                if ui.button(label).clicked() {
                    shared.project.model_source = src;
                    // The training settings follow the model (the preset's recipe differs).
                    shared.project.apply_preset(
                        shared
                            .project
                            .preset
                            .unwrap_or(crate::worker::preset::Preset::Quick),
                    );
                }
            }
        });
        match shared.project.model_source.parse::<ModelSource>() {
            Ok(s) => ui.label(format!("source: {s}")),
            Err(e) => ui.colored_label(egui::Color32::from_rgb(200, 60, 60), e),
        };
        ui.separator();
        ui.checkbox(
            &mut shared.project.lora,
            "Train LoRA adapters (base frozen)",
        )
        .on_hover_text(hints::LORA);
        ui.add_enabled(
            shared.project.lora,
            egui::Slider::new(&mut shared.project.lora_rank, 1..=64).text("LoRA rank"),
        )
        .on_hover_text(hints::LORA_RANK)
        .on_disabled_hover_text(hints::LORA_RANK);
        ui.separator();
        ui.horizontal(|ui| {
            if ui
                .add_enabled(
                    !shared.is_busy(),
                    egui::Button::new("Load model without training"),
                )
                .clicked()
            {
                cmds.push(AppCommand::OpenUntrained);
            }
        });
        if let Some((file, done, total)) = &shared.download {
            ui.add(
                egui::ProgressBar::new(*done as f32 / (*total).max(1) as f32)
                    .desired_width(420.0)
                    .text(format!(
                        "downloading {file}: {:.1} / {:.1} MB",
                        *done as f64 / 1e6,
                        *total as f64 / 1e6
                    )),
            );
        }
        if let Some(info) = &shared.session {
            ui.label(format!("loaded: {}", info.description));
            egui::Grid::new("model-facts").show(ui, |ui| {
                for (k, v) in [
                    (
                        "parameters",
                        format!("{:.1} M", info.parameters as f64 / 1e6),
                    ),
                    ("vocabulary", info.vocab_size.to_string()),
                    ("context", format!("{} tokens", info.context)),
                    (
                        "weights in memory",
                        format!("{:.0} MB (f32)", info.weight_bytes as f64 / 1e6),
                    ),
                    (
                        "training memory (estimate)",
                        format!(
                            "~{:.1} GB full, ~{:.1} GB LoRA",
                            info.weight_bytes as f64 * 8.0 / 1e9,
                            info.weight_bytes as f64 * 6.0 / 1e9
                        ),
                    ),
                ] {
                    ui.label(k);
                    ui.label(v);
                    ui.end_row();
                }
            });
        }
        if matches!(shared.project.model_source.parse(), Ok(ModelSource::Tiny)) {
            let est_tiny = crate::model::Config::tiny(4096).parameter_count();
            ui.weak(format!(
            "Tiny model: ~{:.1}M parameters (~{} MB while training), built and trained from nothing on this corpus{}. \
             It memorises the corpus and finds passages from their own sentences, but it knows no language beyond the corpus: \
             it does not understand new questions. For questions in your own words, use a pretrained model (SmolLM2).",
            est_tiny as f64 / 1e6,
            est_tiny * 16 / 1_000_000,
            shared.corpus
                .as_ref()
                .map(|c| format!(" ({} passages)", c.len()))
                .unwrap_or_default()
        ));
        }
    }
}
