//! Self-assessment: the model reads each candidate with the query and says whether it can answer
//! (P(reject)), batched over candidates (the answer it then writes: [`super::answer`]).

use super::trace::{PassageCandidate, Timings};
use super::{length_batches, Retriever};
use crate::error::Result;
use crate::model::KvCache;

/// What one more forward pass costs, in tokens of batch: every pass streams all the weights
/// from memory (about 30 ms for the 135M model on the development machine), about what 50
/// tokens of prefill compute take there. Verdict batches pad rows to a common length when that
/// padding is cheaper than another pass.
const VERDICT_CALL_TOKENS: usize = 48;
/// Rows in one verdict batch at most (bounds the memory of the forked caches).
const VERDICT_BATCH: usize = 16;

/// What self-assessment read: see [`Retriever::verdicts`].
pub(super) struct Verdicts {
    pub(super) p_reject: Vec<f64>,
    pub(super) extra: Vec<Vec<f32>>,
    pub(super) best: Vec<Option<(usize, KvCache)>>,
}

impl Retriever<'_> {
    /// The tokens a candidate's verdict is read after: its passage, the assessment cue and the
    /// part of the verdict that acceptance and rejection share.
    pub(super) fn verdict_row(&self, c: &PassageCandidate) -> Vec<u32> {
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
    pub(super) fn verdicts(
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
}
