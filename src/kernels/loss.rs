//! The training loss and the retrieval scores' log-probabilities: cross-entropy (alone, or with
//! its gradient in one pass) and log-softmax, fused over each row of logits.

use super::simd::{exp_scaled, max_of};
use super::{f32s, par_filled, supported, CResult};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Mean cross-entropy of `logits` (rows, vocab) against `targets` (one id per row), as a
/// scalar. Never materialises the log-softmax: the forward pass keeps each row's
/// log-sum-exp, and the backward pass writes `softmax - one_hot` straight into the gradient.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> CResult<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    if rows != targets.len() || rows == 0 {
        candle_core::bail!("cross-entropy: {rows} rows for {} targets", targets.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross-entropy: target id {t} outside the vocabulary of {vocab}");
    }
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets: Arc::new(targets.to_vec()),
        lse: Arc::new(Mutex::new(Vec::new())),
    })
}

struct CrossEntropy {
    targets: Arc<Vec<u32>>,
    /// Each row's log-sum-exp, written by the forward pass for the backward pass.
    lse: Arc<Mutex<Vec<f32>>>,
}

/// `ln(sum(exp(row)))`, shifted by the row's maximum; `scratch` receives the shifted exps.
fn log_sum_exp_into(row: &[f32], scratch: &mut [f32]) -> f32 {
    let max = max_of(row);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + exp_scaled(row, scratch, 1.0, max).ln()
}

/// Log-probabilities over the last dimension: a row of logits becomes `x - logsumexp(x)` in two
/// passes over it, one row per task. Candle's version runs five separate element-wise ops over
/// the whole vocabulary-wide matrix, each waking its own thread pool; not differentiable.
pub fn log_softmax(logits: &Tensor) -> CResult<Tensor> {
    if !supported(logits) || logits.rank() == 0 {
        return candle_nn::ops::log_softmax(logits, candle_core::D::Minus1);
    }
    logits.contiguous()?.apply_op1_no_bwd(&LogSoftmax)
}

struct LogSoftmax;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "fused-log-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "logits")?;
        let width = l.shape().dims().last().copied().unwrap_or(0);
        let y = par_filled(x.len(), width, |r, out| {
            let row = &x[r * width..r * width + out.len()];
            let lse = log_sum_exp_into(row, out);
            for (o, v) in out.iter_mut().zip(row) {
                *o = v - lse;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "logits")?;
        let vocab = l.shape().dims().last().copied().unwrap_or(1);
        let lse: Vec<f32> = x
            .par_chunks(vocab)
            .map_init(|| vec![0f32; vocab], |buf, row| log_sum_exp_into(row, buf))
            .collect();
        let total: f64 = lse
            .iter()
            .zip(x.chunks(vocab))
            .zip(self.targets.iter())
            .map(|((l, row), &t)| (l - row[t as usize]) as f64)
            .sum();
        if let Ok(mut keep) = self.lse.lock() {
            *keep = lse;
        }
        let mean = (total / self.targets.len() as f64) as f32;
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _loss: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let op = CrossEntropyGrad {
            targets: self.targets.clone(),
            lse: self.lse.clone(),
        };
        Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &op)?))
    }
}

struct CrossEntropyGrad {
    targets: Arc<Vec<u32>>,
    lse: Arc<Mutex<Vec<f32>>>,
}

impl CustomOp2 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(xs, xl, "logits")?;
        let g = f32s(gs, gl, "loss gradient")?
            .first()
            .copied()
            .unwrap_or(1.0);
        let vocab = xl.shape().dims().last().copied().unwrap_or(1);
        let mut lse = self.lse.lock().map(|l| l.clone()).unwrap_or_default();
        if lse.len() != self.targets.len() {
            lse = x
                .par_chunks(vocab)
                .map_init(|| vec![0f32; vocab], |buf, row| log_sum_exp_into(row, buf))
                .collect();
        }
        let scale = g / self.targets.len() as f32;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(vocab)
            .zip(x.par_chunks(vocab))
            .enumerate()
            .for_each(|(r, (or, xr))| {
                exp_scaled(xr, or, 1.0, lse[r]);
                for o in or.iter_mut() {
                    *o *= scale;
                }
                or[self.targets[r] as usize] -= scale;
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// Mean cross-entropy and the gradient of `scale * loss` together, without autograd: what a
/// training step needs from the loss.
pub fn cross_entropy_with_grad(
    logits: &Tensor,
    targets: &[u32],
    scale: f32,
) -> CResult<(f32, Tensor)> {
    let (rows, vocab) = logits.dims2()?;
    if rows != targets.len() || rows == 0 {
        candle_core::bail!("cross-entropy: {rows} rows for {} targets", targets.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross-entropy: target id {t} outside the vocabulary of {vocab}");
    }
    let op = CrossEntropyStep {
        targets,
        scale,
        loss: Mutex::new(0.0),
    };
    let grad = logits.contiguous()?.apply_op1_no_bwd(&op)?;
    let total = op.loss.lock().map(|l| *l).unwrap_or(f64::NAN);
    Ok(((total / rows as f64) as f32, grad))
}

/// Loss and gradient together, one exponential per logit: each row's exponentials are kept
/// in the gradient buffer and normalised in place.
struct CrossEntropyStep<'a> {
    targets: &'a [u32],
    scale: f32,
    /// Summed over rows by the forward pass.
    loss: Mutex<f64>,
}

impl CustomOp1 for CrossEntropyStep<'_> {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-step"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "logits")?;
        let vocab = l.shape().dims().last().copied().unwrap_or(1);
        let per_row = self.scale / self.targets.len() as f32;
        let mut out = vec![0f32; x.len()];
        let losses: Vec<f64> = out
            .par_chunks_mut(vocab)
            .zip(x.par_chunks(vocab))
            .zip(self.targets.par_iter())
            .map(|((or, xr), &t)| {
                let max = max_of(xr);
                let sum = exp_scaled(xr, or, 1.0, max);
                let k = per_row / sum;
                for o in or.iter_mut() {
                    *o *= k;
                }
                or[t as usize] -= per_row;
                (max + sum.ln() - xr[t as usize]) as f64
            })
            .collect();
        if let Ok(mut loss) = self.loss.lock() {
            *loss = losses.iter().sum();
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{max_diff, rand};
    use candle_core::{DType, Device, Var, D};

    #[test]
    fn cross_entropy_matches_candle() {
        let x = Var::from_tensor(&(rand(&[6, 50], 12) * 5.0).unwrap()).unwrap();
        let targets = [3u32, 0, 49, 7, 7, 21];
        let fused = cross_entropy(&x, &targets).unwrap();
        let t = Tensor::new(&targets, &Device::Cpu).unwrap();
        let plain = candle_nn::loss::cross_entropy(&x, &t).unwrap();
        let (a, b) = (
            fused.to_scalar::<f32>().unwrap(),
            plain.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        let gf = fused.backward().unwrap();
        let gp = plain.backward().unwrap();
        assert!(max_diff(gf.get(&x).unwrap(), gp.get(&x).unwrap()) < 1e-6);
        let (loss, grad) = cross_entropy_with_grad(x.as_tensor(), &targets, 0.5).unwrap();
        assert!((loss - b).abs() < 1e-5, "{loss} vs {b}");
        let want = (gp.get(&x).unwrap() * 0.5).unwrap();
        assert!(max_diff(&grad, &want) < 1e-6);
        assert!(cross_entropy(&x, &[1, 2]).is_err());
        assert!(cross_entropy(&x, &[0, 0, 0, 0, 0, 50]).is_err());
    }

    /// Vocabulary-wide rows (one task each) and a short row with a large spread, against
    /// candle's log-softmax; every row's probabilities sum to one.
    #[test]
    fn log_softmax_matches_candle() {
        for (rows, width, spread) in [(3, 49_152, 8.0), (5, 37, 60.0), (1, 1, 1.0)] {
            let x = (rand(&[rows, width], 4) * spread).unwrap();
            let fused = log_softmax(&x).unwrap();
            let plain = candle_nn::ops::log_softmax(&x, D::Minus1).unwrap();
            assert!(max_diff(&fused, &plain) < 2e-5, "{rows} x {width}");
            let total = fused.exp().unwrap().sum(D::Minus1).unwrap();
            let ones = Tensor::ones(rows, DType::F32, &Device::Cpu).unwrap();
            assert!(max_diff(&total, &ones) < 1e-4);
        }
    }
}
