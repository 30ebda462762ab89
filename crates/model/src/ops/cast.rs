//! f32 <-> bf16, the casts of every bf16 matrix product's operands: on a CUDA GPU this crate's kernel
//! (`kernels/cast.cu`, whose loads and stores are coalesced), everywhere else Candle's
//! `to_dtype`, which is also the reference the kernel is tested against (the same rounding,
//! bit for bit). The gradient of a cast is the gradient cast back, through the same op.
//! (Candle's `to_dtype` and this op both pass on a gradient already in the source dtype.)

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// `x` in `dtype`; differentiable.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    let pair = matches!(
        (x.dtype(), dtype),
        (DType::F32, DType::BF16) | (DType::BF16, DType::F32)
    );
    if cfg!(feature = "cuda") && x.device().is_cuda() && pair && x.is_contiguous() {
        return x.apply_op1(Cast(dtype));
    }
    x.to_dtype(dtype)
}

/// The cast to the dtype it holds.
struct Cast(DType);

impl CustomOp1 for Cast {
    fn name(&self) -> &'static str {
        "cast"
    }

    /// Candle's own conversion (the op runs on a CPU only when called directly).
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((s.to_dtype(l, self.0)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda_kernels::{launch, CAST};
        use candle_core::CudaStorage;
        use half::bf16;

        let dev = s.device();
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("cast: the input must be contiguous".into()))?;
        let n = end - start;
        let n_arg = n as u64;
        let out = match (s.dtype(), self.0) {
            (DType::F32, DType::BF16) => {
                let x = s.as_cuda_slice::<f32>()?.slice(start..end);
                // SAFETY: the kernel writes all n elements before anything reads them.
                let y = unsafe { dev.alloc::<bf16>(n) }?;
                launch!(dev, "cast", CAST, cast_f32_to_bf16, n; &x, &y, &n_arg);
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }
            (DType::BF16, DType::F32) => {
                let x = s.as_cuda_slice::<bf16>()?.slice(start..end);
                // SAFETY: as above.
                let y = unsafe { dev.alloc::<f32>(n) }?;
                launch!(dev, "cast", CAST, cast_bf16_to_f32, n; &x, &y, &n_arg);
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }
            (from, to) => candle_core::bail!("cast: {from:?} to {to:?} has no kernel"),
        };
        Ok((out, l.shape().clone()))
    }

    /// The gradient cast back. A widened product (`super::matmul`) hands its bf16 operands
    /// gradients already in f32, which pass through as they are.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if grad.dtype() == arg.dtype() {
            return Ok(Some(grad.clone()));
        }
        Ok(Some(cast(&grad.contiguous()?, arg.dtype())?))
    }
}
