//! What a forward pass needs to know beyond its input: whether it trains, and the seed its
//! dropout masks are drawn from. [`ForwardCtx`] and the seeded [`dropout`] live here, below
//! attention and the decoder that both use them, so neither layer imports the other for them.

use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};

/// Whether a forward pass trains (dropout on, seeded by `seed`) or evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardCtx {
    pub train: bool,
    pub seed: u64,
}

impl ForwardCtx {
    pub const EVAL: ForwardCtx = ForwardCtx {
        train: false,
        seed: 0,
    };

    pub fn train(seed: u64) -> Self {
        ForwardCtx { train: true, seed }
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
/// draws from an unseedable CPU generator.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f64>() < keep {
                scale
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}
