//! Reading text sources as a stream, so that a corpus larger than memory never has to be held:
//! [`TextReader`] yields each document as pieces of text followed by an end-of-document mark.
//! A plain text file is one document, read in blocks of [`BLOCK_BYTES`]; a `.jsonl` file gives
//! one document per non-blank line (its `text_field`); a `.parquet` file one per row (its
//! `text_column`), one row group at a time. Memory stays bounded by a block, a JSONL line or a
//! row group, whatever the size of the corpus.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::parquet_source::ParquetTextColumn;

/// Bytes read from a plain text file at a time.
pub const BLOCK_BYTES: usize = 1 << 20;

/// What a text source yields, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextEvent {
    /// More text of the current document (never empty).
    Text(String),
    /// The current document ended (an empty document is just this mark).
    EndOfDocument,
}

/// Where the text is in structured files, and what to do with bytes that are not UTF-8 (the
/// `[data]` keys of the same names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextFields {
    /// The text field of JSONL records.
    pub text_field: String,
    /// The text column of parquet files.
    pub text_column: String,
    pub replace_invalid_utf8: bool,
}

impl Default for TextFields {
    fn default() -> Self {
        TextFields {
            text_field: "text".to_string(),
            text_column: "text".to_string(),
            replace_invalid_utf8: false,
        }
    }
}

enum Open {
    Plain {
        path: PathBuf,
        file: File,
        /// Bytes of an incomplete UTF-8 sequence carried to the next block.
        carry: Vec<u8>,
        /// File offset of `carry`'s first byte.
        offset: u64,
    },
    Jsonl {
        path: PathBuf,
        lines: BufReader<File>,
        line: usize,
        offset: u64,
        documents: usize,
    },
    Parquet {
        path: PathBuf,
        file: Box<ParquetTextColumn>,
        next_group: usize,
        documents: usize,
    },
}

/// The documents of text files (or of documents in memory) as a stream of [`TextEvent`]s.
pub struct TextReader {
    files: VecDeque<PathBuf>,
    fields: TextFields,
    open: Option<Open>,
    queue: VecDeque<TextEvent>,
    failed: bool,
}

fn is_ext(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

impl TextReader {
    /// A reader over `files` in order (plain text, `.jsonl` and `.parquet`).
    pub fn files(files: &[PathBuf], fields: TextFields) -> TextReader {
        TextReader {
            files: files.iter().cloned().collect(),
            fields,
            open: None,
            queue: VecDeque::new(),
            failed: false,
        }
    }

    /// A reader over documents already in memory (the built-in corpus).
    pub fn documents(docs: Vec<String>) -> TextReader {
        let mut r = TextReader::files(&[], TextFields::default());
        for d in docs {
            if !d.is_empty() {
                r.queue.push_back(TextEvent::Text(d));
            }
            r.queue.push_back(TextEvent::EndOfDocument);
        }
        r
    }

    fn open_next(&mut self) -> Result<bool, DataError> {
        let Some(path) = self.files.pop_front() else {
            return Ok(false);
        };
        let file = || File::open(&path).map_err(|e| DataError::io(&path, "open", e));
        self.open = Some(if is_ext(&path, "parquet") {
            let file = Box::new(ParquetTextColumn::open(&path, &self.fields.text_column)?);
            Open::Parquet {
                path,
                file,
                next_group: 0,
                documents: 0,
            }
        } else if is_ext(&path, "jsonl") {
            Open::Jsonl {
                lines: BufReader::new(file()?),
                path,
                line: 0,
                offset: 0,
                documents: 0,
            }
        } else {
            Open::Plain {
                file: file()?,
                path,
                carry: Vec::new(),
                offset: 0,
            }
        });
        Ok(true)
    }

    /// Reads from the open file until the queue has an event or the file is done.
    fn fill(&mut self) -> Result<(), DataError> {
        let replace = self.fields.replace_invalid_utf8;
        let Some(open) = &mut self.open else {
            return Ok(());
        };
        let done = match open {
            Open::Plain {
                path,
                file,
                carry,
                offset,
            } => {
                let before = carry.len();
                carry.reserve(BLOCK_BYTES);
                let n = file
                    .by_ref()
                    .take(BLOCK_BYTES as u64)
                    .read_to_end(carry)
                    .map_err(|e| DataError::io(&*path, "read", e))?;
                let at_end = n == 0;
                if at_end && *offset == 0 && before == 0 {
                    return Err(DataError::EmptyFile { path: path.clone() });
                }
                let (text, used) = decode_block(path, carry, *offset, at_end, replace)?;
                carry.drain(..used);
                *offset += used as u64;
                if !text.is_empty() {
                    self.queue.push_back(TextEvent::Text(text));
                }
                if at_end {
                    self.queue.push_back(TextEvent::EndOfDocument);
                }
                at_end
            }
            Open::Jsonl {
                path,
                lines,
                line,
                offset,
                documents,
            } => {
                let mut buf = Vec::new();
                let n = lines
                    .read_until(b'\n', &mut buf)
                    .map_err(|e| DataError::io(&*path, "read", e))?;
                if n == 0 {
                    if *documents == 0 {
                        return Err(DataError::EmptyFile { path: path.clone() });
                    }
                    true
                } else {
                    *line += 1;
                    let (text, _) = decode_block(path, &buf, *offset, true, replace)?;
                    *offset += n as u64;
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    let text = text.strip_suffix('\r').unwrap_or(text);
                    if !text.trim().is_empty() {
                        let doc = jsonl_text(path, *line, &self.fields.text_field, text)?;
                        if !doc.is_empty() {
                            self.queue.push_back(TextEvent::Text(doc));
                        }
                        self.queue.push_back(TextEvent::EndOfDocument);
                        *documents += 1;
                    }
                    false
                }
            }
            Open::Parquet {
                path,
                file,
                next_group,
                documents,
            } => {
                if *next_group == file.row_groups() {
                    if *documents == 0 {
                        return Err(DataError::EmptyFile { path: path.clone() });
                    }
                    true
                } else {
                    let mut docs = Vec::new();
                    file.read_group(*next_group, &mut docs)?;
                    *next_group += 1;
                    *documents += docs.len();
                    for d in docs {
                        if !d.is_empty() {
                            self.queue.push_back(TextEvent::Text(d));
                        }
                        self.queue.push_back(TextEvent::EndOfDocument);
                    }
                    false
                }
            }
        };
        if done {
            self.open = None;
        }
        Ok(())
    }
}

impl Iterator for TextReader {
    type Item = Result<TextEvent, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(Ok(e));
            }
            let step = if self.open.is_some() {
                self.fill().map(|()| true)
            } else {
                self.open_next()
            };
            match step {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The text of `bytes` (which start at `offset` in `path`) and how many bytes it used. Unless
/// `at_end`, an incomplete UTF-8 sequence at the end is left for the next block. Invalid bytes
/// are an error naming their offset, or, with `replace`, U+FFFD as `String::from_utf8_lossy`
/// would give for the whole file.
fn decode_block(
    path: &Path,
    bytes: &[u8],
    offset: u64,
    at_end: bool,
    replace: bool,
) -> Result<(String, usize), DataError> {
    let mut out = String::new();
    let mut pos = 0;
    loop {
        match std::str::from_utf8(&bytes[pos..]) {
            Ok(s) => {
                out.push_str(s);
                return Ok((out, bytes.len()));
            }
            Err(e) => {
                let valid = pos + e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[pos..valid]).expect("checked valid"));
                match e.error_len() {
                    None if !at_end => return Ok((out, valid)),
                    _ if !replace => {
                        return Err(DataError::InvalidUtf8 {
                            path: path.to_path_buf(),
                            offset: offset + valid as u64,
                        })
                    }
                    None => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        return Ok((out, bytes.len()));
                    }
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        pos = valid + n;
                    }
                }
            }
        }
    }
}

fn jsonl_text(path: &Path, line: usize, field: &str, text: &str) -> Result<String, DataError> {
    let bad = |problem: String| DataError::BadJsonl {
        path: path.to_path_buf(),
        line,
        field: field.to_string(),
        problem,
    };
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON ({e})")))?;
    match v.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("field {field:?} is not a string"))),
        None => Err(bad(format!("no field {field:?}"))),
    }
}

/// Collects a reader's documents (tests and small sources).
pub fn collect_documents(reader: TextReader) -> Result<Vec<String>, DataError> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for e in reader {
        match e? {
            TextEvent::Text(t) => current.push_str(&t),
            TextEvent::EndOfDocument => docs.push(std::mem::take(&mut current)),
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_utf8_sequences_and_replacement_matches_lossy() {
        let text = "aé€😀b".repeat(3);
        let mut bytes = text.as_bytes().to_vec();
        bytes.insert(3, 0xff); // after "aé"
        bytes.extend_from_slice(&[0xe2, 0x82]); // a truncated sequence at the end
        let lossy = String::from_utf8_lossy(&bytes).into_owned();
        // Every block size, so that every cut inside a sequence is met.
        for block in 1..bytes.len() {
            let mut out = String::new();
            let mut carry = Vec::new();
            let mut offset = 0;
            for (i, chunk) in bytes.chunks(block).enumerate() {
                carry.extend_from_slice(chunk);
                let at_end = (i + 1) * block >= bytes.len();
                let (t, used) = decode_block(Path::new("x"), &carry, offset, at_end, true).unwrap();
                out.push_str(&t);
                carry.drain(..used);
                offset += used as u64;
            }
            assert_eq!(out, lossy, "block {block}");
            let mut carry = Vec::new();
            let mut offset = 0;
            let mut err = None;
            for (i, chunk) in bytes.chunks(block).enumerate() {
                carry.extend_from_slice(chunk);
                let at_end = (i + 1) * block >= bytes.len();
                match decode_block(Path::new("x"), &carry, offset, at_end, false) {
                    Ok((_, used)) => {
                        carry.drain(..used);
                        offset += used as u64;
                    }
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            assert!(
                matches!(err, Some(DataError::InvalidUtf8 { offset: 3, .. })),
                "block {block}: {err:?}"
            );
        }
    }

    #[test]
    fn documents_of_text_jsonl_and_parquet_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let big = "line one\nline two é\n".repeat(BLOCK_BYTES / 10);
        std::fs::write(d.join("a.txt"), &big).unwrap();
        std::fs::write(
            d.join("b.jsonl"),
            "{\"text\":\"one\"}\r\n\n  \n{\"text\":\"\"}\n{\"text\":\"two\"}",
        )
        .unwrap();
        crate::parquet_source::write_string_columns(
            &d.join("c.parquet"),
            &[("text", vec![Some("p1"), None, Some("p2"), Some("p3")])],
            2,
        )
        .unwrap();
        let files = [d.join("a.txt"), d.join("b.jsonl"), d.join("c.parquet")];
        let events: Vec<TextEvent> = TextReader::files(&files, TextFields::default())
            .collect::<Result<_, _>>()
            .unwrap();
        // The big file came in several blocks, none empty.
        let blocks = events
            .iter()
            .take_while(|e| **e != TextEvent::EndOfDocument)
            .count();
        assert!(blocks >= 2, "{blocks}");
        assert!(!events.contains(&TextEvent::Text(String::new())));
        let docs = collect_documents(TextReader::files(&files, TextFields::default())).unwrap();
        assert_eq!(docs[0], big);
        assert_eq!(docs[1..], ["one", "", "two", "p1", "p2", "p3"]);
    }
}
