use candle_core::{Device, Tensor};
use selfret::model::{ModelBundle, ModelSource, TrainMode};
fn main() {
    let p = std::path::PathBuf::from("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let w = selfret::model::source::load_gguf(&p, &Device::Cpu).unwrap();
    let b = ModelBundle::from_weights(w, ModelSource::Gguf(p), TrainMode::Frozen, &Device::Cpu).unwrap();
    let m = b.inference().unwrap();
    let ids: Vec<u32> = (0..8 * 128).map(|i| (i * 7919 % 49152) as u32).collect();
    let x = Tensor::from_vec(ids, (8, 128), &Device::Cpu).unwrap();
    m.hidden(&x, None).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..4 { m.hidden(&x, None).unwrap(); }
    println!("hidden 8x128: {:.2}s", t.elapsed().as_secs_f64() / 4.0);
}
