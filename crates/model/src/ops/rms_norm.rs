//! RMSNorm over the last dimension, computed in f32: the fused CPU kernel (normalisation and its
//! backward; the weight is applied outside so Candle differentiates it) beside
//! [`rms_norm_reference`], the Candle composition every other device runs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{f32_slice, fused, last_dim, rows_per_task};

/// RMSNorm over the last dimension, computed in f32: x / sqrt(mean(x^2) + eps) * weight.
/// The input is cast to f32 first, so on CPU every input dtype takes the fused kernel.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let y = if fused(&x) {
        x.contiguous()?
            .apply_op1(RmsNormalize { eps: eps as f32 })?
            .broadcast_mul(&weight.to_dtype(DType::F32)?)?
    } else {
        rms_norm_reference(&x, weight, eps)?
    };
    y.to_dtype(dtype)
}

/// [`rms_norm`] as a composition of differentiable Candle ops (computed in f32, returned in
/// the input's dtype): what runs off the CPU, and what the fused kernel is tested against.
pub fn rms_norm_reference(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?
        .broadcast_mul(&weight.to_dtype(DType::F32)?)?
        .to_dtype(dtype)
}

/// x -> x / sqrt(mean(x^2) + eps) per row; the weight is applied outside, so Candle
/// differentiates it on its own.
struct RmsNormalize {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp1 for RmsNormalize {
    fn name(&self) -> &'static str {
        "rms-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let n = last_dim(l);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .with_min_len(rows_per_task(n))
            .for_each(|(o, row)| {
                let r = inv_rms(row, self.eps);
                o.iter_mut().zip(row).for_each(|(o, v)| *o = v * r);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(
            &grad,
            &RmsNormalizeBackward { eps: self.eps },
        )?))
    }
}

/// dx = r (g - x_hat mean(g x_hat)), x_hat = x r, r = 1/rms(x).
struct RmsNormalizeBackward {
    eps: f32,
}

impl CustomOp2 for RmsNormalizeBackward {
    fn name(&self) -> &'static str {
        "rms-normalize-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let n = last_dim(l1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n).zip(g.par_chunks(n)))
            .with_min_len(rows_per_task(n))
            .for_each(|(o, (xr, gr))| {
                let r = inv_rms(xr, self.eps);
                let dot = xr.iter().zip(gr).map(|(x, g)| x * r * g).sum::<f32>() / n as f32;
                for ((o, x), g) in o.iter_mut().zip(xr).zip(gr) {
                    *o = r * (g - x * r * dot);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
