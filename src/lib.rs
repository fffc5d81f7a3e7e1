//! selfret: one language model as a whole search engine for a private document collection,
//! following "Self-Retrieval: End-to-End Information Retrieval with One Large Language Model"
//! (Tang et al., NeurIPS 2024).
//!
//! The engine (everything but `app`) never depends on the GUI toolkit.

pub mod error;
pub mod generate;
pub mod kernels;
pub mod model;

pub use error::{Error, Result};
pub mod app;
pub mod cli;
pub mod corpus;
pub mod docids;
pub mod eval;
pub mod prompts;
pub mod retrieve;
pub mod train;
pub mod trie;
pub mod worker;
