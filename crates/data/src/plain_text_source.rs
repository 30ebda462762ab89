//! A plain text file as one document, read in blocks of [`BLOCK_BYTES`] (memory stays bounded
//! by a block whatever the file's size); a UTF-8 sequence cut by a block's end is carried to
//! the next.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::text_event::{decode_block, TextEvent};

/// Bytes read from a plain text file at a time.
pub const BLOCK_BYTES: usize = 1 << 20;

pub(crate) struct PlainTextFile {
    path: PathBuf,
    file: File,
    /// Bytes of an incomplete UTF-8 sequence carried to the next block.
    carry: Vec<u8>,
    /// File offset of `carry`'s first byte.
    offset: u64,
}

impl PlainTextFile {
    pub fn open(path: &Path) -> Result<PlainTextFile, DataError> {
        Ok(PlainTextFile {
            file: File::open(path).map_err(|e| DataError::io(path, "open", e))?,
            path: path.to_path_buf(),
            carry: Vec::new(),
            offset: 0,
        })
    }

    /// Reads the next block into `queue`; true once the file is done.
    pub fn read_into(
        &mut self,
        queue: &mut VecDeque<TextEvent>,
        replace_invalid_utf8: bool,
    ) -> Result<bool, DataError> {
        let before = self.carry.len();
        self.carry.reserve(BLOCK_BYTES);
        let n = self
            .file
            .by_ref()
            .take(BLOCK_BYTES as u64)
            .read_to_end(&mut self.carry)
            .map_err(|e| DataError::io(&self.path, "read", e))?;
        let at_end = n == 0;
        if at_end && self.offset == 0 && before == 0 {
            return Err(DataError::EmptyFile {
                path: self.path.clone(),
            });
        }
        let (text, used) = decode_block(
            &self.path,
            &self.carry,
            self.offset,
            at_end,
            replace_invalid_utf8,
        )?;
        self.carry.drain(..used);
        self.offset += used as u64;
        if !text.is_empty() {
            queue.push_back(TextEvent::Text(text));
        }
        if at_end {
            queue.push_back(TextEvent::EndOfDocument);
        }
        Ok(at_end)
    }
}
