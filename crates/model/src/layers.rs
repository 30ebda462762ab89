//! The small building blocks the decoder is made of: a bias-free linear layer that runs as one
//! large matrix product, and RMSNorm. Each is built so that gradients reach every parameter:
//! Candle's fused `rms_norm` has no backward pass (see docs/candle-notes.md).

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::ops::packed_weight::{packed_product, PackedWeight};
use crate::ops::{cast, product, Form};

/// `y = x W^T`, weight shape (out, in) as in PyTorch and Hugging Face checkpoints. The product
/// runs in `matmul_dtype` (bf16 under mixed precision: matmul inputs are the only bf16 in the
/// model, and the product comes back in f32 from the GEMM, [`product`]); the result is in the
/// weight's dtype (f32 master weights).
#[derive(Clone, Debug)]
pub struct Linear {
    /// (out, in), or (in, out) when `transposed`.
    weight: Tensor,
    transposed: bool,
    /// A transposed f32 weight also in the panels of the packed product, on CPUs with
    /// AVX-512: the products of f32 inputs that need no gradient take it. None otherwise, under
    /// a product dtype other than f32, and on a stacked gate and up layer whose FFN took its
    /// weights as a gate and up pack ([`Linear::take_gate_up_pack`]).
    packed: Option<Arc<PackedWeight>>,
    matmul_dtype: DType,
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, init: Init, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        Self::from_weight(weight)
    }

    /// A weight that no gradient reaches (an inference model's: detached, nothing trains it
    /// here) is kept transposed on a CPU, a copy of its own: the GEMM reads it in the order it
    /// computes in instead of repacking all of it on every product, which took 5-10% of a
    /// product's time at d = 128 ([`crate::Checkpoint::inference_model`] says what the copy
    /// means). Products of more than one row and 256 outputs compute the same bits either way;
    /// smaller ones (one row when decoding) take the gemm crate's small-product kernels, which
    /// add in another order for each layout (on AVX-512 the packed product, below, takes them,
    /// in its own one order).
    ///
    /// On a CPU with AVX-512, a fixed f32 weight is packed as well ([`PackedWeight`]): the
    /// gemm crate's own packing and driver took 4% of a cpu-repro evaluation pass. The packed
    /// product computes the same bits as the gemm crate's blocked kernels.
    pub fn from_weight(weight: Tensor) -> Result<Self> {
        let transposed = weight.device().is_cpu() && !weight.track_op() && weight.rank() == 2;
        Self::of_stored(
            match transposed {
                true => weight.t()?.contiguous()?,
                false => weight,
            },
            transposed,
            DType::F32,
        )
    }

    /// The layer of a weight as stored (transposed or not), packed where it can be.
    fn of_stored(weight: Tensor, transposed: bool, matmul_dtype: DType) -> Result<Self> {
        let packed = match transposed && weight.dtype() == DType::F32 && PackedWeight::available() {
            true => {
                let (k, n) = weight.dims2()?;
                let w_t = weight.flatten_all()?.to_vec1::<f32>()?;
                Some(Arc::new(PackedWeight::of_transposed(&w_t, k, n)))
            }
            false => None,
        };
        Ok(Linear {
            weight,
            transposed,
            packed,
            matmul_dtype,
        })
    }

    /// One layer for two that read the same input, where both keep their weights transposed
    /// (fixed weights on a CPU: an inference model's) in one dtype and product dtype: the
    /// weights side by side, (in, out_a + out_b), whose product is each row's [a x | b x].
    /// Where the products take the gemm crate's blocked kernels (more than 64 rows), each
    /// element is the bits of its own layer's product: one sum over the input per element, in
    /// blocks that depend on the input's width alone. None otherwise: a trained weight is a
    /// parameter of its own. One product of twice the outputs took 7-17% less time than the
    /// two (SwiGLU's gate and up at cpu-repro's 768 rows, 8-12% at micro's 2,048): the input is
    /// packed once, and its columns share out among threads in whole tiles.
    pub fn stacked(a: &Linear, b: &Linear) -> Result<Option<Linear>> {
        let alike = a.weight.dtype() == b.weight.dtype() && a.matmul_dtype == b.matmul_dtype;
        if !(a.transposed && b.transposed && alike) || a.weight.dim(0)? != b.weight.dim(0)? {
            return Ok(None);
        }
        let weight = Tensor::cat(&[&a.weight, &b.weight], 1)?;
        Self::of_stored(weight, true, a.matmul_dtype).map(Some)
    }

    /// The weights of a stacked gate and up layer ([`Linear::stacked`] of a gated FFN's two
    /// projections) of `c` channels each, as a gate and up pack, which its FFN's gated product
    /// reads in place of this layer's products ([`PackedWeight::of_gate_up`]); the layer's own
    /// pack is dropped (a layer without one takes the gemm crate's product). None, the layer
    /// as it was, where it has no pack or its input is deeper than the gated product takes.
    pub(crate) fn take_gate_up_pack(&mut self, c: usize) -> Result<Option<Arc<PackedWeight>>> {
        let (k, n) = self.weight.dims2()?;
        if self.packed.is_none() || n != 2 * c || k > PackedWeight::MAX_GATED_DEPTH {
            return Ok(None);
        }
        let w_t = self.weight.flatten_all()?.to_vec1::<f32>()?;
        self.packed = None;
        Ok(Some(Arc::new(PackedWeight::of_gate_up(&w_t, k, c))))
    }

    /// The dtype the products run in; a pack, which serves f32 products only, is dropped
    /// under another.
    pub fn set_matmul_dtype(&mut self, dtype: DType) {
        if dtype != DType::F32 {
            self.packed = None;
        }
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
        let mut out_dims = dims.to_vec();
        if let Some(packed) = &self.packed {
            let f32_input = crate::ops::fused(x) && !x.track_op();
            if f32_input && self.matmul_dtype == DType::F32 {
                *out_dims.last_mut().expect("rank >= 1") = packed.dims().1;
                return packed_product(&x.reshape((rows, in_dim))?, packed)?.reshape(out_dims);
            }
        }
        let (form, out_dim) = match self.transposed {
            true => (Form::AB, self.weight.dim(1)?),
            false => (Form::ABt, self.weight.dim(0)?),
        };
        let y = product(
            &x.reshape((rows, in_dim))?,
            &self.weight,
            form,
            self.matmul_dtype,
        )?;
        *out_dims.last_mut().expect("rank >= 1") = out_dim;
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

    /// (x + y, that sum normalized): a residual add and the norm that reads it, one kernel in
    /// inference ([`crate::ops::add_rms_norm`]).
    pub fn add_forward(&self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        crate::ops::add_rms_norm(x, y, &self.weight, self.eps)
    }
}

impl Module for RmsNorm {
    /// x: (..., C) -> (..., C)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::rms_norm(x, &self.weight, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A fixed weight is kept transposed and a variable one as it is; both compute the same
    /// bits (the transposed form only changes how the GEMM reads the weight).
    #[test]
    fn fixed_weights_are_kept_transposed_with_the_same_products() {
        let dev = Device::Cpu;
        // Sizes that leave partial blocks in the GEMM's 64-row and 6-column tiles.
        let weight = Tensor::randn(0f32, 1.0, (70, 37), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 11, 37), &dev).unwrap();
        let var = Var::from_tensor(&weight).unwrap();
        let trained = Linear::from_weight(var.as_tensor().clone()).unwrap();
        let fixed = Linear::from_weight(var.as_tensor().detach()).unwrap();
        assert!(!trained.transposed && fixed.transposed);
        assert_eq!(fixed.weight.dims(), &[37, 70]);
        let a = trained.forward(&x).unwrap();
        let b = fixed.forward(&x).unwrap();
        assert_eq!(b.dims(), &[3, 11, 70]);
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        // And both are the product itself, to rounding.
        let reference = x
            .matmul(&weight.t().unwrap().broadcast_left(3).unwrap())
            .unwrap();
        let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(a.iter().zip(&reference).all(|(p, q)| (p - q).abs() < 1e-4));
    }

    /// Two fixed layers stacked compute each row's [a x | b x], the two layers' own bits;
    /// trained layers do not stack.
    #[test]
    fn stacked_fixed_layers_compute_both_products_side_by_side() {
        let dev = Device::Cpu;
        // 700 rows of 40 inputs: the columns shared among threads, partial tiles.
        let (wa, wb) = (
            Tensor::randn(0f32, 1.0, (70, 40), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (90, 40), &dev).unwrap(),
        );
        let x = Tensor::randn(0f32, 1.0, (2, 350, 40), &dev).unwrap();
        let (a, b) = (
            Linear::from_weight(wa.clone()).unwrap(),
            Linear::from_weight(wb.clone()).unwrap(),
        );
        let stacked = Linear::stacked(&a, &b)
            .unwrap()
            .expect("fixed layers stack");
        let y = stacked.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 350, 160]);
        let apart = Tensor::cat(&[a.forward(&x).unwrap(), b.forward(&x).unwrap()], 2).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        assert_eq!(bits(&y), bits(&apart));
        let trained =
            Linear::from_weight(Var::from_tensor(&wa).unwrap().as_tensor().clone()).unwrap();
        assert!(Linear::stacked(&trained, &b).unwrap().is_none());
    }
}
