//! dynAct, the trainable activation of arXiv 2603.22154:
//!
//! ```text
//! f(x) = base(x) * (alpha - beta) + beta * x
//! df/dx = base'(x)(alpha - beta) + beta,  df/dalpha = base(x),  df/dbeta = x - base(x)
//! ```
//!
//! alpha = 1, beta = 0 is the plain base activation; alpha = beta makes the layer linear.
//! [`DynAct`] is an ordinary Candle module whose two parameters come from the `VarBuilder`
//! (the pattern of `candle_nn::prelu`), so it can be dropped into any Candle model and is saved
//! and loaded with the rest of it under `<prefix>.alpha` and `<prefix>.beta`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::{BaseAct, DynActConfig, Granularity};

/// The base nonlinearity, built from differentiable Candle ops only.
pub fn base_activation(x: &Tensor, base: BaseAct) -> Result<Tensor> {
    match base {
        BaseAct::Silu => x.silu(),
        BaseAct::Gelu => x.gelu_erf(),
        BaseAct::Relu => x.relu(),
        // mish(x) = x tanh(softplus(x)); softplus(x) = relu(x) + ln(1 + e^-|x|) never overflows.
        BaseAct::Mish => {
            let softplus = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
            x * softplus.tanh()?
        }
    }
}

/// `f(x) = base(x)(alpha - beta) + beta x` with trainable alpha and beta.
#[derive(Clone, Debug)]
pub struct DynAct {
    alpha: Tensor,
    beta: Tensor,
    base: BaseAct,
}

impl DynAct {
    /// `channels` is the size of the last dimension of the input; it sets the parameter shape
    /// only at per-channel granularity (per layer, alpha and beta have shape `[1]`).
    pub fn new(cfg: &DynActConfig, channels: usize, vb: VarBuilder) -> Result<Self> {
        let n = match cfg.granularity {
            Granularity::PerLayer => 1,
            Granularity::PerChannel => channels,
        };
        let alpha = vb.get_with_hints(n, "alpha", Init::Const(cfg.alpha_init))?;
        let beta = vb.get_with_hints(n, "beta", Init::Const(cfg.beta_init))?;
        Ok(DynAct {
            alpha,
            beta,
            base: cfg.base,
        })
    }

    pub fn alpha(&self) -> &Tensor {
        &self.alpha
    }

    pub fn beta(&self) -> &Tensor {
        &self.beta
    }
}

impl Module for DynAct {
    /// x: (..., C) -> (..., C)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let alpha = self.alpha.to_dtype(x.dtype())?;
        let beta = self.beta.to_dtype(x.dtype())?;
        let scale = (&alpha - &beta)?;
        let nonlinear = base_activation(x, self.base)?.broadcast_mul(&scale)?;
        nonlinear + x.broadcast_mul(&beta)?
    }
}
