//! llm.c's token shard format (`.bin`), read and written bit-exactly so that shards made by
//! llm.c's `dev/data` scripts load here and ours load there.
//!
//! Layout: a header of 256 little-endian i32 (`[0]` magic, `[1]` version, `[2]` token count,
//! the rest zero), then the tokens, little-endian. GPT-2 shards: magic 20240520, version 1,
//! u16 tokens. Llama-3 shards (vocabularies over 65,536 ids): magic 20240801, version 7, u32
//! tokens. The file size is exactly 1,024 bytes plus the tokens; anything else is rejected.

use std::path::Path;

use crate::error::DataError;

/// Bytes in the header (256 i32).
pub const HEADER_BYTES: usize = 1024;
/// Magic of u16 (GPT-2 style) shards.
pub const MAGIC_U16: i32 = 20240520;
/// Version of u16 shards.
pub const VERSION_U16: i32 = 1;
/// Magic of u32 (llm.c Llama-3 style) shards.
pub const MAGIC_U32: i32 = 20240801;
/// Version of u32 shards.
pub const VERSION_U32: i32 = 7;

/// The decoded header of one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub magic: i32,
    pub version: i32,
    /// Tokens in the file.
    pub tokens: usize,
    /// Bytes per token: 2 (u16) or 4 (u32).
    pub width: usize,
}

/// The token width a vocabulary needs: u16 up to 65,536 ids, u32 above.
pub fn width_for_vocab(vocab_size: usize) -> usize {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

/// Encodes the 1,024-byte header for `tokens` tokens of `width` bytes.
pub fn encode_header(tokens: usize, width: usize) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    let (magic, version) = if width == 2 {
        (MAGIC_U16, VERSION_U16)
    } else {
        (MAGIC_U32, VERSION_U32)
    };
    h[0..4].copy_from_slice(&magic.to_le_bytes());
    h[4..8].copy_from_slice(&version.to_le_bytes());
    h[8..12].copy_from_slice(&(tokens as i32).to_le_bytes());
    h
}

/// Writes `tokens` as a shard at `path`, atomically (temporary file, fsync, rename). The
/// layout follows `vocab_size`: u16 when it is at most 65,536, u32 otherwise. Fails, without
/// writing, when a token is at or above `vocab_size` or there are more than i32::MAX tokens.
pub fn write_shard(path: &Path, tokens: &[u32], vocab_size: usize) -> Result<(), DataError> {
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(DataError::TokenOutOfRange {
            what: format!("writing {}", path.display()),
            id,
            vocab_size,
        });
    }
    if tokens.len() > i32::MAX as usize {
        return Err(DataError::Config(format!(
            "{} tokens do not fit one shard (at most {}); split them over several shards",
            tokens.len(),
            i32::MAX
        )));
    }
    let width = width_for_vocab(vocab_size);
    let mut buf = Vec::with_capacity(HEADER_BYTES + tokens.len() * width);
    buf.extend_from_slice(&encode_header(tokens.len(), width));
    if width == 2 {
        for &t in tokens {
            buf.extend_from_slice(&(t as u16).to_le_bytes());
        }
    } else {
        for &t in tokens {
            buf.extend_from_slice(&t.to_le_bytes());
        }
    }
    write_atomic(path, &buf)
}

/// Reads and checks the header of the shard at `path` against the file's size.
pub fn read_header(path: &Path) -> Result<ShardHeader, DataError> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, "open", e))?;
    let size = f
        .metadata()
        .map_err(|e| DataError::io(path, "stat", e))?
        .len();
    let mut h = [0u8; HEADER_BYTES];
    if size < HEADER_BYTES as u64 {
        return Err(bad(
            path,
            format!("the file has {size} bytes, less than the 1024-byte header"),
        ));
    }
    std::io::Read::read_exact(&mut f, &mut h).map_err(|e| DataError::io(path, "read", e))?;
    parse_header(path, &h, size)
}

/// Checks a header already in memory against the file size `size`.
pub fn parse_header(path: &Path, h: &[u8], size: u64) -> Result<ShardHeader, DataError> {
    if h.len() < HEADER_BYTES {
        return Err(bad(
            path,
            format!("the file has {size} bytes, less than the 1024-byte header"),
        ));
    }
    let word = |i: usize| i32::from_le_bytes([h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]]);
    let (magic, version, count) = (word(0), word(1), word(2));
    let width = match magic {
        MAGIC_U16 => 2,
        MAGIC_U32 => 4,
        _ => {
            return Err(bad(
                path,
                format!("magic number {magic}, expected {MAGIC_U16} (u16) or {MAGIC_U32} (u32)"),
            ))
        }
    };
    let expected_version = if width == 2 { VERSION_U16 } else { VERSION_U32 };
    if version != expected_version {
        return Err(bad(
            path,
            format!("version {version} with magic {magic}, expected version {expected_version}"),
        ));
    }
    if count < 0 {
        return Err(bad(path, format!("negative token count {count}")));
    }
    let expected = HEADER_BYTES as u64 + count as u64 * width as u64;
    if size != expected {
        return Err(bad(
            path,
            format!(
                "the header says {count} tokens of {width} bytes ({expected} bytes with the header) but the file has {size} bytes"
            ),
        ));
    }
    Ok(ShardHeader {
        magic,
        version,
        tokens: count as usize,
        width,
    })
}

fn bad(path: &Path, problem: String) -> DataError {
    DataError::BadShard {
        path: path.to_path_buf(),
        problem,
    }
}

/// Writes `bytes` to `path` atomically (see dynact-files): a crash leaves either the old file
/// or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    dynact_files::atomic_write_bytes(path, bytes).map_err(|e| {
        match dynact_files::describe_write_error(&e, path, bytes.len() as u64) {
            Some(disk_full) => DataError::Config(disk_full),
            None => DataError::io(path, "write", e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_size_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_shard(&p, &[1, 2, 65535], 65536).unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!(
            (h.magic, h.version, h.tokens, h.width),
            (MAGIC_U16, 1, 3, 2)
        );
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1024 + 6);
        write_shard(&p, &[70000], 100_000).unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!(
            (h.magic, h.version, h.tokens, h.width),
            (MAGIC_U32, 7, 1, 4)
        );
        assert!(matches!(
            write_shard(&p, &[5], 5),
            Err(DataError::TokenOutOfRange { id: 5, .. })
        ));
    }
}
