//! Differentiable tensor operations the decoder needs and Candle provides only without a
//! backward pass (`candle_nn::ops::rms_norm`, `softmax_last_dim`, see docs/candle-notes.md).
//!
//! One file per op. In each, the public function (`rms_norm`, `causal_softmax`, `token_nll`,
//! `rope`; the FFN gates in `crate::ffn` follow the same pattern) dispatches: on CPU with f32 it runs one fused kernel with its own fused
//! backward (`CustomOp`s, one pass over the data each way, rows in parallel), and on f32 GPU
//! tensors its CUDA twin (`kernels/`, see `crate::cuda_kernels` in a CUDA build); everything
//! else (bf16, other devices) runs
//! `<op>_reference`, the plain composition of differentiable Candle ops that sits beside it.
//! Tests compare each fused kernel with its reference (values and gradients) and with finite
//! differences.
//!
//! `packed_weight` is the exception: the products of an inference model's linear layers (and
//! of a gated FFN's gate and up, with the gate), forward only, tested against the gemm
//! crate's products and the FFN kernels they replace.
//!
//! This module holds the helpers the kernels share; it depends on no other module of the crate
//! but the dropout masks (`philox`, `philox_dropout`) and, in a CUDA build, `cuda_kernels`, so
//! every layer may use it.

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

pub mod attention;
pub mod cast;
pub mod cross_entropy;
pub mod embedding;
pub(crate) mod exp;
pub(crate) mod fresh;
pub mod heads;
pub mod matmul;
pub mod packed_weight;
pub(crate) mod panel_product;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub(crate) mod wide;

pub use attention::{causal_attention, causal_attention_reference, inference_attention, repeat_kv};
pub use cast::cast;
pub use cross_entropy::{cross_entropy, log_softmax, token_nll, token_nll_reference};
pub use embedding::{embedding, embedding_op, embedding_reference};
pub use heads::{heads_first, heads_first_reference, heads_last};
pub use matmul::{product, product_reference, widened_product, widened_product_reference, Form};
pub use rms_norm::{add_rms_norm, rms_norm, rms_norm_reference};
pub use rope::{rope, rope_reference};
pub use softmax::{causal_mask, causal_softmax, causal_softmax_reference, softmax};

/// An output's pointer, handed to the tasks that write its disjoint parts (a product's
/// columns or panels): each task writes elements no other task writes, and all end before
/// the output is read.
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: as said above, by every user.
unsafe impl Sync for SendPtr {}

/// `n` test values in [-1, 1), spread over 2003 levels, different for each seed.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
        .collect()
}

/// Whether `x` takes the fused CPU kernel: a CPU tensor of f32.
pub(crate) fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Whether `x` takes an op's CUDA kernel: an f32 tensor on a CUDA GPU, in a build with them.
pub(crate) fn fused_on_cuda(x: &Tensor) -> bool {
    cfg!(feature = "cuda") && x.device().is_cuda() && x.dtype() == DType::F32
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

/// The contiguous u32 data (target ids) of a CPU tensor.
pub(crate) fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [u32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: targets must be contiguous")))?;
    match s {
        CpuStorage::U32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("{op}: targets must be u32"),
    }
}

/// Rows handed to one rayon task: about 16K elements, so small rows do not drown in
/// scheduling overhead.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

/// Rows per task of a row kernel whose wrapper takes a task's rows at once: about
/// [`rows_per_task`] each, in a number of tasks the pool's threads share evenly (384 rows of
/// 128 in tasks of 128 left one of two threads 256 of them).
pub(crate) fn rows_per_chunk(rows: usize, row_len: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tasks = rows
        .div_ceil(rows_per_task(row_len))
        .next_multiple_of(threads);
    rows.div_ceil(tasks.max(1)).max(1)
}

/// Rows whose per-channel partial sums (RMSNorm's weight gradient, dynAct's) one task
/// accumulates in f32 before [`sum_block_partials`] adds them up; the CUDA kernels block the
/// same way.
pub(crate) const ROWS_PER_BLOCK: usize = 64;

/// Per channel, the sum of the row blocks' partial sums (`partials[block][channel]`, f32), in
/// f64 in [`lane_sum`]'s order: the order of the CUDA warps that sum a channel each
/// (`channel_sum_f64` in `kernels/warp_rows.cuh`), so the result does not depend on thread
/// timing and is the GPU's bit for bit.
pub(crate) fn sum_block_partials(partials: &[Vec<f32>], width: usize) -> Vec<f64> {
    (0..width)
        .map(|j| lane_sum(partials.len(), |b| partials[b][j] as f64))
        .collect()
}

/// Lanes of a GPU warp: the CUDA row kernels (`kernels/warp_rows.cuh`) reduce a row with one
/// warp, and [`lane_sum`] adds in their order.
pub(crate) const LANES: usize = 32;

/// The sum of `term(j)` for j in 0..n in the order a warp of the CUDA row kernels adds it: lane
/// l adds terms l, l + 32, l + 64, ... in order, then the 32 lanes' sums are added in a
/// butterfly (l and l ^ 16, then ^ 8, ^ 4, ^ 2, ^ 1). A CPU kernel and its CUDA twin therefore
/// round alike; on a CPU the 32 independent sums also vectorize.
#[inline]
pub(crate) fn lane_sum<T: LaneTerm>(n: usize, term: impl Fn(usize) -> T) -> T {
    let mut lanes = [T::default(); LANES];
    let full = n - n % LANES;
    for start in (0..full).step_by(LANES) {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane = *lane + term(start + l);
        }
    }
    for (l, lane) in lanes.iter_mut().enumerate().take(n - full) {
        *lane = *lane + term(full + l);
    }
    fold_lanes(lanes)
}

/// `lane_sum(n, |j| a[j] * b[j])` over slices of one length n, as whole blocks of 32 lanes
/// that vectorize: the closure's index checks kept [`lane_sum`]'s loop from vectorizing, and
/// RMSNorm's sum of squares took 2.5% of an evaluation pass.
#[inline(always)]
pub(crate) fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lane_dot: slices of different lengths");
    let mut lanes = [0f32; LANES];
    let (mut a_blocks, mut b_blocks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (a, b) in (&mut a_blocks).zip(&mut b_blocks) {
        for ((lane, a), b) in lanes.iter_mut().zip(a).zip(b) {
            *lane += a * b;
        }
    }
    let tail = a_blocks.remainder().iter().zip(b_blocks.remainder());
    for (lane, (a, b)) in lanes.iter_mut().zip(tail) {
        *lane += a * b;
    }
    fold_lanes(lanes)
}

/// The 32 lanes' sums added as [`lane_sum`] ends: the warp's butterfly.
#[inline(always)]
pub(crate) fn fold_lanes<T: LaneTerm>(lanes: [T; LANES]) -> T {
    T::fold(lanes)
}

/// [`fold_lanes`] as plain arithmetic.
#[inline(always)]
fn butterfly<T: LaneTerm>(lanes: [T; LANES]) -> T {
    // The butterfly's lane 0: at each step lanes l and l ^ half hold the same sum, so only the
    // lower half is carried on, lane l + half being l's partner. Each half a new array, so that
    // the steps stay in vector registers (in place, the compiler went through the stack).
    const _: () = assert!(LANES == 32, "fold_lanes halves 32 lanes");
    let half: [T; 16] = std::array::from_fn(|l| lanes[l] + lanes[l + 16]);
    let half: [T; 8] = std::array::from_fn(|l| half[l] + half[l + 8]);
    let half: [T; 4] = std::array::from_fn(|l| half[l] + half[l + 4]);
    let half: [T; 2] = std::array::from_fn(|l| half[l] + half[l + 2]);
    half[0] + half[1]
}

/// The largest of `values` (NaNs passed over, as `f32::max` does; -inf for none), as 8
/// independent maxima that vectorize, where a fold waits on each comparison before the next
/// (attention's softmax rows took 9.7% of an evaluation pass with the fold, 7.6% with this).
/// The order does not matter to a maximum: the CUDA twins take theirs over a warp's lanes.
#[inline]
pub(crate) fn row_max(values: &[f32]) -> f32 {
    row_max_in::<8>(values)
}

/// [`row_max`] in `N` independent maxima: long rows (cross-entropy's, a vocabulary long) keep
/// several vectors of them in flight, where one waited on the one before. Always inlined, so
/// that it takes the vector width of the kernel that calls it.
#[inline(always)]
pub(crate) fn row_max_in<const N: usize>(values: &[f32]) -> f32 {
    // `if v > m` passes a NaN over as `f32::max` does, and compiles to one max instruction.
    let larger = |m: f32, v: f32| if v > m { v } else { m };
    let mut lanes = [f32::NEG_INFINITY; N];
    let mut lines = values.chunks_exact(N);
    for line in &mut lines {
        for (lane, v) in lanes.iter_mut().zip(line) {
            *lane = larger(*lane, *v);
        }
    }
    let rest = lines
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, v| larger(m, *v));
    lanes.iter().fold(rest, |m, v| larger(m, *v))
}

/// How far ahead of a streaming loop [`prefetch_ahead`] reaches: 1 KB, about 16 vectors of
/// work.
#[cfg(target_arch = "x86_64")]
const PREFETCH_DISTANCE: usize = 256;

/// The elements a streaming loop handles between two calls of [`prefetch_ahead`]: the four
/// cache lines each call asks for.
const PREFETCH_STRIDE: usize = 64;

/// The blocks of [`PREFETCH_STRIDE`] elements (the last one shorter) in which a loop streams
/// over `n` elements of `inputs`, each handed out after asking for the inputs' elements
/// [`PREFETCH_DISTANCE`] past its start ([`prefetch_ahead`]). The FFN's gates read rows the
/// gate-up product has just written further out in the caches, and their loops waited on
/// those loads (a sixth of the gate's time, perf).
#[inline(always)]
pub(crate) fn prefetched_blocks<'a, const N: usize>(
    n: usize,
    inputs: [&'a [f32]; N],
) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    (0..n).step_by(PREFETCH_STRIDE).map(move |start| {
        for xs in inputs {
            prefetch_ahead(xs, start);
        }
        start..(start + PREFETCH_STRIDE).min(n)
    })
}

/// Asks the CPU to bring into L1 the [`PREFETCH_STRIDE`] elements [`PREFETCH_DISTANCE`] past
/// `xs[at]`, which a loop reading `xs` in order will want soon. A hint: an address past the
/// slice reads nothing (prefetches do not fault) and changes no value.
#[inline(always)]
fn prefetch_ahead(xs: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let ahead = xs.as_ptr().wrapping_add(at + PREFETCH_DISTANCE);
        for line in (0..PREFETCH_STRIDE).step_by(16) {
            // SAFETY: a prefetch of any address is sound: it is a hint that reads nothing.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (xs, at);
}

/// What [`lane_sum`] adds: f32 (the row kernels), f64 (the weight gradients of RMSNorm and
/// dynAct summed over row blocks).
pub(crate) trait LaneTerm: Copy + Default + std::ops::Add<Output = Self> {
    /// [`fold_lanes`].
    #[inline(always)]
    fn fold(lanes: [Self; LANES]) -> Self {
        butterfly(lanes)
    }
}

impl LaneTerm for f32 {
    /// In two AVX-512 vectors where the CPU has them: the compiler folded the plain
    /// arithmetic with 31 scalar additions of lanes stored to the stack, about a fifth of a
    /// 128-wide row's add-and-norm.
    #[inline(always)]
    fn fold(lanes: [f32; LANES]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512.
            return unsafe { butterfly_avx512(lanes) };
        }
        butterfly(lanes)
    }
}

impl LaneTerm for f64 {}

/// [`butterfly`] of f32 lanes in AVX-512 registers: the same pairs added at each step, so the
/// same bits.
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn butterfly_avx512(lanes: [f32; LANES]) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: the array is 32 f32, two vectors' worth.
    let (low, high) = unsafe {
        (
            _mm512_loadu_ps(lanes.as_ptr()),
            _mm512_loadu_ps(lanes.as_ptr().add(16)),
        )
    };
    // Lanes l and l + 16; then l + 8 (quarters 2 and 3 moved down), l + 4 (quarter 1), l + 2
    // and l + 1 (within the quarter).
    let v = _mm512_add_ps(low, high);
    let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0xee>(v, v));
    let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0x01>(v, v));
    let v = _mm512_add_ps(v, _mm512_shuffle_ps::<0xee>(v, v));
    let v = _mm512_add_ps(v, _mm512_shuffle_ps::<0x01>(v, v));
    _mm512_cvtss_f32(v)
}

/// The size of the last dimension (the row length the kernels work on).
pub(crate) fn last_dim(l: &Layout) -> usize {
    *l.dims().last().unwrap_or(&1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_lanes_fold_to_the_butterfly_s_bits() {
        // Terms of many magnitudes and signs, where any other pairing rounds differently; and
        // infinities and NaN.
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        for case in 0..2_000 {
            let lanes: [f32; LANES] = std::array::from_fn(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let mantissa = (s % 2_000_001) as f32 / 1_000_000.0 - 1.0;
                mantissa * 2f32.powi((s >> 40) as i32 % 40 - 20)
            });
            let mut special = lanes;
            special[case % LANES] = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][case % 3];
            for lanes in [lanes, special] {
                let (ours, plain) = (fold_lanes(lanes), butterfly(lanes));
                assert_eq!(ours.to_bits(), plain.to_bits(), "case {case}: {lanes:?}");
            }
        }
    }

    #[test]
    fn lane_sum_adds_every_term_once_in_the_warp_s_order() {
        // Small integers sum exactly in any order: every term is counted once, for lengths
        // under, at and over a warp.
        for n in [0usize, 1, 5, 31, 32, 33, 64, 100] {
            let exact = (0..n).map(|j| j * j).sum::<usize>();
            assert_eq!(lane_sum(n, |j| (j * j) as f32), exact as f32, "n = {n}");
        }
        // The order is the warp's, not the sequential one: 1 + 2^24 + 1 + ... rounds away the
        // ones when added in sequence, but lanes 0 and 2 each hold a one, which meet first.
        let terms = [1f32, 16_777_216.0, 1.0];
        let sequential = terms.iter().sum::<f32>();
        assert_eq!(sequential, 16_777_216.0);
        assert_eq!(lane_sum(3, |j| terms[j]), 16_777_218.0);
    }

    #[test]
    fn lane_dot_is_lane_sum_of_the_products() {
        let a = |j: usize| (j as f32 * 0.754_8).sin() * 2f32.powi((j % 17) as i32);
        let b = |j: usize| (j as f32 * 0.31).cos() + 0.5;
        for n in [0usize, 1, 7, 31, 32, 33, 70, 128, 257] {
            let (xs, ys): (Vec<f32>, Vec<f32>) = (0..n).map(|j| (a(j), b(j))).unzip();
            let expected = lane_sum(n, |j| xs[j] * ys[j]);
            assert_eq!(lane_dot(&xs, &ys).to_bits(), expected.to_bits(), "n = {n}");
        }
    }

    #[test]
    fn row_max_is_the_largest_value_nans_passed_over() {
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        for n in [0usize, 1, 5, 31, 32, 33, 64, 100, 257] {
            for with in [None, Some(0), Some(1), Some(2)] {
                let mut values: Vec<f32> =
                    (0..n).map(|j| (j as f32 * 1.37).sin() * 100.0).collect();
                if let Some(k) = with {
                    // A NaN, +inf or -inf at a few places.
                    for j in (k..n).step_by(13) {
                        values[j] = special[k];
                    }
                }
                let folded = values.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                assert_eq!(row_max(&values), folded, "n = {n}, special {with:?}");
                assert_eq!(
                    row_max_in::<64>(&values),
                    folded,
                    "n = {n}, special {with:?}"
                );
            }
        }
        assert!(row_max(&[f32::NAN; 40]) == f32::NEG_INFINITY);
    }

    #[test]
    fn a_warp_walking_a_row_by_line_sums_it_as_lane_sum_does() {
        // A CUDA row kernel whose row starts `shift` elements into a 128-byte line walks it by
        // line (`row_shift` in kernels/warp_rows.cuh): position p = shift + j, lane p % 32.
        // Each lane still adds one residue class of j in order, only in another lane, and the
        // butterfly adds lanes 16, 8, 4, 2, 1 apart, which a rotation of the lanes keeps: the
        // same bits. Terms of very different sizes, so that any other grouping would show.
        let term = |j: usize| (j as f32 * 0.754_8).sin() * 2f32.powi((j % 17) as i32);
        for n in [0usize, 1, 7, 31, 32, 33, 70, 100, 257] {
            for shift in 0..LANES {
                // The first `shift` positions idle: adding 0 leaves a lane's 0 as it is.
                let walked = lane_sum(shift + n, |p| if p < shift { 0.0 } else { term(p - shift) });
                assert_eq!(
                    walked.to_bits(),
                    lane_sum(n, term).to_bits(),
                    "n = {n}, shift = {shift}"
                );
            }
        }
        // Where the terms go matters: the same terms summed in sequence round otherwise.
        assert_ne!(lane_sum(257, term), (0..257).map(term).sum::<f32>());
    }
}
