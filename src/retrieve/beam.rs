//! Beam search under a token trie: every beam stays on a real title or passage, and a beam
//! whose continuation is unique is completed without a model call.

use super::trace::{StepKind, Timings, TokenStep};
use super::{rows_to_vecs, score, Retriever};
use crate::error::Result;
use crate::model::KvCache;
use crate::trie::{Cursor, TokenTrie};
use candle_core::Tensor;

pub(super) struct Beam {
    pub(super) cursor: Cursor,
    pub(super) tokens: Vec<u32>,
    pub(super) steps: Vec<TokenStep>,
    pub(super) score: f64,
    /// Row in the current KV cache / logprob matrix.
    pub(super) row: usize,
}

impl Beam {
    /// An empty beam at `cursor` (a trie's root).
    pub(super) fn at(cursor: Cursor) -> Beam {
        Beam {
            cursor,
            tokens: Vec::new(),
            steps: Vec::new(),
            score: 0.0,
            row: 0,
        }
    }
}

impl Retriever<'_> {
    pub(super) fn piece(&self, token: u32) -> String {
        self.tokenizer
            .decode(&[token], false)
            .unwrap_or_else(|_| format!("<{token}>"))
    }

    pub(super) fn forward_last(
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
    pub(super) fn fill_pieces(&self, beams: &mut [Beam]) {
        for b in beams {
            for st in &mut b.steps {
                st.piece = self.piece(st.token);
                for r in &mut st.rivals {
                    r.piece = self.piece(r.token);
                }
            }
        }
    }

    /// Appends the rest of the unique item under the beam's cursor, without model calls.
    pub(super) fn auto_complete(&self, trie: &TokenTrie, mut beam: Beam) -> Beam {
        for &t in trie.completion(beam.cursor) {
            beam.tokens.push(t);
            beam.steps.push(TokenStep {
                token: t,
                piece: String::new(),
                kind: StepKind::AutoComplete,
                logprob: None,
                alternatives: 1,
                trie_logprob: 0.0,
                rivals: Vec::new(),
            });
        }
        beam
    }

    /// Constrained beam search over `trie` from a cache holding one row (the context), whose
    /// next-token log-probabilities are `first`. Beams that become unique are auto-completed and
    /// finished. With `greedy_after_first`, after the first token each beam only follows its best
    /// allowed token (the public code's passage search); otherwise it is a regular beam search.
    pub(super) fn constrained_search(
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
            // Expansions: (parent index, token, token logprob, log of the probability mass
            // the trie allowed there).
            let mut expansions: Vec<(usize, u32, f32, f32)> = Vec::new();
            for (bi, beam) in live.iter().enumerate() {
                let allowed = trie.allowed(beam.cursor);
                let lp = &logprobs[beam.row];
                let mass = allowed_mass(allowed, lp);
                if greedy {
                    if let Some(&best) = allowed
                        .iter()
                        .max_by(|&&a, &&b| lp[a as usize].total_cmp(&lp[b as usize]))
                    {
                        expansions.push((bi, best, lp[best as usize], mass));
                    }
                } else {
                    expansions.extend(allowed.iter().map(|&t| (bi, t, lp[t as usize], mass)));
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
            for (bi, tok, lp, mass) in expansions {
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
                beam.steps.push(token_step(
                    trie.allowed(parent.cursor),
                    &logprobs[parent.row],
                    tok,
                    mass,
                ));
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
}

/// Log of the probability mass the trie allows at a position.
fn allowed_mass(allowed: &[u32], lp: &[f32]) -> f32 {
    match allowed {
        [only] => lp[*only as usize],
        _ => score::log_sum_exp(allowed.iter().map(|&t| lp[t as usize] as f64)) as f32,
    }
}

/// The trace's record of choosing `token` among `allowed` under log-probabilities `lp`.
fn token_step(allowed: &[u32], lp: &[f32], token: u32, mass: f32) -> TokenStep {
    let alts = allowed.len() as u32;
    let logprob = lp[token as usize];
    TokenStep {
        token,
        piece: String::new(),
        kind: if alts > 1 {
            StepKind::Chosen
        } else {
            StepKind::Forced
        },
        logprob: Some(logprob),
        alternatives: alts,
        trie_logprob: if alts > 1 { logprob - mass } else { 0.0 },
        rivals: super::trace::rivals(allowed, lp, token),
    }
}

/// Each item of `trie` as the tokens (and the cursors they are chosen at) from the root to
/// where the item becomes unique: what a search must read to tell the items apart.
pub(super) fn item_paths(trie: &TokenTrie) -> Vec<Vec<(Cursor, u32)>> {
    let mut out = Vec::new();
    let mut stack: Vec<(Cursor, Vec<(Cursor, u32)>)> = vec![(trie.root(), Vec::new())];
    while let Some((cursor, path)) = stack.pop() {
        if !path.is_empty()
            && (trie.unique_item(cursor).is_some() || trie.allowed(cursor).is_empty())
        {
            out.push(path);
            continue;
        }
        for &t in trie.allowed(cursor).iter().rev() {
            if let Some(next) = trie.advance(cursor, t) {
                let mut p = path.clone();
                p.push((cursor, t));
                stack.push((next, p));
            }
        }
    }
    out
}

impl Retriever<'_> {
    /// The beams an exact search of `trie` finds (every item, scored by its sequence
    /// log-probability), built from `dists[k]`, the distribution before the path's token k,
    /// which one teacher-forced batch gives for many tries at once.
    pub(super) fn beams_from_paths(
        &self,
        trie: &TokenTrie,
        paths: &[Vec<(Cursor, u32)>],
        dists: &[Vec<Vec<f32>>],
    ) -> Vec<Beam> {
        let mut beams: Vec<Beam> = paths
            .iter()
            .zip(dists)
            .map(|(path, d)| {
                let mut beam = Beam::at(trie.root());
                for (&(cursor, tok), lp) in path.iter().zip(d) {
                    let allowed = trie.allowed(cursor);
                    beam.score += lp[tok as usize] as f64;
                    beam.steps
                        .push(token_step(allowed, lp, tok, allowed_mass(allowed, lp)));
                    beam.tokens.push(tok);
                    beam.cursor = trie.advance(cursor, tok).unwrap_or(beam.cursor);
                }
                self.auto_complete(trie, beam)
            })
            .collect();
        beams.sort_by(|a, b| b.score.total_cmp(&a.score));
        self.fill_pieces(&mut beams);
        beams
    }
}
