//! AdamW's update as fused in-place passes instead of the dozen allocating Candle ops of
//! `optim::AdamW`'s reference composition, which every other case runs and which the tests
//! compare these with, with the same arithmetic per element:
//! - on a CPU, three passes per parameter (first moment, second moment, the parameter);
//! - on a CUDA GPU, one launch for all of a step's parameters (`crates/model/kernels/adamw.cu`
//!   over a table of chunks, `dynact_model::param_chunks`), after two that reduce the
//!   gradients' global norm and decide the step on the device as the host would (skip, clip,
//!   bias correction: `grad_norm.cu`), recording its loss and norm for the host to read at
//!   logging steps ([`DeviceSteps`]): three launches and no wait a step, instead of about six
//!   launches per parameter and two waits.

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

/// One parameter's part in [`update_all`].
pub struct ParamUpdate<'a> {
    pub theta: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    pub g: &'a Tensor,
    pub s: UpdateScalars,
}

/// [`update`] for every parameter of `updates` (each of which [`applies`]): on a CPU one after
/// the other, on a CUDA GPU in one launch. Only the learning rate and the decay may differ
/// from one parameter to the next.
pub fn update_all(updates: &[ParamUpdate]) -> Result<()> {
    let Some(first) = updates.first() else {
        return Ok(());
    };
    if first.theta.device().is_cpu() {
        for u in updates {
            update(u.theta, u.m, u.v, u.g, u.s)?;
        }
        return Ok(());
    }
    #[cfg(feature = "cuda")]
    return cuda::update_all(updates);
    #[cfg(not(feature = "cuda"))]
    candle_core::bail!("adamw: a fused update on {:?}", first.theta.device())
}

#[cfg(feature = "cuda")]
pub use cuda::DeviceSteps;

/// The optimizer's steps decided on a CUDA GPU; a build without CUDA never makes one.
#[cfg(not(feature = "cuda"))]
pub enum DeviceSteps {}

#[cfg(not(feature = "cuda"))]
impl DeviceSteps {
    pub fn new(_: &candle_core::Device, _: u64, _: usize) -> Result<Self> {
        candle_core::bail!("adamw: steps on a CUDA GPU in a build without CUDA")
    }
    pub fn pending(&self) -> usize {
        match *self {}
    }
    pub fn queue(&mut self, _: &[ParamUpdate], _: &Tensor, _: f64) -> Result<()> {
        match *self {}
    }
    pub fn read(&mut self) -> Result<Vec<dynact_model::param_chunks::StepRecord>> {
        match *self {}
    }
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

/// The CUDA launches of [`update_all`] and of the device's steps ([`DeviceSteps`]) on the
/// tensors' stream.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DevicePtr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, Device, Result, Storage, Tensor};
    use dynact_model::cuda_kernels::{entries, ADAMW, GRAD_NORM};
    use dynact_model::param_chunks::{chunks_of, OptimizerState, ParamChunk, StepRecord};

    use super::{ParamUpdate, UpdateScalars};

    /// Threads per block: a chunk's elements are strided over them.
    const THREADS: u32 = 256;

    fn cuda_device(device: &Device) -> Result<CudaDevice> {
        match device {
            Device::Cuda(dev) => Ok(dev.clone()),
            other => candle_core::bail!("adamw: a tensor on {other:?} among CUDA ones"),
        }
    }

    /// The device address of the first element of a contiguous f32 CUDA tensor. The kernels
    /// reach it through the table, after this borrow ends: the caller keeps the tensor alive
    /// until the launch is queued, and the stream orders its later uses and its release.
    fn address(t: &Tensor, dev: &CudaDevice) -> Result<u64> {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            candle_core::bail!("adamw: a tensor on {:?} among CUDA ones", t.device())
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("adamw: the parameters and their moments must be contiguous")
        };
        let view = s.as_cuda_slice::<f32>()?.slice(start..end);
        let stream = dev.cuda_stream();
        let (ptr, _recorded) = view.device_ptr(&stream);
        Ok(ptr)
    }

    /// One block per chunk.
    fn per_chunk(count: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (count.max(1), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// The chunk table of `updates` on the device, its length, and the gradients it points
    /// at (contiguous copies where they were not), to be kept alive until the launches are
    /// queued.
    fn upload_table(
        dev: &CudaDevice,
        updates: &[ParamUpdate],
    ) -> Result<(CudaSlice<ParamChunk>, u32, Vec<Tensor>)> {
        let grads = updates
            .iter()
            .map(|u| u.g.contiguous())
            .collect::<Result<Vec<_>>>()?;
        let mut chunks = Vec::new();
        for (u, g) in updates.iter().zip(&grads) {
            let n = u.theta.elem_count();
            if [u.m, u.v, g].iter().any(|t| t.elem_count() != n) {
                candle_core::bail!(
                    "adamw: a gradient or moment of another size than its parameter"
                );
            }
            let at = |t: &Tensor| address(t, dev);
            let addresses = [at(u.theta)?, at(u.m)?, at(u.v)?, at(g)?];
            chunks.extend(chunks_of(addresses, n, u.s.lr as f32, u.s.decay as f32));
        }
        let count = chunks.len() as u32;
        Ok((dev.clone_htod(&chunks)?, count, grads))
    }

    /// The update over `table`, reading its gradient scale, bias corrections and skip flag
    /// from `state`.
    fn launch_update(
        dev: &CudaDevice,
        table: &CudaSlice<ParamChunk>,
        count: u32,
        state: &CudaSlice<OptimizerState>,
        s: UpdateScalars,
    ) -> Result<()> {
        let (keep1, take1) = (s.beta1 as f32, (1.0 - s.beta1) as f32);
        let (keep2, take2, eps) = (s.beta2 as f32, (1.0 - s.beta2) as f32, s.eps as f32);
        entries::adamw_update_f32(table, &count, state, &keep1, &take1, &keep2, &take2, &eps);
        let func = dev.get_or_load_custom_func("adamw_update_f32", "adamw", ADAMW)?;
        let mut launch = func.builder();
        launch
            .arg(table)
            .arg(&count)
            .arg(state)
            .arg(&keep1)
            .arg(&take1)
            .arg(&keep2)
            .arg(&take2)
            .arg(&eps);
        // SAFETY: the arguments follow the kernel's signature; the table's addresses are of
        // live buffers of the lengths it gives.
        unsafe { launch.launch(per_chunk(count)) }.w()?;
        Ok(())
    }

    /// One update with the host's scalars: the state uploaded as the gradient reduction would
    /// have left it.
    pub fn update_all(updates: &[ParamUpdate]) -> Result<()> {
        let dev = cuda_device(updates[0].theta.device())?;
        let (table, count, _grads) = upload_table(&dev, updates)?;
        let s = updates[0].s;
        let state = OptimizerState {
            scale: s.grad_scale as f32,
            inv_bias1: (1.0 / s.bias1) as f32,
            inv_bias2: (1.0 / s.bias2) as f32,
            ..OptimizerState::default()
        };
        let state = dev.clone_htod(&[state])?;
        launch_update(&dev, &table, count, &state, s)
    }

    /// The optimizer's state on the device and the records of the steps the host has not
    /// read.
    pub struct DeviceSteps {
        dev: CudaDevice,
        state: CudaSlice<OptimizerState>,
        history: CudaSlice<StepRecord>,
        /// Steps recorded since the last read.
        pending: usize,
    }

    impl DeviceSteps {
        /// On `device` (a CUDA GPU), after `updates` updates, with room for the records of
        /// `capacity` steps between reads.
        pub fn new(device: &Device, updates: u64, capacity: usize) -> Result<Self> {
            let dev = cuda_device(device)?;
            let state = OptimizerState {
                updates: u32::try_from(updates)
                    .map_err(|_| candle_core::Error::Msg("adamw: over 2^32 updates".into()))?,
                ..OptimizerState::default()
            };
            Ok(DeviceSteps {
                state: dev.clone_htod(&[state])?,
                history: dev.alloc_zeros::<StepRecord>(capacity)?,
                pending: 0,
                dev,
            })
        }

        pub fn capacity(&self) -> usize {
            self.history.len()
        }

        /// Steps queued since the last read.
        pub fn pending(&self) -> usize {
            self.pending
        }

        /// Queues the step: the gradients' norm, the decision (skip, clip, bias correction)
        /// and the update, recorded with `loss` for [`DeviceSteps::read`].
        pub fn queue(&mut self, updates: &[ParamUpdate], loss: &Tensor, clip: f64) -> Result<()> {
            if self.pending == self.capacity() {
                candle_core::bail!("adamw: {} steps queued unread", self.pending);
            }
            let dev = self.dev.clone();
            let loss = loss.to_dtype(candle_core::DType::F32)?.contiguous()?;
            let (table, count, _grads) = upload_table(&dev, updates)?;
            // SAFETY: the first kernel writes all `count` sums.
            let mut sums = unsafe { dev.alloc::<f32>(count as usize) }?;
            entries::grad_sum_squares_f32(&table, &count, &sums);
            let func =
                dev.get_or_load_custom_func("grad_sum_squares_f32", "grad_norm", GRAD_NORM)?;
            let mut launch = func.builder();
            launch.arg(&table).arg(&count).arg(&mut sums);
            // SAFETY: the arguments follow the kernel's signature.
            unsafe { launch.launch(per_chunk(count)) }.w()?;

            let s = updates[0].s;
            let (loss_at, slot) = (address(&loss, &dev)?, self.pending as u32);
            let (beta1, beta2) = (s.beta1, s.beta2);
            entries::grad_clip_f32(
                &sums,
                &count,
                &loss_at,
                &clip,
                &beta1,
                &beta2,
                &self.state,
                &self.history,
                &slot,
            );
            let func = dev.get_or_load_custom_func("grad_clip_f32", "grad_norm", GRAD_NORM)?;
            let mut launch = func.builder();
            launch
                .arg(&sums)
                .arg(&count)
                .arg(&loss_at)
                .arg(&clip)
                .arg(&beta1)
                .arg(&beta2)
                .arg(&mut self.state)
                .arg(&mut self.history)
                .arg(&slot);
            let one_block = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments follow the kernel's signature; `loss_at` is a live scalar
            // and `slot` is below the history's capacity.
            unsafe { launch.launch(one_block) }.w()?;
            launch_update(&dev, &table, count, &self.state, s)?;
            self.pending += 1;
            Ok(())
        }

        /// The records of the steps queued since the last read, in order: one copy, which
        /// waits for them.
        pub fn read(&mut self) -> Result<Vec<StepRecord>> {
            if self.pending == 0 {
                return Ok(vec![]);
            }
            let records = self.dev.clone_dtoh(&self.history.slice(..self.pending))?;
            self.pending = 0;
            Ok(records)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use dynact_model::host_emulation::dynact_adamw_f32_on_host;

    #[test]
    fn the_cuda_adamw_kernel_source_updates_as_the_cpu_passes_do() {
        use dynact_model::param_chunks::{chunks_of, CHUNK};
        // Three parameters: one of several chunks with a remainder, one short, one of a
        // single element, each with its own learning rate and decay.
        let sizes = [2 * CHUNK + 37, 1000, 1];
        let wave = |n: usize, k: f32| {
            (0..n)
                .map(|i| (i as f32 * k + 0.5).sin())
                .collect::<Vec<f32>>()
        };
        let shared = UpdateScalars {
            grad_scale: 0.43,
            beta1: 0.9,
            beta2: 0.95,
            bias1: 1.0 - 0.9f64.powi(3),
            bias2: 1.0 - 0.95f64.powi(3),
            eps: 1e-8,
            lr: 0.0,
            decay: 1.0,
        };
        let k1 = Moment {
            first: true,
            s: shared,
        }
        .scalars();
        let k2 = Moment {
            first: false,
            s: shared,
        }
        .scalars();
        let t = |v: &Vec<f32>| Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
        let flat = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        for (grid, block) in [(1u32, 256u32), (3, 7)] {
            let mut table = Vec::new();
            let mut host = Vec::new();
            for (p, &n) in sizes.iter().enumerate() {
                let k = 1.0 + p as f32;
                let (theta, g, m) = (wave(n, 0.37 * k), wave(n, 1.3 * k), wave(n, 0.11 * k));
                let v: Vec<f32> = wave(n, 0.05 * k).iter().map(|x| x * x).collect();
                let lr = 3e-3 * k as f64;
                let s = UpdateScalars {
                    lr,
                    decay: if p == 1 { 1.0 } else { 1.0 - lr * 0.1 },
                    ..shared
                };
                // The CPU passes' result.
                let (ct, cm, cv) = (t(&theta), t(&m), t(&v));
                update(&ct, &cm, &cv, &t(&g), s).unwrap();
                host.push(([theta, m, v, g], [flat(&ct), flat(&cm), flat(&cv)]));
                let [theta, m, v, g] = &mut host.last_mut().unwrap().0;
                let at = |b: &mut Vec<f32>| b.as_mut_ptr() as u64;
                let addresses = [at(theta), at(m), at(v), at(g)];
                table.extend(chunks_of(addresses, n, s.lr as f32, s.decay as f32));
            }
            let state = dynact_model::param_chunks::OptimizerState {
                scale: k1.0,
                inv_bias1: (1.0 / shared.bias1) as f32,
                inv_bias2: (1.0 / shared.bias2) as f32,
                ..Default::default()
            };
            // SAFETY: the table's addresses are of the live buffers of `host`, of its lengths.
            unsafe {
                dynact_adamw_f32_on_host(
                    table.as_ptr(),
                    table.len() as u32,
                    &state,
                    k1.1,
                    k1.2,
                    k2.1,
                    k2.2,
                    shared.eps as f32,
                    grid,
                    block,
                );
            }
            for (p, ([theta, m, v, _], [ct, cm, cv])) in host.iter().enumerate() {
                assert_eq!(m, cm, "m of parameter {p}, grid {grid}x{block}");
                assert_eq!(v, cv, "v of parameter {p}, grid {grid}x{block}");
                assert_eq!(theta, ct, "theta of parameter {p}, grid {grid}x{block}");
                assert_ne!(
                    theta,
                    &wave(sizes[p], 0.37 * (1.0 + p as f32)),
                    "theta moved"
                );
            }
        }
    }
}
