//! The one error type of the data crate. Every variant's message is a single line that names
//! the problem (with the file, offset or number involved) and how to fix it, because these
//! errors end up in front of a user who pointed a config at the wrong thing.

use std::path::PathBuf;

/// Everything that can go wrong between a `[data]` table and a batch of token ids.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: no such file or folder; check data.source / data.val_source (relative paths are taken from the working directory {cwd})")]
    MissingPath { path: PathBuf, cwd: String },

    #[error("{path}: the file is empty; remove it or point the source at a file with text in it")]
    EmptyFile { path: PathBuf },

    #[error("{path}: the folder has no files (searched recursively, hidden files skipped); put .txt/.jsonl/.bin files in it or point the source elsewhere")]
    EmptyFolder { path: PathBuf },

    #[error("the glob {pattern:?} matched no files; check the pattern (quote it in a shell) or use a folder path")]
    EmptyGlob { pattern: String },

    #[error("the glob {pattern:?} is not a valid pattern ({reason}); fix the pattern or use a folder path")]
    BadGlob { pattern: String, reason: String },

    #[error("{path}: bytes at offset {offset} are not valid UTF-8; convert the file to UTF-8 or set data.replace_invalid_utf8 = true to replace them with U+FFFD")]
    InvalidUtf8 { path: PathBuf, offset: u64 },

    #[error("{path}:{line}: {problem}; each JSONL line must be an object with a string field {field:?} (set data.text_field to the right name)")]
    BadJsonl {
        path: PathBuf,
        line: usize,
        field: String,
        problem: String,
    },

    #[error("{path}: cannot read it as parquet text: {problem}")]
    BadParquet { path: PathBuf, problem: String },

    #[error("{what} has {tokens} tokens, a window needs {needed} (seq_len {seq_len} + 1); use a longer corpus or a smaller seq_len")]
    TooShort {
        what: String,
        tokens: usize,
        needed: usize,
        seq_len: usize,
    },

    #[error("{path}: not a valid llm.c token shard: {problem}; make shards with this crate's shard::write_shard or llm.c's dev/data scripts (header: 256 little-endian i32, magic 20240520 version 1 for u16 tokens, magic 20240801 version 7 for u32 tokens)")]
    BadShard { path: PathBuf, problem: String },

    #[error("{what}: token id {id} is at or above the vocabulary size {vocab_size}; use the tokenizer that made these tokens (data.tokenizer = path to its tokenizer.json)")]
    TokenOutOfRange {
        what: String,
        id: u32,
        vocab_size: usize,
    },

    #[error("{path}: cannot read the tokenizer ({reason}); pass a Hugging Face tokenizer.json, \"bytes\" or \"bpe:VOCAB\"")]
    BadTokenizer { path: PathBuf, reason: String },

    #[error("tokenizer spec {spec:?} is not understood; use \"bytes\", \"bpe:VOCAB\" (e.g. \"bpe:4096\", VOCAB >= 257), a path to a tokenizer.json or hf://OWNER/NAME (its tokenizer.json)")]
    BadTokenizerSpec { spec: String },

    #[error("tokenizer error: {0}; check the tokenizer.json and the input text")]
    Tokenizer(String),

    #[error("the tokenizer has no end-of-text token (looked for {looked_for}); add one as a special token to its tokenizer.json")]
    NoEos { looked_for: String },

    #[error("{uri:?} is not a valid Hugging Face path ({reason}); write hf://datasets/OWNER/NAME/PATH[@REVISION] for data or hf://OWNER/NAME[@REVISION] for a model")]
    BadHfUri { uri: String, reason: String },

    #[error("{0}")]
    HfNotCached(Box<HfNotCached>),

    #[error("mixing token shards (.bin) and text files in one source is not supported ({bin} and {text}); give them as separate sources")]
    MixedSource { bin: PathBuf, text: PathBuf },

    #[error("data config: {0}")]
    Config(String),

    #[error("loader state {state} does not fit this loader ({reason}); resume with the same data, seq_len, batch size and world size as the saved run")]
    BadState { state: String, reason: String },

    #[error("{path}: {op} failed: {source}; check the path and its permissions")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl DataError {
    /// An I/O error on `path` during `op` ("read", "write", "rename", ...).
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> DataError {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound && op == "open" {
            return DataError::missing(path);
        }
        DataError::Io { path, op, source }
    }

    /// The path does not exist.
    pub fn missing(path: impl Into<PathBuf>) -> DataError {
        let cwd = std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".to_string());
        DataError::MissingPath {
            path: path.into(),
            cwd,
        }
    }
}

/// A Hub file that is not in the cache and cannot be downloaded (boxed in [`DataError`]).
#[derive(Debug)]
pub struct HfNotCached {
    pub dataset: bool,
    pub repo: String,
    pub file: String,
    pub revision: String,
    pub cache: PathBuf,
    /// Why it could not be downloaded ("HF_HUB_OFFLINE is set", or the network error).
    pub why: String,
}

impl std::fmt::Display for HfNotCached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, flag) = if self.dataset {
            ("datasets/", "--repo-type dataset ")
        } else {
            ("", "")
        };
        write!(
            f,
            "hf://{kind}{repo}/{file} (revision {rev}) is not in the Hugging Face cache at {cache} and {why}; on a connected machine run `huggingface-cli download {flag}{repo} {file} --revision {rev}` with HF_HOME set to the same cache folder, then copy the cache here",
            repo = self.repo,
            file = self.file,
            rev = self.revision,
            cache = self.cache.display(),
            why = self.why,
        )
    }
}
