//! This crate's CUDA kernels (`kernels/*.cu`, compiled to PTX by build.rs) and what the ops'
//! `cuda_fwd`s share to launch them (each loads its kernel with
//! `CudaDevice::get_or_load_custom_func`, once per device). Each kernel's source is also compiled for the host
//! (`kernels/host/`), where the tests compare it with the op's CPU kernel.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}
pub use ptx::{
    ADAMW, CAUSAL_SOFTMAX, CROSS_ENTROPY, DYNACT_GLU, PHILOX_DROPOUT, RMS_NORM, ROPE, SWIGLU,
};

/// The contiguous f32 elements of a CUDA tensor.
pub fn f32_view<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice::<f32>()?.slice(start..end)),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// The contiguous u32 elements (token ids) of a CUDA tensor.
pub fn u32_view<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, u32>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice::<u32>()?.slice(start..end)),
        None => candle_core::bail!("{op}: the targets must be contiguous"),
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

/// `slice` as the storage of an op's result.
pub fn storage(slice: CudaSlice<f32>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

/// Launches kernel `name` of the PTX module `module` (`ptx`) on `dev`, one thread per item of
/// `items`, with the arguments in the order of the kernel's signature, each a reference to a
/// named value (the launch borrows them until it is queued). Launches on one device run in
/// order on its stream.
macro_rules! launch {
    ($dev:expr, $module:expr, $ptx:expr, $name:expr, $items:expr; $($arg:expr),+ $(,)?) => {{
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::WrapErr;
        let func = $dev.get_or_load_custom_func($name, $module, $ptx)?;
        let mut builder = func.builder();
        $(builder.arg($arg);)+
        // SAFETY: the caller passes the kernel's arguments in the order of its signature, and
        // the buffers hold what the kernel indexes.
        unsafe { builder.launch($crate::cuda_kernels::one_thread_each($items)) }.w()?;
    }};
}
pub(crate) use launch;
