//! Tokenizers: the byte-level tokenizer (256 byte ids plus `<|endoftext|>` = 256), a byte-level
//! BPE trained on the corpus with the `tokenizers` crate's trainer, and any Hugging Face
//! `tokenizer.json`. All three are held as a `tokenizers::Tokenizer`, so they save and load as
//! ordinary `tokenizer.json` files; the byte tokenizer also has a native encoder/decoder that
//! gives the same ids as its `tokenizer.json` (a byte-level BPE without merges), only faster.
//!
//! Texts are encoded without the tokenizer's own special tokens (no BOS); the data path puts
//! one end-of-text token (`eos_id`) between documents itself.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::error::DataError;

/// The end-of-text token this crate adds between documents (GPT-2's spelling).
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// End-of-text spellings looked for in a loaded tokenizer.json, in this order.
const EOS_CANDIDATES: [&str; 7] = [
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<eos>",
    "<|eot_id|>",
    "<|im_end|>",
    "[SEP]",
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// The byte tokenizer: native fast path.
    Bytes,
    /// A BPE trained by this crate.
    Bpe,
    /// Loaded from a file (which may be one of ours saved earlier).
    File(PathBuf),
}

/// A tokenizer with a known end-of-text id.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    kind: Kind,
    eos: u32,
    vocab: usize,
    /// Tokens are strings of GPT-2 byte-level characters (ByteLevel decoder).
    byte_level: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({})", self.describe())
    }
}

/// GPT-2's map from bytes to printable characters (byte-level BPE's alphabet).
pub fn byte_to_char() -> [char; 256] {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    map
}

fn tk_err(e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// The byte tokenizer: ids 0..=255 are the bytes of the UTF-8 text, 256 is `<|endoftext|>`;
    /// vocabulary 257 (models may pad their embedding table; ids never exceed 256).
    pub fn bytes() -> Tokenizer {
        let chars = byte_to_char();
        let vocab: tokenizers::models::bpe::Vocab = (0..256u32)
            .map(|b| (chars[b as usize].to_string(), b))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, Vec::new())
            .build()
            .expect("a BPE of 256 single characters without merges is valid");
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, false)));
        inner.with_decoder(Some(ByteLevel::new(false, true, false)));
        inner
            .add_special_tokens([AddedToken::from(EOS_TOKEN, true)])
            .expect("adding one special token to a fresh tokenizer cannot fail");
        Tokenizer {
            inner,
            kind: Kind::Bytes,
            eos: 256,
            vocab: 257,
            byte_level: true,
        }
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer, DataError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataError::missing(path))
            }
            Err(e) => {
                return Err(DataError::BadTokenizer {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        };
        let bad = |reason: String| DataError::BadTokenizer {
            path: path.to_path_buf(),
            reason,
        };
        // The tokenizers library panics on some malformed files (found by fuzzing: a JSON
        // syntax error inside "decoder", a bad "precompiled_charsmap"): check the JSON first,
        // and turn any panic left into the same error.
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let inner: tokenizers::Tokenizer = quiet_catch_unwind(|| text.parse())
            .map_err(|panic| {
                bad(format!(
                    "the tokenizers library could not read it ({panic})"
                ))
            })?
            .map_err(|e: tokenizers::Error| bad(e.to_string()))?;
        let t = Tokenizer::wrap(inner, Kind::File(path.to_path_buf()))?;
        // The byte tokenizer written out is recognised (and then encoded natively); only a
        // tokenizer of its size can be it, so larger ones are not serialised to compare.
        let bytes = Tokenizer::bytes();
        if t.vocab == bytes.vocab
            && bytes.inner.to_string(false).ok() == t.inner.to_string(false).ok()
        {
            return Ok(bytes);
        }
        Ok(t)
    }

    fn wrap(inner: tokenizers::Tokenizer, kind: Kind) -> Result<Tokenizer, DataError> {
        let eos = EOS_CANDIDATES
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .ok_or_else(|| DataError::NoEos {
                looked_for: EOS_CANDIDATES.join(", "),
            })?;
        // Ids must be (nearly) contiguous: the model has an embedding row for every id up to
        // the largest, and the tokenizers library writes a vocabulary out in time proportional
        // to it (found by fuzzing: 300 tokens with ids up to 232,555,555 took minutes).
        let tokens = inner.get_vocab(true);
        let max_id = tokens.values().max().map_or(0, |&m| m as usize);
        if max_id >= 2 * tokens.len() + 1024 {
            return Err(DataError::BadTokenizer {
                path: match &kind {
                    Kind::File(p) => p.clone(),
                    _ => PathBuf::from("the trained BPE"),
                },
                reason: format!(
                    "its token ids go up to {max_id} for only {} tokens; a tokenizer's ids must be (nearly) contiguous, since the model has a row for every id",
                    tokens.len()
                ),
            });
        }
        // Every id needs a row of the model, holes included (added tokens are in `tokens`).
        let vocab = inner.get_vocab_size(true).max(max_id + 1);
        let byte_level = inner
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|s| s.contains("\"ByteLevel\""))
            || matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        Ok(Tokenizer {
            inner,
            kind,
            eos,
            vocab,
            byte_level,
        })
    }

    /// Trains a byte-level BPE (GPT-2 pre-tokenization, 256 byte symbols, `<|endoftext|>` = 0)
    /// of `vocab_size` ids on `texts`.
    pub fn train_bpe<I, S>(texts: I, vocab_size: usize) -> Result<Tokenizer, DataError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if vocab_size < 257 {
            return Err(DataError::BadTokenizerSpec {
                spec: format!("bpe:{vocab_size}"),
            });
        }
        let texts: Vec<S> = texts.into_iter().collect();
        let pieces: Vec<String> = texts
            .iter()
            .flat_map(|t| split_chunks(t.as_ref(), 1 << 16))
            .map(str::to_string)
            .collect();
        Tokenizer::train_bpe_pieces(pieces.into_iter(), vocab_size)
    }

    /// `train_bpe` on text already cut into pieces (by [`split_chunks`]), taken as they come.
    pub fn train_bpe_pieces<I>(pieces: I, vocab_size: usize) -> Result<Tokenizer, DataError>
    where
        I: Iterator<Item = String> + Send,
    {
        if vocab_size < 257 {
            return Err(DataError::BadTokenizerSpec {
                spec: format!("bpe:{vocab_size}"),
            });
        }
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::new(false, true, true)));
        let mut trainer: TrainerWrapper = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOS_TOKEN, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        inner.train(&mut trainer, pieces).map_err(tk_err)?;
        let mut t = Tokenizer::wrap(inner, Kind::Bpe)?;
        t.byte_level = true;
        Ok(t)
    }

    /// Ids in the vocabulary (the embedding table needs at least this many rows).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The end-of-text id put between documents.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// True for the byte tokenizer.
    pub fn is_bytes(&self) -> bool {
        self.kind == Kind::Bytes
    }

    /// True when a text may be cut with `split_chunks` and encoded piecewise with the same
    /// result: the byte tokenizer and BPEs trained by this crate.
    pub fn chunkable(&self) -> bool {
        matches!(self.kind, Kind::Bytes | Kind::Bpe)
    }

    /// Marks a tokenizer loaded from this crate's BPE cache as a trained BPE.
    pub(crate) fn into_bpe(mut self) -> Tokenizer {
        if matches!(self.kind, Kind::File(_)) {
            self.kind = Kind::Bpe;
            self.byte_level = true;
        }
        self
    }

    /// The wrapped `tokenizers` tokenizer (benchmarks, tests).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text` (no BOS; `<|endoftext|>` written literally in the text becomes
    /// the end-of-text id, as the `tokenizers` library does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        if self.kind == Kind::Bytes {
            let mut out = Vec::with_capacity(text.len());
            encode_bytes(text, &mut out);
            return Ok(out);
        }
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(tk_err)?
            .get_ids()
            .to_vec())
    }

    /// Like `encode`, on both cores for long texts: the text is cut where the result cannot
    /// change (anywhere for bytes; between a non-space, a newline and a non-space for byte-level
    /// BPE), else encoded whole.
    pub fn encode_parallel(&self, text: &str) -> Result<Vec<u32>, DataError> {
        if self.kind != Kind::Bpe || text.len() < (1 << 17) {
            return self.encode(text);
        }
        let parts: Result<Vec<Vec<u32>>, DataError> = split_chunks(text, 1 << 16)
            .into_par_iter()
            .map(|c| self.encode(c))
            .collect();
        Ok(parts?.concat())
    }

    /// The text of `ids` (special tokens included as written; invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        if self.kind == Kind::Bytes {
            let mut bytes = Vec::with_capacity(ids.len());
            for &id in ids {
                match id {
                    0..=255 => bytes.push(id as u8),
                    256 => bytes.extend_from_slice(EOS_TOKEN.as_bytes()),
                    _ => {
                        return Err(DataError::TokenOutOfRange {
                            what: "decoding".to_string(),
                            id,
                            vocab_size: 257,
                        })
                    }
                }
            }
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        self.inner.decode(ids, false).map_err(tk_err)
    }

    /// The tokenizer as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String, DataError> {
        self.inner.to_string(true).map_err(tk_err)
    }

    /// Writes `tokenizer.json` to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        crate::shard::write_atomic(path, self.to_json()?.as_bytes())
    }

    /// For each id, the number of UTF-8 bytes of text it stands for (0 for special tokens), for
    /// bits per byte. Exact for byte-level tokenizers and byte-fallback `<0xNN>` tokens;
    /// SentencePiece's `▁` counts as one space.
    pub fn token_byte_lengths(&self) -> Vec<u32> {
        if self.kind == Kind::Bytes {
            let mut v = vec![1u32; 256];
            v.push(0);
            return v;
        }
        let mut out = vec![0u32; self.vocab];
        let added = self.inner.get_added_tokens_decoder();
        let byte_chars: std::collections::HashSet<char> = byte_to_char().into_iter().collect();
        for (id, len) in out.iter_mut().enumerate() {
            let id = id as u32;
            if let Some(t) = added.get(&id) {
                *len = if t.special { 0 } else { t.content.len() as u32 };
                continue;
            }
            let Some(tok) = self.inner.id_to_token(id) else {
                continue;
            };
            *len = if self.byte_level {
                tok.chars()
                    .map(|c| {
                        if byte_chars.contains(&c) {
                            1
                        } else {
                            c.len_utf8() as u32
                        }
                    })
                    .sum()
            } else if tok.len() == 6 && tok.starts_with("<0x") && tok.ends_with('>') {
                1
            } else {
                tok.replace('\u{2581}', " ").len() as u32
            };
        }
        out
    }

    /// A short description: "bytes (257)", "bpe (4096)", "tokenizer.json (32000)".
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Bytes => format!("bytes ({})", self.vocab),
            Kind::Bpe => format!("bpe ({})", self.vocab),
            Kind::File(p) => format!("{} ({})", p.display(), self.vocab),
        }
    }
}

/// Runs `f`, turning a panic into an error holding its message, without the panic being
/// printed (for libraries that panic on bad input). The panic hook is swapped for the call, so
/// use it only where no other thread is expected to panic meanwhile (loading files at start).
fn quiet_catch_unwind<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".to_string())
    })
}

/// Byte ids of `text`, `<|endoftext|>` as 256, appended to `out`.
fn encode_bytes(text: &str, out: &mut Vec<u32>) {
    let mut rest = text;
    while let Some(i) = rest.find(EOS_TOKEN) {
        out.extend(rest.as_bytes()[..i].iter().map(|&b| b as u32));
        out.push(256);
        rest = &rest[i + EOS_TOKEN.len()..];
    }
    out.extend(rest.as_bytes().iter().map(|&b| b as u32));
}

/// Cuts `text` into pieces of about `target` bytes, each cut right after a newline that has
/// a non-whitespace character on both sides: GPT-2's pre-tokenizer splits there anyway, so
/// encoding the pieces gives the same ids as encoding the whole.
pub fn split_chunks(text: &str, target: usize) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    while text.len() - start > target {
        let mut i = start + target;
        let mut cut = None;
        while i + 1 < b.len() {
            if b[i] == b'\n' && i > 0 && !b[i - 1].is_ascii_whitespace() {
                let next = text[i + 1..].chars().next();
                let prev = text[..i].chars().next_back();
                if next.is_some_and(|c| !c.is_whitespace())
                    && prev.is_some_and(|c| !c.is_whitespace())
                {
                    cut = Some(i + 1);
                    break;
                }
            }
            i += 1;
        }
        match cut {
            Some(c) => {
                out.push(&text[start..c]);
                start = c;
            }
            None => break,
        }
    }
    if start < text.len() || out.is_empty() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_native_equals_tokenizer_json_and_round_trips() {
        let t = Tokenizer::bytes();
        let text = "Héllo, wörld! 日本 \u{1F600}\n\tend<|endoftext|>next \r\n";
        let native = t.encode(text).unwrap();
        let hf = t.hf().encode_fast(text, false).unwrap().get_ids().to_vec();
        assert_eq!(native, hf);
        assert_eq!(t.decode(&native).unwrap(), text);
        assert_eq!(t.hf().decode(&native, false).unwrap(), text);
        assert_eq!(native.iter().filter(|&&i| i == 256).count(), 1);
        // saved and loaded it is recognised as the byte tokenizer again
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        t.save(&p).unwrap();
        let u = Tokenizer::from_file(&p).unwrap();
        assert!(u.is_bytes());
        assert_eq!(u.describe(), "bytes (257)");
    }

    #[test]
    fn bpe_trains_saves_loads_and_chunked_encoding_matches() {
        let text = crate::builtin::generate(3, 300_000);
        let t = Tokenizer::train_bpe([text.as_str()], 600).unwrap();
        assert_eq!(t.vocab_size(), 600);
        assert_eq!(t.eos_id(), 0);
        let ids = t.encode(&text).unwrap();
        assert!(ids.len() < text.len() / 2, "{} ids", ids.len());
        assert_eq!(t.encode_parallel(&text).unwrap(), ids);
        assert_eq!(t.decode(&ids).unwrap(), text);
        let lens = t.token_byte_lengths();
        let total: u64 = ids.iter().map(|&i| lens[i as usize] as u64).sum();
        assert_eq!(total, text.len() as u64);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        t.save(&p).unwrap();
        let u = Tokenizer::from_file(&p).unwrap();
        assert_eq!(u.encode(&text).unwrap(), ids);
    }

    #[test]
    fn unreadable_tokenizer_json_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, "{ not json").unwrap();
        let e = Tokenizer::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("cannot read the tokenizer"), "{e}");
        let e = Tokenizer::from_file(&dir.path().join("nope.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such file"), "{e}");
    }

    #[test]
    fn fuzz_found_tokenizer_json_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        // A JSON syntax error inside "decoder": tokenizers 0.23 panicked ("Helper").
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fuzz/tokenizer-json-syntax-error-in-decoder.json"
        );
        std::fs::copy(fixture, &p).unwrap();
        let e = Tokenizer::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        // Valid JSON with a precompiled normalizer that is not one: tokenizers panics
        // ("Precompiled"); the panic becomes the error, unprinted.
        let mut v: serde_json::Value =
            serde_json::from_str(&Tokenizer::bytes().to_json().unwrap()).unwrap();
        v["normalizer"] =
            serde_json::json!({"type": "Precompiled", "precompiled_charsmap": "AAAA"});
        std::fs::write(&p, v.to_string()).unwrap();
        let e = Tokenizer::from_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("could not read it") && e.contains("Precompiled"),
            "{e}"
        );
        // Token ids up to 232,555,555 for 300 tokens: writing the vocabulary out took minutes
        // (a timeout); such a file is refused at once.
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fuzz/tokenizer-json-sparse-token-ids.json"
        );
        std::fs::copy(fixture, &p).unwrap();
        let e = Tokenizer::from_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("ids go up to 232555555 for only 300 tokens"),
            "{e}"
        );
    }
}
