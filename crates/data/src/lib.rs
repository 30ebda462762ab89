//! dynact-data: everything between text on disk and batches of token ids.
//!
//! Design note. A `[data]` config ([`DataConfig`]) names a source (the built-in synthetic
//! corpus, text/JSONL files, folders, globs, `hf://datasets/...` files, or llm.c `.bin` token
//! shards) and a tokenizer (bytes, a BPE trained on the corpus, or a `tokenizer.json`).
//! [`prepare_dataset`] streams the documents (memory stays flat however large the corpus),
//! holds out validation data, tokenizes on all cores into llm.c-layout shards in a cache keyed
//! by content, and returns memory-mapped
//! [`TokenStream`]s. [`BatchLoader`] cuts the training stream into (input, target) windows in
//! a seeded, resumable order; [`eval_windows`] is the one definition of evaluation windows that
//! training-time evaluation and `eval-ppl` share. The crate knows nothing of tensors or models.

pub mod builtin;
pub mod dataset;
pub mod error;
pub mod hub;
pub mod jsonl_source;
pub mod loader;
pub mod parquet_source;
pub mod plain_text_source;
pub mod pretokenize;
pub mod shard;
pub mod source;
pub mod stream;
pub mod text_event;
pub mod text_reader;
pub mod tokenizer;
pub mod tokenizer_spec;
pub mod windows;

pub use dataset::{prepare_dataset, tokenize_source, DataConfig, Dataset};
pub use error::DataError;
pub use hub::RepoKind;
pub use loader::{Batch, BatchLoader, LoaderState};
pub use stream::TokenStream;
pub use tokenizer::{Tokenizer, EOS_TOKEN};
pub use windows::{eval_windows, EvalWindows};
