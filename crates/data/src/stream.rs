//! A token stream: one or more memory-mapped llm.c shards (or an in-memory vector) seen as a
//! single concatenated sequence of token ids, with cheap sub-ranges. The loader and the
//! evaluation windows read from it; nothing here knows about text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::error::DataError;
use crate::shard::{self, HEADER_BYTES};

enum Backing {
    /// A shard, mapped for reading windows, and its file for scans that should not make its
    /// pages resident in this process (reads go through the page cache instead).
    Mmap(Mmap, std::fs::File),
    Owned(Vec<u32>),
}

#[derive(Clone)]
struct Segment {
    backing: Arc<Backing>,
    /// Bytes per token (2 or 4) for mapped shards; unused for owned vectors.
    width: usize,
    /// First token of this segment within its backing.
    start: usize,
    /// Tokens in this segment.
    len: usize,
}

impl Segment {
    fn read(&self, from: usize, out: &mut [u32]) {
        let first = self.start + from;
        match &*self.backing {
            Backing::Owned(v) => out.copy_from_slice(&v[first..first + out.len()]),
            Backing::Mmap(m, _) => {
                let w = self.width;
                let bytes = &m[HEADER_BYTES + first * w..HEADER_BYTES + (first + out.len()) * w];
                if w == 2 {
                    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                        *o = u16::from_le_bytes([b[0], b[1]]) as u32;
                    }
                } else {
                    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                        *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
            }
        }
    }

    /// The largest id in the segment, read in chunks on all cores (mapped shards through
    /// file reads, so a scan of a large corpus does not grow the resident memory).
    fn max_token(&self) -> u32 {
        const CHUNK: usize = 1 << 18;
        (0..self.len.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let from = c * CHUNK;
                let mut buf = vec![0u32; CHUNK.min(self.len - from)];
                match &*self.backing {
                    Backing::Mmap(_, file) => {
                        use std::os::unix::fs::FileExt;
                        let w = self.width;
                        let mut bytes = vec![0u8; buf.len() * w];
                        let at = (HEADER_BYTES + (self.start + from) * w) as u64;
                        if file.read_exact_at(&mut bytes, at).is_err() {
                            // The header matched the size at open; a failed read falls back
                            // to the mapping rather than hiding a token.
                            self.read(from, &mut buf);
                        } else if w == 2 {
                            for (o, b) in buf.iter_mut().zip(bytes.chunks_exact(2)) {
                                *o = u16::from_le_bytes([b[0], b[1]]) as u32;
                            }
                        } else {
                            for (o, b) in buf.iter_mut().zip(bytes.chunks_exact(4)) {
                                *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                            }
                        }
                    }
                    Backing::Owned(_) => self.read(from, &mut buf),
                }
                buf.into_iter().max().unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

/// Token ids from shards or memory, as one stream. Cloning is cheap (shared mappings).
#[derive(Clone)]
pub struct TokenStream {
    segments: Vec<Segment>,
    /// `starts[i]` is the stream position of segment i's first token.
    starts: Vec<usize>,
    len: usize,
    max_token: u32,
    paths: Vec<PathBuf>,
}

impl std::fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStream")
            .field("len", &self.len)
            .field("segments", &self.segments.len())
            .field("max_token", &self.max_token)
            .field("paths", &self.paths)
            .finish()
    }
}

impl TokenStream {
    fn from_segments(segments: Vec<Segment>, paths: Vec<PathBuf>) -> TokenStream {
        let segments: Vec<Segment> = segments.into_iter().filter(|s| s.len > 0).collect();
        let mut starts = Vec::with_capacity(segments.len());
        let mut len = 0;
        for s in &segments {
            starts.push(len);
            len += s.len;
        }
        let max_token = segments.iter().map(|s| s.max_token()).max().unwrap_or(0);
        TokenStream {
            segments,
            starts,
            len,
            max_token,
            paths,
        }
    }

    /// Memory-maps the shards at `paths`, in the given order, after checking each header
    /// against its file size.
    pub fn open(paths: &[PathBuf]) -> Result<TokenStream, DataError> {
        let mut segments = Vec::with_capacity(paths.len());
        for p in paths {
            segments.push(open_segment(p)?);
        }
        Ok(TokenStream::from_segments(segments, paths.to_vec()))
    }

    /// A stream over tokens in memory (tests, small corpora).
    pub fn from_tokens(v: Vec<u32>) -> TokenStream {
        let len = v.len();
        let seg = Segment {
            backing: Arc::new(Backing::Owned(v)),
            width: 4,
            start: 0,
            len,
        };
        TokenStream::from_segments(vec![seg], Vec::new())
    }

    /// Tokens in the stream.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the stream has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The largest token id in the stream (0 when empty).
    pub fn max_token(&self) -> u32 {
        self.max_token
    }

    /// The shard files behind the stream (empty for in-memory streams).
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Copies tokens `start .. start + out.len()` into `out`.
    ///
    /// Panics when the range runs past the end of the stream: callers compute ranges from
    /// `len()`, so that is a bug in the caller, not bad input.
    pub fn read(&self, start: usize, out: &mut [u32]) {
        assert!(
            start + out.len() <= self.len,
            "TokenStream::read({start}, {}) past the end ({})",
            out.len(),
            self.len
        );
        let mut pos = start;
        let mut done = 0;
        let mut seg = match self.starts.binary_search(&pos) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        while done < out.len() {
            let s = &self.segments[seg];
            let within = pos - self.starts[seg];
            let n = (s.len - within).min(out.len() - done);
            s.read(within, &mut out[done..done + n]);
            done += n;
            pos += n;
            seg += 1;
        }
    }

    /// All tokens as a vector (tests, small streams).
    pub fn to_vec(&self) -> Vec<u32> {
        let mut v = vec![0; self.len];
        self.read(0, &mut v);
        v
    }

    /// (training part, held-out part): the last `val_fraction` of the tokens held out, as
    /// token shards are split when no validation data is given.
    pub fn split_tail(&self, val_fraction: f64) -> (TokenStream, TokenStream) {
        let n = self.len;
        let cut = (n as f64 * (1.0 - val_fraction)).floor() as usize;
        (self.slice(0, cut), self.slice(cut, n))
    }

    /// The sub-stream of positions `start .. end` (shares the mappings).
    pub fn slice(&self, start: usize, end: usize) -> TokenStream {
        assert!(start <= end && end <= self.len, "bad slice {start}..{end}");
        let mut segs = Vec::new();
        for (s, &first) in self.segments.iter().zip(&self.starts) {
            let last = first + s.len;
            let (a, b) = (start.max(first), end.min(last));
            if a < b {
                segs.push(Segment {
                    backing: s.backing.clone(),
                    width: s.width,
                    start: s.start + (a - first),
                    len: b - a,
                });
            }
        }
        TokenStream::from_segments(segs, self.paths.clone())
    }

    /// Fails when a token is at or above `vocab_size`, naming `what` the stream is.
    pub fn check_vocab(&self, vocab_size: usize, what: &str) -> Result<(), DataError> {
        if !self.is_empty() && self.max_token as usize >= vocab_size {
            return Err(DataError::TokenOutOfRange {
                what: what.to_string(),
                id: self.max_token,
                vocab_size,
            });
        }
        Ok(())
    }
}

fn open_segment(path: &Path) -> Result<Segment, DataError> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, "open", e))?;
    let size = f
        .metadata()
        .map_err(|e| DataError::io(path, "stat", e))?
        .len();
    if size == 0 {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: the mapping is read-only and the shards are files this process treats as
    // immutable (the cache writes new shards under new names and renames them in place).
    let map = unsafe { Mmap::map(&f) }.map_err(|e| DataError::io(path, "mmap", e))?;
    let h = shard::parse_header(path, &map[..map.len().min(HEADER_BYTES)], size)?;
    Ok(Segment {
        backing: Arc::new(Backing::Mmap(map, f)),
        width: h.width,
        start: 0,
        len: h.tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_shards_read_across_boundaries_and_slice() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.bin");
        let b = dir.path().join("b.bin");
        shard::write_shard(&a, &[0, 1, 2, 3], 300).unwrap();
        shard::write_shard(&b, &[4, 5, 299], 300).unwrap();
        let s = TokenStream::open(&[a, b]).unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(s.max_token(), 299);
        let mut out = [0u32; 4];
        s.read(2, &mut out);
        assert_eq!(out, [2, 3, 4, 5]);
        let t = s.slice(3, 6);
        assert_eq!(t.to_vec(), vec![3, 4, 5]);
        assert_eq!(t.max_token(), 5);
        assert!(s.check_vocab(299, "x").is_err());
        assert!(s.check_vocab(300, "x").is_ok());
    }
}
