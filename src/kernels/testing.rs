//! Test helpers shared by the kernels' tests: deterministic inputs, the largest difference
//! between two tensors, gradients through a random projection.

use candle_core::{Device, Tensor, Var};

pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Gradients of `sum(f(vars) * probe)` for each var: compares ops through a random
/// projection of their outputs, which exercises every output element's gradient.
pub fn grads(vars: &[&Var], out: &Tensor, probe: &Tensor) -> Vec<Tensor> {
    let loss = (out * probe).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    vars.iter().map(|v| g.get(v).unwrap().clone()).collect()
}
