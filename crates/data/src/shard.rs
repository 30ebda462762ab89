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

/// Writes a token stream as numbered shards `prefix_NNNNNN.bin` in a folder, `per_shard` tokens
/// each (the last may be shorter), holding only a write buffer: a shard's header is written
/// when the shard is full or the stream ends. Nothing is created for an empty stream. The
/// folder is the caller's temporary one (the cache renames it into place when complete).
pub struct ShardWriter {
    dir: std::path::PathBuf,
    prefix: String,
    vocab_size: usize,
    width: usize,
    per_shard: usize,
    file: Option<(std::path::PathBuf, std::io::BufWriter<std::fs::File>)>,
    in_shard: usize,
    shards: usize,
    tokens: u64,
}

impl ShardWriter {
    pub fn new(dir: &Path, prefix: &str, vocab_size: usize, per_shard: usize) -> ShardWriter {
        ShardWriter {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            vocab_size,
            width: width_for_vocab(vocab_size),
            per_shard: per_shard.clamp(1, i32::MAX as usize),
            file: None,
            in_shard: 0,
            shards: 0,
            tokens: 0,
        }
    }

    /// The path of shard `i` of `prefix` in `dir`.
    pub fn shard_path(dir: &Path, prefix: &str, i: usize) -> std::path::PathBuf {
        dir.join(format!("{prefix}_{i:06}.bin"))
    }

    /// Appends `tokens`; fails, before writing them, when one is at or above the vocabulary.
    pub fn write(&mut self, mut tokens: &[u32]) -> Result<(), DataError> {
        use std::io::Write;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(DataError::TokenOutOfRange {
                what: format!("writing {}", self.dir.join(&self.prefix).display()),
                id,
                vocab_size: self.vocab_size,
            });
        }
        let mut bytes = Vec::with_capacity(tokens.len().min(self.per_shard) * self.width);
        while !tokens.is_empty() {
            if self.file.is_none() {
                let path = Self::shard_path(&self.dir, &self.prefix, self.shards);
                let f = std::fs::File::create(&path).map_err(|e| write_error(&path, e, 0))?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                w.write_all(&[0u8; HEADER_BYTES])
                    .map_err(|e| write_error(&path, e, HEADER_BYTES as u64))?;
                self.file = Some((path, w));
                self.shards += 1;
                self.in_shard = 0;
            }
            let n = tokens.len().min(self.per_shard - self.in_shard);
            bytes.clear();
            if self.width == 2 {
                bytes.extend(tokens[..n].iter().flat_map(|&t| (t as u16).to_le_bytes()));
            } else {
                bytes.extend(tokens[..n].iter().flat_map(|&t| t.to_le_bytes()));
            }
            let (path, w) = self.file.as_mut().expect("opened above");
            w.write_all(&bytes)
                .map_err(|e| write_error(path, e, bytes.len() as u64))?;
            self.in_shard += n;
            self.tokens += n as u64;
            tokens = &tokens[n..];
            if self.in_shard == self.per_shard {
                self.close_shard()?;
            }
        }
        Ok(())
    }

    fn close_shard(&mut self) -> Result<(), DataError> {
        use std::io::{Seek, Write};
        let Some((path, w)) = self.file.take() else {
            return Ok(());
        };
        let mut f = w
            .into_inner()
            .map_err(|e| write_error(&path, e.into_error(), 0))?;
        f.seek(std::io::SeekFrom::Start(0))
            .and_then(|_| f.write_all(&encode_header(self.in_shard, self.width)))
            .and_then(|_| f.sync_all())
            .map_err(|e| write_error(&path, e, HEADER_BYTES as u64))
    }

    /// Closes the last shard; returns (shards written, tokens written).
    pub fn finish(mut self) -> Result<(usize, u64), DataError> {
        self.close_shard()?;
        Ok((self.shards, self.tokens))
    }
}

fn write_error(path: &Path, e: std::io::Error, needed: u64) -> DataError {
    match dynact_files::describe_write_error(&e, path, needed) {
        Some(disk_full) => DataError::Config(disk_full),
        None => DataError::io(path, "write", e),
    }
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
    dynact_files::atomic_write_bytes(path, bytes)
        .map_err(|e| write_error(path, e, bytes.len() as u64))
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

    #[test]
    fn shard_writer_equals_write_shard_per_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let tokens: Vec<u32> = (0..1000u32).map(|i| (i * 7919) % 300).collect();
        for (vocab, per_shard) in [(300, 64), (300, 1000), (70_000, 333)] {
            let mut w = ShardWriter::new(dir.path(), "s", vocab, per_shard);
            // Uneven writes, so that shards fill across calls.
            for part in tokens.chunks(37) {
                w.write(part).unwrap();
            }
            let (shards, n) = w.finish().unwrap();
            assert_eq!((shards, n), (tokens.len().div_ceil(per_shard), 1000));
            for (i, chunk) in tokens.chunks(per_shard).enumerate() {
                let want = dir.path().join("want.bin");
                write_shard(&want, chunk, vocab).unwrap();
                let got = std::fs::read(ShardWriter::shard_path(dir.path(), "s", i)).unwrap();
                assert_eq!(
                    got,
                    std::fs::read(&want).unwrap(),
                    "vocab {vocab} shard {i}"
                );
            }
        }
        let w = ShardWriter::new(dir.path(), "empty", 300, 10);
        assert_eq!(w.finish().unwrap(), (0, 0));
        assert!(!ShardWriter::shard_path(dir.path(), "empty", 0).exists());
        let mut w = ShardWriter::new(dir.path(), "bad", 300, 10);
        assert!(matches!(
            w.write(&[1, 300]),
            Err(DataError::TokenOutOfRange { id: 300, .. })
        ));
    }
}
