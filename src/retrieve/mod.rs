//! Retrieval with one model: title beams constrained by the title trie, passage beams constrained by
//! each title's passage trie (auto-completed once unique), self-assessment of every candidate,
//! reranking, and an answer. Everything is recorded in a [`RetrievalTrace`].
//!
//! Here the [`Retriever`] and its pipeline ([`Retriever::retrieve`]); its stages in [`beam`]
//! (constrained beam search), [`assess`] (self-assessment), [`answer`] (the answer), [`likelihood`] (the
//! query likelihood), [`score`] (the ranking), [`explain`] ("why not this passage?");
//! [`options`] says how a query runs and [`trace`] what it did.

pub mod answer;
pub mod assess;
pub mod beam;
pub mod docid;
pub mod explain;
pub mod likelihood;
pub mod options;
pub mod reading;
pub mod score;
pub mod trace;

pub use answer::AnswerReader;
pub use explain::Explanation;
pub use options::{
    RetrieveOptions, DEFAULT_CANDIDATES, DEFAULT_PASSAGE_WEIGHT, DEFAULT_QUERY_WEIGHT, DEFAULT_TAU,
    DEFAULT_TITLES,
};
pub use trace::{
    Answer, ForwardPass, PassageCandidate, RankedPassage, RetrievalTrace, Rival, StepKind, Timings,
    TitleCandidate, TokenStep,
};

use crate::corpus::Corpus;
use crate::error::{Error, Result};
use crate::model::{KvCache, Llama};
use crate::prompts::PromptCodec;
use crate::trie::CorpusTrie;
use beam::Beam;
use candle_core::Tensor;
use std::time::Instant;
use tokenizers::Tokenizer;

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
    /// Each title's prior, by title index ([`Retriever::title_priors`]), when computed.
    pub title_prior: Option<&'a [f64]>,
    /// Passages read for the query likelihood, kept between queries (`None`: read each time).
    pub reading: Option<&'a reading::ReadingCache>,
}

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

/// A row's next-token log-probabilities at the positions asked for.
type RowDists = Vec<Vec<f32>>;

/// What one more forward pass costs, in tokens of batch, when rows are grouped by length.
const GROUP_CALL_TOKENS: usize = 48;
/// Rows in one grouped batch at most.
const GROUP_ROWS: usize = 64;

/// A batch of rows that continued one cache, right-padded to the longest.
struct RowBatch {
    cache: KvCache,
    /// Positions cached before the rows.
    base: usize,
    lens: Vec<usize>,
}

impl Retriever<'_> {
    /// Each title's prior, by title index: log P of the tokens a title search reads for it (up
    /// to where it is unique) after an empty question, the same tokens its search score sums
    /// after a real one. A title the model writes readily whatever is asked has a high prior; a
    /// name the question makes likely, a low one. Read by one title search of `width` beams
    /// (every title, on a corpus with no more titles than that); a title it does not reach gets
    /// the lowest prior it found, which bounds its own from above.
    pub fn title_priors(&self, width: usize) -> Result<Vec<f64>> {
        let mut timings = Timings::default();
        let prompt = self.codec.query(self.tokenizer, "")?;
        let mut cache = self.model.new_cache();
        let first = self
            .forward_last(std::slice::from_ref(&prompt), &mut cache, &mut timings)?
            .remove(0);
        let beams = self.constrained_search(
            &self.trie.titles,
            &cache,
            first,
            width.max(1),
            false,
            &mut timings,
        )?;
        let mut prior = vec![f64::NAN; self.corpus.titles.len()];
        for b in beams {
            if let Some(i) = self.trie.titles.find(&b.tokens) {
                if let Some(p) = prior.get_mut(i as usize) {
                    *p = b.score;
                }
            }
        }
        let floor = prior
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .fold(f64::INFINITY, f64::min);
        let floor = if floor.is_finite() { floor } else { 0.0 };
        for p in prior.iter_mut().filter(|p| !p.is_finite()) {
            *p = floor;
        }
        Ok(prior)
    }
}

impl RowBatch {
    /// Row `i`'s cache without its padding, as if it had run alone.
    fn cut(&self, i: usize) -> Result<KvCache> {
        self.cache
            .select(&[i as u32])?
            .truncate(self.base + self.lens[i])
    }
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

/// What a title search scored a title by: the log-probabilities of the tokens it read (the
/// auto-completed tail, unique under the trie, is not read).
pub(super) fn search_logprob(steps: &[TokenStep]) -> f64 {
    steps
        .iter()
        .filter(|s| s.kind != trace::StepKind::AutoComplete)
        .filter_map(|s| s.logprob.map(f64::from))
        .sum()
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

/// Log-probability rows as vectors, refusing NaN: weights that load but compute garbage (bytes
/// overwritten with huge finite values) would otherwise print NaN scores as results. A NaN
/// anywhere in a row's logits makes its normaliser, and so its first entry, NaN.
fn rows_to_vecs(lp: &Tensor) -> Result<Vec<Vec<f32>>> {
    let rows = lp.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    if rows.iter().any(|r| r.first().is_some_and(|v| v.is_nan())) {
        return Err(Error::invalid(
            "the model computed NaN probabilities: its weights are corrupt or diverged; use an \
             earlier checkpoint or retrain",
        ));
    }
    Ok(rows)
}

impl Retriever<'_> {
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
                search_logprob: beam.score,
                prior_logprob: self.title_prior.map(|p| p[title_index]),
                s_t: 0.0,
            });
        }
        // Titles the question makes likelier than they are anyway come first (stable: the
        // beam order among equals).
        if opts.title_prior != 0.0 && self.title_prior.is_some() {
            let key = |t: &TitleCandidate| {
                score::title_order_key(t.search_logprob, t.prior_logprob, opts.title_prior)
            };
            trace.titles.sort_by(|a, b| key(b).total_cmp(&key(a)));
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
        let sizes: Vec<usize> = trace
            .titles
            .iter()
            .map(|t| self.corpus.by_title[t.title_index].len())
            .collect();
        let searches = opts.passage_searches(&sizes);
        // A title the candidate budget leaves out has no candidate to rank, so it skips the
        // batch: its scores stay those of the tokens the beam search read (a wide title search,
        // every title of a corpus, would otherwise read every title again).
        let run: Vec<usize> = (0..title_rows.len())
            .filter(|&i| !deferred[i] && searches[i].0 > 0)
            .collect();
        let rows: Vec<&[u32]> = run.iter().map(|&i| title_rows[i].as_slice()).collect();
        let run_wanted: Vec<Vec<usize>> = run.iter().map(|&i| wanted[i].clone()).collect();
        let mut title_caches: Vec<Option<KvCache>> = vec![None; title_rows.len()];
        let mut dists: Vec<Vec<Vec<f32>>> = vec![Vec::new(); title_rows.len()];
        // Titles whose every passage is a candidate (the budget's titles) are searched exactly
        // and all at once: one teacher-forced batch from the query's cache reads each title
        // and then each of its passages up to where the passage is unique, which scores every
        // item as a beam search of the title's width would, without a search per title (NQ:
        // a hundred titles of a few passages, each search several passes over the weights).
        let exact: Vec<usize> = (0..trace.titles.len())
            .filter(|&tr| opts.candidates > 0 && sizes[tr] > 1 && searches[tr].0 >= sizes[tr])
            .collect();
        if !run.is_empty() {
            // Only a title searched on its own needs its cache kept.
            let keep: Vec<bool> = run
                .iter()
                .map(|&i| searches[i].0 > 0 && sizes[i] > 1 && !exact.contains(&i))
                .collect();
            let (caches, run_dists) = self.continue_rows_grouped(
                &prefix_cache,
                &rows,
                &run_wanted,
                &keep,
                &mut trace.timings,
            )?;
            for ((&i, c), d) in run.iter().zip(caches).zip(run_dists) {
                title_caches[i] = c;
                dists[i] = d;
            }
        }
        let mut exact_beams: Vec<Option<Vec<Beam>>> =
            (0..trace.titles.len()).map(|_| None).collect();
        if !exact.is_empty() {
            let paths: Vec<Vec<Vec<(crate::trie::Cursor, u32)>>> = exact
                .iter()
                .map(|&tr| beam::item_paths(&self.trie.passages[trace.titles[tr].title_index]))
                .collect();
            let mut rows: Vec<Vec<u32>> = Vec::new();
            let mut row_wanted: Vec<Vec<usize>> = Vec::new();
            for (&tr, title_paths) in exact.iter().zip(&paths) {
                let title = &title_rows[tr];
                for path in title_paths {
                    let mut row = title.clone();
                    row.extend(path[..path.len() - 1].iter().map(|&(_, t)| t));
                    row_wanted.push((0..path.len()).map(|k| title.len() - 1 + k).collect());
                    rows.push(row);
                }
            }
            let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
            let no_caches = vec![false; refs.len()];
            let (_, mut dists_all) = self.continue_rows_grouped(
                &prefix_cache,
                &refs,
                &row_wanted,
                &no_caches,
                &mut trace.timings,
            )?;
            let mut next = 0;
            for (&tr, title_paths) in exact.iter().zip(&paths) {
                let d: Vec<Vec<Vec<f32>>> = dists_all[next..next + title_paths.len()]
                    .iter_mut()
                    .map(std::mem::take)
                    .collect();
                next += title_paths.len();
                let ptrie = &self.trie.passages[trace.titles[tr].title_index];
                exact_beams[tr] = Some(self.beams_from_paths(ptrie, title_paths, &d));
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
            let (width, greedy) = searches[tr];
            let beams = match &title_caches[tr] {
                // Left out by the candidate budget.
                _ if width == 0 => Vec::new(),
                _ if exact_beams[tr].is_some() => exact_beams[tr].take().unwrap_or_default(),
                Some(cache) => {
                    let last = trace.titles[tr].steps.len().saturating_sub(1);
                    let first = at(last)
                        .and_then(|i| dists[tr].get_mut(i))
                        .map(std::mem::take)
                        .unwrap_or_default();
                    self.constrained_search(ptrie, cache, first, width, greedy, &mut trace.timings)?
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

        // Stage 4: answer from the top passage: by the base model, instructed, or in the
        // trained format continuing the passage's acceptance verdict.
        if opts.answer {
            let t3 = Instant::now();
            if let Some(best) = trace.ranking.first().map(|r| r.passage_id.clone()) {
                let ci = trace
                    .candidates
                    .iter()
                    .position(|c| c.passage_id == best)
                    .unwrap_or(0);
                let c = &trace.candidates[ci];
                // The base model reads the top passages, the trained format the first.
                let read: Vec<usize> = if opts.answer_reader == AnswerReader::Base {
                    trace
                        .ranking
                        .iter()
                        .take(opts.answer_passages.max(1))
                        .filter_map(|r| self.corpus.index_of(&r.passage_id))
                        .collect()
                } else {
                    vec![c.passage_index]
                };
                let (text, from) = if opts.answer_reader == AnswerReader::Base {
                    self.instructed_answer(
                        query,
                        &read,
                        opts.max_answer_tokens,
                        &mut trace.timings,
                    )?
                } else {
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
                    let text = self.greedy(
                        self.model,
                        &ids,
                        &mut cache,
                        opts.max_answer_tokens,
                        &mut trace.timings,
                    )?;
                    (text, c.passage_index)
                };
                trace.answer = Some(Answer {
                    text,
                    cited: vec![self.corpus.passages[from].id.clone()],
                    read: read
                        .iter()
                        .map(|&p| self.corpus.passages[p].id.clone())
                        .collect(),
                    reader: opts.answer_reader,
                });
            }
            trace.timings.answer_ms = t3.elapsed().as_secs_f64() * 1e3;
        }
        progress(&trace);
        Ok(trace)
    }

    /// [`Self::continue_rows`] in batches of rows of similar length (a hundred titles padded to
    /// the longest cost about twice their tokens): each row's distributions, and the cache of
    /// each row `keep` asks for.
    fn continue_rows_grouped(
        &self,
        cache: &KvCache,
        rows: &[&[u32]],
        wanted: &[Vec<usize>],
        keep: &[bool],
        timings: &mut Timings,
    ) -> Result<(Vec<Option<KvCache>>, Vec<RowDists>)> {
        let owned: Vec<Vec<u32>> = rows.iter().map(|r| r.to_vec()).collect();
        let mut caches: Vec<Option<KvCache>> = vec![None; rows.len()];
        let mut dists: Vec<RowDists> = vec![Vec::new(); rows.len()];
        for group in length_batches(&owned, GROUP_CALL_TOKENS, GROUP_ROWS) {
            let g_rows: Vec<&[u32]> = group.iter().map(|&i| rows[i]).collect();
            let g_wanted: Vec<Vec<usize>> = group.iter().map(|&i| wanted[i].clone()).collect();
            let (batch, d) = self.continue_rows(cache, &g_rows, &g_wanted, timings)?;
            for (k, (&i, d)) in group.iter().zip(d).enumerate() {
                if keep[i] {
                    caches[i] = Some(batch.cut(k)?);
                }
                dists[i] = d;
            }
        }
        Ok((caches, dists))
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
