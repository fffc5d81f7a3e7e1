//! The engine's error type: every failure names the file, line or item it concerns so the GUI and
//! the CLI can tell the user what to fix without a backtrace.

use std::path::PathBuf;

/// Errors raised by the engine (everything but the GUI).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not what it should be.
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    /// A line of a line-oriented file (JSONL) is malformed.
    #[error("{path}:{line}: {message}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The model configuration asks for something this engine does not implement.
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    /// A model or tokenizer could not be obtained from its source.
    #[error("model source {source_name}: {message}")]
    Source {
        source_name: String,
        message: String,
    },
    /// Tensor maths failed (shape mismatch, device error, ...).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// The tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A request that cannot be satisfied with the current state (empty corpus, no model, ...).
    #[error("{0}")]
    Invalid(String),
    /// The job was cancelled by the user.
    #[error("cancelled")]
    Cancelled,
}

/// Result alias used across the engine.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A file whose content is wrong.
    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }
}

impl From<tokenizers::Error> for Error {
    fn from(e: tokenizers::Error) -> Self {
        Error::Tokenizer(e.to_string())
    }
}
