//! The state the panels share: the persisted [`Project`] (saved by eframe and to .ron project
//! files, so its serialized form must stay loadable: keep field names and serde defaults) and
//! [`Shared`], what the worker reported that more than one panel shows.

use crate::corpus::Corpus;
use crate::model::ModelSource;
use crate::retrieve::RetrieveOptions;
use crate::worker::index::IndexSpec;
use crate::worker::preset::Preset;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// The key the project is saved under in eframe's storage.
pub(super) const STORAGE_KEY: &str = "selfret-project";

/// The panels of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
pub enum PanelKind {
    #[default]
    Corpus,
    Model,
    Train,
    Query,
    Evaluate,
}

impl PanelKind {
    pub(super) const ALL: [PanelKind; 5] = [
        PanelKind::Corpus,
        PanelKind::Model,
        PanelKind::Train,
        PanelKind::Query,
        PanelKind::Evaluate,
    ];
    pub(super) fn label(self) -> &'static str {
        match self {
            PanelKind::Corpus => "Corpus",
            PanelKind::Model => "Model",
            PanelKind::Train => "Train",
            PanelKind::Query => "Query",
            PanelKind::Evaluate => "Evaluate",
        }
    }
}

/// Everything the user set up; saved between sessions (and to .ron project files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    pub corpus_path: String,
    pub model_source: String,
    pub run_dir: String,
    pub lora: bool,
    pub lora_rank: usize,
    pub steps: usize,
    pub lr: f64,
    pub batch_tokens: usize,
    pub queries_path: String,
    pub retrieve: RetrieveOptions,
    pub panel: PanelKind,
    pub query_history: Vec<String>,
    #[serde(default)]
    pub eval: EvalSettings,
    #[serde(default)]
    pub mix: crate::train::TaskMix,
    /// Indexing target: words of the passage after the title (0: the whole passage).
    #[serde(default)]
    pub target_words: usize,
    /// Budget in passes over the data instead of steps (0: use `steps`).
    #[serde(default)]
    pub epochs: f64,
    /// Indexing sentences per passage (0: all of them).
    #[serde(default = "three")]
    pub sentences_per_passage: usize,
    /// Questions the base model writes per passage for retrieval training (0: none).
    #[serde(default)]
    pub pseudo_per_passage: usize,
    /// The preset the training settings were last filled from (None: set by hand).
    #[serde(default)]
    pub preset: Option<Preset>,
    /// The getting-started strip was hidden (the side bar shows it again).
    #[serde(default)]
    pub guide_hidden: bool,
    /// Train the second retrieval mode: docids through a retrieval pathway, instead of titles
    /// and passages.
    #[serde(default)]
    pub retrieve_by_docids: bool,
    /// Docid stage 2 (modes 1 + 2) instead of the warm-up: continues `docid_stage1_run`.
    #[serde(default)]
    pub docid_stage2: bool,
    /// The stage-1 docid run stage 2 continues.
    #[serde(default)]
    pub docid_stage1_run: String,
}

/// Where a new run goes: `wanted` if nothing is there yet, else the first free `wanted-2`,
/// `wanted-3`, ...: a new project never points Start at a run someone already made.
pub fn new_run_dir(wanted: &std::path::Path) -> PathBuf {
    if wanted.exists() {
        super::panels::fresh_run_dir(wanted)
    } else {
        wanted.to_path_buf()
    }
}

fn three() -> usize {
    3
}

/// The model `scripts/fetch-model.sh` fetches, the demo's default.
pub fn smollm2_path() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .display()
        .to_string()
}

impl Project {
    /// Fills the training settings from a preset (for the current corpus and model): the
    /// form then shows what will run, and any field can still be changed.
    pub fn apply_preset(&mut self, preset: Preset) {
        let source = self.model_source.parse().unwrap_or(ModelSource::Tiny);
        let mut spec = IndexSpec::new(PathBuf::from(&self.corpus_path), source);
        preset.apply(&mut spec);
        self.fill_training_settings(&spec);
        self.preset = Some(preset);
    }

    /// Shows an opened run's own settings (from its `run.ron`): the form then says how that run
    /// was trained, its step count included, instead of what the form held before.
    pub fn take_run_settings(&mut self, spec: &IndexSpec) {
        self.fill_training_settings(spec);
        self.steps = spec.train.steps;
        self.preset = None;
    }

    /// The training fields a spec determines (all but the step count, which a preset leaves).
    fn fill_training_settings(&mut self, spec: &IndexSpec) {
        self.lora = spec.lora.is_some();
        if let Some(l) = &spec.lora {
            self.lora_rank = l.rank;
        }
        self.lr = spec.train.lr;
        self.batch_tokens = spec.train.batch_tokens;
        self.mix = spec.train.mix;
        self.epochs = spec.train.epochs.unwrap_or(0.0);
        self.target_words = match spec.data.target {
            crate::train::data::TargetLength::Full => 0,
            crate::train::data::TargetLength::FirstWords(n) => n,
        };
        self.sentences_per_passage = spec.data.sentences_per_passage;
        self.pseudo_per_passage = spec.pseudo.as_ref().map(|p| p.per_passage).unwrap_or(0);
        self.retrieve_by_docids = spec.docids.is_some();
        let stage2 = spec.docids.as_ref().and_then(|d| d.stage2.as_ref());
        self.docid_stage2 = stage2.is_some();
        if let Some(s) = stage2 {
            self.docid_stage1_run = s.from.display().to_string();
        }
    }
}

/// The Evaluate panel's choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    pub queries_path: String,
    pub limit: usize,
    pub bm25: bool,
    pub dense: bool,
    pub self_retrieval: bool,
    /// BM25's top passage answered by the loaded model.
    #[serde(default)]
    pub reader: bool,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            queries_path: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("corpora/ir_history.queries.jsonl")
                .display()
                .to_string(),
            limit: 50,
            bm25: true,
            dense: false,
            self_retrieval: true,
            reader: false,
        }
    }
}

impl Default for Project {
    fn default() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut project = Project {
            name: "demo".into(),
            corpus_path: root.join("corpora/ir_history.jsonl").display().to_string(),
            model_source: smollm2_path(),
            run_dir: new_run_dir(&root.join("runs/demo")).display().to_string(),
            lora: false,
            lora_rank: 8,
            steps: 300,
            lr: 1e-3,
            batch_tokens: 2048,
            queries_path: String::new(),
            retrieve: RetrieveOptions::default(),
            panel: PanelKind::Corpus,
            query_history: Vec::new(),
            eval: EvalSettings::default(),
            mix: Default::default(),
            target_words: 0,
            epochs: 0.0,
            sentences_per_passage: 3,
            pseudo_per_passage: 0,
            preset: None,
            guide_hidden: false,
            retrieve_by_docids: false,
            docid_stage2: false,
            docid_stage1_run: String::new(),
        };
        // The demo: SmolLM2 with the quick preset, trained on the demo's queries and evaluated
        // on its dev questions (never trained on).
        project.queries_path = root
            .join("corpora/ir_history.queries.jsonl")
            .display()
            .to_string();
        project.eval.queries_path = root
            .join("corpora/ir_history.dev.jsonl")
            .display()
            .to_string();
        project.apply_preset(Preset::Quick);
        project
    }
}

/// What more than one panel (or the top bar) reads: the project and what the worker loaded.
/// Panels get `&mut` to it beside their own state, so the borrows split.
pub struct Shared {
    pub project: Project,
    pub corpus: Option<Arc<Corpus>>,
    pub session_info: Option<String>,
    /// Details of the loaded model (parameters, trie size).
    pub session: Option<crate::worker::SessionInfo>,
    pub busy: Option<String>,
    /// What failed, each shown in the panel (or side bar) whose action it was.
    pub errors: super::Errors,
    /// Documents of the loaded corpus whose title only stands in (counted once per load).
    pub untitled: usize,
    /// Progress of other jobs: (label, done, total).
    pub progress: Option<(String, usize, usize)>,
    /// Hub download progress: (file, bytes so far, total bytes).
    pub download: Option<(String, u64, u64)>,
    /// The loaded model is a trained run (trained here or opened), not a base model.
    pub trained: bool,
    /// The run folder whose model is loaded (exports read it).
    pub loaded_run: Option<PathBuf>,
}

impl Shared {
    /// True while a background job runs.
    pub fn is_busy(&self) -> bool {
        self.busy.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Saved projects are read back by these names: renaming a field breaks them.
    #[test]
    fn the_saved_form_keeps_its_field_names() {
        let json = serde_json::to_value(Project::default()).unwrap();
        let mut names: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut expected = vec![
            "name",
            "corpus_path",
            "model_source",
            "run_dir",
            "lora",
            "lora_rank",
            "steps",
            "lr",
            "batch_tokens",
            "queries_path",
            "retrieve",
            "panel",
            "query_history",
            "eval",
            "mix",
            "target_words",
            "epochs",
            "sentences_per_passage",
            "pseudo_per_passage",
            "preset",
            "guide_hidden",
            "retrieve_by_docids",
            "docid_stage2",
            "docid_stage1_run",
        ];
        names.sort_unstable();
        expected.sort_unstable();
        assert_eq!(names, expected);
    }

    /// A project file round-trips, and one written before the later fields existed still loads
    /// with their defaults.
    #[test]
    fn project_files_load() {
        let p = Project::default();
        let text = ron::ser::to_string_pretty(&p, Default::default()).unwrap();
        assert_eq!(ron::from_str::<Project>(&text).unwrap(), p);

        let mut json = serde_json::to_value(&p).unwrap();
        let map = json.as_object_mut().unwrap();
        for later in [
            "eval",
            "mix",
            "target_words",
            "epochs",
            "sentences_per_passage",
            "pseudo_per_passage",
            "preset",
            "guide_hidden",
        ] {
            map.remove(later);
        }
        let old: Project = serde_json::from_value(json).unwrap();
        assert_eq!(old.sentences_per_passage, 3);
        assert_eq!(old.eval, EvalSettings::default());
        assert_eq!(old.preset, None);
        assert_eq!(old.name, p.name);
    }

    /// A new project's run folder is one that does not exist yet.
    #[test]
    fn a_new_project_trains_into_a_new_folder() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = dir.path().join("demo");
        assert_eq!(new_run_dir(&wanted), wanted);
        std::fs::create_dir(&wanted).unwrap();
        assert_eq!(new_run_dir(&wanted), dir.path().join("demo-2"));
        std::fs::create_dir(dir.path().join("demo-2")).unwrap();
        assert_eq!(new_run_dir(&wanted), dir.path().join("demo-3"));
    }

    /// An opened run's settings replace the form's: the Steps field shows the run's 600, not
    /// the 300 the form held.
    #[test]
    fn an_opened_run_shows_its_own_settings() {
        let mut project = Project {
            steps: 300,
            ..Project::default()
        };
        let mut spec = IndexSpec::new(PathBuf::from("c.jsonl"), ModelSource::Tiny);
        spec.train.steps = 600;
        spec.train.epochs = None;
        spec.train.lr = 4e-4;
        spec.lora = None;
        project.take_run_settings(&spec);
        assert_eq!(project.steps, 600);
        assert_eq!(project.epochs, 0.0);
        assert_eq!(project.lr, 4e-4);
        assert!(!project.lora);
        assert_eq!(project.preset, None);
    }
}
