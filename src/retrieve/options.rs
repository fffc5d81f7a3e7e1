//! How a query is run: beam widths, the ranking's weights (tau, delta, the passage term, the
//! query likelihood), self-assessment and answers, with the defaults measured best on dev.

use super::score;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Beam sizes, temperatures and what to compute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrieveOptions {
    /// Title beams (i).
    pub titles: usize,
    /// Passage beams per title (j).
    pub passages: usize,
    pub tau: f64,
    pub delta: f64,
    /// Weight of the passage's log-probability under the trie in the ranking within a title
    /// (0: the paper's formula). See [`score`].
    #[serde(default = "default_passage_weight")]
    pub passage_weight: f64,
    /// Passage beams as a full beam search inside each title, scored by sequence
    /// log-probability, instead of j first tokens each followed greedily (the public code):
    /// reaches passages that share their first tokens in titles with many passages.
    #[serde(default)]
    pub passage_beam: bool,
    /// Read the query likelihood of every candidate (see [`super::likelihood`]).
    #[serde(default = "yes")]
    pub likelihood: bool,
    /// Weight of the query likelihood in the ranking over all candidates (0: not used).
    #[serde(default = "default_query_weight")]
    pub query_weight: f64,
    /// Read the query likelihood with the base model as it was before fine-tuning (LoRA runs),
    /// whose reading of questions the retrieval training has not moved (demo dev MRR@5 0.727
    /// against 0.631 with the fine-tuned weights).
    #[serde(default = "yes")]
    pub likelihood_base: bool,
    /// Run self-assessment (otherwise P(reject) = 0.5 for all). Off by default: trained as the
    /// paper trains it, the verdict does not separate passages on new questions at this model
    /// size (AUC about 0.5 on the dev sets), and the query likelihood does its job.
    pub assess: bool,
    /// Generate an answer from the top passage.
    pub answer: bool,
    pub max_answer_tokens: usize,
}

/// The passage term's weight unless set (measured on the dev sets: docs/benchmarks.md).
pub const DEFAULT_PASSAGE_WEIGHT: f64 = 0.25;

fn default_passage_weight() -> f64 {
    DEFAULT_PASSAGE_WEIGHT
}

/// The query likelihood's weight unless set (measured on the dev sets: docs/benchmarks.md).
pub const DEFAULT_QUERY_WEIGHT: f64 = 8.0;
/// Title beams unless set: ten, since the query likelihood reorders across titles and more
/// titles put the gold passage among the candidates more often (demo dev: 0.771 at 5, 0.854
/// at 10).
pub const DEFAULT_TITLES: usize = 10;
/// The title temperature unless set (the paper's is 0.4; tuned with the query likelihood).
pub const DEFAULT_TAU: f64 = 0.2;

fn default_query_weight() -> f64 {
    DEFAULT_QUERY_WEIGHT
}

fn yes() -> bool {
    true
}

impl RetrieveOptions {
    /// Refuses settings that cannot give meaningful scores: temperatures that are not finite
    /// and positive (NaN or 0 make every S exactly 0 or 1), a negative or non-finite passage
    /// weight, zero beams.
    pub fn validate(&self) -> Result<()> {
        for (name, t) in [("tau", self.tau), ("delta", self.delta)] {
            if !(t.is_finite() && t > 0.0) {
                return Err(Error::invalid(format!(
                    "{name} must be a finite number above 0 (got {t})"
                )));
            }
        }
        for (name, w) in [
            ("passage weight", self.passage_weight),
            ("query weight", self.query_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(Error::invalid(format!(
                    "the {name} must be a finite number of at least 0 (got {w})"
                )));
            }
        }
        if self.titles == 0 || self.passages == 0 {
            return Err(Error::invalid(format!(
                "title and passage beams must be at least 1 (got {} and {})",
                self.titles, self.passages
            )));
        }
        Ok(())
    }

    /// The ranking's weights.
    pub fn weights(&self) -> score::RankWeights {
        score::RankWeights {
            tau: self.tau,
            delta: self.delta,
            passage_weight: self.passage_weight,
            query_weight: self.query_weight,
        }
    }

    /// Titles and passages only (3 x 5 beams, no assessment, no answer): the cheap retrieval
    /// used to check a model while training, mine its mistakes and filter pseudo-queries.
    pub fn light() -> Self {
        RetrieveOptions {
            titles: 3,
            passages: 5,
            assess: false,
            answer: false,
            likelihood: false,
            ..Default::default()
        }
    }
}

impl Default for RetrieveOptions {
    fn default() -> Self {
        RetrieveOptions {
            titles: DEFAULT_TITLES,
            passages: 10,
            tau: DEFAULT_TAU,
            delta: 0.4,
            passage_weight: DEFAULT_PASSAGE_WEIGHT,
            passage_beam: false,
            likelihood: true,
            query_weight: DEFAULT_QUERY_WEIGHT,
            likelihood_base: true,
            assess: false,
            answer: true,
            max_answer_tokens: 24,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Temperatures must be finite and positive, weights finite and not negative, beams at
    /// least one: anything else would give scores of exactly 0 or 1, or NaN.
    #[test]
    fn options_that_cannot_rank_are_refused() {
        assert!(RetrieveOptions::default().validate().is_ok());
        let bad = [
            RetrieveOptions {
                tau: f64::NAN,
                ..Default::default()
            },
            RetrieveOptions {
                tau: -1.0,
                ..Default::default()
            },
            RetrieveOptions {
                tau: f64::INFINITY,
                ..Default::default()
            },
            RetrieveOptions {
                delta: 0.0,
                ..Default::default()
            },
            RetrieveOptions {
                passage_weight: -1.0,
                ..Default::default()
            },
            RetrieveOptions {
                query_weight: f64::NAN,
                ..Default::default()
            },
            RetrieveOptions {
                titles: 0,
                ..Default::default()
            },
            RetrieveOptions {
                passages: 0,
                ..Default::default()
            },
        ];
        for o in bad {
            assert!(o.validate().is_err(), "{o:?}");
        }
    }
}
