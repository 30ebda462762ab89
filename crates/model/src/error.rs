//! The model crate's one error type: every failure names what was wrong and, where it can,
//! how to fix it, so the binaries can print it as a single line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config: {0}")]
    InvalidConfig(String),

    #[error("cannot {op} {path}: {source}")]
    Io {
        /// "read" or "write".
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a valid config.json: {message}")]
    BadConfigJson { path: PathBuf, message: String },

    #[error("{path} is not a readable safetensors file ({message}); re-save it or point to the right file")]
    BadSafetensors { path: PathBuf, message: String },

    #[error("checkpoint is missing tensor `{name}` (expected shape {expected:?}); is the config.json the one saved with these weights?")]
    MissingTensor { name: String, expected: Vec<usize> },

    #[error("checkpoint tensor `{name}` has shape {got:?} but the config expects {expected:?}; the config.json does not match these weights")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("checkpoint has unexpected tensor `{name}`{hint}")]
    UnexpectedTensor { name: String, hint: String },

    #[error("checkpoint tensor `{name}` has dtype {dtype}, which cannot be loaded (f32, bf16 and f16 can)")]
    UnsupportedDtype { name: String, dtype: String },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
