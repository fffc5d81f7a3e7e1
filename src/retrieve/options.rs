//! How a query is run: beam widths, the ranking's weights (tau, delta, the passage term, the
//! query likelihood), self-assessment and answers, with the defaults measured best on dev.

use super::answer::AnswerReader;
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
    /// Candidate budget: every passage of each title beam is a candidate (an exact search of
    /// the title's passage trie), titles taken in beam order while their passages fit in the
    /// budget, the first title always (a search of this width when it holds more). 0: the
    /// paper's j passage beams per title. The query likelihood reads every candidate, so this
    /// bounds a query's cost; it adapts the search to the corpus: ten titles of a few passages
    /// each, or one or two articles of dozens (SQuAD dev: MRR@5 0.636 with 40 passage beams
    /// under the top title, 0.699 with every passage of it; docs/benchmarks.md).
    #[serde(default = "default_candidates")]
    pub candidates: usize,
    /// Read the query likelihood of every candidate (see [`super::likelihood`]).
    #[serde(default = "yes")]
    pub likelihood: bool,
    /// Weight of the query likelihood in the ranking over all candidates (0: not used).
    #[serde(default = "default_query_weight")]
    pub query_weight: f64,
    /// Read the query likelihood with the base model as it was before fine-tuning (LoRA runs),
    /// whose reading of questions the retrieval training has not moved (demo dev MRR@5 0.727
    /// against 0.631 with the fine-tuned weights). Runs trained with the reading task read it
    /// with their own weights instead (the session's default, see `QuerySession`).
    #[serde(default = "yes")]
    pub likelihood_base: bool,
    /// Run self-assessment (otherwise P(reject) = 0.5 for all). Off by default: trained as the
    /// paper trains it, the verdict does not separate passages on new questions at this model
    /// size (AUC about 0.5 on the dev sets), and the query likelihood does its job.
    pub assess: bool,
    /// Generate an answer from the top passage.
    pub answer: bool,
    pub max_answer_tokens: usize,
    /// Who reads the answer (see [`AnswerReader`]).
    #[serde(default)]
    pub answer_reader: AnswerReader,
    /// How much of each title's prior is taken off its search score before the candidate
    /// budget picks titles (0: none, the beam order). The prior is log P(title) after an empty
    /// question: how readily the model writes the title whatever is asked, so a title the
    /// question makes likely though it is rarely written (a name) moves up. See
    /// [`super::Retriever::title_priors`].
    #[serde(default = "default_title_prior")]
    pub title_prior: f64,
    /// Passages the base model reads an answer from (the top ones, best first; it copies the
    /// answer from one of them). The trained format reads the top passage alone.
    #[serde(default = "one")]
    pub answer_passages: usize,
}

fn one() -> usize {
    1
}

/// The title prior's weight unless set. Fitted on 120 NQ dev questions with the titles-only
/// pipeline (λ 0 to 1), checked on 120 others with the whole pipeline: MRR@5 0.839 -> 0.864,
/// gold in candidates 0.883 -> 0.908 (docs/benchmarks.md, session 22).
pub const DEFAULT_TITLE_PRIOR: f64 = 0.5;

fn default_title_prior() -> f64 {
    DEFAULT_TITLE_PRIOR
}

/// The passage term's weight unless set (measured on the dev sets: docs/benchmarks.md).
pub const DEFAULT_PASSAGE_WEIGHT: f64 = 0.25;

fn default_passage_weight() -> f64 {
    DEFAULT_PASSAGE_WEIGHT
}

/// The query likelihood's weight unless set (measured on the dev sets: docs/benchmarks.md).
pub const DEFAULT_QUERY_WEIGHT: f64 = 8.0;
/// Title beams unless set: 2,500, so that on a corpus of up to that many titles every title is
/// scored (a beam at least as wide as the title trie has leaves prunes nothing), and the
/// candidate budget takes the likeliest. A narrower beam prunes titles whose first token is
/// unlikely though their whole title is not: NQ's "who was the bad guy in silence of the
/// lambs" needs " Ted" (log-probability -9.6, behind a hundred other first tokens) for Ted
/// Levine, whose passage the query likelihood then ranks first. The query likelihood reorders
/// across titles, so every title read is a chance for the gold passage; the candidate budget,
/// not this width, bounds most of a query's cost (NQ, 2,467 titles: about 1.5 s of title
/// search against 0.5 s at width 100). NQ dev, 120 questions at a budget of 100: gold in
/// candidates 0.733 / 0.783 / 0.867 at 10 / 30 / 100 titles (session 16), and on 120 other
/// questions 0.883 at 100 titles against 0.900 with every title (MRR@5 0.844 against 0.863;
/// docs/benchmarks.md, session 19).
pub const DEFAULT_TITLES: usize = 2500;
/// The title temperature unless set (the paper's is 0.4; tuned with the query likelihood).
pub const DEFAULT_TAU: f64 = 0.2;

/// The candidate budget unless set (see [`RetrieveOptions::candidates`]): 300. SQuAD dev, the
/// 300 spread questions: MRR@5 0.790 at 100 and 0.845 at 300 (BM25 0.817), the gold paragraph
/// among the candidates for 0.883 and 0.950: an article of dozens of paragraphs fills a
/// budget of 100 with one to three articles. NQ dev, 120 questions: 0.864 at 100 and 0.908 at
/// 300 (BM25 0.842), gold in candidates 0.908 and 0.958. A passage is
/// read in full once a session (the reading cache), so the larger budget costs a question
/// 12.7 s on SQuAD once its passages are kept (docs/benchmarks.md, session 26).
pub const DEFAULT_CANDIDATES: usize = 300;

fn default_candidates() -> usize {
    DEFAULT_CANDIDATES
}

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
            ("title prior weight", self.title_prior),
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

    /// How each title beam's passages are searched, from the number of passages each holds (in
    /// beam order): `(width, greedy_after_first)`, width 0 leaving the title out. See
    /// [`Self::candidates`].
    pub fn passage_searches(&self, title_sizes: &[usize]) -> Vec<(usize, bool)> {
        if self.candidates == 0 {
            let search = (self.passages.max(1), !self.passage_beam);
            return vec![search; title_sizes.len()];
        }
        let mut left = self.candidates;
        let mut out = Vec::with_capacity(title_sizes.len());
        for (k, &n) in title_sizes.iter().enumerate() {
            let width = match (n <= left, k) {
                (true, _) => n,
                (false, 0) => self.candidates,
                (false, _) => 0,
            };
            left = if width == 0 {
                0
            } else {
                left.saturating_sub(width)
            };
            out.push((width, false));
        }
        out
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
            candidates: 0,
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
            candidates: DEFAULT_CANDIDATES,
            likelihood: true,
            query_weight: DEFAULT_QUERY_WEIGHT,
            likelihood_base: true,
            assess: false,
            title_prior: DEFAULT_TITLE_PRIOR,
            answer_passages: 1,
            answer: true,
            max_answer_tokens: 24,
            answer_reader: AnswerReader::Auto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Titles of a few passages each are all read whole; of articles of dozens, as many as fit
    /// in the budget (the first always, searched at the budget's width if it is larger); with
    /// no budget, the paper's j beams per title.
    #[test]
    fn the_candidate_budget_reads_whole_titles_in_beam_order() {
        let o = RetrieveOptions {
            candidates: 100,
            ..Default::default()
        };
        assert_eq!(
            o.passage_searches(&[1, 4, 3]),
            vec![(1, false), (4, false), (3, false)]
        );
        assert_eq!(
            o.passage_searches(&[60, 30, 20, 5]),
            vec![(60, false), (30, false), (0, false), (0, false)]
        );
        assert_eq!(
            o.passage_searches(&[150, 2]),
            vec![(100, false), (0, false)]
        );
        let paper = RetrieveOptions {
            candidates: 0,
            ..Default::default()
        };
        assert_eq!(
            paper.passage_searches(&[60, 3]),
            vec![(10, true), (10, true)]
        );
    }

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
