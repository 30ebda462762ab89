//! The `data.tokenizer` spec: the byte tokenizer, a BPE to train on the corpus, or a
//! tokenizer.json (a path, or a model repository's through the Hugging Face cache).

use std::path::PathBuf;

use crate::error::DataError;

/// What a `data.tokenizer` spec names (an `hf://` one already fetched into the Hub cache).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerSpec {
    Bytes,
    Bpe(usize),
    File(PathBuf),
}

/// Parses `data.tokenizer`: "bytes", "bpe:VOCAB" (VOCAB >= 257), a tokenizer.json path, or
/// `hf://OWNER/NAME[/PATH][@REV]` (its tokenizer.json, through the Hub cache).
pub fn parse_tokenizer_spec(spec: &str) -> Result<TokenizerSpec, DataError> {
    let spec = spec.trim();
    if spec == "bytes" {
        return Ok(TokenizerSpec::Bytes);
    }
    if let Some(n) = spec.strip_prefix("bpe:") {
        return match n.trim().parse::<usize>() {
            Ok(v) if v >= 257 => Ok(TokenizerSpec::Bpe(v)),
            _ => Err(DataError::BadTokenizerSpec {
                spec: spec.to_string(),
            }),
        };
    }
    if spec.is_empty() || spec == "bpe" {
        return Err(DataError::BadTokenizerSpec {
            spec: spec.to_string(),
        });
    }
    if spec.starts_with("hf://") {
        // A model repository's tokenizer.json (or the file the URI names), through the cache.
        let uri = crate::hub::parse_hf_uri(spec)?;
        let file = match uri.path.as_deref() {
            Some(p) if p.ends_with(".json") => p.to_string(),
            Some(folder) => format!("{folder}/tokenizer.json"),
            None => "tokenizer.json".to_string(),
        };
        let path = crate::hub::hf_file(&uri.repo_id, uri.kind, uri.revision.as_deref(), &file)?;
        return Ok(TokenizerSpec::File(path));
    }
    Ok(TokenizerSpec::File(PathBuf::from(spec)))
}
