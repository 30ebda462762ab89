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

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use crate::ops::f32_slice as cpu_f32;

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

    pub fn base(&self) -> BaseAct {
        self.base
    }

    /// Whether `x` takes a fused CPU kernel: f32 on a CPU, with a base that has one.
    pub(crate) fn fuses(&self, x: &Tensor) -> bool {
        self.base_fuses() && x.device().is_cpu() && x.dtype() == DType::F32
    }

    /// Whether the base has fused kernels (SiLU and ReLU), whatever the input.
    pub(crate) fn base_fuses(&self) -> bool {
        matches!(self.base, BaseAct::Silu | BaseAct::Relu)
    }

    /// [`DynAct`]'s forward as a composition of differentiable Candle ops: what runs off the
    /// CPU, and what the fused kernels are tested against.
    pub fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        let alpha = self.alpha.to_dtype(x.dtype())?;
        let beta = self.beta.to_dtype(x.dtype())?;
        let scale = (&alpha - &beta)?;
        let nonlinear = base_activation(x, self.base)?.broadcast_mul(&scale)?;
        nonlinear + x.broadcast_mul(&beta)?
    }
}

impl Module for DynAct {
    /// x: (..., C) -> (..., C)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.fuses(x) {
            return x.contiguous()?.apply_op3(
                &self.alpha.to_dtype(DType::F32)?,
                &self.beta.to_dtype(DType::F32)?,
                FusedDynAct { base: self.base },
            );
        }
        self.forward_reference(x)
    }
}

// ---------------------------------------------------------------------------------------------
// Fused CPU kernels: one pass forward, one pass for dx and one for (dalpha, dbeta), instead of
// the dozen passes of the composition above and its backward.

/// base(x) and base'(x) for the bases with a fused kernel.
pub(crate) fn base_and_slope(x: f32, base: BaseAct) -> (f32, f32) {
    match base {
        BaseAct::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            (x * s, s * (1.0 + x * (1.0 - s)))
        }
        BaseAct::Relu => {
            if x > 0.0 {
                (x, 1.0)
            } else {
                (0.0, 0.0)
            }
        }
        BaseAct::Gelu | BaseAct::Mish => unreachable!("no fused kernel for {base:?}"),
    }
}

/// The parameter of channel `c` from a vector of length 1 (per layer) or C (per channel).
pub(crate) fn param(p: &[f32], c: usize) -> f32 {
    if p.len() == 1 {
        p[0]
    } else {
        p[c]
    }
}

struct FusedDynAct {
    base: BaseAct,
}

impl CustomOp3 for FusedDynAct {
    fn name(&self) -> &'static str {
        "dynact"
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
        let (x, alpha, beta) = (
            cpu_f32(s1, l1, "dynact")?,
            cpu_f32(s2, l2, "dynact")?,
            cpu_f32(s3, l3, "dynact")?,
        );
        let c = *l1.dims().last().unwrap_or(&1);
        // The backward kernels index the same way, and only run after this forward.
        if !(alpha.len() == 1 || alpha.len() == c) || beta.len() != alpha.len() {
            candle_core::bail!(
                "dynact: alpha and beta have {} and {} values, the input has {c} channels",
                alpha.len(),
                beta.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .with_min_len(crate::ops::rows_per_task(c))
            .for_each(|(o, xr)| {
                for (j, (o, &x)) in o.iter_mut().zip(xr).enumerate() {
                    let (a, b) = (param(alpha, j), param(beta, j));
                    *o = base_and_slope(x, self.base).0 * (a - b) + b * x;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        alpha: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let params = Tensor::cat(&[alpha, beta], 0)?;
        let dx = x.apply_op3_no_bwd(&params, &grad, &DynActGradX { base: self.base })?;
        // (2, C): per-channel sums of g base(x) and g (x - base(x)) over all rows.
        let sums = x.apply_op2_no_bwd(&grad, &DynActGradParams { base: self.base })?;
        let sums = if alpha.elem_count() == 1 {
            sums.sum_keepdim(1)?
        } else {
            sums
        };
        let n = alpha.elem_count();
        Ok((
            Some(dx),
            Some(sums.get(0)?.reshape(n)?),
            Some(sums.get(1)?.reshape(n)?),
        ))
    }
}

/// dx = g (base'(x)(alpha - beta) + beta); params = [alpha; beta].
struct DynActGradX {
    base: BaseAct,
}

impl CustomOp3 for DynActGradX {
    fn name(&self) -> &'static str {
        "dynact-grad-x"
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
        let (x, params, g) = (
            cpu_f32(s1, l1, "dynact")?,
            cpu_f32(s2, l2, "dynact")?,
            cpu_f32(s3, l3, "dynact")?,
        );
        let (alpha, beta) = params.split_at(params.len() / 2);
        let c = *l1.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(c)
            .zip(x.par_chunks(c).zip(g.par_chunks(c)))
            .with_min_len(crate::ops::rows_per_task(c))
            .for_each(|(o, (xr, gr))| {
                for (j, (o, (&x, &g))) in o.iter_mut().zip(xr.iter().zip(gr)).enumerate() {
                    let (a, b) = (param(alpha, j), param(beta, j));
                    *o = g * (base_and_slope(x, self.base).1 * (a - b) + b);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Row sums per channel: [sum g base(x); sum g (x - base(x))], shape (2, C).
struct DynActGradParams {
    base: BaseAct,
}

impl CustomOp2 for DynActGradParams {
    fn name(&self) -> &'static str {
        "dynact-grad-params"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (cpu_f32(s1, l1, "dynact")?, cpu_f32(s2, l2, "dynact")?);
        let c = *l1.dims().last().unwrap_or(&1);
        // Fixed-size row blocks summed in order: the result does not depend on thread timing.
        let rows_per_block = 64;
        let partials: Vec<Vec<f64>> = x
            .par_chunks(c * rows_per_block)
            .zip(g.par_chunks(c * rows_per_block))
            .map(|(xb, gb)| {
                let mut acc = vec![0f64; 2 * c];
                for (xr, gr) in xb.chunks(c).zip(gb.chunks(c)) {
                    for (j, (&x, &g)) in xr.iter().zip(gr).enumerate() {
                        let base = base_and_slope(x, self.base).0;
                        acc[j] += (g * base) as f64;
                        acc[c + j] += (g * (x - base)) as f64;
                    }
                }
                acc
            })
            .collect();
        let mut out = vec![0f64; 2 * c];
        for p in partials {
            out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
        }
        let out: Vec<f32> = out.into_iter().map(|v| v as f32).collect();
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}
