//! The key/value cache of decoding: per layer, the keys and values of every position so far,
//! which a beam search forks, reorders and cuts.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

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

    /// One cache holding `caches` (each of one row) as its rows, each right-padded with zeros
    /// to the longest, and each row's own length: the input of [`crate::model::Llama::hidden_ragged`],
    /// which continues every row as if it had run alone. Stored in another dtype (a reading
    /// cache keeps f16), the rows come back as f32.
    pub fn stack(caches: &[KvCache]) -> Result<(KvCache, Vec<usize>)> {
        let lens: Vec<usize> = caches.iter().map(KvCache::seq_len).collect();
        let longest = lens.iter().copied().max().unwrap_or(0);
        let n_layers = caches.first().map(|c| c.layers.len()).unwrap_or(0);
        if caches
            .iter()
            .any(|c| c.layers.len() != n_layers || c.batch_size() != 1)
        {
            return Err(Error::invalid(
                "stacked caches must come from one model and hold one row each",
            ));
        }
        let mut layers = Vec::with_capacity(n_layers);
        for layer in 0..n_layers {
            let mut keys = Vec::with_capacity(caches.len());
            let mut values = Vec::with_capacity(caches.len());
            for (c, &len) in caches.iter().zip(&lens) {
                let (k, v) = c.layers[layer]
                    .as_ref()
                    .ok_or_else(|| Error::invalid("a stacked cache is empty"))?;
                let pad = |x: &Tensor| -> Result<Tensor> {
                    Ok(x.to_dtype(DType::F32)?
                        .pad_with_zeros(2, 0, longest - len)?)
                };
                keys.push(pad(k)?);
                values.push(pad(v)?);
            }
            layers.push(Some((Tensor::cat(&keys, 0)?, Tensor::cat(&values, 0)?)));
        }
        Ok((KvCache { layers }, lens))
    }

    /// The same cache with its tensors in `dtype` (f16 halves what a kept cache costs).
    pub fn to_dtype(&self, dtype: DType) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.to_dtype(dtype)?, v.to_dtype(dtype)?))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { layers })
    }

    /// Bytes the keys and values take.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
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
