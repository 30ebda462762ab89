//! What the optimizer's CUDA kernels share (`kernels/param_chunks.cuh`, read by `adamw.cu` and
//! `grad_norm.cu`), with the same layouts: the table of every parameter cut into chunks of at
//! most [`CHUNK`] elements, one block per chunk, so one launch serves all of a step's
//! parameters, whatever their number (the trainer fills it with device addresses, the tests
//! with host ones); the optimizer's state on the device; and each step's record.

/// One chunk as the kernels read it (`ParamChunk` of param_chunks.cuh: the same fields, 48
/// bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ParamChunk {
    /// Addresses of the chunk's first element in the parameter, its two moments and its
    /// gradient (f32 each).
    pub theta: u64,
    pub m: u64,
    pub v: u64,
    pub g: u64,
    /// Elements in the chunk.
    pub len: u32,
    /// The parameter's learning rate this step.
    pub lr: f32,
    /// 1 - lr weight_decay where the parameter decays, else 1.
    pub decay: f32,
    pub unused: u32,
}

const _: () = assert!(std::mem::size_of::<ParamChunk>() == 48);

/// Elements per chunk: a block's 256 threads take 32 each, and the paper's model makes about
/// a thousand blocks.
pub const CHUNK: usize = 8192;

/// The chunks of one parameter of `n` elements whose buffers start at these addresses.
pub fn chunks_of(
    [theta, m, v, g]: [u64; 4],
    n: usize,
    lr: f32,
    decay: f32,
) -> impl Iterator<Item = ParamChunk> {
    (0..n).step_by(CHUNK).map(move |first| {
        let at = 4 * first as u64;
        ParamChunk {
            theta: theta + at,
            m: m + at,
            v: v + at,
            g: g + at,
            len: CHUNK.min(n - first) as u32,
            lr,
            decay,
            unused: 0,
        }
    })
}

/// What the gradient reduction decides for the update, on the device (`OptimizerState`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OptimizerState {
    /// Updates applied so far, the current step's included: bias correction's t.
    pub updates: u32,
    /// 1 where the step's loss or gradient norm is not finite: no update.
    pub skip: u32,
    /// The step's gradient scale (clipping).
    pub scale: f32,
    /// 1 / (1 - beta1^t) and 1 / (1 - beta2^t).
    pub inv_bias1: f32,
    pub inv_bias2: f32,
    pub unused: u32,
}

/// One step as the device records it for the host (`StepRecord`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepRecord {
    /// The step's loss as given (summed over its micro-batches).
    pub loss: f32,
    /// The sum of the squares of all gradients.
    pub sum_squares: f32,
    /// 1 where the update did not run.
    pub skipped: u32,
    /// [`OptimizerState::updates`] after the step.
    pub updates: u32,
}

const _: () = assert!(std::mem::size_of::<OptimizerState>() == 24);
const _: () = assert!(std::mem::size_of::<StepRecord>() == 16);

// SAFETY: plain old data of the layouts the kernels read, with no pointers the host follows.
#[cfg(feature = "cuda")]
mod device_repr {
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
    unsafe impl DeviceRepr for super::ParamChunk {}
    unsafe impl DeviceRepr for super::OptimizerState {}
    unsafe impl DeviceRepr for super::StepRecord {}
    unsafe impl ValidAsZeroBits for super::StepRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_is_cut_into_whole_chunks_and_a_remainder_at_consecutive_addresses() {
        let chunks: Vec<ParamChunk> =
            chunks_of([1000, 2000, 3000, 4000], 2 * CHUNK + 5, 0.5, 0.9).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks.iter().map(|c| c.len as usize).collect::<Vec<_>>(),
            [CHUNK, CHUNK, 5]
        );
        let bytes = 4 * CHUNK as u64;
        assert_eq!(chunks[2].theta, 1000 + 2 * bytes);
        assert_eq!(chunks[1].g, 4000 + bytes);
        assert!(chunks.iter().all(|c| c.lr == 0.5 && c.decay == 0.9));
        assert_eq!(chunks_of([0; 4], 0, 1.0, 1.0).count(), 0);
    }
}
