//! Low-rank adapters (LoRA): train a few million parameters instead of the whole model, then fold
//! them into the base weights for inference or save them alone.

use crate::error::Result;
use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// A projection inside a transformer layer that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    /// All seven projections of a llama layer.
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// Parses `q,k,v,o,gate,up,down` (as typed on the command line).
    pub fn parse_list(s: &str) -> std::result::Result<Vec<Projection>, String> {
        s.split(',')
            .map(|p| match p.trim().to_ascii_lowercase().as_str() {
                "q" => Ok(Projection::Q),
                "k" => Ok(Projection::K),
                "v" => Ok(Projection::V),
                "o" => Ok(Projection::O),
                "gate" => Ok(Projection::Gate),
                "up" => Ok(Projection::Up),
                "down" => Ok(Projection::Down),
                other => Err(format!(
                    "unknown projection `{other}` (use q,k,v,o,gate,up,down)"
                )),
            })
            .collect()
    }
}

/// Shape of the adapters to attach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<Projection>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: Projection::ALL.to_vec(),
        }
    }
}

/// `delta W = scale * B A` with A (rank, in) and B (out, rank).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl LoraAdapter {
    /// Creates `lora_a` (Kaiming-style random) and `lora_b` (zeros) under the builder's prefix, so
    /// the adapted model starts identical to the base model.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, cfg: &LoraConfig) -> Result<Self> {
        let std = 1.0 / (in_dim as f64).sqrt();
        let a = vb.get_with_hints(
            (cfg.rank, in_dim),
            "lora_a",
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        )?;
        let b = vb.get_with_hints((out_dim, cfg.rank), "lora_b", Init::Const(0.0))?;
        Ok(LoraAdapter {
            a,
            b,
            scale: cfg.alpha / cfg.rank as f64,
        })
    }

    /// The adapter's contribution for 2-D input rows (rows, in).
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let low = crate::kernels::matmul::matmul(x, &self.a, false, true)?;
        // Scaling the (out, rank) factor costs nothing next to scaling the (rows, out) result.
        let b = (&self.b * self.scale)?;
        Ok(crate::kernels::matmul::matmul(&low, &b, false, true)?)
    }

    /// The full-size weight update `scale * B A`, detached.
    pub fn weight_delta(&self) -> Result<Tensor> {
        Ok((self.b.detach().matmul(&self.a.detach())? * self.scale)?)
    }
}
