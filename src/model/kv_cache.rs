//! The key/value cache of decoding: per layer, the keys and values of every position so far,
//! which a beam search forks, reorders and cuts.

use crate::error::Result;
use candle_core::Tensor;

/// Per-layer key/value tensors of shape (batch, kv_heads, seq, head_dim).
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for a model with `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            layers: vec![None; n_layers],
        }
    }

    /// Number of positions already cached.
    pub fn seq_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    /// Number of sequences (beams) held.
    pub fn batch_size(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dim(0).unwrap_or(0))
            .unwrap_or(0)
    }

    /// A cache whose row `i` is this cache's row `rows[i]`: reorders beams, forks one prefix into
    /// many (`[0, 0, 0]`) or drops finished beams.
    pub fn select(&self, rows: &[u32]) -> Result<KvCache> {
        let Some(device) = self
            .layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.device().clone())
        else {
            return Ok(self.clone());
        };
        let idx = Tensor::new(rows, &device)?;
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { layers })
    }

    /// Keeps only the first `len` positions: drops what a right-padded batch row cached past its
    /// own end, so the row can be continued as if it had run alone.
    pub fn truncate(&self, len: usize) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                // Contiguous copies: a cache is forked later by `index_select`, which needs them.
                Some((k, v)) if k.dim(2)? > len => Ok(Some((
                    k.narrow(2, 0, len)?.contiguous()?,
                    v.narrow(2, 0, len)?.contiguous()?,
                ))),
                other => Ok(other.clone()),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { layers })
    }

    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let kv = match self.layers[layer].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }
}
