//! Inverted dropout with Philox4x32-10 masks as one op: `y = x * mask` drawn where it is
//! applied, in one pass on the CPU ([`crate::philox::apply_dropout_from`]) and by
//! `kernels/philox_dropout.cu` on a CUDA GPU, so no mask is built on the host or copied to the
//! device. The backward pass applies the same mask to the gradient, drawn again, so no mask is
//! stored either. The seeded `dropout` of the forward pass (`forward_ctx`, which uses this module)
//! runs it for f32 activations on CPUs and GPUs;
//! the tests compare it with the plain product of the input and the host-drawn mask.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::philox::apply_dropout_from;

/// Drops element `first + i` of the mask for `seed` (kept with probability `keep`, scaled by
/// `scale`).
#[derive(Clone, Copy, Debug)]
pub struct PhiloxDropout {
    pub seed: u64,
    /// The element of the whole batch's mask that element 0 of the input is.
    pub first: u64,
    pub keep: f64,
    pub scale: f32,
}

impl PhiloxDropout {
    /// `x` (f32, any shape) with the mask applied.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(*self)
    }
}

impl CustomOp1 for PhiloxDropout {
    fn name(&self) -> &'static str {
        "philox-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::ops::f32_slice(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        apply_dropout_from(self.seed, self.first, self.keep, self.scale, x, &mut out);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda_kernels::{f32_view, launch, output, storage, PHILOX_DROPOUT};
        use candle_core::backend::BackendStorage;

        let dev = s.device();
        let x = f32_view(s, l, self.name())?;
        let n = l.shape().elem_count();
        let y = output(dev, n)?;
        if n > 0 {
            // One thread per 4-element Philox block the elements touch.
            let blocks = ((self.first + n as u64 - 1) / 4 - self.first / 4 + 1) as usize;
            let (key0, key1) = (self.seed as u32, (self.seed >> 32) as u32);
            let (threshold, n) = (crate::philox::keep_threshold(self.keep), n as u64);
            launch!(dev, "philox_dropout", PHILOX_DROPOUT, philox_dropout_f32, blocks;
                &x, &y, &n, &self.first, &key0, &key1, &threshold, &self.scale);
        }
        Ok((storage(y, dev), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d x = g * mask: the same mask, drawn again.
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}
