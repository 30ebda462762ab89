//! The losses, in one place: per-token negative log-likelihood ([`token_nll`]) and its mean
//! ([`cross_entropy`]), computed in f32 whatever the logits' dtype. The fused CPU kernel
//! (log-sum-exp, pick, and the softmax-minus-onehot backward in one pass each way) sits beside
//! [`token_nll_reference`], the [`log_softmax`] + gather composition every other device runs.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::exp::{exp_in_place, exp_shifted_sum_read_only_loop, wide_fma};
use super::{f32_slice, fused, fused_on_cuda, last_dim, row_max_in, rows_per_task, u32_slice};

/// log(softmax(x)) over the last dimension, stable for large logits.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// Next-token cross-entropy of every position in nats: `-log softmax(logits)[target]` per row.
/// logits: (N, V) in any float dtype, cast to f32 first; targets: (N,) u32 -> (N,) f32.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    if (fused(&logits) || fused_on_cuda(&logits)) && targets.dtype() == DType::U32 {
        return logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropy)?
            .squeeze(D::Minus1);
    }
    token_nll_reference(&logits, targets)
}

/// [`token_nll`] as a composition of differentiable Candle ops ([`log_softmax`], gather),
/// in the logits' own dtype: what runs off the CPU, and what the fused kernel is tested
/// against.
pub fn token_nll_reference(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_probs = log_softmax(logits)?;
    let picked = log_probs.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?;
    picked.squeeze(D::Minus1)?.neg()
}

/// Mean next-token cross-entropy in nats. logits: (N, V), targets: (N,) u32 -> f32 scalar.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    token_nll(logits, targets)?.mean_all()
}

wide_fma!(
    /// log-sum-exp of a row, max-shifted, the exponentials added in the CUDA kernel's order.
    fn log_sum_exp(row: &[f32]) -> f32 = log_sum_exp_loop
);

#[inline(always)]
fn log_sum_exp_loop(row: &[f32]) -> f32 {
    let max = row_max_in::<64>(row);
    // (x - max) * 1 is x - max exactly.
    max + exp_shifted_sum_read_only_loop(row, max, 1.0).ln()
}

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let t = u32_slice(s2, l2, self.name())?;
        let v = last_dim(l1);
        if t.iter().any(|&t| t as usize >= v) {
            candle_core::bail!("cross-entropy: a target id is not below the vocabulary size {v}");
        }
        let out: Vec<f32> = x
            .par_chunks(v)
            .zip(t.par_iter())
            .map(|(row, &t)| log_sum_exp(row) - row[t as usize])
            .collect();
        Ok((CpuStorage::F32(out), Shape::from((t.len(), 1))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda_kernels::{f32_view, launch, output, storage, u32_view, CROSS_ENTROPY};
        use candle_core::backend::BackendStorage;

        let dev = s1.device();
        let (x, t) = (
            f32_view(s1, l1, self.name())?,
            u32_view(s2, l2, self.name())?,
        );
        let v = last_dim(l1);
        let rows = l2.shape().elem_count();
        let loss = output(dev, rows)?;
        let (rows_arg, v_arg) = (rows as u64, v as u32);
        // One warp per row.
        let lanes = rows * super::LANES;
        launch!(dev, "cross_entropy", CROSS_ENTROPY, cross_entropy_f32, lanes;
            &x, &t, &loss, &rows_arg, &v_arg);
        Ok((storage(loss, dev), Shape::from((rows, 1))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d = logits.apply_op3_no_bwd(targets, &grad, &CrossEntropyBackward)?;
        Ok((Some(d), None))
    }
}

/// dlogits = g * (softmax(logits) - onehot(target)) per row.
struct CrossEntropyBackward;

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let t = u32_slice(s2, l2, self.name())?;
        let g = f32_slice(s3, l3, self.name())?;
        let v = last_dim(l1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .zip(t.par_iter().zip(g.par_iter()))
            .with_min_len(rows_per_task(v))
            .for_each(|((o, row), (&t, &g))| {
                let lse = log_sum_exp(row);
                for (o, x) in o.iter_mut().zip(row) {
                    *o = x - lse;
                }
                exp_in_place(o);
                o.iter_mut().for_each(|o| *o *= g);
                o[t as usize] -= g;
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
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda_kernels::{f32_view, launch, output, storage, u32_view, CROSS_ENTROPY};
        use candle_core::backend::BackendStorage;

        let dev = s1.device();
        let (x, t, g) = (
            f32_view(s1, l1, self.name())?,
            u32_view(s2, l2, self.name())?,
            f32_view(s3, l3, self.name())?,
        );
        let v = last_dim(l1);
        let rows = l2.shape().elem_count();
        let out = output(dev, rows * v)?;
        let (rows_arg, v_arg) = (rows as u64, v as u32);
        // One warp per row.
        let lanes = rows * super::LANES;
        launch!(dev, "cross_entropy", CROSS_ENTROPY, cross_entropy_backward_f32, lanes;
            &x, &t, &g, &out, &rows_arg, &v_arg);
        Ok((storage(out, dev), l1.shape().clone()))
    }
}
