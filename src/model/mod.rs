//! The network and where it comes from:
//!
//! - [`llama`]: the llama-family decoder (layers calling [`crate::kernels`] entry points only),
//!   with [`kv_cache`] and [`lora`] adapters; [`config`] is its config.json.
//! - [`backward`]: the hand-written training pass (forward with stashes, then gradients).
//! - [`source`]: GGUF files, Hugging Face folders, the Hub, the tiny corpus-built model.
//! - [`tokenizer`]: the tokenizer, its special tokens, and batch pre-tokenisation.
//! - [`bundle`]: a model ready to train or query (network, trainable parameters, tokenizer),
//!   and [`checkpoint`]: how it is saved and verified.
//! - [`retrieval`]: the docid mode's retrieval pathway (heads, MLP', docid head).

pub mod backward;
pub mod bundle;
pub mod checkpoint;
pub mod config;
pub mod export;
pub mod kv_cache;
pub mod llama;
pub mod lora;
pub mod retrieval;
pub mod source;
pub mod tokenizer;

pub use bundle::{ModelBundle, TrainMode};
pub use config::Config;
pub use kv_cache::KvCache;
pub use llama::Llama;
pub use lora::{LoraConfig, Projection};
pub use source::{LoadedWeights, ModelSource};
pub use tokenizer::SpecialTokens;

use candle_core::Device;

/// Picks the compute device: CUDA when built with the `cuda` feature and a GPU is present.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    #[cfg(feature = "metal")]
    if let Ok(d) = Device::new_metal(0) {
        return d;
    }
    Device::Cpu
}

/// A short human name for a device, for the GUI's status bar.
pub fn device_name(d: &Device) -> &'static str {
    match d {
        Device::Cpu => "CPU",
        Device::Cuda(_) => "CUDA",
        Device::Metal(_) => "Metal",
    }
}
