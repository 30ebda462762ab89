//! The small building blocks the decoder is made of: a bias-free linear layer that runs as one
//! large matrix product, and RMSNorm. Each is built so that gradients reach every parameter:
//! Candle's fused `rms_norm` has no backward pass (see docs/candle-notes.md).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// `y = x W^T`, weight shape (out, in) as in PyTorch and Hugging Face checkpoints.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, init: Init, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        Ok(Linear { weight })
    }

    pub fn from_weight(weight: Tensor) -> Self {
        Linear { weight }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Linear {
    /// x: (..., in) -> (..., out). Leading dimensions are flattened so that Candle runs one
    /// multithreaded GEMM instead of one small GEMM per batch element.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.to_dtype(x.dtype())?;
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = w.dim(0)?;
        y.reshape(out_dims)
    }
}

/// Root-mean-square normalisation over the last dimension, computed in f32.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        Ok(RmsNorm { weight, eps })
    }
}

impl Module for RmsNorm {
    /// x: (..., C) -> (..., C)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::rms_norm(x, &self.weight, self.eps)
    }
}
