//! The windows a token stream is cut into: the one contract shared by training-time
//! evaluation and `eval-ppl` (so that their perplexities are the same number on the same data),
//! and the windows the training loader draws from (in its own order).
//!
//! For a stream of N tokens and window T, window i = 0, 1, ... while i·T + T + 1 <= N has
//! inputs tokens[i·T .. i·T+T] and targets tokens[i·T+1 .. i·T+T+1]. Windows do not overlap,
//! every scored token (targets) is scored exactly once, and the tail that fills no window
//! (N - 1 - count·T tokens that are never a target) is reported in `tail_tokens`.

use crate::error::DataError;
use crate::stream::TokenStream;

/// How a stream of `n_tokens` splits into evaluation windows of `seq_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalWindows {
    /// Window length T (tokens scored per window).
    pub seq_len: usize,
    /// Number of windows.
    pub count: usize,
    /// Tokens after the last window that are never scored (the first token, which is never a
    /// target, is not counted here).
    pub tail_tokens: usize,
}

/// The evaluation windows of a stream of `n_tokens`; an error when not even one fits.
pub fn eval_windows(n_tokens: usize, seq_len: usize) -> Result<EvalWindows, DataError> {
    windows_of(n_tokens, seq_len, "the evaluation corpus")
}

/// The windows of `what`, a stream of `n_tokens`; an error naming it when not even one fits.
pub fn windows_of(n_tokens: usize, seq_len: usize, what: &str) -> Result<EvalWindows, DataError> {
    if seq_len == 0 {
        return Err(DataError::Config(
            "seq_len is 0; set it to at least 1".to_string(),
        ));
    }
    if n_tokens < seq_len + 1 {
        return Err(DataError::TooShort {
            what: what.to_string(),
            tokens: n_tokens,
            needed: seq_len + 1,
            seq_len,
        });
    }
    let count = (n_tokens - 1) / seq_len;
    Ok(EvalWindows {
        seq_len,
        count,
        tail_tokens: n_tokens - 1 - count * seq_len,
    })
}

impl EvalWindows {
    /// Tokens scored in all windows together (count · T).
    pub fn scored_tokens(&self) -> usize {
        self.count * self.seq_len
    }

    /// Fills `inputs` and `targets` (cleared first, T tokens each) with window `i`.
    /// Panics when `i >= count` or the stream is not the one the windows were made for.
    pub fn window(
        &self,
        stream: &TokenStream,
        i: usize,
        inputs: &mut Vec<u32>,
        targets: &mut Vec<u32>,
    ) {
        inputs.clear();
        targets.clear();
        let mut buf = vec![0u32; self.seq_len + 1];
        self.append_window(stream, i, &mut buf, inputs, targets);
    }

    /// Appends window `i` to `inputs` and `targets`, reading through `buf` (T + 1 tokens).
    pub fn append_window(
        &self,
        stream: &TokenStream,
        i: usize,
        buf: &mut [u32],
        inputs: &mut Vec<u32>,
        targets: &mut Vec<u32>,
    ) {
        assert!(i < self.count, "window {i} of {} windows", self.count);
        let t = self.seq_len;
        stream.read(i * t, buf);
        inputs.extend_from_slice(&buf[..t]);
        targets.extend_from_slice(&buf[1..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_streams() {
        // N = 10, T = 3: windows start at 0, 3, 6 (6 + 3 + 1 = 10 <= 10); nothing left over.
        let s = TokenStream::from_tokens((0..10).collect());
        let w = eval_windows(10, 3).unwrap();
        assert_eq!(
            w,
            EvalWindows {
                seq_len: 3,
                count: 3,
                tail_tokens: 0
            }
        );
        let (mut x, mut y) = (Vec::new(), Vec::new());
        w.window(&s, 0, &mut x, &mut y);
        assert_eq!((x.clone(), y.clone()), (vec![0, 1, 2], vec![1, 2, 3]));
        w.window(&s, 2, &mut x, &mut y);
        assert_eq!((x.clone(), y.clone()), (vec![6, 7, 8], vec![7, 8, 9]));
        // N = 12, T = 3: still 3 windows (9 + 4 = 13 > 12); tokens 10 and 11 are the tail.
        let w = eval_windows(12, 3).unwrap();
        assert_eq!((w.count, w.tail_tokens), (3, 2));
        // every target scored once: targets are 1..=count*T exactly
        let s = TokenStream::from_tokens((0..12).collect());
        let mut all = Vec::new();
        for i in 0..w.count {
            w.window(&s, i, &mut x, &mut y);
            all.extend_from_slice(&y);
        }
        assert_eq!(all, (1..=9).collect::<Vec<u32>>());
        // N = T + 1 is exactly one window; N = T is none, with the numbers in the error.
        assert_eq!(eval_windows(4, 3).unwrap().count, 1);
        let e = eval_windows(3, 3).unwrap_err().to_string();
        assert!(e.contains("has 3 tokens") && e.contains("needs 4"), "{e}");
    }
}
