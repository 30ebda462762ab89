//! Softmax over the last dimension, and the causal softmax attention uses: the fused CPU kernel
//! (mask, scale, softmax and backward in one pass each way) beside
//! [`causal_softmax_reference`], the additive [`causal_mask`] plus plain [`softmax`] that every
//! other device runs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape};
use candle_core::{Tensor, D};
use rayon::prelude::*;

use super::exp::exp_shifted_sum;
use super::{f32_slice, fused, lane_dot, last_dim, row_max, rows_per_task};

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let num = x.broadcast_sub(&max)?.exp()?;
    num.broadcast_div(&num.sum_keepdim(D::Minus1)?)
}

/// Additive causal mask for T queries after `offset` cached positions: (T, offset + T), with
/// -inf where a query would see a later key. None when a single query sees everything.
pub fn causal_mask(
    t: usize,
    offset: usize,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let s = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if j > i + offset {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, s), device)?
        .to_dtype(dtype)
        .map(Some)
}

/// softmax(scale * scores) over the last dimension under a causal mask: scores (..., T, S)
/// hold T queries at positions S-T .. S-1, and query i sees keys 0 ..= S-T+i. f32 scores take
/// the fused kernel on a CPU and on a CUDA GPU (`kernels/causal_softmax.cu`), which mask as
/// they go; elsewhere `mask` is the (T, S) [`causal_mask`] the caller keeps on the device, or
/// None to build it here.
pub fn causal_softmax(scores: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    if fused(scores) || super::fused_on_cuda(scores) {
        return scores.contiguous()?.apply_op1(CausalSoftmax {
            scale: scale as f32,
        });
    }
    causal_softmax_reference(scores, scale, mask)
}

/// [`causal_softmax`] as a composition of differentiable Candle ops (scale, add the
/// [`causal_mask`] given or built here, [`softmax`]): what runs off the CPU, and what the fused
/// kernel is tested against.
pub fn causal_softmax_reference(
    scores: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (t, s) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    let scores = (scores * scale)?;
    let built;
    let mask = match mask {
        Some(m) => Some(m),
        None => {
            built = causal_mask(t, s - t, DType::F32, scores.device())?;
            built.as_ref()
        }
    };
    let scores = match mask {
        Some(mask) => scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    softmax(&scores)
}

struct CausalSoftmax {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let dims = l.dims();
        let (t, n) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let offset = n - t;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .enumerate()
            .with_min_len(rows_per_task(n))
            .for_each(|(row, (o, xr))| {
                let visible = offset + row % t + 1;
                let max = row_max(&xr[..visible]);
                o[..visible].copy_from_slice(&xr[..visible]);
                let inv = 1.0 / exp_shifted_sum(&mut o[..visible], max, self.scale);
                o[..visible].iter_mut().for_each(|o| *o *= inv);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda_kernels::{f32_view, launch, output, storage, CAUSAL_SOFTMAX};
        use candle_core::backend::BackendStorage;

        let dev = s.device();
        let x = f32_view(s, l, self.name())?;
        let dims = l.dims();
        let (t, n) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let rows = l.shape().elem_count() / n.max(1);
        let y = output(dev, rows * n)?;
        let (rows_arg, t, n) = (rows as u64, t as u32, n as u32);
        // One warp per row.
        let lanes = rows * super::LANES;
        launch!(dev, "causal_softmax", CAUSAL_SOFTMAX, causal_softmax_f32, lanes;
            &x, &y, &rows_arg, &t, &n, &self.scale);
        Ok((storage(y, dev), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(
            &grad,
            &SoftmaxBackward { scale: self.scale },
        )?))
    }
}

/// dx = scale * y (g - sum(g y)); masked entries have y = 0 and get 0.
struct SoftmaxBackward {
    scale: f32,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let n = last_dim(l1);
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(n)
            .zip(y.par_chunks(n).zip(g.par_chunks(n)))
            .with_min_len(rows_per_task(n))
            .for_each(|(o, (yr, gr))| {
                let dot = lane_dot(yr, gr);
                for ((o, y), g) in o.iter_mut().zip(yr).zip(gr) {
                    *o = self.scale * y * (g - dot);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda_kernels::{f32_view, launch, output, storage, CAUSAL_SOFTMAX};
        use candle_core::backend::BackendStorage;

        let dev = s1.device();
        let (y, g) = (
            f32_view(s1, l1, self.name())?,
            f32_view(s2, l2, self.name())?,
        );
        let n = last_dim(l1);
        let rows = l1.shape().elem_count() / n.max(1);
        let dx = output(dev, rows * n)?;
        let (rows_arg, n_arg) = (rows as u64, n as u32);
        // One warp per row.
        let lanes = rows * super::LANES;
        launch!(dev, "causal_softmax", CAUSAL_SOFTMAX, softmax_backward_f32, lanes;
            &y, &g, &dx, &rows_arg, &n_arg, &self.scale);
        Ok((storage(dx, dev), l1.shape().clone()))
    }
}
