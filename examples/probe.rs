use candle_core::{DType, Device, Tensor};
use std::time::Instant;
fn t(f: &dyn Fn()) -> f64 {
    f();
    let s = Instant::now();
    for _ in 0..5 {
        f();
    }
    s.elapsed().as_secs_f64() / 5.0
}
fn main() {
    let d = Device::Cpu;
    for (m, k, n) in [
        (1024usize, 576usize, 1536usize),
        (1024, 1536, 576),
        (10, 576, 1536),
        (10, 576, 49152),
        (1024, 576, 49152),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &d).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &d).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        let a = t(&|| {
            x.matmul(&w.t().unwrap()).unwrap();
        });
        let b = t(&|| {
            x.matmul(&wt).unwrap();
        });
        let fl = 2.0 * (m * k * n) as f64 / 1e9;
        println!(
            "{m}x{k}x{n}: W.t() {:.2} GFLOP/s ({:.2} ms), contiguous W^T {:.2} GFLOP/s ({:.2} ms)",
            fl / a,
            a * 1e3,
            fl / b,
            b * 1e3
        );
    }
    let _ = DType::F32;
}
