//! Model panel: pick the base model and how to train it.

use super::{hints, human_bytes};
use crate::app::dialogs::{path_row, Dialogs, PathField};
use crate::app::{AppCommand, Shared};
use crate::model::ModelSource;

/// The Model panel: its settings live in the project; it keeps the size of the selected model,
/// read once per source text (a GGUF header or a config.json), so the figures it shows are the
/// selected model's, not another's.
#[derive(Debug, Clone, Default)]
pub struct ModelPanel {
    /// (source text, its parameter count when it can be known without loading the weights).
    selected_size: Option<(String, Option<usize>)>,
    /// Where "Export as Hugging Face folder" writes (empty: beside the run, `RUN-hf`).
    pub export_path: String,
    /// What the last export wrote.
    pub export_status: Option<String>,
    /// The run `export_path` was proposed for (a new run proposes its own).
    export_for: Option<std::path::PathBuf>,
}

/// Parameters of the model a source names, read without loading its weights: `None` when it
/// cannot be known yet (a Hub model not downloaded, a missing or unreadable file).
pub fn parameters_of(source: &ModelSource) -> Option<usize> {
    match source {
        ModelSource::Tiny => {
            let vocab = crate::model::source::tiny::TinyOptions::default().vocab_size;
            Some(crate::model::Config::tiny(vocab).parameter_count())
        }
        ModelSource::Gguf(path) => {
            let (content, _) = crate::model::source::gguf::read_gguf_header(path).ok()?;
            Some(
                content
                    .tensor_infos
                    .values()
                    .map(|t| t.shape.elem_count())
                    .sum(),
            )
        }
        ModelSource::HfFolder(dir) => crate::model::Config::from_file(&dir.join("config.json"))
            .ok()
            .map(|c| c.parameter_count()),
        ModelSource::Hub { .. } => None,
    }
}

/// Estimated memory of training a model of `parameters`: (full fine-tune, LoRA), in bytes. The
/// f32 weights times 8 (weights, gradients, two optimiser moments, the base copy and
/// activations) and times 6 (LoRA: frozen weights, the base copy and activations).
pub fn training_memory(parameters: usize) -> (usize, usize) {
    let weights = parameters * 4;
    (weights * 8, weights * 6)
}

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
                        format!("{} (f32)", human_bytes(info.weight_bytes)),
                    ),
                    ("training memory (estimate)", {
                        let (full, lora) = training_memory(info.parameters);
                        format!("~{} full, ~{} LoRA", human_bytes(full), human_bytes(lora))
                    }),
                ] {
                    ui.label(k);
                    ui.label(v);
                    ui.end_row();
                }
            });
        }
        if shared.trained {
            self.export_section(shared, ui, cmds);
        }
        self.selected_model_note(shared, ui);
    }

    /// The loaded run's model as a Hugging Face folder, for transformers and other tools.
    fn export_section(&mut self, shared: &Shared, ui: &mut egui::Ui, cmds: &mut Vec<AppCommand>) {
        ui.separator();
        if shared.loaded_run != self.export_for {
            self.export_for = shared.loaded_run.clone();
            self.export_path = match &self.export_for {
                Some(run) => format!("{}-hf", run.display().to_string().trim_end_matches('/')),
                None => String::new(),
            };
        }
        ui.horizontal(|ui| {
            let l = ui.label("Export folder");
            ui.add(egui::TextEdit::singleline(&mut self.export_path).desired_width(360.0))
                .labelled_by(l.id);
            if ui
                .add_enabled(
                    !shared.is_busy(),
                    egui::Button::new("Export as Hugging Face folder"),
                )
                .on_hover_text(
                    "Writes the trained model (LoRA merged) as config.json, model.safetensors, \
                     tokenizer files and a model card, for transformers and other tools; an \
                     existing folder is not replaced",
                )
                .clicked()
            {
                cmds.push(AppCommand::ExportModel(std::path::PathBuf::from(
                    self.export_path.trim(),
                )));
            }
        });
        if let Some(s) = &self.export_status {
            ui.weak(s.as_str());
        }
    }
}

impl ModelPanel {
    /// What the selected source is: its size (when known without loading it) and, for the tiny
    /// model, what it can and cannot do.
    fn selected_model_note(&mut self, shared: &Shared, ui: &mut egui::Ui) {
        let Ok(source) = shared.project.model_source.parse::<ModelSource>() else {
            return;
        };
        let text = shared.project.model_source.trim().to_string();
        if self.selected_size.as_ref().is_none_or(|(t, _)| *t != text) {
            self.selected_size = Some((text.clone(), parameters_of(&source)));
        }
        let size = self.selected_size.as_ref().and_then(|(_, p)| *p).map(|p| {
            let (full, lora) = training_memory(p);
            let training = if shared.project.lora {
                format!("~{} while training with LoRA", human_bytes(lora))
            } else {
                format!("~{} while training in full", human_bytes(full))
            };
            format!("~{:.1}M parameters ({training})", p as f64 / 1e6)
        });
        if source == ModelSource::Tiny {
            ui.weak(format!(
                "Tiny model: {}, built and trained from nothing on this corpus{}. \
                 It memorises the corpus and finds passages from their own sentences, but it knows no language beyond the corpus: \
                 it does not understand new questions. For questions in your own words, use a pretrained model (SmolLM2).",
                size.unwrap_or_else(|| "size unknown".into()),
                shared
                    .corpus
                    .as_ref()
                    .map(|c| format!(" ({} passages)", c.len()))
                    .unwrap_or_default()
            ));
        } else {
            ui.weak(match size {
                Some(size) => format!("Selected model: {size}."),
                None => "Selected model: its size is known once it is loaded (a Hub model \
                         downloads first; a missing file cannot be read)."
                    .to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures follow the selected source: the tiny model's are its own, a source that
    /// cannot be read has none (rather than the tiny model's).
    #[test]
    fn figures_are_the_selected_models() {
        let vocab = crate::model::source::tiny::TinyOptions::default().vocab_size;
        assert_eq!(
            parameters_of(&ModelSource::Tiny),
            Some(crate::model::Config::tiny(vocab).parameter_count())
        );
        let missing = ModelSource::Gguf("/no/such/selfret-model.gguf".into());
        assert_eq!(parameters_of(&missing), None);
        let hub = ModelSource::Hub {
            repo: "owner/name".into(),
            revision: "main".into(),
        };
        assert_eq!(parameters_of(&hub), None);
    }
}
