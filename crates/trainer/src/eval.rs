//! Perplexity of a model on a token stream, under the evaluation-window contract of the data
//! crate ([`dynact_data::eval_windows`]): non-overlapping windows of `seq_len`, every scored
//! token scored once, the tail reported. Training-time evaluation and `eval-ppl` both call
//! [`evaluate`], so they agree to the last digit on the same device and dtype.

use std::time::Instant;

use candle_core::{Device, Tensor};
use dynact_data::{eval_windows, TokenStream};
use dynact_dist::Communicator;
use serde::Serialize;

use crate::model_api::ScoresTokens;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EvalResult {
    /// Mean next-token cross-entropy in nats.
    pub ce: f64,
    pub ppl: f64,
    /// Bits per UTF-8 byte of the scored text (None when token byte lengths are unknown).
    pub bpb: Option<f64>,
    /// Tokens scored.
    pub tokens: usize,
    pub windows: usize,
    /// Tokens at the end that fill no window and were not scored.
    pub tail_tokens: usize,
    pub seconds: f64,
}

/// Scores `stream` in windows of `seq_len`, `batch_size` windows at a time, at most
/// `max_windows` of them. `byte_lengths[id]` is the UTF-8 length of token `id` (for bits per
/// byte). `on_batch(done, total)` reports progress.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: impl ScoresTokens,
    stream: &TokenStream,
    seq_len: usize,
    batch_size: usize,
    max_windows: Option<usize>,
    byte_lengths: Option<&[u32]>,
    device: &Device,
    on_batch: impl FnMut(usize, usize),
) -> anyhow::Result<EvalResult> {
    let single = Communicator::single();
    evaluate_on(
        &single,
        model,
        stream,
        seq_len,
        batch_size,
        max_windows,
        byte_lengths,
        device,
        on_batch,
    )
}

/// [`evaluate`] shared by the ranks of `comm`: rank r scores the r-th of `comm.size()`
/// contiguous parts of the windows and the sums are reduced, so every rank gets the result of
/// scoring all of them (up to the order of an f64 sum).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_on(
    comm: &Communicator,
    mut model: impl ScoresTokens,
    stream: &TokenStream,
    seq_len: usize,
    batch_size: usize,
    max_windows: Option<usize>,
    byte_lengths: Option<&[u32]>,
    device: &Device,
    mut on_batch: impl FnMut(usize, usize),
) -> anyhow::Result<EvalResult> {
    let start = Instant::now();
    let windows = eval_windows(stream.len(), seq_len)?;
    let count = max_windows.map_or(windows.count, |m| m.min(windows.count));
    let (rank, size) = (comm.rank(), comm.size());
    let (first, end) = (count * rank / size, count * (rank + 1) / size);
    let (mut nll_sum, mut bytes) = (0f64, 0u64);
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut done = first;
    while done < end {
        let b = batch_size.min(end - done);
        x.clear();
        y.clear();
        for i in done..done + b {
            windows.window(stream, i, &mut inputs, &mut targets);
            x.extend_from_slice(&inputs);
            y.extend_from_slice(&targets);
        }
        if let Some(lens) = byte_lengths {
            bytes += y
                .iter()
                .map(|&t| lens.get(t as usize).copied().unwrap_or(0) as u64)
                .sum::<u64>();
        }
        let xs = Tensor::from_slice(&x, (b, seq_len), device)?;
        let ys = Tensor::from_slice(&y, (b, seq_len), device)?;
        let nll: Vec<f32> = model.token_nll(&xs, &ys)?.to_vec1()?;
        // Summed in f64 so that the mean does not depend on how windows were batched.
        nll_sum += nll.iter().map(|&v| v as f64).sum::<f64>();
        done += b;
        on_batch(done - first, end - first);
    }
    if size > 1 {
        let mut sums = [nll_sum, bytes as f64];
        comm.all_reduce_sum_f64(&mut sums);
        (nll_sum, bytes) = (sums[0], sums[1] as u64);
    }
    let tokens = count * seq_len;
    let ce = nll_sum / tokens as f64;
    let bpb = byte_lengths
        .filter(|_| bytes > 0)
        .map(|_| nll_sum / std::f64::consts::LN_2 / bytes as f64);
    Ok(EvalResult {
        ce,
        ppl: ce.exp(),
        bpb,
        tokens,
        windows: count,
        tail_tokens: windows.tail_tokens + (windows.count - count) * seq_len,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Perplexity on `val` of the unigram distribution of `train` (add-one smoothed): the bar a
/// model must clear to have learned anything beyond token frequencies.
pub fn unigram_ppl(train: &TokenStream, val: &TokenStream, vocab_size: usize) -> f64 {
    let mut counts = vec![1u64; vocab_size];
    let mut buf = vec![0u32; 1 << 16];
    let mut count_into = |stream: &TokenStream, f: &mut dyn FnMut(u32)| {
        let mut start = 0;
        while start < stream.len() {
            let n = buf.len().min(stream.len() - start);
            stream.read(start, &mut buf[..n]);
            buf[..n].iter().for_each(|&t| f(t));
            start += n;
        }
    };
    count_into(train, &mut |t| {
        if let Some(c) = counts.get_mut(t as usize) {
            *c += 1;
        }
    });
    let total: u64 = counts.iter().sum();
    let (mut nll, mut n) = (0f64, 0u64);
    count_into(val, &mut |t| {
        let c = counts.get(t as usize).copied().unwrap_or(1);
        nll -= (c as f64 / total as f64).ln();
        n += 1;
    });
    (nll / n.max(1) as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unigram_ppl_by_hand() {
        // train counts (+1 smoothing, vocab 3): a=3+1, b=1+1, c=0+1 -> p = 4/7, 2/7, 1/7.
        let train = TokenStream::from_tokens(vec![0, 0, 0, 1]);
        let val = TokenStream::from_tokens(vec![0, 1]);
        let expected = (-((4.0f64 / 7.0).ln() + (2.0f64 / 7.0).ln()) / 2.0).exp();
        assert!((unigram_ppl(&train, &val, 3) - expected).abs() < 1e-12);
    }
}
