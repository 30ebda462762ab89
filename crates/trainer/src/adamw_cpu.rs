//! AdamW's update of one parameter on a CPU as three in-place passes (first moment, second
//! moment, the parameter) instead of the dozen allocating Candle ops of
//! [`crate::optim::AdamW`]'s reference composition, which every other device runs and which
//! the tests compare this with.

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// The scalars of one update, as the reference composition uses them.
#[derive(Clone, Copy, Debug)]
pub struct UpdateScalars {
    /// Multiplies the gradient first (global-norm clipping).
    pub grad_scale: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// 1 - beta1^t and 1 - beta2^t.
    pub bias1: f64,
    pub bias2: f64,
    pub eps: f64,
    /// This parameter's learning rate.
    pub lr: f64,
    /// 1 - lr * weight_decay for decayed parameters, else 1.
    pub decay: f64,
}

/// Whether [`update`] can run on these tensors: all on a CPU, all f32.
pub fn applies(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// m <- beta1 m + (1 - beta1) g', v <- beta2 v + (1 - beta2) g'^2 (g' = grad_scale g), then
/// theta <- decay theta - lr (m / bias1) / (sqrt(v / bias2) + eps), all in place.
pub fn update(theta: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, s: UpdateScalars) -> Result<()> {
    let g = g.contiguous()?;
    m.inplace_op2(&g, &Moment { first: true, s })?;
    v.inplace_op2(&g, &Moment { first: false, s })?;
    theta.inplace_op3(m, v, &Parameter { s })
}

/// Elements per rayon task.
const CHUNK: usize = 16 * 1024;

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: must be contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => candle_core::bail!("{op}: expects f32"),
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: must be contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("{op}: expects f32"),
    }
}

/// One moment: the first (m, of g') or the second (v, of g'^2).
struct Moment {
    first: bool,
    s: UpdateScalars,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let moment = slice_mut(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        if moment.len() != g.len() {
            candle_core::bail!(
                "adamw: a gradient of {} values for {}",
                g.len(),
                moment.len()
            );
        }
        let scale = self.s.grad_scale as f32;
        let (keep, take) = match self.first {
            true => (self.s.beta1 as f32, (1.0 - self.s.beta1) as f32),
            false => (self.s.beta2 as f32, (1.0 - self.s.beta2) as f32),
        };
        let first = self.first;
        moment
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(mc, gc)| {
                for (m, &g) in mc.iter_mut().zip(gc) {
                    let g = g * scale;
                    *m = *m * keep + if first { g } else { g * g } * take;
                }
            });
        Ok(())
    }
}

/// theta <- decay theta - lr (m / bias1) / (sqrt(v / bias2) + eps).
struct Parameter {
    s: UpdateScalars,
}

impl InplaceOp3 for Parameter {
    fn name(&self) -> &'static str {
        "adamw-parameter"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let theta = slice_mut(s1, l1, self.name())?;
        let (m, v) = (slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let s = self.s;
        let (inv_bias1, inv_bias2) = ((1.0 / s.bias1) as f32, (1.0 / s.bias2) as f32);
        let (eps, lr, decay) = (s.eps as f32, s.lr as f32, s.decay as f32);
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(tc, (mc, vc))| {
                for ((t, &m), &v) in tc.iter_mut().zip(mc).zip(vc) {
                    let update = (m * inv_bias1) / ((v * inv_bias2).sqrt() + eps);
                    *t = *t * decay - update * lr;
                }
            });
        Ok(())
    }
}
