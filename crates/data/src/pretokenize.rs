//! Streaming tokenization: text events in, token ids out (to shards or memory), in batches of
//! about [`BATCH_BYTES`] encoded on all cores, so memory stays flat however large the corpus.
//!
//! The ids are those of encoding each document whole, with the end-of-text id between
//! documents: a document is cut into pieces only where [`split_chunks`] cuts (where the
//! tokenizer's result cannot change), and the cut points found on a growing prefix of a
//! document are the ones found on all of it.
//!
//! The validation split by characters ([`SplitRouter`]) is computed on the stream too, from the
//! character count of a first pass ([`scan`]).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::shard::ShardWriter;
use crate::text_reader::TextEvent;
use crate::tokenizer::{split_chunks, Tokenizer};

/// Text encoded per parallel batch.
pub const BATCH_BYTES: usize = 1 << 20;
/// Target size of the pieces a document is cut into.
pub const PIECE_BYTES: usize = 1 << 16;

/// What a first pass over a source finds: sizes and a digest of its documents.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub documents: u64,
    pub chars: u64,
    pub bytes: u64,
    /// SHA-256 of the documents' text with a 0xFF byte (never in UTF-8) after each document.
    pub digest: [u8; 32],
}

/// Reads `events` once: counts documents, characters and bytes, and hashes the text.
pub fn scan(events: impl Iterator<Item = Result<TextEvent, DataError>>) -> Result<Scan, DataError> {
    let mut s = Scan::default();
    let mut h = Sha256::new();
    for e in events {
        match e? {
            TextEvent::Text(t) => {
                s.chars += t.chars().count() as u64;
                s.bytes += t.len() as u64;
                h.update(t.as_bytes());
            }
            TextEvent::EndOfDocument => {
                s.documents += 1;
                h.update([0xff]);
            }
        }
    }
    s.digest = h.finalize().into();
    Ok(s)
}

/// Where encoded ids go.
pub enum TokenSink {
    Memory(Vec<u32>),
    Shards(ShardWriter),
}

impl TokenSink {
    fn write(&mut self, ids: &[u32]) -> Result<(), DataError> {
        match self {
            TokenSink::Memory(v) => {
                v.extend_from_slice(ids);
                Ok(())
            }
            TokenSink::Shards(w) => w.write(ids),
        }
    }
}

/// Cuts documents that arrive in blocks into the pieces [`split_chunks`] would cut the whole
/// document into, holding only the current document's uncut tail.
pub struct Chunker {
    /// Cut documents at all (false: each document is one piece).
    cut: bool,
    /// Text of the current document not yet cut into pieces.
    pending: String,
    /// `pending`'s length when a search for a cut last failed (search again once it doubles).
    searched: usize,
    /// Text of the current document arrived and it has not ended.
    open: bool,
    /// A piece of the current document was given out.
    started: bool,
}

impl Chunker {
    pub fn new(cut: bool) -> Chunker {
        Chunker {
            cut,
            pending: String::new(),
            searched: 0,
            open: false,
            started: false,
        }
    }

    /// More text of the current document; `out(piece, first_of_document)` gets each piece
    /// that can no longer change.
    pub fn text(
        &mut self,
        t: &str,
        out: &mut impl FnMut(String, bool) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        self.open = true;
        self.pending.push_str(t);
        let len = self.pending.len();
        if !self.cut || len <= 2 * PIECE_BYTES || len < 2 * self.searched {
            return Ok(());
        }
        let mut pieces: Vec<String> = split_chunks(&self.pending, PIECE_BYTES)
            .into_iter()
            .map(str::to_string)
            .collect();
        // The last piece may still grow; the others are final.
        let rest = pieces.pop().unwrap_or_default();
        if pieces.is_empty() {
            self.searched = len;
            return Ok(());
        }
        self.pending = rest;
        self.searched = 0;
        for p in pieces {
            out(p, !self.started)?;
            self.started = true;
        }
        Ok(())
    }

    /// The current document ended: its last pieces go to `out` (an empty document is one
    /// empty piece).
    pub fn end_document(
        &mut self,
        out: &mut impl FnMut(String, bool) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        let text = std::mem::take(&mut self.pending);
        let pieces = if self.cut {
            split_chunks(&text, PIECE_BYTES)
        } else {
            vec![text.as_str()]
        };
        for p in pieces {
            out(p.to_string(), !self.started)?;
            self.started = true;
        }
        self.searched = 0;
        self.open = false;
        self.started = false;
        Ok(())
    }

    /// True between a document's first text and its end.
    pub fn is_open(&self) -> bool {
        self.open
    }
}

struct Piece {
    text: String,
    /// The first piece of a document that is not the stream's first: the end-of-text id
    /// goes before it.
    eos_before: bool,
}

/// Pieces waiting to be encoded, and where their ids go.
struct Batch<'a> {
    tokenizer: &'a Tokenizer,
    sink: TokenSink,
    documents: u64,
    pieces: Vec<Piece>,
    bytes: usize,
    /// Text bytes taken in all.
    total_bytes: u64,
    progress: ProgressBar,
}

impl Batch<'_> {
    fn push(&mut self, text: String, first_of_document: bool) -> Result<(), DataError> {
        self.bytes += text.len();
        self.total_bytes += text.len() as u64;
        self.pieces.push(Piece {
            text,
            eos_before: first_of_document && self.documents > 0,
        });
        if self.bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DataError> {
        let (tokenizer, progress) = (self.tokenizer, &self.progress);
        let encoded: Result<Vec<Vec<u32>>, DataError> = self
            .pieces
            .par_iter()
            .map(|p| {
                let ids = tokenizer.encode(&p.text);
                progress.inc(p.text.len() as u64);
                ids
            })
            .collect();
        let encoded = encoded?;
        let mut out = Vec::with_capacity(encoded.iter().map(|v| v.len() + 1).sum());
        for (p, ids) in self.pieces.iter().zip(encoded) {
            if p.eos_before {
                out.push(tokenizer.eos_id());
            }
            out.extend_from_slice(&ids);
        }
        self.sink.write(&out)?;
        self.pieces.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// Tokenizes one stream of documents (a split's part) as it arrives.
pub struct StreamTokenizer<'a> {
    chunker: Chunker,
    batch: Batch<'a>,
}

impl<'a> StreamTokenizer<'a> {
    pub fn new(tokenizer: &'a Tokenizer, sink: TokenSink, progress: ProgressBar) -> Self {
        StreamTokenizer {
            chunker: Chunker::new(tokenizer.chunkable()),
            batch: Batch {
                tokenizer,
                sink,
                documents: 0,
                pieces: Vec::new(),
                bytes: 0,
                total_bytes: 0,
                progress,
            },
        }
    }

    /// Takes one event of the stream.
    pub fn event(&mut self, e: TextEvent) -> Result<(), DataError> {
        let batch = &mut self.batch;
        match e {
            TextEvent::Text(t) => self.chunker.text(&t, &mut |p, first| batch.push(p, first)),
            TextEvent::EndOfDocument => {
                self.chunker
                    .end_document(&mut |p, first| batch.push(p, first))?;
                batch.documents += 1;
                Ok(())
            }
        }
    }

    /// Ends an open document, encodes what is left; returns the sink and the bytes of text
    /// taken in.
    pub fn finish(mut self) -> Result<(TokenSink, u64), DataError> {
        if self.chunker.is_open() {
            self.event(TextEvent::EndOfDocument)?;
        }
        self.batch.flush()?;
        Ok((self.batch.sink, self.batch.total_bytes))
    }
}

/// Which part of a split an event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Train,
    Val,
}

/// Routes a stream of documents into a training part (the first `cut` characters) and a
/// validation part (the rest), as [`split_tail`] splits documents in memory:
/// the document spanning the cut is split in two; an empty document at the cut is training's.
pub struct SplitRouter {
    cut: u64,
    seen: u64,
    /// The part the open document goes to (None between documents).
    current: Option<Part>,
}

impl SplitRouter {
    /// The router of a source of `chars` characters with `val_fraction` held out.
    pub fn new(chars: u64, val_fraction: f64) -> SplitRouter {
        SplitRouter {
            cut: (chars as f64 * (1.0 - val_fraction)).floor() as u64,
            seen: 0,
            current: None,
        }
    }

    /// Sends `e` to its part (or, for the text crossing the cut, its two halves and the end of
    /// the training half's document).
    pub fn route(
        &mut self,
        e: TextEvent,
        to: &mut impl FnMut(Part, TextEvent) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        match e {
            TextEvent::Text(t) => {
                let starts_in = if self.seen < self.cut {
                    Part::Train
                } else {
                    Part::Val
                };
                let part = *self.current.get_or_insert(starts_in);
                let c = t.chars().count() as u64;
                if part == Part::Train && self.seen + c > self.cut {
                    let keep = (self.cut - self.seen) as usize;
                    let at = t.char_indices().nth(keep).map_or(t.len(), |(i, _)| i);
                    if at > 0 {
                        to(Part::Train, TextEvent::Text(t[..at].to_string()))?;
                    }
                    to(Part::Train, TextEvent::EndOfDocument)?;
                    to(Part::Val, TextEvent::Text(t[at..].to_string()))?;
                    self.current = Some(Part::Val);
                } else {
                    to(part, TextEvent::Text(t))?;
                }
                self.seen += c;
            }
            TextEvent::EndOfDocument => {
                let empty_goes_to = if self.seen <= self.cut {
                    Part::Train
                } else {
                    Part::Val
                };
                let part = self.current.take().unwrap_or(empty_goes_to);
                to(part, TextEvent::EndOfDocument)?;
            }
        }
        Ok(())
    }
}

/// Splits documents at character floor(n · (1 - fraction)) of their concatenation.
pub fn split_tail(docs: Vec<String>, fraction: f64) -> (Vec<String>, Vec<String>) {
    let n: usize = docs.iter().map(|d| d.chars().count()).sum();
    let cut = (n as f64 * (1.0 - fraction)).floor() as usize;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let mut seen = 0;
    for d in docs {
        let c = d.chars().count();
        if seen + c <= cut {
            train.push(d);
        } else if seen >= cut {
            val.push(d);
        } else {
            let at = d.char_indices().nth(cut - seen).map_or(d.len(), |(i, _)| i);
            train.push(d[..at].to_string());
            val.push(d[at..].to_string());
        }
        seen += c;
    }
    (train, val)
}

/// The progress bar of tokenizing `total` bytes (hidden without a terminal).
pub(crate) fn progress(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})")
    {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb
}

/// Token ids of `docs`, an end-of-text id between documents, on all cores: the streaming
/// tokenizer of the cache, with the documents in memory and the ids kept there.
pub fn tokenize_documents(
    tokenizer: &Tokenizer,
    docs: &[String],
    what: &str,
) -> Result<Vec<u32>, DataError> {
    let pb = progress(docs.iter().map(|d| d.len() as u64).sum(), what);
    let mut stream = StreamTokenizer::new(tokenizer, TokenSink::Memory(Vec::new()), pb.clone());
    for d in docs {
        if !d.is_empty() {
            stream.event(TextEvent::Text(d.clone()))?;
        }
        stream.event(TextEvent::EndOfDocument)?;
    }
    let (sink, _) = stream.finish()?;
    pb.finish_and_clear();
    match sink {
        TokenSink::Memory(ids) => Ok(ids),
        TokenSink::Shards(_) => unreachable!("the sink given above is in memory"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_tail_cuts_characters_like_nanogpt() {
        let docs = vec!["abcd".to_string(), "éfgh".to_string(), "ij".to_string()];
        // n = 10 chars, cut at 9: train gets 9 chars, val the last one.
        let (t, v) = split_tail(docs.clone(), 0.1);
        assert_eq!((t.concat(), v.concat()), ("abcdéfghi".into(), "j".into()));
        let (t, v) = split_tail(docs, 0.5);
        assert_eq!(t, ["abcd", "é"]);
        assert_eq!(v, ["fgh", "ij"]);
    }

    /// Events of `docs` with every document cut into blocks of `block` characters.
    fn blocks(docs: &[String], block: usize) -> Vec<TextEvent> {
        let mut out = Vec::new();
        for d in docs {
            let chars: Vec<char> = d.chars().collect();
            for c in chars.chunks(block) {
                out.push(TextEvent::Text(c.iter().collect()));
            }
            out.push(TextEvent::EndOfDocument);
        }
        out
    }

    fn documents(events: Vec<TextEvent>) -> Vec<String> {
        let mut docs = Vec::new();
        let mut current = String::new();
        for e in events {
            match e {
                TextEvent::Text(t) => current.push_str(&t),
                TextEvent::EndOfDocument => docs.push(std::mem::take(&mut current)),
            }
        }
        docs
    }

    fn streamed(tokenizer: &Tokenizer, events: Vec<TextEvent>) -> Vec<u32> {
        let sink = TokenSink::Memory(Vec::new());
        let mut st = StreamTokenizer::new(tokenizer, sink, ProgressBar::hidden());
        for e in events {
            st.event(e).unwrap();
        }
        match st.finish().unwrap().0 {
            TokenSink::Memory(v) => v,
            TokenSink::Shards(_) => unreachable!(),
        }
    }

    #[test]
    fn streamed_ids_equal_whole_document_ids_for_any_block_size() {
        // Long documents (many pieces), a long one without any cut point, short and empty
        // ones, and a literal end-of-text marker.
        let long =
            "The quick brown fox\njumps over\n\n the lazy dog <|endoftext|> é€\n".repeat(6000);
        let docs = vec![
            long.clone(),
            String::new(),
            "short".to_string(),
            "x ".repeat(3 * PIECE_BYTES),
            long[..200_000].to_string(),
            String::new(),
        ];
        let bpe = Tokenizer::train_bpe([&long[..50_000]], 300).unwrap();
        for tokenizer in [Tokenizer::bytes(), bpe] {
            let want = tokenize_documents(&tokenizer, &docs, "test").unwrap();
            // Whole documents encoded without any cut, end-of-text between documents.
            let mut whole = Vec::new();
            for (i, d) in docs.iter().enumerate() {
                if i > 0 {
                    whole.push(tokenizer.eos_id());
                }
                whole.extend(tokenizer.encode(d).unwrap());
            }
            assert_eq!(want, whole, "{}", tokenizer.describe());
            for block in [1_000, 65_537, 1 << 20] {
                let got = streamed(&tokenizer, blocks(&docs, block));
                assert_eq!(got, want, "{} block {block}", tokenizer.describe());
            }
        }
    }

    #[test]
    fn split_router_equals_split_tail() {
        let docs: Vec<String> = ["abcd", "", "éfgh", "ij", "", "klmnop", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let n: usize = docs.iter().map(|d| d.chars().count()).sum();
        for k in 0..=n {
            let fraction = 1.0 - (k as f64 + 0.5) / (n as f64 + 1.0);
            let (want_train, want_val) = split_tail(docs.clone(), fraction);
            for block in [1, 2, 100] {
                let (mut train, mut val) = (Vec::new(), Vec::new());
                let mut router = SplitRouter::new(n as u64, fraction);
                for e in blocks(&docs, block) {
                    router
                        .route(e, &mut |part, e| {
                            match part {
                                Part::Train => train.push(e),
                                Part::Val => val.push(e),
                            }
                            Ok(())
                        })
                        .unwrap();
                }
                assert_eq!(documents(train), want_train, "cut {k} block {block}");
                assert_eq!(documents(val), want_val, "cut {k} block {block}");
            }
        }
    }
}
