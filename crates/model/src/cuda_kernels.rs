//! This crate's CUDA kernels (`kernels/*.cu`, compiled to PTX by build.rs) and what the ops'
//! `cuda_fwd`s share to launch them (each loads its kernel with
//! `CudaDevice::get_or_load_custom_func`, once per device). Each kernel's source is also compiled for the host
//! (`kernels/host/`), where the tests compare it with the op's CPU kernel.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}
pub use ptx::{CAUSAL_SOFTMAX, DYNACT_GLU, PHILOX_DROPOUT};

/// The contiguous f32 elements of a CUDA tensor.
pub fn f32_view<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice::<f32>()?.slice(start..end)),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// An uninitialised f32 buffer of `n` elements, for a kernel that writes every one.
pub fn output(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: the caller's kernel writes all n elements before anything reads them.
    unsafe { dev.alloc::<f32>(n) }
}

/// A launch of one thread per item.
pub fn one_thread_each(items: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(items.max(1) as u32)
}
