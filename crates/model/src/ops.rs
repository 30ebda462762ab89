//! Differentiable tensor operations the decoder needs and Candle provides only without a
//! backward pass (`candle_nn::ops::rms_norm`, `softmax_last_dim`, see CANDLE_NOTES.md).
//!
//! On CPU with f32 each is one fused kernel with its own fused backward (`CustomOp`s, one pass
//! over the data each way, rows in parallel); elsewhere (CUDA, Metal, other dtypes) it is a
//! composition of differentiable Candle ops. Tests check both paths against each other and
//! against finite differences.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The contiguous f32 data of a CPU tensor.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: input must be contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("{op}: expects f32"),
    }
}

/// Rows handed to one rayon task: about 16K elements, so small rows do not drown in
/// scheduling overhead.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

fn last_dim(l: &Layout) -> usize {
    *l.dims().last().unwrap_or(&1)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// RMSNorm over the last dimension, computed in f32: x / sqrt(mean(x^2) + eps) * weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let normed = if fused(&x) {
        x.contiguous()?
            .apply_op1(RmsNormalize { eps: eps as f32 })?
    } else {
        let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv_rms)?
    };
    normed
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
            .with_min_len(crate::ops::rows_per_task(n))
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
            .with_min_len(crate::ops::rows_per_task(n))
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

// ---------------------------------------------------------------------------------------------
// Softmax

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let num = x.broadcast_sub(&max)?.exp()?;
    num.broadcast_div(&num.sum_keepdim(D::Minus1)?)
}

/// softmax(scale * scores) over the last dimension under a causal mask: scores (..., T, S)
/// hold T queries at positions S-T .. S-1, and query i sees keys 0 ..= S-T+i.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    if fused(scores) {
        return scores.contiguous()?.apply_op1(CausalSoftmax {
            scale: scale as f32,
        });
    }
    let (t, s) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    let scores = (scores * scale)?;
    let scores = match crate::attention::causal_mask(t, s - t, scores.dtype(), scores.device())? {
        Some(mask) => scores.broadcast_add(&mask)?,
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
            .with_min_len(crate::ops::rows_per_task(n))
            .for_each(|(row, (o, xr))| {
                let visible = offset + row % t + 1;
                let max = xr[..visible]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                let mut sum = 0f32;
                for (o, v) in o[..visible].iter_mut().zip(xr) {
                    *o = ((v - max) * self.scale).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                o[..visible].iter_mut().for_each(|o| *o *= inv);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
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
            .with_min_len(crate::ops::rows_per_task(n))
            .for_each(|(o, (yr, gr))| {
                let dot: f32 = yr.iter().zip(gr).map(|(y, g)| y * g).sum();
                for ((o, y), g) in o.iter_mut().zip(yr).zip(gr) {
                    *o = self.scale * y * (g - dot);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// log(softmax(x)) over the last dimension, stable for large logits.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// -log softmax(logits)[target] per row. logits: (N, V) f32, targets: (N,) u32 -> (N,) f32.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused(logits) && targets.dtype() == DType::U32 {
        return logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropy)?
            .squeeze(D::Minus1);
    }
    let log_probs = log_softmax(logits)?;
    let picked = log_probs.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?;
    picked.squeeze(D::Minus1)?.neg()
}

fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [u32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: targets must be contiguous")))?;
    match s {
        CpuStorage::U32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("{op}: targets must be u32"),
    }
}

/// log-sum-exp of a row, max-shifted.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
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
            .with_min_len(crate::ops::rows_per_task(v))
            .for_each(|((o, row), (&t, &g))| {
                let lse = log_sum_exp(row);
                for (o, x) in o.iter_mut().zip(row) {
                    *o = g * (x - lse).exp();
                }
                o[t as usize] -= g;
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings

/// Rotary position embedding in the Hugging Face convention (`x cos + rotate_half(x) sin`, with
/// `rotate_half([x1, x2]) = [-x2, x1]`). x: (B, heads, T, D); cos, sin: (T, D).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused(x) && cos.dtype() == DType::F32 {
        return x
            .contiguous()?
            .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope);
    }
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2 (halves of the last dimension); with `inverse`, the
/// transposed map dx1 = g1 c1 + g2 s2, dx2 = g2 c2 - g1 s1, which is the backward pass.
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], dims: &[usize], inverse: bool) -> Vec<f32> {
    let (t, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let h = d / 2;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .enumerate()
        .with_min_len(crate::ops::rows_per_task(d))
        .for_each(|(row, (o, xr))| {
            let p = (row % t) * d;
            let (c, s) = (&cos[p..p + d], &sin[p..p + d]);
            for j in 0..h {
                let (x1, x2) = (xr[j], xr[j + h]);
                if inverse {
                    o[j] = x1 * c[j] + x2 * s[j + h];
                    o[j + h] = x2 * c[j + h] - x1 * s[j];
                } else {
                    o[j] = x1 * c[j] - x2 * s[j];
                    o[j + h] = x2 * c[j + h] + x1 * s[j + h];
                }
            }
        });
    out
}

struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
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
        let (x, cos, sin) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let out = rotate(x, cos, sin, l1.dims(), false);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad
            .contiguous()?
            .apply_op3_no_bwd(cos, sin, &RopeBackward)?;
        Ok((Some(dx), None, None))
    }
}

struct RopeBackward;

impl CustomOp3 for RopeBackward {
    fn name(&self) -> &'static str {
        "rope-backward"
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
        let (g, cos, sin) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let out = rotate(g, cos, sin, l1.dims(), true);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU gate

/// silu(gate) * up, the SwiGLU product. On CPU one pass each way, with the arithmetic of
/// Candle's own `silu` and `mul` (forward and backward) so results are bit-identical to them.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused(gate) && up.dtype() == DType::F32 && gate.shape() == up.shape() {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu);
    }
    gate.silu()? * up
}

/// Candle's f32 silu.
fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
        );
        let out: Vec<f32> = g
            .par_iter()
            .zip(u.par_iter())
            .with_min_len(rows_per_task(1))
            .map(|(&g, &u)| silu(g) * u)
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_gate = gate.apply_op3_no_bwd(up, &grad, &SwiGluBackward { wrt_gate: true })?;
        let d_up = gate.apply_op3_no_bwd(up, &grad, &SwiGluBackward { wrt_gate: false })?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// d/dgate = (g_out * up) * (sigmoid * (1 - silu) + silu), as Candle's silu backward computes
/// it; d/dup = g_out * silu(gate).
struct SwiGluBackward {
    wrt_gate: bool,
}

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "swiglu-backward"
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
        let (g, u, grad) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let wrt_gate = self.wrt_gate;
        let out: Vec<f32> = g
            .par_iter()
            .zip(u.par_iter().zip(grad.par_iter()))
            .with_min_len(rows_per_task(1))
            .map(|(&g, (&u, &dy))| {
                let node = silu(g);
                if wrt_gate {
                    let sigmoid = 1.0 / ((-g).exp() * 1.0 + 1.0);
                    let silu_grad = sigmoid * (-node + 1.0) + node; // 1 - node, as Candle computes it
                    (dy * u) * silu_grad
                } else {
                    dy * node
                }
            })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
