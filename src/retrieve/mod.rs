//! Retrieval with one model: title beams constrained by the title trie, passage beams constrained by
//! each title's passage trie (auto-completed once unique), self-assessment of every candidate,
//! reranking, and an answer. Everything is recorded in a [`RetrievalTrace`].

pub mod likelihood;
pub mod score;

use crate::corpus::Corpus;
use crate::error::{Error, Result};
use crate::model::{KvCache, Llama};
use crate::prompts::PromptCodec;
use crate::trie::{CorpusTrie, Cursor, TokenTrie};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tokenizers::Tokenizer;

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
    /// Read the query likelihood of every candidate (see [`likelihood`]).
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

/// How a generated token came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    /// The model picked it among several tokens the trie allowed.
    Chosen,
    /// The trie allowed only this token.
    Forced,
    /// Appended without a model call once the prefix identified one item.
    AutoComplete,
}

/// One token of a title or passage expansion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenStep {
    pub token: u32,
    pub piece: String,
    pub kind: StepKind,
    /// The model's log-probability of the token (unconstrained softmax), when it was computed.
    pub logprob: Option<f32>,
    /// How many tokens the trie allowed at this point.
    pub alternatives: u32,
    /// The token's log-probability under the trie: the model's distribution renormalised over
    /// the tokens the trie allowed (0 when only one was allowed).
    #[serde(default)]
    pub trie_logprob: f32,
}

/// A title from the beam search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TitleCandidate {
    pub title_index: usize,
    pub title: String,
    pub steps: Vec<TokenStep>,
    /// log P(title segment | query), summed over all its tokens.
    pub logprob: f64,
    /// exp(mean token log-probability): the length-normalised sequence probability.
    pub norm_prob: f64,
    /// log P_trie(title | query): the sum of its tokens' log-probabilities under the trie.
    #[serde(default)]
    pub trie_logprob: f64,
    pub s_t: f64,
}

/// A passage candidate under one of the titles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassageCandidate {
    pub passage_index: usize,
    pub passage_id: String,
    /// Index into `RetrievalTrace::titles`.
    pub title_rank: usize,
    pub title: String,
    pub text: String,
    pub steps: Vec<TokenStep>,
    /// Sum of log-probabilities of the tokens the model generated (not auto-completed ones).
    pub generated_logprob: f64,
    /// log P_trie(passage | query, title): how likely the model generates this passage among
    /// the title's passages (its tokens' log-probabilities under the trie).
    #[serde(default)]
    pub passage_logprob: f64,
    /// Mean log-probability of the question's tokens after reading this passage (the query
    /// likelihood; 0 when not computed).
    #[serde(default)]
    pub query_logprob: f64,
    pub p_reject: f64,
    /// The passage term alone, within the title (see [`score`]).
    #[serde(default)]
    pub s_gen: f64,
    pub s_p: f64,
    /// The query-likelihood term alone, over all candidates.
    #[serde(default)]
    pub s_q: f64,
    pub s: f64,
    /// 1-based final rank.
    pub rank: usize,
}

/// One line of the final ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedPassage {
    pub passage_id: String,
    pub title: String,
    pub text: String,
    pub s_t: f64,
    #[serde(default)]
    pub s_gen: f64,
    pub s_p: f64,
    #[serde(default)]
    pub s_q: f64,
    pub s: f64,
}

/// The generated answer and the passages it was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub cited: Vec<String>,
}

/// The size of one batched forward pass, so a benchmark can replay a query's matrix work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ForwardPass {
    /// Token positions run through the transformer body.
    pub rows: usize,
    /// Positions of those projected onto the vocabulary.
    pub logit_rows: usize,
}

/// Wall time per stage, milliseconds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    pub titles_ms: f64,
    pub passages_ms: f64,
    pub assess_ms: f64,
    #[serde(default)]
    pub likelihood_ms: f64,
    pub answer_ms: f64,
    /// Model forward passes (batched) over all stages.
    pub forward_calls: usize,
    /// Token positions run through the transformer body, over all stages.
    pub tokens_forwarded: usize,
    /// Positions projected onto the vocabulary.
    pub logit_rows: usize,
    /// Every forward pass, in order.
    #[serde(default)]
    pub passes: Vec<ForwardPass>,
}

impl Timings {
    fn count_pass(&mut self, rows: usize, logit_rows: usize) {
        self.forward_calls += 1;
        self.tokens_forwarded += rows;
        self.logit_rows += logit_rows;
        self.passes.push(ForwardPass { rows, logit_rows });
    }
}

/// Everything retrieval computed for one query, serialisable for export and the GUI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RetrievalTrace {
    pub query: String,
    pub tau: f64,
    pub delta: f64,
    #[serde(default)]
    pub passage_weight: f64,
    #[serde(default)]
    pub query_weight: f64,
    pub titles: Vec<TitleCandidate>,
    pub candidates: Vec<PassageCandidate>,
    /// Best first.
    pub ranking: Vec<RankedPassage>,
    pub answer: Option<Answer>,
    pub timings: Timings,
}

impl RetrievalTrace {
    /// The weights the ranking was last computed with.
    pub fn weights(&self) -> score::RankWeights {
        score::RankWeights {
            tau: self.tau,
            delta: self.delta,
            passage_weight: self.passage_weight,
            query_weight: self.query_weight,
        }
    }

    /// Recomputes S_T, S_gen, S_P, S and the ranking for new weights, without the model.
    pub fn rerank(&mut self, w: score::RankWeights) {
        self.tau = w.tau;
        self.delta = w.delta;
        self.passage_weight = w.passage_weight;
        self.query_weight = w.query_weight;
        let norm: Vec<f64> = self.titles.iter().map(|t| t.norm_prob).collect();
        let cands: Vec<score::CandidateInput> = self
            .candidates
            .iter()
            .map(|c| score::CandidateInput {
                title: c.title_rank,
                p_reject: c.p_reject,
                passage_logprob: c.passage_logprob,
                query_logprob: c.query_logprob,
            })
            .collect();
        let (s_t, s) = score::combined_scores(&norm, &cands, w);
        for (t, st) in self.titles.iter_mut().zip(s_t) {
            t.s_t = st;
        }
        for (c, sc) in self.candidates.iter_mut().zip(s) {
            c.s_gen = sc.s_gen;
            c.s_p = sc.s_p;
            c.s_q = sc.s_q;
            c.s = sc.s;
        }
        let mut order: Vec<usize> = (0..self.candidates.len()).collect();
        order.sort_by(|&a, &b| {
            self.candidates[b]
                .s
                .total_cmp(&self.candidates[a].s)
                .then(a.cmp(&b))
        });
        self.ranking = order
            .iter()
            .enumerate()
            .map(|(r, &i)| {
                let c = &mut self.candidates[i];
                c.rank = r + 1;
                RankedPassage {
                    passage_id: c.passage_id.clone(),
                    title: c.title.clone(),
                    text: c.text.clone(),
                    s_t: self.titles[c.title_rank].s_t,
                    s_gen: c.s_gen,
                    s_p: c.s_p,
                    s_q: c.s_q,
                    s: c.s,
                }
            })
            .collect();
    }

    /// Passage ids, best first.
    pub fn ranked_ids(&self) -> Vec<&str> {
        self.ranking.iter().map(|r| r.passage_id.as_str()).collect()
    }
}

/// What retrieval needs: an inference model, its tokenizer, the corpus and its trie.
pub struct Retriever<'a> {
    pub model: &'a Llama,
    /// The base model before fine-tuning (a LoRA run's frozen weights), which reads the query
    /// likelihood when [`RetrieveOptions::likelihood_base`] asks for it.
    pub base: Option<&'a Llama>,
    pub tokenizer: &'a Tokenizer,
    pub codec: &'a PromptCodec,
    pub corpus: &'a Corpus,
    pub trie: &'a CorpusTrie,
}

/// What one more forward pass costs, in tokens of batch: every pass streams all the weights
/// from memory (about 30 ms for the 135M model on the development machine), about what 50
/// tokens of prefill compute take there. Verdict batches pad rows to a common length when that
/// padding is cheaper than another pass.
const VERDICT_CALL_TOKENS: usize = 48;
/// Rows in one verdict batch at most (bounds the memory of the forked caches).
const VERDICT_BATCH: usize = 16;

/// Groups row indices into right-padded batches of at most `max_rows`, minimising the total
/// cost `sum over batches of (call_tokens + rows x longest row)`: padding is traded against
/// passes. Rows are taken in length order (some optimal grouping always is) and the best split
/// of that order is found exactly (dynamic programming over split points).
pub fn length_batches(rows: &[Vec<u32>], call_tokens: usize, max_rows: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (rows[i].len(), i));
    let n = order.len();
    let max_rows = max_rows.max(1);
    // best[j]: (cost, start of the last batch) for the first j rows in order.
    let mut best: Vec<(usize, usize)> = vec![(0, 0); n + 1];
    for j in 1..=n {
        let longest = rows[order[j - 1]].len();
        best[j] = (j.saturating_sub(max_rows)..j)
            .map(|i| (best[i].0 + call_tokens + (j - i) * longest, i))
            .min()
            .unwrap_or((0, 0));
    }
    let mut batches = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = best[j].1;
        batches.push(order[i..j].to_vec());
        j = i;
    }
    batches.reverse();
    batches
}

/// A batch of rows that continued one cache, right-padded to the longest.
struct RowBatch {
    cache: KvCache,
    /// Positions cached before the rows.
    base: usize,
    lens: Vec<usize>,
}

impl RowBatch {
    /// Row `i`'s cache without its padding, as if it had run alone.
    fn cut(&self, i: usize) -> Result<KvCache> {
        self.cache
            .select(&[i as u32])?
            .truncate(self.base + self.lens[i])
    }
}

/// What self-assessment read: see [`Retriever::verdicts`].
struct Verdicts {
    p_reject: Vec<f64>,
    extra: Vec<Vec<f32>>,
    best: Vec<Option<(usize, KvCache)>>,
}

/// A title's scores from its token log-probabilities: log P(title | query) and the
/// length-normalised probability. Tokens not read yet (a deferred title's auto-completed ones,
/// until its verdict row reads them) are left out, the mean taken over the tokens read.
fn fill_title_scores(t: &mut TitleCandidate) {
    let known: Vec<f64> = t
        .steps
        .iter()
        .filter_map(|s| s.logprob.map(f64::from))
        .collect();
    t.logprob = known.iter().sum();
    t.norm_prob = (t.logprob / known.len().max(1) as f64).exp();
}

/// A sequence's log-probability under the trie: the sum over its tokens.
fn trie_logprob(steps: &[TokenStep]) -> f64 {
    steps.iter().map(|s| s.trie_logprob as f64).sum()
}

/// The steps (after the first, which the query's own distribution scores) with no
/// log-probability yet: tokens a beam search auto-completed without a model call.
fn unscored(steps: &[TokenStep]) -> impl Iterator<Item = usize> + '_ {
    (1..steps.len()).filter(|&k| steps[k].logprob.is_none())
}

struct Beam {
    cursor: Cursor,
    tokens: Vec<u32>,
    steps: Vec<TokenStep>,
    score: f64,
    /// Row in the current KV cache / logprob matrix.
    row: usize,
}

impl Beam {
    /// An empty beam at `cursor` (a trie's root).
    fn at(cursor: Cursor) -> Beam {
        Beam {
            cursor,
            tokens: Vec::new(),
            steps: Vec::new(),
            score: 0.0,
            row: 0,
        }
    }
}

fn rows_to_vecs(lp: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(lp.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

impl Retriever<'_> {
    fn piece(&self, token: u32) -> String {
        self.tokenizer
            .decode(&[token], false)
            .unwrap_or_else(|_| format!("<{token}>"))
    }

    fn forward_last(
        &self,
        ids: &[Vec<u32>],
        cache: &mut KvCache,
        timings: &mut Timings,
    ) -> Result<Vec<Vec<f32>>> {
        let t = ids.first().map(|r| r.len()).unwrap_or(0);
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let input = Tensor::from_vec(flat, (ids.len(), t), self.model.device())?;
        timings.count_pass(ids.len() * t, ids.len());
        rows_to_vecs(&self.model.next_token_logprobs(&input, Some(cache))?)
    }

    /// Decodes token texts only for the beams that survive (not inside the search loop).
    fn fill_pieces(&self, beams: &mut [Beam]) {
        for b in beams {
            for st in &mut b.steps {
                st.piece = self.piece(st.token);
            }
        }
    }

    /// Appends the rest of the unique item under the beam's cursor, without model calls.
    fn auto_complete(&self, trie: &TokenTrie, mut beam: Beam) -> Beam {
        for &t in trie.completion(beam.cursor) {
            beam.tokens.push(t);
            beam.steps.push(TokenStep {
                token: t,
                piece: String::new(),
                kind: StepKind::AutoComplete,
                logprob: None,
                alternatives: 1,
                trie_logprob: 0.0,
            });
        }
        beam
    }

    /// Constrained beam search over `trie` from a cache holding one row (the context), whose
    /// next-token log-probabilities are `first`. Beams that become unique are auto-completed and
    /// finished. With `greedy_after_first`, after the first token each beam only follows its best
    /// allowed token (the public code's passage search); otherwise it is a regular beam search.
    fn constrained_search(
        &self,
        trie: &TokenTrie,
        context: &KvCache,
        first: Vec<f32>,
        width: usize,
        greedy_after_first: bool,
        timings: &mut Timings,
    ) -> Result<Vec<Beam>> {
        let mut finished: Vec<Beam> = Vec::new();
        let root = Beam::at(trie.root());
        if trie.unique_item(root.cursor).is_some() {
            // A single item (e.g. a title with one passage): nothing to choose, all auto-complete.
            let mut only = vec![self.auto_complete(trie, root)];
            self.fill_pieces(&mut only);
            return Ok(only);
        }
        let mut live = vec![root];
        let mut logprobs = vec![first];
        let mut cache = context.clone();
        while !live.is_empty() && finished.len() < width {
            // Beam mode until the beam is full; then (passages) each beam follows its best token.
            let greedy = greedy_after_first && live.len() + finished.len() >= width;
            // Expansions: (parent index, token, token logprob, alternatives, log of the
            // probability mass the trie allowed there).
            let mut expansions: Vec<(usize, u32, f32, u32, f32)> = Vec::new();
            for (bi, beam) in live.iter().enumerate() {
                let allowed = trie.allowed(beam.cursor);
                let lp = &logprobs[beam.row];
                let alts = allowed.len() as u32;
                let mass = match allowed {
                    [only] => lp[*only as usize],
                    _ => score::log_sum_exp(allowed.iter().map(|&t| lp[t as usize] as f64)) as f32,
                };
                if greedy {
                    if let Some(&best) = allowed
                        .iter()
                        .max_by(|&&a, &&b| lp[a as usize].total_cmp(&lp[b as usize]))
                    {
                        expansions.push((bi, best, lp[best as usize], alts, mass));
                    }
                } else {
                    expansions.extend(allowed.iter().map(|&t| (bi, t, lp[t as usize], alts, mass)));
                }
            }
            if !greedy {
                expansions.sort_by(|a, b| {
                    let sa = live[a.0].score + a.2 as f64;
                    let sb = live[b.0].score + b.2 as f64;
                    sb.total_cmp(&sa)
                });
                expansions.truncate(width - finished.len());
            }
            let mut next_live: Vec<Beam> = Vec::new();
            let mut parent_rows: Vec<u32> = Vec::new();
            for (bi, tok, lp, alts, mass) in expansions {
                let parent = &live[bi];
                let Some(cursor) = trie.advance(parent.cursor, tok) else {
                    continue;
                };
                let mut beam = Beam {
                    cursor,
                    tokens: parent.tokens.clone(),
                    steps: parent.steps.clone(),
                    score: parent.score + lp as f64,
                    row: 0,
                };
                beam.tokens.push(tok);
                beam.steps.push(TokenStep {
                    token: tok,
                    piece: String::new(),
                    kind: if alts > 1 {
                        StepKind::Chosen
                    } else {
                        StepKind::Forced
                    },
                    logprob: Some(lp),
                    alternatives: alts,
                    trie_logprob: if alts > 1 { lp - mass } else { 0.0 },
                });
                if trie.unique_item(cursor).is_some() || trie.allowed(cursor).is_empty() {
                    finished.push(self.auto_complete(trie, beam));
                } else {
                    parent_rows.push(parent.row as u32);
                    beam.row = next_live.len();
                    next_live.push(beam);
                }
            }
            if next_live.is_empty() {
                break;
            }
            cache = cache.select(&parent_rows)?;
            let ids: Vec<Vec<u32>> = next_live
                .iter()
                .map(|b| vec![*b.tokens.last().unwrap_or(&0)])
                .collect();
            logprobs = self.forward_last(&ids, &mut cache, timings)?;
            live = next_live;
        }
        finished.sort_by(|a, b| b.score.total_cmp(&a.score));
        finished.truncate(width);
        self.fill_pieces(&mut finished);
        Ok(finished)
    }

    /// Runs the whole pipeline; `progress` sees the trace after each stage (titles, each title's
    /// passages, assessment, answer) so a GUI can show results as they arrive.
    pub fn retrieve(
        &self,
        query: &str,
        opts: &RetrieveOptions,
        progress: &mut dyn FnMut(&RetrievalTrace),
    ) -> Result<RetrievalTrace> {
        if self.corpus.is_empty() {
            return Err(Error::invalid("the corpus is empty"));
        }
        if query.trim().is_empty() {
            return Err(Error::invalid("the question is empty: type a question"));
        }
        opts.validate()?;
        let mut trace = RetrievalTrace {
            query: query.to_string(),
            tau: opts.tau,
            delta: opts.delta,
            passage_weight: opts.passage_weight,
            query_weight: opts.query_weight,
            ..Default::default()
        };
        let t0 = Instant::now();
        // Stage 1: title beams from the query prompt.
        let prompt = self.codec.query(self.tokenizer, query)?;
        let mut prefix_cache = self.model.new_cache();
        let prefix_lp = self
            .forward_last(
                std::slice::from_ref(&prompt),
                &mut prefix_cache,
                &mut trace.timings,
            )?
            .remove(0);
        let title_beams = self.constrained_search(
            &self.trie.titles,
            &prefix_cache,
            prefix_lp.clone(),
            opts.titles.max(1),
            false,
            &mut trace.timings,
        )?;
        for beam in title_beams {
            let title_index = self
                .trie
                .titles
                .find(&beam.tokens)
                .ok_or_else(|| Error::invalid("title beam left the trie"))?
                as usize;
            trace.titles.push(TitleCandidate {
                title_index,
                title: self.corpus.titles[title_index].clone(),
                trie_logprob: trie_logprob(&beam.steps),
                steps: beam.steps,
                logprob: beam.score,
                norm_prob: 0.0,
                s_t: 0.0,
            });
        }
        trace.timings.titles_ms = t0.elapsed().as_secs_f64() * 1e3;
        progress(&trace);

        // Stage 2: the titles through the model in one right-padded batch from the query's
        // cache (the context of each title's passages, and the log-probabilities of the title
        // tokens the beam search auto-completed; it scored the others already), then each
        // title's passage trie is searched. A title with a single passage needs no search:
        // with self-assessment on it skips this batch, since its verdict row reads the title
        // again anyway and gives those log-probabilities then (one pass over the weights
        // fewer when no title has several passages).
        let t1 = Instant::now();
        let title_rows: Vec<Vec<u32>> = trace
            .titles
            .iter()
            .map(|t| t.steps.iter().map(|s| s.token).collect())
            .collect();
        // Positions whose next-token distribution a title needs: before each auto-completed
        // token, and the last (its passages' first token).
        let wanted: Vec<Vec<usize>> = trace
            .titles
            .iter()
            .map(|t| {
                let mut at: Vec<usize> = unscored(&t.steps).map(|k| k - 1).collect();
                at.push(t.steps.len().saturating_sub(1));
                at.dedup();
                at
            })
            .collect();
        let deferred: Vec<bool> = trace
            .titles
            .iter()
            .map(|t| {
                let ptrie = &self.trie.passages[t.title_index];
                opts.assess && ptrie.unique_item(ptrie.root()).is_some()
            })
            .collect();
        let run: Vec<usize> = (0..title_rows.len()).filter(|&i| !deferred[i]).collect();
        let rows: Vec<&[u32]> = run.iter().map(|&i| title_rows[i].as_slice()).collect();
        let run_wanted: Vec<Vec<usize>> = run.iter().map(|&i| wanted[i].clone()).collect();
        let mut title_caches: Vec<Option<KvCache>> = vec![None; title_rows.len()];
        let mut dists: Vec<Vec<Vec<f32>>> = vec![Vec::new(); title_rows.len()];
        if !run.is_empty() {
            let (batch, run_dists) =
                self.continue_rows(&prefix_cache, &rows, &run_wanted, &mut trace.timings)?;
            for (k, (&i, d)) in run.iter().zip(run_dists).enumerate() {
                title_caches[i] = Some(batch.cut(k)?);
                dists[i] = d;
            }
        }
        for tr in 0..trace.titles.len() {
            let at = |pos: usize| wanted[tr].iter().position(|&p| p == pos);
            let known = |k: usize, step: &TokenStep| match (k, step.logprob) {
                (0, _) => Some(prefix_lp[step.token as usize]),
                (_, Some(v)) => Some(v),
                (_, None) => at(k - 1)
                    .and_then(|i| dists[tr].get(i))
                    .map(|d| d[step.token as usize]),
            };
            let values: Vec<Option<f32>> = trace.titles[tr]
                .steps
                .iter()
                .enumerate()
                .map(|(k, st)| known(k, st))
                .collect();
            for (st, v) in trace.titles[tr].steps.iter_mut().zip(values) {
                st.logprob = v;
            }
            // A deferred title is scored on its known tokens until its verdict row fills in
            // the rest (`fill_title_scores`).
            fill_title_scores(&mut trace.titles[tr]);
            let t_idx = trace.titles[tr].title_index;
            let ptrie = &self.trie.passages[t_idx];
            let beams = match &title_caches[tr] {
                Some(cache) => {
                    let last = trace.titles[tr].steps.len().saturating_sub(1);
                    let first = at(last)
                        .and_then(|i| dists[tr].get_mut(i))
                        .map(std::mem::take)
                        .unwrap_or_default();
                    self.constrained_search(
                        ptrie,
                        cache,
                        first,
                        opts.passages.max(1),
                        !opts.passage_beam,
                        &mut trace.timings,
                    )?
                }
                // One passage: no model call needed to find it.
                None => {
                    let mut only = vec![self.auto_complete(ptrie, Beam::at(ptrie.root()))];
                    self.fill_pieces(&mut only);
                    only
                }
            };
            for beam in beams {
                let item = ptrie
                    .find(&beam.tokens)
                    .ok_or_else(|| Error::invalid("passage beam left the trie"))?;
                let pidx = self.corpus.by_title[t_idx][item as usize];
                let p = &self.corpus.passages[pidx];
                trace.candidates.push(PassageCandidate {
                    passage_index: pidx,
                    passage_id: p.id.clone(),
                    title_rank: tr,
                    title: p.title.clone(),
                    text: p.text.clone(),
                    passage_logprob: trie_logprob(&beam.steps),
                    steps: beam.steps,
                    generated_logprob: beam.score,
                    query_logprob: 0.0,
                    p_reject: 0.5,
                    s_gen: 0.0,
                    s_p: 0.0,
                    s_q: 0.0,
                    s: 0.0,
                    rank: 0,
                });
            }
            trace.rerank(opts.weights());
            trace.timings.passages_ms = t1.elapsed().as_secs_f64() * 1e3;
            progress(&trace);
        }

        // Stage 3: self-assessment of every candidate, in batches across titles that continue
        // the query's cache (each row reads its title again, a few tokens, so that rows of
        // different titles share one batch: far fewer, larger matrix products). Each title keeps
        // the cache of its best candidate at these weights: the top-ranked passage is always one
        // of them (within a title the ranking follows (1 - P(reject)) / delta + w log P_trie,
        // whatever tau is), so the answer continues that cache instead of reading the passage
        // again. A deferred
        // title's row also reads the log-probabilities of its auto-completed tokens.
        let t2 = Instant::now();
        let mut best_rows: Vec<Option<(usize, KvCache)>> = vec![None; title_rows.len()];
        if opts.assess && !trace.candidates.is_empty() {
            let rows: Vec<Vec<u32>> = trace
                .candidates
                .iter()
                .map(|c| {
                    let mut r = title_rows[c.title_rank].clone();
                    r.extend(self.verdict_row(c));
                    r
                })
                .collect();
            let extra: Vec<Vec<(usize, u32)>> = trace
                .candidates
                .iter()
                .map(|c| {
                    let tr = c.title_rank;
                    if !deferred[tr] {
                        return Vec::new();
                    }
                    let steps = &trace.titles[tr].steps;
                    unscored(steps).map(|k| (k - 1, steps[k].token)).collect()
                })
                .collect();
            let keys: Vec<usize> = trace.candidates.iter().map(|c| c.title_rank).collect();
            // The passage term in P(reject) units: a title's top-ranked candidate is the one of
            // least P(reject) - delta x w x log P_trie(passage).
            let prior: Vec<f64> = trace
                .candidates
                .iter()
                .map(|c| opts.delta * opts.passage_weight * c.passage_logprob)
                .collect();
            let verdicts = self.verdicts(
                &prefix_cache,
                &rows,
                &extra,
                (&keys, &prior),
                title_rows.len(),
                &mut trace.timings,
            )?;
            for (c, p) in trace.candidates.iter_mut().zip(verdicts.p_reject) {
                c.p_reject = p;
            }
            for ((c, ex), lps) in trace.candidates.iter().zip(&extra).zip(verdicts.extra) {
                if ex.is_empty() {
                    continue;
                }
                let title = &mut trace.titles[c.title_rank];
                for (&(pos, _), lp) in ex.iter().zip(lps) {
                    if let Some(st) = title.steps.get_mut(pos + 1) {
                        st.logprob = st.logprob.or(Some(lp));
                    }
                }
                fill_title_scores(title);
            }
            best_rows = verdicts.best;
            trace.rerank(opts.weights());
        }
        trace.timings.assess_ms = t2.elapsed().as_secs_f64() * 1e3;
        progress(&trace);

        // Stage 3b: the query likelihood of every candidate (the question after the passage).
        if opts.likelihood && !trace.candidates.is_empty() {
            let t = Instant::now();
            let passages: Vec<usize> = trace.candidates.iter().map(|c| c.passage_index).collect();
            let reader = match (opts.likelihood_base, self.base) {
                (true, Some(base)) => base,
                _ => self.model,
            };
            let ql = self.query_logprobs(reader, query, &passages, &mut trace.timings)?;
            for (c, q) in trace.candidates.iter_mut().zip(ql) {
                c.query_logprob = q;
            }
            trace.rerank(opts.weights());
            trace.timings.likelihood_ms = t.elapsed().as_secs_f64() * 1e3;
            progress(&trace);
        }

        // Stage 4: answer from the top passage, continuing its acceptance verdict.
        if opts.answer {
            let t3 = Instant::now();
            if let Some(best) = trace.ranking.first().map(|r| r.passage_id.clone()) {
                let ci = trace
                    .candidates
                    .iter()
                    .position(|c| c.passage_id == best)
                    .unwrap_or(0);
                let c = &trace.candidates[ci];
                let (ids, mut cache) = match best_rows[c.title_rank].take() {
                    // The verdict row already holds passage + cue + the shared verdict prefix.
                    Some((k, cache)) if k == ci => (
                        self.codec.accept[self.codec.verdict_split()..].to_vec(),
                        cache,
                    ),
                    _ => {
                        let mut ids = self.verdict_row(c);
                        ids.extend_from_slice(&self.codec.accept[self.codec.verdict_split()..]);
                        match &title_caches[c.title_rank] {
                            Some(cache) => (ids, cache.clone()),
                            // A deferred title has no cache of its own: read it again.
                            None => {
                                let mut with_title = title_rows[c.title_rank].clone();
                                with_title.extend(ids);
                                (with_title, prefix_cache.clone())
                            }
                        }
                    }
                };
                let text =
                    self.greedy(&ids, &mut cache, opts.max_answer_tokens, &mut trace.timings)?;
                trace.answer = Some(Answer {
                    text,
                    cited: vec![best],
                });
            }
            trace.timings.answer_ms = t3.elapsed().as_secs_f64() * 1e3;
        }
        progress(&trace);
        Ok(trace)
    }

    /// Runs `rows` on from the one-row `cache` in one right-padded batch. Returns the batch's
    /// cache (row `i` is `rows[i]`; [`RowBatch::cut`] gives one row as if it had run alone) and
    /// each row's next-token log-probabilities at the positions `wanted[i]` (only those go
    /// through the vocabulary projection).
    fn continue_rows(
        &self,
        cache: &KvCache,
        rows: &[&[u32]],
        wanted: &[Vec<usize>],
        timings: &mut Timings,
    ) -> Result<(RowBatch, Vec<Vec<Vec<f32>>>)> {
        let n = rows.len();
        let base = cache.seq_len();
        let lens: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let max = lens.iter().copied().max().unwrap_or(0);
        if n == 0 || max == 0 {
            let batch = RowBatch {
                cache: if n == 0 {
                    cache.clone()
                } else {
                    cache.select(&vec![0u32; n])?
                },
                base,
                lens,
            };
            return Ok((batch, vec![Vec::new(); n]));
        }
        let mut flat = Vec::with_capacity(n * max);
        for r in rows {
            flat.extend_from_slice(r);
            flat.extend(std::iter::repeat_n(self.codec.eos, max - r.len()));
        }
        let mut batch = cache.select(&vec![0u32; n])?;
        let input = Tensor::from_vec(flat, (n, max), self.model.device())?;
        let hidden = self.model.hidden(&input, Some(&mut batch))?;
        let h = hidden.dim(2)?;
        let picks: Vec<u32> = wanted
            .iter()
            .enumerate()
            .flat_map(|(i, at)| {
                let len = lens[i];
                at.iter()
                    .filter(move |&&p| p < len)
                    .map(move |&p| (i * max + p) as u32)
            })
            .collect();
        timings.count_pass(n * max, picks.len());
        let mut flat_lp = if picks.is_empty() {
            Vec::new()
        } else {
            let idx = Tensor::new(picks.as_slice(), self.model.device())?;
            let picked = hidden.reshape((n * max, h))?.index_select(&idx, 0)?;
            rows_to_vecs(&crate::kernels::loss::log_softmax(
                &self.model.logits(&picked)?,
            )?)?
        }
        .into_iter();
        let dists = wanted
            .iter()
            .enumerate()
            .map(|(i, at)| {
                at.iter()
                    .map(|&p| {
                        if p < lens[i] {
                            flat_lp.next().unwrap_or_default()
                        } else {
                            Vec::new()
                        }
                    })
                    .collect()
            })
            .collect();
        let batch = RowBatch {
            cache: batch,
            base,
            lens,
        };
        Ok((batch, dists))
    }

    /// The tokens a candidate's verdict is read after: its passage, the assessment cue and the
    /// part of the verdict that acceptance and rejection share.
    fn verdict_row(&self, c: &PassageCandidate) -> Vec<u32> {
        let mut r: Vec<u32> = c.steps.iter().map(|s| s.token).collect();
        r.extend_from_slice(&self.codec.assess_cue);
        r.extend_from_slice(&self.codec.accept[..self.codec.verdict_split()]);
        r
    }

    /// P(reject) for each row continuing the (one-row) `cache`; the log-probability of each
    /// `(position, token)` in `extra[i]` within row `i`; and for each key (`keys[i]` < `n_keys`
    /// labels row `i`) the cache of its best row, the one of least P(reject) - `prior[i]`
    /// (first on ties; the title's top-ranked candidate), cut to that row's own length. Rows run in batches grouped by length ([`length_batches`]),
    /// right-padded, each read at its own last position (and its extra positions).
    fn verdicts(
        &self,
        cache: &KvCache,
        rows: &[Vec<u32>],
        extra: &[Vec<(usize, u32)>],
        (keys, prior): (&[usize], &[f64]),
        n_keys: usize,
        timings: &mut Timings,
    ) -> Result<Verdicts> {
        let split = self.codec.verdict_split();
        let mut out = Verdicts {
            p_reject: vec![0.5; rows.len()],
            extra: extra
                .iter()
                .map(|e| vec![f32::NEG_INFINITY; e.len()])
                .collect(),
            best: vec![None; n_keys],
        };
        let (Some(&acc), Some(&rej)) = (self.codec.accept.get(split), self.codec.reject.get(split))
        else {
            return Ok(out);
        };
        let no_extra = Vec::new();
        let extra_of = |i: usize| extra.get(i).unwrap_or(&no_extra);
        for group in length_batches(rows, VERDICT_CALL_TOKENS, VERDICT_BATCH) {
            let group_rows: Vec<&[u32]> = group.iter().map(|&i| rows[i].as_slice()).collect();
            // The verdict position first, then the extra ones.
            let wanted: Vec<Vec<usize>> = group
                .iter()
                .map(|&i| {
                    let mut at = vec![rows[i].len().saturating_sub(1)];
                    at.extend(extra_of(i).iter().map(|&(p, _)| p));
                    at
                })
                .collect();
            let (batch, dists) = self.continue_rows(cache, &group_rows, &wanted, timings)?;
            let mut read = Vec::with_capacity(group.len());
            for (k, dist) in dists.iter().enumerate() {
                let i = group[k];
                for ((_, token), (d, slot)) in extra_of(i)
                    .iter()
                    .zip(dist.iter().skip(1).zip(out.extra[i].iter_mut()))
                {
                    if let Some(&v) = d.get(*token as usize) {
                        *slot = v;
                    }
                }
                let Some(row) = dist.first().filter(|d| !d.is_empty()) else {
                    continue;
                };
                let (a, r) = (row[acc as usize] as f64, row[rej as usize] as f64);
                let m = a.max(r);
                let (ea, er) = ((a - m).exp(), (r - m).exp());
                out.p_reject[i] = er / (ea + er);
                read.push(k);
            }
            // Best first, the earlier candidate on ties (as the ranking breaks them).
            let p_rej = &out.p_reject;
            let key = |i: usize| p_rej[i] - prior.get(i).copied().unwrap_or(0.0);
            let order = |i: usize, j: usize| key(i).total_cmp(&key(j)).then(i.cmp(&j));
            for k in read {
                let i = group[k];
                let Some(slot) = out.best.get_mut(keys[i]) else {
                    continue;
                };
                if slot.as_ref().is_none_or(|(j, _)| order(i, *j).is_lt()) {
                    *slot = Some((i, batch.cut(k)?));
                }
            }
        }
        Ok(out)
    }

    /// The model's answer to `query` read from one given passage, in the same format as the
    /// answer stage: for the retriever + reader baseline (another retriever picks the passage).
    pub fn answer_from(&self, query: &str, pidx: usize, max_tokens: usize) -> Result<String> {
        let p = &self.corpus.passages[pidx];
        let mut ids = self.codec.query(self.tokenizer, query)?;
        ids.extend(self.codec.title(self.tokenizer, &p.title)?);
        ids.extend(self.codec.passage(self.tokenizer, &p.text)?);
        ids.extend_from_slice(&self.codec.assess_cue);
        ids.extend_from_slice(&self.codec.accept);
        let mut cache = self.model.new_cache();
        self.greedy(&ids, &mut cache, max_tokens, &mut Timings::default())
    }

    /// Greedy decoding after `ids` until end-of-text, a newline or `max_tokens`.
    fn greedy(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        max_tokens: usize,
        timings: &mut Timings,
    ) -> Result<String> {
        let mut out: Vec<u32> = Vec::new();
        let mut lp = self
            .forward_last(&[ids.to_vec()], cache, timings)?
            .remove(0);
        for _ in 0..max_tokens {
            let next = lp
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .unwrap_or(self.codec.eos);
            if next == self.codec.eos {
                break;
            }
            out.push(next);
            // A newline ends the answer; only the new token can have brought one.
            if self.tokenizer.decode(&[next], true)?.contains('\n') {
                break;
            }
            lp = self.forward_last(&[vec![next]], cache, timings)?.remove(0);
        }
        let text = self.tokenizer.decode(&out, true)?;
        Ok(text.lines().next().unwrap_or("").trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::length_batches;

    #[test]
    fn length_batches_cover_every_row_once_at_least_cost() {
        let cost = |lens: &[usize], batches: &[Vec<usize>], call: usize| -> usize {
            batches
                .iter()
                .map(|b| call + b.len() * b.iter().map(|&i| lens[i]).max().unwrap_or(0))
                .sum()
        };
        // Every way to cut the rows into batches (set partitions), by brute force.
        fn partitions(n: usize) -> Vec<Vec<Vec<usize>>> {
            if n == 0 {
                return vec![vec![]];
            }
            let mut out = Vec::new();
            for p in partitions(n - 1) {
                for k in 0..=p.len() {
                    let mut q = p.clone();
                    if k == p.len() {
                        q.push(vec![n - 1]);
                    } else {
                        q[k].push(n - 1);
                    }
                    out.push(q);
                }
            }
            out
        }
        let lens = [30usize, 5, 31, 120, 29, 118, 7];
        let rows: Vec<Vec<u32>> = lens.iter().map(|&n| vec![0; n]).collect();
        let all = partitions(lens.len());
        for (call, max_rows) in [(0, 3), (48, 3), (48, 16), (500, 4)] {
            let batches = length_batches(&rows, call, max_rows);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..rows.len()).collect::<Vec<_>>());
            assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= max_rows));
            let least = all
                .iter()
                .filter(|p| p.iter().all(|b| b.len() <= max_rows))
                .map(|p| cost(&lens, p, call))
                .min()
                .unwrap();
            assert_eq!(
                cost(&lens, &batches, call),
                least,
                "call {call}, rows {max_rows}"
            );
        }
        // Free passes: no padding at all. Costly passes: one batch up to the row limit.
        let free = length_batches(&rows, 0, 16);
        assert!(free
            .iter()
            .all(|b| b.iter().all(|&i| lens[i] == lens[b[0]])));
        assert_eq!(length_batches(&rows, 10_000, 16).len(), 1);
        let same: Vec<Vec<u32>> = (0..7).map(|_| vec![1; 10]).collect();
        let sizes: Vec<usize> = length_batches(&same, 1, 3)
            .iter()
            .map(|b| b.len())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 7);
        assert_eq!(sizes.len(), 3);
        assert!(length_batches(&[], 48, 3).is_empty());
    }
}
