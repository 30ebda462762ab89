//! The training batch loader: (input, target) windows of `seq_len` from a token stream, in a
//! seeded order, resumable to the exact batch, prefetched on a background thread.
//!
//! Windows: window w covers tokens [w·T, w·T + T + 1) (inputs the first T, targets the last T),
//! w = 0 .. count with count = (N - 1) / T, the same windows as the evaluation contract.
//! Order: epoch e visits them in a Fisher-Yates permutation drawn from ChaCha8(seed, stream e)
//! (implemented here so it does not change with the `rand` version). Data parallel: rank r of
//! W takes positions [r·P, (r+1)·P) of each epoch's permutation, P = count / W, so the ranks'
//! slices are disjoint and together cover the epoch (the count mod W windows at the end of the
//! permutation, different ones each epoch, are skipped so ranks stay in step).
//! State: (epoch, cursor), the position of the next window in this rank's slice. Batches run
//! across epoch boundaries. The background thread computes batches from a copy of the state,
//! so the batches never depend on its timing; `state()` counts batches handed out, not made.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::stream::TokenStream;
use crate::windows::{windows_of, EvalWindows};

/// Where the loader is: the next window is position `cursor` of epoch `epoch`'s slice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct LoaderState {
    pub epoch: u64,
    pub cursor: u64,
}

/// One batch, row-major [B, T]: row b is window b, `targets` shifted by one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch_size: usize,
    pub seq_len: usize,
}

/// The deterministic part: everything a batch depends on besides the state.
struct Plan {
    stream: Arc<TokenStream>,
    batch_size: usize,
    seed: u64,
    rank: usize,
    /// The windows of the whole stream.
    windows: EvalWindows,
    /// Windows per rank per epoch.
    per_rank: usize,
}

/// The permutation of `count` windows for `epoch`, cached by epoch.
struct Order {
    epoch: Option<u64>,
    perm: Vec<u32>,
}

impl Plan {
    fn permutation(&self, epoch: u64, order: &mut Order) {
        if order.epoch == Some(epoch) {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        order.perm.clear();
        order.perm.extend(0..self.windows.count as u32);
        for i in (1..self.windows.count).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.perm.swap(i, j);
        }
        order.epoch = Some(epoch);
    }

    /// The batch at `state`, advancing `state` past it.
    fn produce(&self, state: &mut LoaderState, order: &mut Order) -> Batch {
        let (b, t) = (self.batch_size, self.windows.seq_len);
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        let mut buf = vec![0u32; t + 1];
        for _ in 0..b {
            self.permutation(state.epoch, order);
            let w = order.perm[self.rank * self.per_rank + state.cursor as usize] as usize;
            self.windows
                .append_window(&self.stream, w, &mut buf, &mut inputs, &mut targets);
            state.cursor += 1;
            if state.cursor as usize == self.per_rank {
                state.epoch += 1;
                state.cursor = 0;
            }
        }
        Batch {
            inputs,
            targets,
            batch_size: b,
            seq_len: t,
        }
    }
}

struct Prefetcher {
    rx: Option<Receiver<(Batch, LoaderState)>>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next send fail, and it returns.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Training batches of `batch_size` windows of `seq_len` + 1 tokens.
pub struct BatchLoader {
    plan: Arc<Plan>,
    world_size: usize,
    state: LoaderState,
    depth: usize,
    prefetcher: Option<Prefetcher>,
    order: Order,
}

impl BatchLoader {
    /// A loader over `stream` for rank `rank` of `world_size`, starting at epoch 0. Fails
    /// when the stream has no window for every rank, or the arguments are inconsistent.
    pub fn new(
        stream: impl Into<Arc<TokenStream>>,
        seq_len: usize,
        batch_size: usize,
        seed: u64,
        rank: usize,
        world_size: usize,
    ) -> Result<BatchLoader, DataError> {
        let stream = stream.into();
        if seq_len == 0 || batch_size == 0 {
            return Err(DataError::Config(format!(
                "seq_len {seq_len} and batch size {batch_size} must both be at least 1"
            )));
        }
        if world_size == 0 || rank >= world_size {
            return Err(DataError::Config(format!(
                "rank {rank} is not below world_size {world_size}; ranks run 0 .. world_size-1"
            )));
        }
        let windows = windows_of(stream.len(), seq_len, "the training corpus")?;
        let count = windows.count;
        if count > u32::MAX as usize {
            return Err(DataError::Config(format!(
                "{count} windows are more than the loader indexes (2^32); use a longer seq_len"
            )));
        }
        let per_rank = count / world_size;
        if per_rank == 0 {
            return Err(DataError::Config(format!(
                "the training corpus has {count} windows of {seq_len} tokens, fewer than the {world_size} ranks; use more data or fewer ranks"
            )));
        }
        Ok(BatchLoader {
            plan: Arc::new(Plan {
                stream,
                batch_size,
                seed,
                rank,
                windows,
                per_rank,
            }),
            world_size,
            state: LoaderState::default(),
            depth: 4,
            prefetcher: None,
            order: Order {
                epoch: None,
                perm: Vec::new(),
            },
        })
    }

    /// Sets how many batches the background thread makes ahead (0: no thread). Default 4.
    pub fn with_prefetch(mut self, depth: usize) -> BatchLoader {
        self.prefetcher = None;
        self.depth = depth;
        self
    }

    /// Windows this rank sees per epoch.
    pub fn windows_per_epoch(&self) -> usize {
        self.plan.per_rank
    }

    /// Windows in the whole stream (all ranks).
    pub fn total_windows(&self) -> usize {
        self.plan.windows.count
    }

    /// Batches per epoch for this rank (fractional: batches run across epoch boundaries).
    pub fn batches_per_epoch(&self) -> f64 {
        self.plan.per_rank as f64 / self.plan.batch_size as f64
    }

    /// The window indices (window w starts at token w·T) of this rank's slice of `epoch`,
    /// in the order the loader visits them.
    pub fn epoch_windows(&self, epoch: u64) -> Vec<usize> {
        let mut order = Order {
            epoch: None,
            perm: Vec::new(),
        };
        self.plan.permutation(epoch, &mut order);
        let from = self.plan.rank * self.plan.per_rank;
        order.perm[from..from + self.plan.per_rank]
            .iter()
            .map(|&w| w as usize)
            .collect()
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Batch {
        if self.depth > 0 {
            if self.prefetcher.is_none() {
                self.prefetcher = Some(self.spawn());
            }
            let got = self
                .prefetcher
                .as_ref()
                .and_then(|p| p.rx.as_ref())
                .and_then(|rx| rx.recv().ok());
            if let Some((batch, after)) = got {
                self.state = after;
                return batch;
            }
            // The thread is gone (it panicked); carry on without it.
            self.prefetcher = None;
            self.depth = 0;
        }
        self.plan.produce(&mut self.state, &mut self.order)
    }

    fn spawn(&self) -> Prefetcher {
        let (tx, rx) = sync_channel(self.depth);
        let plan = self.plan.clone();
        let mut state = self.state.clone();
        let handle = std::thread::Builder::new()
            .name("dynact-data-prefetch".to_string())
            .spawn(move || {
                let mut order = Order {
                    epoch: None,
                    perm: Vec::new(),
                };
                loop {
                    let batch = plan.produce(&mut state, &mut order);
                    if tx.send((batch, state.clone())).is_err() {
                        return;
                    }
                }
            });
        match handle {
            Ok(h) => Prefetcher {
                rx: Some(rx),
                handle: Some(h),
            },
            // No thread: an empty prefetcher makes next_batch fall back to inline batches.
            Err(_) => Prefetcher {
                rx: None,
                handle: None,
            },
        }
    }

    /// The state after the last batch returned; `restore` it to continue from there.
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Continues from `s`: the next batch is the one that followed when `s` was saved.
    pub fn restore(&mut self, s: &LoaderState) -> Result<(), DataError> {
        if s.cursor as usize >= self.plan.per_rank {
            return Err(DataError::BadState {
                state: format!("{s:?}"),
                reason: format!(
                    "cursor {} is past the {} windows per epoch of rank {} of {}",
                    s.cursor, self.plan.per_rank, self.plan.rank, self.world_size
                ),
            });
        }
        self.prefetcher = None;
        self.state = s.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: u32) -> TokenStream {
        TokenStream::from_tokens((0..n).collect())
    }

    #[test]
    fn windows_are_shifted_pairs_and_epoch_is_a_permutation() {
        let mut l = BatchLoader::new(stream(101), 10, 5, 7, 0, 1).unwrap();
        assert_eq!(l.windows_per_epoch(), 10);
        let mut starts = Vec::new();
        for _ in 0..2 {
            let b = l.next_batch();
            for r in 0..5 {
                let x = &b.inputs[r * 10..r * 10 + 10];
                let y = &b.targets[r * 10..r * 10 + 10];
                assert_eq!(x[0] % 10, 0);
                for k in 0..10 {
                    assert_eq!(y[k], x[k] + 1);
                }
                starts.push(x[0] as usize / 10);
            }
        }
        assert_eq!(starts, l.epoch_windows(0));
        starts.sort();
        assert_eq!(starts, (0..10).collect::<Vec<_>>());
        assert_eq!(
            l.state(),
            LoaderState {
                epoch: 1,
                cursor: 0
            }
        );
        assert_ne!(l.epoch_windows(0), l.epoch_windows(1));
    }

    #[test]
    fn prefetch_and_inline_agree_and_restore_continues() {
        let mut a = BatchLoader::new(stream(1000), 16, 3, 1, 0, 1).unwrap();
        let mut b = BatchLoader::new(stream(1000), 16, 3, 1, 0, 1)
            .unwrap()
            .with_prefetch(0);
        let mut saved = None;
        let mut later = Vec::new();
        for k in 0..50 {
            let (x, y) = (a.next_batch(), b.next_batch());
            assert_eq!(x, y);
            assert_eq!(a.state(), b.state());
            if k == 20 {
                saved = Some(a.state());
            } else if k > 20 {
                later.push(x);
            }
        }
        let mut c = BatchLoader::new(stream(1000), 16, 3, 1, 0, 1).unwrap();
        c.restore(saved.as_ref().unwrap()).unwrap();
        for want in later {
            assert_eq!(c.next_batch(), want);
        }
        assert!(c
            .restore(&LoaderState {
                epoch: 0,
                cursor: 1000
            })
            .is_err());
    }
}
