//! Reading text sources as a stream, so that a corpus larger than memory never has to be held:
//! [`TextReader`] yields each document as pieces of text followed by an end-of-document mark,
//! from files of any input format, each in its own file: plain text
//! ([`crate::plain_text_source`], one document per file), `.jsonl`
//! ([`crate::jsonl_source`], one per non-blank line, its `text_field`) and `.parquet`
//! ([`crate::parquet_source`], one per row of its `text_column`). Memory stays bounded by a
//! block, a JSONL line or a row group, whatever the size of the corpus.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::jsonl_source::JsonlFile;
use crate::parquet_source::ParquetDocuments;
use crate::plain_text_source::PlainTextFile;
pub use crate::plain_text_source::BLOCK_BYTES;
pub use crate::text_event::TextEvent;

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

/// The file being read, in its format.
enum Open {
    Plain(PlainTextFile),
    Jsonl(JsonlFile),
    Parquet(ParquetDocuments),
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
        self.open = Some(if is_ext(&path, "parquet") {
            Open::Parquet(ParquetDocuments::open(&path, &self.fields.text_column)?)
        } else if is_ext(&path, "jsonl") {
            Open::Jsonl(JsonlFile::open(&path)?)
        } else {
            Open::Plain(PlainTextFile::open(&path)?)
        });
        Ok(true)
    }

    /// Reads from the open file until the queue has an event or the file is done.
    fn fill(&mut self) -> Result<(), DataError> {
        let replace = self.fields.replace_invalid_utf8;
        let queue = &mut self.queue;
        let done = match &mut self.open {
            None => return Ok(()),
            Some(Open::Plain(f)) => f.read_into(queue, replace)?,
            Some(Open::Jsonl(f)) => f.read_into(queue, &self.fields.text_field, replace)?,
            Some(Open::Parquet(f)) => f.read_into(queue)?,
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
