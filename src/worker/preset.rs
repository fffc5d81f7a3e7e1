//! Training presets: the recipe measured best on the dev sets, sized by the corpus (see
//! docs/benchmarks.md for the measurements behind each value). A preset sets the whole recipe;
//! flags given after it override single values.

use super::index::IndexSpec;
use crate::model::{LoraConfig, ModelSource};
use crate::train::data::TargetLength;
use crate::train::pseudo::PseudoOptions;
use crate::train::TaskMix;
use serde::{Deserialize, Serialize};

/// A named training recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Preset {
    /// A corpus of about a hundred passages (the demo): about 12 minutes on a 2-core CPU, questions
    /// written included (11m37s measured in session 22).
    Quick,
    /// Thousands of passages: about 2 hours on a 2-core CPU.
    Thorough,
}

impl Preset {
    pub const ALL: [Preset; 2] = [Preset::Quick, Preset::Thorough];

    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Quick => "quick",
            Preset::Thorough => "thorough",
        }
    }

    /// One line on what it is for.
    pub fn describe(self) -> &'static str {
        match self {
            Preset::Quick => "about a hundred passages, ~12 minutes on a 2-core CPU",
            Preset::Thorough => "thousands of passages, ~2 hours on a 2-core CPU",
        }
    }

    /// Sets the recipe of `spec` (its corpus, model and query file stay).
    pub fn apply(self, spec: &mut IndexSpec) {
        let pretrained = spec.model != ModelSource::Tiny;
        // Every passage indexed by its title and all its sentences every epoch (thorough: two
        // of them, sampled once, which keeps a corpus of thousands within its budget).
        spec.data.sentences_per_passage = match self {
            Preset::Quick => 0,
            Preset::Thorough => 2,
        };
        spec.data.title_items = true;
        spec.data.negatives = 3;
        // Retrieval is what questions need; self-assessment examples are long (the whole
        // passage) and, trained on a few hundred queries, did not generalise (dev AUC 0.45 on the
        // demo with weight 1, where they took 43% of the steps).
        spec.train.mix = TaskMix {
            indexing: 1.0,
            retrieval: match self {
                Preset::Quick => 1.5,
                Preset::Thorough => 1.0,
            },
            assessment: 0.25,
            // Reading (passage -> question) teaches the model that reads the query likelihood
            // the questions people ask of this corpus: 300 steps of it after a SQuAD run put
            // the gold passage first among the candidates for 78% of the questions where it
            // was one (the base model's reading: 67%); 600 steps and whole articles, SQuAD dev
            // MRR@5 0.741 (docs/benchmarks.md). Half a pass per epoch keeps SQuAD's epoch near
            // two hours here (its 7,512 questions are ~830 batches a pass). The tiny model
            // reads no language (its likelihood is off).
            reading: match (self, pretrained) {
                (Preset::Thorough, true) => 0.5,
                _ => 0.0,
            },
        };
        spec.train.warmup = 0.05;
        spec.train.batch_tokens = 2048;
        if !pretrained {
            // The tiny model learns the corpus from nothing: many epochs, full targets.
            spec.lora = None;
            spec.data.target = TargetLength::Full;
            spec.train.lr = 1e-3;
            spec.train.epochs = Some(match self {
                Preset::Quick => 12.0,
                Preset::Thorough => 24.0,
            });
            spec.pseudo = None;
            return;
        }
        spec.lora = Some(LoraConfig {
            rank: 32,
            alpha: 64.0,
            ..Default::default()
        });
        spec.data.target = TargetLength::FirstWords(10);
        spec.train.lr = 5e-4;
        // Thorough: one epoch of a large corpus is already ~70 minutes here (NQ, 2,588
        // passages), after ~40 minutes of question writing.
        spec.train.epochs = Some(match self {
            Preset::Quick => 2.0,
            Preset::Thorough => 1.0,
        });
        spec.pseudo = Some(PseudoOptions {
            per_passage: match self {
                Preset::Quick => 8,
                Preset::Thorough => 4,
            },
            keep_top: 10,
            temperature: 1.0,
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_cover_the_corpus_every_epoch() {
        for preset in Preset::ALL {
            for model in [ModelSource::Tiny, "models/x.gguf".parse().unwrap()] {
                let mut spec = IndexSpec::new("c.jsonl".into(), model.clone());
                preset.apply(&mut spec);
                assert!(spec.data.sentences_per_passage <= 2);
                assert!(spec.train.epochs.is_some_and(|e| e >= 1.0));
                assert_eq!(spec.lora.is_some(), model != ModelSource::Tiny);
                assert_eq!(spec.pseudo.is_some(), model != ModelSource::Tiny);
                // Reading only where a model reads language and the corpus is large.
                assert_eq!(
                    spec.train.mix.reading > 0.0,
                    preset == Preset::Thorough && model != ModelSource::Tiny
                );
            }
        }
    }
}
