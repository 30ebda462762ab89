//! What every input format yields ([`TextEvent`]), and the UTF-8 decoding of blocks of bytes
//! that the plain text and JSONL readers share.

use std::path::Path;

use crate::error::DataError;

/// What a text source yields, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextEvent {
    /// More text of the current document (never empty).
    Text(String),
    /// The current document ended (an empty document is just this mark).
    EndOfDocument,
}

/// The text of `bytes` (which start at `offset` in `path`) and how many bytes it used. Unless
/// `at_end`, an incomplete UTF-8 sequence at the end is left for the next block. Invalid bytes
/// are an error naming their offset, or, with `replace`, U+FFFD as `String::from_utf8_lossy`
/// would give for the whole file.
pub(crate) fn decode_block(
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
}
