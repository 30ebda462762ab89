//! A `.jsonl` file: one document per non-blank line, the string under its `text_field`; read a
//! line at a time, so memory stays bounded by the longest line.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::text_event::{decode_block, TextEvent};

pub(crate) struct JsonlFile {
    path: PathBuf,
    lines: BufReader<File>,
    /// The line last read (1-based, for errors).
    line: usize,
    /// File offset of the next line (for UTF-8 errors).
    offset: u64,
    documents: usize,
}

impl JsonlFile {
    pub fn open(path: &Path) -> Result<JsonlFile, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, "open", e))?;
        Ok(JsonlFile {
            path: path.to_path_buf(),
            lines: BufReader::new(file),
            line: 0,
            offset: 0,
            documents: 0,
        })
    }

    /// Reads the next line's document into `queue`; true once the file is done.
    pub fn read_into(
        &mut self,
        queue: &mut VecDeque<TextEvent>,
        text_field: &str,
        replace_invalid_utf8: bool,
    ) -> Result<bool, DataError> {
        let mut buf = Vec::new();
        let n = self
            .lines
            .read_until(b'\n', &mut buf)
            .map_err(|e| DataError::io(&self.path, "read", e))?;
        if n == 0 {
            if self.documents == 0 {
                return Err(DataError::EmptyFile {
                    path: self.path.clone(),
                });
            }
            return Ok(true);
        }
        self.line += 1;
        let (text, _) = decode_block(&self.path, &buf, self.offset, true, replace_invalid_utf8)?;
        self.offset += n as u64;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if !text.trim().is_empty() {
            let doc = jsonl_text(&self.path, self.line, text_field, text)?;
            if !doc.is_empty() {
                queue.push_back(TextEvent::Text(doc));
            }
            queue.push_back(TextEvent::EndOfDocument);
            self.documents += 1;
        }
        Ok(false)
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
