//! The small building blocks the decoder is made of: a bias-free linear layer that runs as one
//! large matrix product, and RMSNorm. Each is built so that gradients reach every parameter:
//! Candle's fused `rms_norm` has no backward pass (see docs/candle-notes.md).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::ops::{cast, product, Form};

/// `y = x W^T`, weight shape (out, in) as in PyTorch and Hugging Face checkpoints. The product
/// runs in `matmul_dtype` (bf16 under mixed precision: matmul inputs are the only bf16 in the
/// model, and the product comes back in f32 from the GEMM, [`product`]); the result is in the
/// weight's dtype (f32 master weights).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    matmul_dtype: DType,
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, init: Init, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        Ok(Self::from_weight(weight))
    }

    pub fn from_weight(weight: Tensor) -> Self {
        Linear {
            weight,
            matmul_dtype: DType::F32,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn set_matmul_dtype(&mut self, dtype: DType) {
        self.matmul_dtype = dtype;
    }

    /// `x` as the product takes it. Layers that feed one input to several products (q, k and
    /// v; gate and up) cast it once: [`Linear::forward`] takes an input already cast as it is.
    pub fn cast_input(&self, x: &Tensor) -> Result<Tensor> {
        cast(x, self.matmul_dtype)
    }
}

impl Module for Linear {
    /// x: (..., in) -> (..., out). Leading dimensions are flattened so that one large GEMM
    /// runs instead of one small GEMM per batch element.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let y = product(
            &x.reshape((rows, in_dim))?,
            &self.weight,
            Form::ABt,
            self.matmul_dtype,
        )?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = self.weight.dim(0)?;
        cast(&y, self.weight.dtype())?.reshape(out_dims)
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
