//! AdamW's update of one parameter as three in-place passes (first moment, second moment, the
//! parameter) instead of the dozen allocating Candle ops of `optim::AdamW`'s reference
//! composition, which every other case runs and which the tests compare this with: on a CPU
//! here, on a CUDA GPU by the kernels of `crates/model/kernels/adamw.cu` (three launches per
//! parameter instead of about a dozen), with the same arithmetic.

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

/// Whether [`update`] can run on these tensors: all f32, all on a CPU or (in a CUDA build) all
/// on a CUDA GPU.
pub fn applies(tensors: &[&Tensor]) -> bool {
    let on = |cuda: bool| {
        tensors.iter().all(|t| {
            t.dtype() == DType::F32
                && match cuda {
                    false => t.device().is_cpu(),
                    true => t.device().is_cuda(),
                }
        })
    };
    on(false) || (cfg!(feature = "cuda") && on(true))
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

impl Moment {
    /// The gradient's scale, and the weights of the old moment and of the new term, in f32.
    fn scalars(&self) -> (f32, f32, f32) {
        let beta = if self.first {
            self.s.beta1
        } else {
            self.s.beta2
        };
        (self.s.grad_scale as f32, beta as f32, (1.0 - beta) as f32)
    }
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
        let (scale, keep, take) = self.scalars();
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        let n = same_length(l1, l2, self.name())?;
        use cuda::{PushKernelArg, WrapErr};
        let dev = candle_core::backend::BackendStorage::device(s1).clone();
        let g = cuda::f32_view(s2, l2, self.name())?;
        let mut m = cuda::view_mut(s1, l1, self.name())?;
        let (scale, keep, take) = self.scalars();
        let (n, first) = (n as u64, self.first as i32);
        // The arguments checked against the kernel's parameters when this compiles.
        cuda::entries::adamw_moment_f32(&m, &g, &n, &scale, &keep, &take, &first);
        let func = dev.get_or_load_custom_func("adamw_moment_f32", "adamw", cuda::ADAMW)?;
        let mut launch = func.builder();
        launch
            .arg(&mut m)
            .arg(&g)
            .arg(&n)
            .arg(&scale)
            .arg(&keep)
            .arg(&take)
            .arg(&first);
        // SAFETY: the arguments follow the kernel's signature, over buffers of n elements.
        unsafe { launch.launch(cuda::one_thread_each(n)) }.w()?;
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        let n = same_length(l1, l2, self.name())?.min(same_length(l1, l3, self.name())?);
        use cuda::{PushKernelArg, WrapErr};
        let dev = candle_core::backend::BackendStorage::device(s1).clone();
        let (m, v) = (
            cuda::f32_view(s2, l2, self.name())?,
            cuda::f32_view(s3, l3, self.name())?,
        );
        let mut theta = cuda::view_mut(s1, l1, self.name())?;
        let s = self.s;
        let (inv_bias1, inv_bias2) = ((1.0 / s.bias1) as f32, (1.0 / s.bias2) as f32);
        let (eps, lr, decay, n) = (s.eps as f32, s.lr as f32, s.decay as f32, n as u64);
        cuda::entries::adamw_parameter_f32(
            &theta, &m, &v, &n, &inv_bias1, &inv_bias2, &eps, &lr, &decay,
        );
        let func = dev.get_or_load_custom_func("adamw_parameter_f32", "adamw", cuda::ADAMW)?;
        let mut launch = func.builder();
        launch
            .arg(&mut theta)
            .arg(&m)
            .arg(&v)
            .arg(&n)
            .arg(&inv_bias1)
            .arg(&inv_bias2)
            .arg(&eps)
            .arg(&lr)
            .arg(&decay);
        // SAFETY: the arguments follow the kernel's signature, over buffers of n elements.
        unsafe { launch.launch(cuda::one_thread_each(n)) }.w()?;
        Ok(())
    }
}

/// The element count of `a`, which `b` must match (a gradient or moment of another shape is a
/// bug, not a rounding matter).
#[cfg(feature = "cuda")]
fn same_length(a: &Layout, b: &Layout, op: &str) -> Result<usize> {
    let (n, nb) = (a.shape().elem_count(), b.shape().elem_count());
    if n != nb {
        candle_core::bail!("{op}: {nb} values for a parameter of {n}");
    }
    Ok(n)
}

/// What the CUDA passes share to launch `crates/model/kernels/adamw.cu` on the tensors' own
/// stream.
#[cfg(feature = "cuda")]
mod cuda {
    pub use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::cudarc::driver::{CudaViewMut, LaunchConfig};
    pub use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result};
    pub use dynact_model::cuda_kernels::{entries, f32_view, ADAMW};

    pub fn view_mut<'a>(
        s: &'a mut CudaStorage,
        l: &Layout,
        op: &str,
    ) -> Result<CudaViewMut<'a, f32>> {
        match l.contiguous_offsets() {
            Some((start, end)) => Ok(s.as_cuda_slice_mut::<f32>()?.slice_mut(start..end)),
            None => candle_core::bail!("{op}: the parameter must be contiguous"),
        }
    }

    pub fn one_thread_each(n: u64) -> LaunchConfig {
        LaunchConfig::for_num_elems(n.max(1) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use dynact_model::host_emulation::dynact_adamw_f32_on_host;

    #[test]
    fn the_cuda_adamw_kernel_source_updates_as_the_cpu_passes_do() {
        let n = 1000;
        let wave = |k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect::<Vec<f32>>();
        let (theta0, g) = (wave(0.37), wave(1.3));
        let (m0, v0) = (wave(0.11), wave(0.05).iter().map(|x| x * x).collect());
        let s = UpdateScalars {
            grad_scale: 0.43,
            beta1: 0.9,
            beta2: 0.95,
            bias1: 1.0 - 0.9f64.powi(3),
            bias2: 1.0 - 0.95f64.powi(3),
            eps: 1e-8,
            lr: 3e-3,
            decay: 1.0 - 3e-3 * 0.1,
        };
        let t = |v: &Vec<f32>| Tensor::from_slice(v, n, &Device::Cpu).unwrap();
        let (theta, m, v, grad) = (t(&theta0), t(&m0), t(&v0), t(&g));
        update(&theta, &m, &v, &grad, s).unwrap();
        let flat = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        let (k1, k2) = (
            Moment { first: true, s }.scalars(),
            Moment { first: false, s }.scalars(),
        );
        for (grid, block) in [(1u32, 1024u32), (3, 7)] {
            let (mut theta_k, mut m_k, mut v_k) = (theta0.clone(), m0.clone(), v0.clone());
            // SAFETY: every buffer holds n values.
            unsafe {
                dynact_adamw_f32_on_host(
                    theta_k.as_mut_ptr(),
                    m_k.as_mut_ptr(),
                    v_k.as_mut_ptr(),
                    g.as_ptr(),
                    n as u64,
                    k1.0,
                    k1.1,
                    k1.2,
                    k2.1,
                    k2.2,
                    (1.0 / s.bias1) as f32,
                    (1.0 / s.bias2) as f32,
                    s.eps as f32,
                    s.lr as f32,
                    s.decay as f32,
                    grid,
                    block,
                );
            }
            assert_eq!(m_k, flat(&m), "m, grid {grid}x{block}");
            assert_eq!(v_k, flat(&v), "v, grid {grid}x{block}");
            assert_eq!(theta_k, flat(&theta), "theta, grid {grid}x{block}");
        }
        assert_ne!(flat(&theta), theta0, "the update moved the parameter");
    }
}
