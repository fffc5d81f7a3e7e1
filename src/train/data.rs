//! Training examples for the three tasks, built from the shared prompt codec so training and
//! retrieval see identical token sequences. Every example is next-token prediction with the loss
//! masked to its target span.

use crate::corpus::sentences::split_sentences;
use crate::corpus::Corpus;
use crate::error::{Error, Result};
use crate::prompts::PromptCodec;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use tokenizers::Tokenizer;

/// What the model learns: the paper's three tasks, and reading (the query likelihood's side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Task {
    /// sentence (or title) -> title + passage: memorise the corpus.
    Indexing,
    /// query -> title + passage.
    Retrieval,
    /// query + passage -> can answer (+ answer) / cannot answer.
    Assessment,
    /// passage -> query, in the prompt the query likelihood reads: teaches the model to read
    /// a passage and expect the questions people ask of it, so the query likelihood, read by
    /// the fine-tuned model, ranks passages it was never asked about.
    Reading,
}

impl Task {
    pub const ALL: [Task; 4] = [
        Task::Indexing,
        Task::Retrieval,
        Task::Assessment,
        Task::Reading,
    ];

    /// Lower-case name for logs and plots.
    pub fn name(self) -> &'static str {
        match self {
            Task::Indexing => "indexing",
            Task::Retrieval => "retrieval",
            Task::Assessment => "assessment",
            Task::Reading => "reading",
        }
    }
}

/// One training sequence; the loss covers `ids[target_start..]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub task: Task,
    pub ids: Vec<u32>,
    pub target_start: usize,
}

/// A query with its gold passages, as in `../shared/data/*/train.jsonl`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Query {
    #[serde(default)]
    pub id: String,
    pub question: String,
    #[serde(default)]
    pub answers: Vec<String>,
    #[serde(default)]
    pub positive_ids: Vec<String>,
    #[serde(default)]
    pub answer_passage_ids: Vec<String>,
    /// Graded judgements (passage id -> grade, 0 = judged not relevant), from BEIR qrels;
    /// empty for a query file, whose `positive_ids` are the relevant passages.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub relevance: std::collections::BTreeMap<String, u32>,
}

/// Reads a query file, or the `test` split of a BEIR folder (see [`load_queries_split`]).
pub fn load_queries(path: &Path) -> Result<Vec<Query>> {
    load_queries_split(path, "test")
}

/// Reads a query file (JSON lines; a leading byte-order mark and CRLF line ends are fine), or
/// from a BEIR folder (`queries.jsonl` + `qrels/{split}.tsv`) the judged queries of `split`;
/// a malformed line is an error naming it, and a file without queries is refused.
pub fn load_queries_split(path: &Path, split: &str) -> Result<Vec<Query>> {
    if super::beir::is_beir_folder(path) {
        return super::beir::load_beir_queries(path, split);
    }
    if path.is_dir() {
        return Err(Error::bad_file(
            path,
            "a folder of queries needs queries.jsonl and qrels/{split}.tsv (the BEIR layout)",
        ));
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, bytes) in std::io::BufReader::new(f).split(b'\n').enumerate() {
        let bad = |message: String| Error::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let bytes = bytes.map_err(|e| Error::io(path, e))?;
        let line = String::from_utf8(bytes).map_err(|_| bad("invalid UTF-8".into()))?;
        let line = line.strip_prefix('\u{feff}').unwrap_or(&line);
        if line.trim().is_empty() {
            continue;
        }
        let q: Query =
            serde_json::from_str(line).map_err(|e| bad(format!("not a query object: {e}")))?;
        out.push(q);
    }
    if out.is_empty() {
        return Err(Error::bad_file(path, "no queries in the file"));
    }
    Ok(out)
}

/// How indexing targets are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetLength {
    /// Title and the whole passage (the paper).
    Full,
    /// Title and the first n words of the passage (the public code's cheaper variant).
    FirstWords(usize),
}

/// Options of the data builders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataOptions {
    /// Sentences sampled per passage for indexing (0: all of them, every epoch).
    pub sentences_per_passage: usize,
    pub min_sentence_words: usize,
    pub max_sentence_words: usize,
    pub target: TargetLength,
    /// Also add a title -> passage item per passage.
    pub title_items: bool,
    /// Hard negatives per query for self-assessment.
    pub negatives: usize,
    /// Training queries whose retrievals by the starting model are mined for negatives.
    #[serde(default)]
    pub mine_queries: usize,
    pub seed: u64,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            sentences_per_passage: 3,
            min_sentence_words: 6,
            max_sentence_words: 49,
            target: TargetLength::Full,
            title_items: true,
            negatives: 3,
            mine_queries: 64,
            seed: 17,
        }
    }
}

impl DataOptions {
    /// The sentences of `text` that index its passage: those of the allowed length, shuffled
    /// by `rng`, all of them or the sample size asked for.
    pub fn indexing_sentences(&self, text: &str, rng: &mut StdRng) -> Vec<String> {
        let mut sentences: Vec<String> = split_sentences(text)
            .into_iter()
            .filter(|s| {
                let n = s.split_whitespace().count();
                n >= self.min_sentence_words && n <= self.max_sentence_words
            })
            .collect();
        sentences.shuffle(rng);
        if self.sentences_per_passage > 0 {
            sentences.truncate(self.sentences_per_passage);
        }
        sentences
    }
}

/// What a self-assessment example teaches about a question and a passage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// The passage answers the question: the acceptance verdict, then the answer when known.
    Accept(Option<&'a str>),
    /// It does not: the rejection verdict.
    Reject,
}

/// Whether `text` holds one of `answers` (case-insensitive): the passage can answer.
pub fn holds_answer(text: &str, answers: &[String]) -> bool {
    answer_in(text, answers).is_some()
}

/// The first of `answers` that `text` holds (case-insensitive; an empty answer never counts).
pub fn answer_in<'a>(text: &str, answers: &'a [String]) -> Option<&'a str> {
    let t = text.to_lowercase();
    answers
        .iter()
        .find(|a| !a.is_empty() && t.contains(&a.to_lowercase()))
        .map(String::as_str)
}

/// Builds examples with one tokenizer and codec.
pub struct DataBuilder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub codec: &'a PromptCodec,
    pub corpus: &'a Corpus,
    pub opts: DataOptions,
}

impl DataBuilder<'_> {
    fn passage_target(&self, pidx: usize) -> Result<Vec<u32>> {
        let p = &self.corpus.passages[pidx];
        let mut ids = self.codec.title(self.tokenizer, &p.title)?;
        match self.opts.target {
            TargetLength::Full => ids.extend(self.codec.passage(self.tokenizer, &p.text)?),
            TargetLength::FirstWords(n) => {
                let words: Vec<&str> = p.text.split_whitespace().take(n).collect();
                ids.extend(crate::model::tokenizer::encode(
                    self.tokenizer,
                    &format!(" {}", words.join(" ")),
                )?);
            }
        }
        Ok(ids)
    }

    fn example(&self, task: Task, prompt: Vec<u32>, target: Vec<u32>) -> Example {
        let target_start = prompt.len();
        let mut ids = prompt;
        ids.extend(target);
        Example {
            task,
            ids,
            target_start,
        }
    }

    /// sentence -> title + passage for sampled sentences of every passage, plus title -> passage.
    pub fn indexing(&self) -> Result<Vec<Example>> {
        let mut rng = StdRng::seed_from_u64(self.opts.seed);
        let mut out = Vec::new();
        for pidx in 0..self.corpus.len() {
            let p = &self.corpus.passages[pidx];
            let target = self.passage_target(pidx)?;
            for s in &self.opts.indexing_sentences(&p.text, &mut rng) {
                out.push(self.example(
                    Task::Indexing,
                    self.codec.query(self.tokenizer, s)?,
                    target.clone(),
                ));
            }
            if self.opts.title_items {
                out.push(self.example(
                    Task::Indexing,
                    self.codec.query(self.tokenizer, &p.title)?,
                    target.clone(),
                ));
            }
        }
        Ok(out)
    }

    /// query -> title + passage for every positive passage found in the corpus.
    pub fn retrieval(&self, queries: &[Query]) -> Result<Vec<Example>> {
        self.golds(queries)
            .map(|(q, pidx)| {
                Ok(self.example(
                    Task::Retrieval,
                    self.codec.query(self.tokenizer, &q.question)?,
                    self.passage_target(pidx)?,
                ))
            })
            .collect()
    }

    /// Each query with each of its gold passages found in the corpus.
    fn golds<'q>(&'q self, queries: &'q [Query]) -> impl Iterator<Item = (&'q Query, usize)> {
        queries.iter().flat_map(move |q| {
            q.positive_ids
                .iter()
                .filter_map(|pid| self.corpus.index_of(pid))
                .map(move |pidx| (q, pidx))
        })
    }

    /// Reading: the gold passage in the query-likelihood prompt -> the question (and the end
    /// of text), for every positive passage found in the corpus.
    pub fn reading(&self, queries: &[Query]) -> Result<Vec<Example>> {
        use crate::retrieve::likelihood::{question_ids, reading_prompt};
        let mut out = Vec::new();
        for (q, pidx) in self.golds(queries) {
            let mut question = question_ids(self.tokenizer, &q.question)?;
            if question.is_empty() {
                continue;
            }
            question.push(self.codec.eos);
            let p = &self.corpus.passages[pidx];
            let prompt = reading_prompt(self.tokenizer, &p.title, &p.text)?;
            out.push(self.example(Task::Reading, prompt, question));
        }
        Ok(out)
    }

    /// A self-assessment example: `question` and the passage `pidx` -> the verdict (and, on
    /// acceptance, the answer when one is known). The prompt is the one the trained reader
    /// answers from ([`crate::retrieve::answer::AnswerReader::Trained`]).
    pub fn verdict(&self, question: &str, pidx: usize, verdict: Verdict<'_>) -> Result<Example> {
        let p = &self.corpus.passages[pidx];
        let mut prompt = self.codec.query(self.tokenizer, question)?;
        prompt.extend(self.codec.title(self.tokenizer, &p.title)?);
        prompt.extend(self.codec.passage(self.tokenizer, &p.text)?);
        prompt.extend_from_slice(&self.codec.assess_cue);
        let target = match verdict {
            Verdict::Accept(answer) => {
                let mut t = self.codec.accept.clone();
                match answer {
                    Some(a) => t.extend(self.codec.answer(self.tokenizer, a)?),
                    None => t.push(self.codec.eos),
                }
                t
            }
            Verdict::Reject => {
                let mut t = self.codec.reject.clone();
                t.push(self.codec.eos);
                t
            }
        };
        Ok(self.example(Task::Assessment, prompt, target))
    }

    /// Self-assessment: the gold passage -> "can answer" + answer; as negatives ("cannot
    /// answer"), passages without an answer string: first those the model itself retrieved
    /// wrongly for the query (`mined`, keyed by question), then same-title ones, then random.
    pub fn assessment(
        &self,
        queries: &[Query],
        mined: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<Example>> {
        let mut rng = StdRng::seed_from_u64(self.opts.seed ^ 0x5eed);
        let mut out = Vec::new();
        for q in queries {
            let Some(gold) = q.positive_ids.iter().find_map(|p| self.corpus.index_of(p)) else {
                continue;
            };
            let answer = q.answers.first().map(String::as_str);
            out.push(self.verdict(&q.question, gold, Verdict::Accept(answer))?);
            let has_answer =
                |pidx: usize| holds_answer(&self.corpus.passages[pidx].text, &q.answers);
            let positives: Vec<usize> = q
                .positive_ids
                .iter()
                .filter_map(|p| self.corpus.index_of(p))
                .collect();
            let title = self.corpus.title_of[gold];
            let mut same_title: Vec<usize> = self.corpus.by_title[title]
                .iter()
                .copied()
                .filter(|&i| !positives.contains(&i) && !has_answer(i))
                .collect();
            same_title.shuffle(&mut rng);
            let mut negatives: Vec<usize> = Vec::new();
            let wrong = mined
                .get(&q.question)
                .into_iter()
                .flatten()
                .filter_map(|id| self.corpus.index_of(id));
            // Mined and same-title negatives alternate so both kinds are seen.
            let mut wrong = wrong.filter(|i| !positives.contains(i) && !has_answer(*i));
            let mut same = same_title.into_iter();
            loop {
                let (a, b) = (wrong.next(), same.next());
                if a.is_none() && b.is_none() {
                    break;
                }
                for i in [a, b].into_iter().flatten() {
                    if !negatives.contains(&i) {
                        negatives.push(i);
                    }
                }
            }
            let mut guard = 0;
            while negatives.len() < self.opts.negatives && guard < 50 && self.corpus.len() > 1 {
                guard += 1;
                let i = rand::Rng::random_range(&mut rng, 0..self.corpus.len());
                if !positives.contains(&i) && !negatives.contains(&i) && !has_answer(i) {
                    negatives.push(i);
                }
            }
            for &n in negatives.iter().take(self.opts.negatives) {
                out.push(self.verdict(&q.question, n, Verdict::Reject)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query file with a byte-order mark and CRLF line ends reads every query; an empty file
    /// and invalid UTF-8 are refused, naming the file (and the line).
    #[test]
    fn query_files_with_a_bom_and_crlf_load_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.jsonl");
        std::fs::write(
            &p,
            "\u{feff}{\"question\":\"a?\",\"positive_ids\":[\"x\"]}\r\n\r\n{\"question\":\"b?\"}\r\n",
        )
        .unwrap();
        let qs = load_queries(&p).unwrap();
        assert_eq!(qs.len(), 2);
        assert_eq!(qs[0].question, "a?");
        std::fs::write(&p, "\r\n  \n").unwrap();
        let e = load_queries(&p).unwrap_err().to_string();
        assert!(e.contains("q.jsonl") && e.contains("no queries"), "{e}");
        std::fs::write(&p, b"{\"question\":\"a?\"}\n{\"question\":\"\xff\"}\n").unwrap();
        let e = load_queries(&p).unwrap_err().to_string();
        assert!(e.contains("q.jsonl:2") && e.contains("UTF-8"), "{e}");
    }
}
