//! From a `[data]` config to token streams: resolve the sources, choose or train the
//! tokenizer, split off validation, pretokenize into llm.c shards in a content-keyed cache
//! (on all cores, with a progress bar on a terminal), and open the shards memory-mapped.
//!
//! Validation split: `val_source` when given (its own files, used whole). Otherwise the last
//! `val_fraction` (default 10%) of the source's characters: the documents' characters in source
//! order are cut at floor(n · (1 - val_fraction)) as nanoGPT cuts Tiny Shakespeare
//! (`data[:int(n*0.9)]`); the document spanning the cut is split in two. For `.bin` token
//! shards without `val_source`, the last `val_fraction` of the tokens. Train and validation
//! never overlap, and the split depends only on the data and the fraction.
//!
//! Cache: `cache_dir/<key>/` with `train_NNNNNN.bin`, `val_NNNNNN.bin`, `tokenizer.json` and
//! `meta.json`, where key = SHA-256 of the tokenizer's JSON and of every document of both
//! splits. It is built in a temporary folder and renamed into place, so an entry is complete
//! or absent. A BPE trained here is cached the same way, keyed by its training documents.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::builtin;
use crate::error::DataError;
use crate::pretokenize::{
    self, progress, Chunker, Part, Scan, SplitRouter, StreamTokenizer, TokenSink,
};
use crate::shard::{self, ShardWriter};
use crate::source::{self, Resolved};
use crate::stream::TokenStream;
use crate::text_reader::{TextEvent, TextFields, TextReader};
use crate::tokenizer::Tokenizer;
use crate::tokenizer_spec::{parse_tokenizer_spec, TokenizerSpec};

/// Tokens per shard file (as llm.c's scripts).
pub const SHARD_TOKENS: usize = 100_000_000;

/// Bump when the cached layout or the tokenization of documents changes.
const CACHE_VERSION: &str = "dynact-data cache v2";

/// The `[data]` table of a run config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// "builtin" | file / folder / glob | "hf://datasets/OWNER/NAME/PATH[@REV]" | .bin shards.
    pub source: String,
    /// Validation data; None: the held-out tail of `source`.
    pub val_source: Option<String>,
    /// Fraction of `source` held out for validation when `val_source` is None.
    pub val_fraction: f64,
    /// "bytes" | "bpe:VOCAB" | path to a tokenizer.json.
    pub tokenizer: String,
    /// The text field of JSONL records.
    pub text_field: String,
    /// The text column of parquet files.
    pub text_column: String,
    /// Replace invalid UTF-8 with U+FFFD instead of failing.
    pub replace_invalid_utf8: bool,
    /// Seed of the built-in corpus.
    pub builtin_seed: u64,
    /// Size of the built-in corpus in bytes.
    pub builtin_bytes: usize,
    /// Where token shards are cached.
    pub cache_dir: PathBuf,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            source: "builtin".to_string(),
            val_source: None,
            val_fraction: 0.1,
            tokenizer: "bytes".to_string(),
            text_field: "text".to_string(),
            text_column: "text".to_string(),
            replace_invalid_utf8: false,
            builtin_seed: 0,
            builtin_bytes: builtin::DEFAULT_BYTES,
            cache_dir: PathBuf::from("data/cache"),
        }
    }
}

impl DataConfig {
    /// Where the text is in structured files (`text_field`, `text_column`) and what to do
    /// with invalid UTF-8.
    pub fn text_fields(&self) -> TextFields {
        TextFields {
            text_field: self.text_field.clone(),
            text_column: self.text_column.clone(),
            replace_invalid_utf8: self.replace_invalid_utf8,
        }
    }
}

/// A prepared data set: the tokenizer and the two token streams.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub tokenizer: Tokenizer,
    pub train: TokenStream,
    pub val: TokenStream,
    /// UTF-8 bytes of the validation text (None when it came as token shards).
    pub val_bytes: Option<u64>,
    /// One line saying what the data is, for logs.
    pub description: String,
}

/// A text source after a first streaming pass: what it is, its sizes and digest.
#[derive(Clone, Debug)]
struct ScannedSource {
    /// The built-in corpus or text files (never token shards).
    source: Resolved,
    scan: Scan,
    description: String,
}

impl ScannedSource {
    /// Reads the source once (streaming) to count and hash it.
    fn new(resolved: &Resolved, name: &str, cfg: &DataConfig) -> Result<ScannedSource, DataError> {
        if let Resolved::Bin(_) = resolved {
            return Err(DataError::Config("token shards are not text".to_string()));
        }
        let mut scanned = ScannedSource {
            source: resolved.clone(),
            scan: Scan::default(),
            description: String::new(),
        };
        scanned.scan = pretokenize::scan(scanned.reader(cfg))?;
        let (docs, mb) = (scanned.scan.documents, scanned.scan.bytes as f64 / 1e6);
        scanned.description = match &scanned.source {
            Resolved::Builtin => format!(
                "built-in synthetic stories (seed {}, {docs} stories, {mb:.2} MB; synthetic text, not natural language)",
                cfg.builtin_seed
            ),
            Resolved::Text(files) | Resolved::Bin(files) => {
                format!("{name} ({} files, {docs} documents, {mb:.2} MB)", files.len())
            }
        };
        Ok(scanned)
    }

    /// A fresh stream of the source's documents (`cfg` is the one the source was scanned
    /// with).
    fn reader(&self, cfg: &DataConfig) -> TextReader {
        match &self.source {
            Resolved::Builtin => {
                TextReader::documents(builtin::stories(cfg.builtin_seed, cfg.builtin_bytes))
            }
            Resolved::Text(files) | Resolved::Bin(files) => {
                TextReader::files(files, cfg.text_fields())
            }
        }
    }
}

/// One part of a cache entry, as `meta.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PartMeta {
    name: String,
    tokens: u64,
    shards: usize,
    /// Bytes of UTF-8 text the part was made from (for bits per byte).
    bytes: u64,
}

/// A cache entry's `meta.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CacheMeta {
    version: String,
    tokenizer: String,
    parts: Vec<PartMeta>,
}

/// How the token streams of a data set are cut from its text sources.
#[derive(Clone, Copy)]
enum Plan<'a> {
    /// "train" and "val": one source cut at a fraction of its characters.
    Tail(&'a ScannedSource, f64),
    /// One source, used whole, under the given name.
    Whole(&'static str, &'a ScannedSource),
}

impl Plan<'_> {
    fn names(&self) -> Vec<&'static str> {
        match self {
            Plan::Tail(..) => vec!["train", "val"],
            Plan::Whole(name, _) => vec![name],
        }
    }

    /// Hashes what the plan makes (the source's digest and the cut).
    fn hash_into(&self, h: &mut Sha256) {
        match self {
            Plan::Tail(src, fraction) => {
                h.update(b"tail");
                h.update(fraction.to_le_bytes());
                h.update(src.scan.digest);
            }
            Plan::Whole(name, src) => {
                h.update(name.as_bytes());
                h.update(src.scan.digest);
            }
        }
    }

    /// Streams the plan's text through `tokenizer` into shards in `dir`; returns what it
    /// wrote per part.
    fn write_shards(
        &self,
        cfg: &DataConfig,
        tokenizer: &Tokenizer,
        dir: &Path,
    ) -> Result<Vec<PartMeta>, DataError> {
        let (src, fraction) = match self {
            Plan::Tail(src, f) => (src, Some(*f)),
            Plan::Whole(_, src) => (src, None),
        };
        let pb = progress(
            src.scan.bytes,
            &format!("tokenizing {}", self.names().join("+")),
        );
        let part = |name: &str| {
            let w = ShardWriter::new(dir, name, tokenizer.vocab_size(), SHARD_TOKENS);
            StreamTokenizer::new(tokenizer, TokenSink::Shards(w), pb.clone())
        };
        let names = self.names();
        let mut parts: Vec<StreamTokenizer> = names.iter().map(|n| part(n)).collect();
        let mut router = fraction.map(|f| SplitRouter::new(src.scan.chars, f));
        for e in src.reader(cfg) {
            match &mut router {
                Some(r) => r.route(e?, &mut |part, e| match part {
                    Part::Train => parts[0].event(e),
                    Part::Val => parts[1].event(e),
                })?,
                None => parts[0].event(e?)?,
            }
        }
        pb.finish_and_clear();
        let mut out = Vec::new();
        for (name, p) in names.into_iter().zip(parts) {
            let (TokenSink::Shards(w), bytes) = p.finish()? else {
                unreachable!("parts write shards")
            };
            let (shards, tokens) = w.finish()?;
            out.push(PartMeta {
                name: name.to_string(),
                tokens,
                shards,
                bytes,
            });
        }
        Ok(out)
    }

    /// The training text, cut as the tokenizers cut it, as a stream for training a BPE.
    fn train_pieces(
        &self,
        cfg: &DataConfig,
        out: &mut impl FnMut(String) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        let (src, fraction) = match self {
            Plan::Tail(src, f) => (src, Some(*f)),
            Plan::Whole(_, src) => (src, None),
        };
        let mut chunker = Chunker::new(true);
        let mut emit = |e: TextEvent, chunker: &mut Chunker| match e {
            TextEvent::Text(t) => chunker.text(&t, &mut |p, _| out(p)),
            TextEvent::EndOfDocument => chunker.end_document(&mut |p, _| out(p)),
        };
        let mut router = fraction.map(|f| SplitRouter::new(src.scan.chars, f));
        for e in src.reader(cfg) {
            match &mut router {
                Some(r) => r.route(e?, &mut |part, e| match part {
                    Part::Train => emit(e, &mut chunker),
                    Part::Val => Ok(()),
                })?,
                None => emit(e?, &mut chunker)?,
            }
        }
        if chunker.is_open() {
            emit(TextEvent::EndOfDocument, &mut chunker)?;
        }
        Ok(())
    }
}

fn check_fraction(f: f64) -> Result<(), DataError> {
    if !(f > 0.0 && f < 1.0) {
        return Err(DataError::Config(format!(
            "val_fraction {f} must be between 0 and 1 (exclusive) when val_source is not set; e.g. 0.1"
        )));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tokenizes what the plans name into the cache (or finds it there) and opens the streams, in
/// the plans' order, each with the bytes of text it was made from.
fn cached_streams(
    cfg: &DataConfig,
    tokenizer: &Tokenizer,
    plans: &[Plan],
) -> Result<Vec<(TokenStream, u64)>, DataError> {
    let json = tokenizer.to_json()?;
    let mut h = Sha256::new();
    h.update(CACHE_VERSION.as_bytes());
    h.update((json.len() as u64).to_le_bytes());
    h.update(json.as_bytes());
    for plan in plans {
        plan.hash_into(&mut h);
    }
    let key = hex(&h.finalize())[..24].to_string();
    let dir = cfg.cache_dir.join(&key);
    let meta_path = dir.join("meta.json");
    if !meta_path.is_file() {
        tracing::info!("data: tokenizing into {}", dir.display());
        std::fs::create_dir_all(&cfg.cache_dir)
            .map_err(|e| DataError::io(&cfg.cache_dir, "create folder", e))?;
        let tmp = cfg
            .cache_dir
            .join(format!(".{key}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, "create folder", e))?;
        let filled = (|| {
            let mut parts = Vec::new();
            for plan in plans {
                parts.extend(plan.write_shards(cfg, tokenizer, &tmp)?);
            }
            tokenizer.save(&tmp.join("tokenizer.json"))?;
            let meta = CacheMeta {
                version: CACHE_VERSION.to_string(),
                tokenizer: tokenizer.describe(),
                parts,
            };
            let json = serde_json::to_string(&meta).expect("the cache meta is JSON");
            // meta.json is written last: a folder without it is never taken for a cache entry.
            shard::write_atomic(&tmp.join("meta.json"), json.as_bytes())
        })();
        if let Err(e) = filled {
            // A half-written entry (a full disk, say) is removed, not left to fill the disk.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            if !meta_path.is_file() {
                return Err(DataError::io(&dir, "rename", e));
            }
        }
    } else {
        tracing::info!("data: reusing token shards in {}", dir.display());
    }
    let meta: CacheMeta = std::fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            DataError::Config(format!(
                "{} is unreadable; delete the folder {} and run again",
                meta_path.display(),
                dir.display()
            ))
        })?;
    let mut out = Vec::new();
    for name in plans.iter().flat_map(|p| p.names()) {
        let part = meta.parts.iter().find(|p| p.name == name).ok_or_else(|| {
            DataError::Config(format!(
                "{} has no part {name:?}; delete the folder {} and run again",
                meta_path.display(),
                dir.display()
            ))
        })?;
        let paths: Vec<PathBuf> = (0..part.shards)
            .map(|i| ShardWriter::shard_path(&dir, name, i))
            .collect();
        out.push((TokenStream::open(&paths)?, part.bytes));
    }
    Ok(out)
}

/// The tokenizer named by `cfg.tokenizer`, training a BPE on `train_docs` if asked (cached).
fn make_tokenizer(cfg: &DataConfig, train: Option<Plan>) -> Result<Tokenizer, DataError> {
    match parse_tokenizer_spec(&cfg.tokenizer)? {
        TokenizerSpec::Bytes => Ok(Tokenizer::bytes()),
        TokenizerSpec::File(p) => Tokenizer::from_file(&p),
        TokenizerSpec::Bpe(vocab) => {
            let train = train.ok_or_else(|| {
                DataError::Config(format!(
                    "tokenizer \"bpe:{vocab}\" needs text to train on, but the source is token shards; set data.tokenizer to the tokenizer.json that made them"
                ))
            })?;
            let mut h = Sha256::new();
            h.update(format!("{CACHE_VERSION} bpe {vocab}").as_bytes());
            train.hash_into(&mut h);
            let key = hex(&h.finalize())[..24].to_string();
            let path = cfg
                .cache_dir
                .join(format!("tokenizer-bpe{vocab}-{key}.json"));
            if path.is_file() {
                tracing::info!("data: reusing BPE tokenizer {}", path.display());
                return Ok(Tokenizer::from_file(&path)?.into_bpe());
            }
            tracing::info!("data: training a BPE of {vocab} ids on the training split");
            let t = train_bpe_streaming(cfg, train, vocab)?;
            std::fs::create_dir_all(&cfg.cache_dir)
                .map_err(|e| DataError::io(&cfg.cache_dir, "create folder", e))?;
            t.save(&path)?;
            Ok(t)
        }
    }
}

/// Trains a BPE on the plan's training text as it is read: a reader thread hands pieces to
/// the trainer through a bounded channel, so the text is never held whole.
fn train_bpe_streaming(
    cfg: &DataConfig,
    train: Plan,
    vocab: usize,
) -> Result<Tokenizer, DataError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(64);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            train.train_pieces(cfg, &mut |piece| {
                // A closed channel means the trainer stopped; its error is the one to report.
                tx.send(piece).map_err(|_| DataError::Config(String::new()))
            })
        });
        let trained = Tokenizer::train_bpe_pieces(rx.into_iter(), vocab);
        let read = reader.join().unwrap_or_else(|_| {
            Err(DataError::Config(
                "the BPE reader thread panicked".to_string(),
            ))
        });
        let t = trained?;
        read?;
        Ok(t)
    })
}

/// Prepares the training and validation streams described by `cfg`.
pub fn prepare_dataset(cfg: &DataConfig) -> Result<Dataset, DataError> {
    let resolved = source::resolve(&cfg.source)?;
    let val_resolved = match &cfg.val_source {
        Some(v) => Some(source::resolve(v)?),
        None => {
            check_fraction(cfg.val_fraction)?;
            None
        }
    };
    let dataset = match &resolved {
        Resolved::Bin(paths) => dataset_from_shards(cfg, paths, val_resolved)?,
        _ => dataset_from_text(cfg, &resolved, val_resolved)?,
    };
    tracing::info!("data: {}", dataset.description);
    Ok(dataset)
}

/// Token shards: no tokenizing, only checks. The validation set is `val_source` (shards or
/// text), else the last `val_fraction` of the tokens.
fn dataset_from_shards(
    cfg: &DataConfig,
    paths: &[PathBuf],
    val_resolved: Option<Resolved>,
) -> Result<Dataset, DataError> {
    let pct = cfg.val_fraction * 100.0;
    let tokenizer = make_tokenizer(cfg, None)?;
    let all = TokenStream::open(paths)?;
    all.check_vocab(tokenizer.vocab_size(), &cfg.source)?;
    let (train, val, val_bytes, val_desc) = match (&cfg.val_source, val_resolved) {
        (Some(v), Some(Resolved::Bin(vp))) => {
            let val = TokenStream::open(&vp)?;
            val.check_vocab(tokenizer.vocab_size(), v)?;
            (all, val, None, format!("val = {v}"))
        }
        (Some(v), Some(r)) => {
            let src = ScannedSource::new(&r, v, cfg)?;
            let (val, bytes) = one_stream(cached_streams(
                cfg,
                &tokenizer,
                &[Plan::Whole("all", &src)],
            )?);
            (all, val, Some(bytes), format!("val = {v}"))
        }
        _ => {
            let (train, val) = all.split_tail(cfg.val_fraction);
            (train, val, None, format!("val = last {pct}% of the tokens"))
        }
    };
    let description = format!(
        "{} ({} train tokens, {} val tokens; {val_desc}; tokenizer {})",
        cfg.source,
        train.len(),
        val.len(),
        tokenizer.describe()
    );
    Ok(Dataset {
        tokenizer,
        train,
        val,
        val_bytes,
        description,
    })
}

/// The one stream of a single-part plan.
fn one_stream(mut streams: Vec<(TokenStream, u64)>) -> (TokenStream, u64) {
    streams
        .pop()
        .unwrap_or_else(|| (TokenStream::from_tokens(Vec::new()), 0))
}

/// Text: the source read as a stream (once to count and hash it, once more to tokenize it
/// unless the cache has it), the validation set held out (`val_source`, else the last
/// `val_fraction` of the characters), the tokenizer made, both parts tokenized into the cache.
fn dataset_from_text(
    cfg: &DataConfig,
    resolved: &Resolved,
    val_resolved: Option<Resolved>,
) -> Result<Dataset, DataError> {
    let pct = cfg.val_fraction * 100.0;
    let src = ScannedSource::new(resolved, &cfg.source, cfg)?;
    let val_src = match (&cfg.val_source, &val_resolved) {
        (Some(v), Some(r)) if !matches!(r, Resolved::Bin(_)) => {
            Some(ScannedSource::new(r, v, cfg)?)
        }
        _ => None,
    };
    let (train_plan, val_desc) = match &cfg.val_source {
        Some(v) => (Plan::Whole("train", &src), format!("val = {v}")),
        None => (
            Plan::Tail(&src, cfg.val_fraction),
            format!("val = last {pct}% of the characters"),
        ),
    };
    let tokenizer = make_tokenizer(cfg, Some(train_plan))?;
    let (train, val, val_bytes) = match (train_plan, &val_src, val_resolved) {
        (Plan::Tail(..), ..) => {
            let mut s = cached_streams(cfg, &tokenizer, &[train_plan])?;
            let (val, bytes) = one_stream(s.split_off(1));
            let (train, _) = one_stream(s);
            (train, val, Some(bytes))
        }
        (_, Some(vs), _) => {
            let mut s = cached_streams(cfg, &tokenizer, &[train_plan, Plan::Whole("val", vs)])?;
            let (val, bytes) = one_stream(s.split_off(1));
            let (train, _) = one_stream(s);
            (train, val, Some(bytes))
        }
        (_, None, Some(Resolved::Bin(vp))) => {
            let (train, _) = one_stream(cached_streams(cfg, &tokenizer, &[train_plan])?);
            let val = TokenStream::open(&vp)?;
            val.check_vocab(tokenizer.vocab_size(), "val_source")?;
            (train, val, None)
        }
        (_, None, _) => unreachable!("a val_source resolves to text or shards"),
    };
    let description = format!(
        "{}; {} train tokens, {} val tokens ({val_desc}); tokenizer {}",
        src.description,
        train.len(),
        val.len(),
        tokenizer.describe()
    );
    Ok(Dataset {
        tokenizer,
        train,
        val,
        val_bytes,
        description,
    })
}

/// All of `source` as one token stream with `tokenizer` (for evaluating a model on other
/// data): text is tokenized (cached) as a stream; `.bin` shards are opened and checked against
/// the tokenizer's vocabulary.
pub fn tokenize_source(
    source: &str,
    tokenizer: &Tokenizer,
    cfg: &DataConfig,
) -> Result<TokenStream, DataError> {
    let resolved = source::resolve(source)?;
    if let Resolved::Bin(paths) = &resolved {
        let s = TokenStream::open(paths)?;
        s.check_vocab(tokenizer.vocab_size(), source)?;
        return Ok(s);
    }
    let src = ScannedSource::new(&resolved, source, cfg)?;
    Ok(one_stream(cached_streams(cfg, tokenizer, &[Plan::Whole("all", &src)])?).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: DataConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, DataConfig::default());
        assert!(serde_json::from_str::<DataConfig>("{\"sorce\":\"x\"}").is_err());
    }
}
