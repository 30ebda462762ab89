//! What a forward pass needs to know beyond its input: whether it trains, and the seed and
//! generator its dropout masks are drawn from. [`ForwardCtx`] and the seeded [`dropout`] live
//! here, below attention and the decoder that both use them, so neither layer imports the other
//! for them.

use candle_core::{DType, Result, Tensor};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The generator of dropout masks. Runs record theirs (`train.dropout_rng`), so a run resumes
/// with the masks it started with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropoutRng {
    /// Counter-based Philox4x32-10 ([`crate::philox`]): element i of a mask is a pure function
    /// of (seed, i), drawn in parallel, and the same function a GPU kernel computes.
    #[default]
    Philox4x32,
    /// A sequential ChaCha8 stream per mask, one f64 per element: runs written before the
    /// counter-based generator (their run.toml has no `train.dropout_rng`).
    Chacha8,
}

/// Whether a forward pass trains (dropout on, seeded by `seed`) or evaluates, and which rows
/// of the batch it runs: a batch split by rows across threads draws, shard by shard, the same
/// masks as the whole batch in one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardCtx {
    pub train: bool,
    pub seed: u64,
    pub rng: DropoutRng,
    /// The row of the whole batch that row 0 of this pass's input is.
    pub first_row: usize,
}

impl ForwardCtx {
    pub const EVAL: ForwardCtx = ForwardCtx {
        train: false,
        seed: 0,
        rng: DropoutRng::Philox4x32,
        first_row: 0,
    };

    pub fn train(seed: u64) -> Self {
        ForwardCtx {
            train: true,
            seed,
            rng: DropoutRng::default(),
            first_row: 0,
        }
    }

    /// The same pass drawing its masks from `rng`.
    pub fn with_rng(self, rng: DropoutRng) -> Self {
        ForwardCtx { rng, ..self }
    }

    /// The same pass over the rows of the batch from `first_row` on.
    pub fn from_row(self, first_row: usize) -> Self {
        ForwardCtx { first_row, ..self }
    }

    /// A distinct, reproducible seed for each dropout site of the pass.
    pub fn seed_for(&self, site: u64) -> u64 {
        self.seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(site.wrapping_mul(0xBF58_476D_1CE4_E5B9))
    }
}

/// Inverted dropout with a mask drawn from a seeded generator, so that a training step is a
/// pure function of (weights, batch, seed): resumed runs replay exactly. Candle's own dropout
/// draws from an unseedable CPU generator. `x`'s leading dimension is the batch; its rows are
/// rows `first_row..` of the whole batch, whose mask this draws the matching part of.
pub fn dropout(x: &Tensor, p: f64, seed: u64, rng: DropoutRng, first_row: usize) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let n = x.elem_count();
    let first = (first_row * (n / x.dim(0)?.max(1))) as u64;
    let device_draws = x.device().is_cpu() || x.device().is_cuda();
    if rng == DropoutRng::Philox4x32 && x.dtype() == DType::F32 && device_draws {
        let op = crate::philox_dropout::PhiloxDropout {
            seed,
            first,
            keep,
            scale,
        };
        return op.apply(x);
    }
    // Elsewhere the mask is drawn on the host.
    let mask: Vec<f32> = match rng {
        DropoutRng::Philox4x32 => crate::philox::dropout_mask_from(seed, first, n, keep, scale),
        DropoutRng::Chacha8 => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            // One f64 (two 32-bit words) per element.
            rng.set_word_pos(2 * first as u128);
            (0..n)
                .map(|_| {
                    if rng.random::<f64>() < keep {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect()
        }
    };
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}
