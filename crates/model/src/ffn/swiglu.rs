//! The SwiGLU gate product silu(gate) * up: the fused CPU kernel, written with the arithmetic of
//! Candle's own `silu` and `mul` (forward and backward) but this project's vectorized exp (so
//! it agrees with them to a few ulp), its CUDA twin (`kernels/swiglu.cu`, the same bits) for
//! f32 on a GPU, and [`swiglu_reference`], the two Candle ops every other case runs.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::GateUpRows;
use crate::ops::exp::{exp, wide_fma};
use crate::ops::fresh::{par_fresh_chunks, par_fresh_pairs, Filled, Fresh};
use crate::ops::packed_weight::{gated_packed_product, PackedWeight};
use crate::ops::{f32_slice, fused, fused_on_cuda, prefetched_blocks, rows_per_task};

/// silu(gate) * up, the SwiGLU product. On CPU one pass each way, with the arithmetic of
/// Candle's own `silu` and `mul` (forward and backward).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if (fused(gate) || fused_on_cuda(gate))
        && up.dtype() == DType::F32
        && gate.shape() == up.shape()
    {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu);
    }
    swiglu_reference(gate, up)
}

/// [`swiglu`] of gates and ups side by side: `gate_up` (..., 2F) holds each row's F gates, then
/// its F ups (one product of the stacked weights, [`crate::layers::Linear::stacked`]).
/// Untracked f32 on a CPU (inference) takes a kernel that reads both halves of each row where
/// they are; otherwise the halves are cut out and go to [`swiglu`].
pub fn swiglu_stacked(gate_up: &Tensor) -> Result<Tensor> {
    let (gate, up) = super::halves(gate_up)?;
    if fused(gate_up) && !gate_up.track_op() {
        return gate_up.contiguous()?.apply_op1_no_bwd(&SwiGluStacked);
    }
    swiglu(&gate, &up)
}

/// [`swiglu_stacked`]'s kernel: rows of 2F in, rows of F out.
struct SwiGluStacked;

impl candle_core::CustomOp1 for SwiGluStacked {
    fn name(&self) -> &'static str {
        "swiglu-stacked"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, shape, f) = GateUpRows::stacked(f32_slice(s, l, self.name())?, l);
        let out = par_fresh_chunks(rows.rows * f, f * rows_per_task(f), |range, fresh| {
            let first = range.start / f.max(1);
            fresh
                .fill_rows(f, |r, row| {
                    let (gate, up) = rows.row(first + r, f);
                    silu_times_up(gate, up, row).1
                })
                .1
        });
        Ok((CpuStorage::F32(out), shape))
    }
}

/// [`swiglu`] as Candle's `silu` and `mul`: what runs without a kernel (bf16, other devices),
/// and what the fused kernels are tested against.
pub fn swiglu_reference(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
        );
        let out = par_fresh_chunks(g.len(), rows_per_task(1), |range, fresh| {
            let (gc, uc) = (&g[range.clone()], &u[range]);
            silu_times_up(gc, uc, fresh).1
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda_kernels::{f32_view, launch, output, storage, SWIGLU};
        use candle_core::backend::BackendStorage;

        let dev = s1.device();
        let (g, u) = (
            f32_view(s1, l1, self.name())?,
            f32_view(s2, l2, self.name())?,
        );
        let n = l1.shape().elem_count();
        let y = output(dev, n)?;
        let n_arg = n as u64;
        launch!(dev, "swiglu", SWIGLU, swiglu_f32, n; &g, &u, &y, &n_arg);
        Ok((storage(y, dev), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // One pass, one flat tensor: [d gate; d up].
        let flat = gate.apply_op3_no_bwd(up, &grad, &SwiGluBackward)?;
        let n = gate.elem_count();
        Ok((
            Some(flat.narrow(0, 0, n)?.reshape(gate.shape())?),
            Some(flat.narrow(0, n, n)?.reshape(up.shape())?),
        ))
    }
}

wide_fma!(
    /// silu(g) u for each gate g of `gate` and u of `up`, filled into `out` in one pass with
    /// its exponential, where the exponentials took a pass of their own
    /// ([`crate::ops::exp::exp_in_place`]) between two others and the gate 7.2% of a cpu-repro
    /// evaluation pass (perf; on AVX-512 evaluation now takes [`swiglu_packed`]).
    fn silu_times_up<'a>(gate: &[f32], up: &[f32], out: Fresh<'a>) -> (&'a mut [f32], Filled<'a>) =
        silu_times_up_loop
);

/// Candle's f32 silu, g / (1 + exp(-g)), times u. A plain loop, no closure (see
/// [`Fresh::into_slots`]).
#[inline(always)]
fn silu_times_up_loop<'a>(gate: &[f32], up: &[f32], out: Fresh<'a>) -> (&'a mut [f32], Filled<'a>) {
    let slots = out.into_slots();
    assert!(
        gate.len() == slots.len() && up.len() == slots.len(),
        "swiglu: a chunk of {} gates and {} ups for {} outputs",
        gate.len(),
        up.len(),
        slots.len()
    );
    for at in prefetched_blocks(slots.len(), [gate, up]) {
        let (gate, up) = (&gate[at.clone()], &up[at.clone()]);
        for ((slot, &g), &u) in slots[at].iter_mut().zip(gate).zip(up) {
            slot.write(silu_times_up_value(g, u));
        }
    }
    // SAFETY: the loop wrote every slot: the three lengths are equal (asserted).
    unsafe { Fresh::assume_filled(slots) }
}

/// silu(g) u, as Candle's f32 silu (g / (1 + exp(-g))) and mul compute it: one element of
/// [`silu_times_up`], and what the gate and up products' tiles end in where they are one
/// kernel ([`swiglu_packed`]).
#[inline(always)]
fn silu_times_up_value(g: f32, u: f32) -> f32 {
    g / (1.0 + exp(-g)) * u
}

/// [`swiglu`] of x's gate and up projections, where their weights are a gate and up pack
/// ([`PackedWeight::of_gate_up`]): one kernel for both products and the gate, the gates and
/// ups never stored. x (rows, k), untracked f32 on a CPU (inference); None where the pack
/// does not take it.
pub fn swiglu_packed(x: &Tensor, pack: &Arc<PackedWeight>) -> Result<Option<Tensor>> {
    gated_packed_product(x, pack, |g, u, _| silu_times_up_value(g, u))
}

/// d/dgate = (g_out * up) * (sigmoid * (1 - silu) + silu), as Candle's silu backward computes
/// it; d/dup = g_out * silu(gate).
struct SwiGluBackward;

wide_fma!(
    /// [`SwiGluBackward`] of a chunk of gates, ups and incoming gradients: d gate and d up
    /// filled in one pass with their exponential. Compiled for the widest vectors: as a closure
    /// in `widest`, the compiler kept 4-lane code after a pass of its own for the exponentials
    /// (3.0% of a cpu-repro training step, perf).
    fn swiglu_backward_chunk<'g, 'u>(
        inputs: (&[f32], &[f32], &[f32]),
        d_gate: Fresh<'g>,
        d_up: Fresh<'u>
    ) -> (Filled<'g>, Filled<'u>) = swiglu_backward_chunk_loop
);

#[inline(always)]
fn swiglu_backward_chunk_loop<'g, 'u>(
    (gate, up, grad): (&[f32], &[f32], &[f32]),
    d_gate: Fresh<'g>,
    d_up: Fresh<'u>,
) -> (Filled<'g>, Filled<'u>) {
    let (d_gate, d_up) = (d_gate.into_slots(), d_up.into_slots());
    let n = d_gate.len();
    assert!(
        [gate.len(), up.len(), grad.len(), d_up.len()]
            .iter()
            .all(|&len| len == n),
        "swiglu backward: {} gates, {} ups and {} gradients for {n} and {} outputs",
        gate.len(),
        up.len(),
        grad.len(),
        d_up.len()
    );
    for i in 0..n {
        let (g, u, dy) = (gate[i], up[i], grad[i]);
        let e = exp(-g);
        let node = g / (1.0 + e);
        let sigmoid = 1.0 / (e * 1.0 + 1.0);
        let silu_grad = sigmoid * (-node + 1.0) + node; // 1 - node, as Candle computes it
        d_up[i].write(dy * node);
        d_gate[i].write((dy * u) * silu_grad);
    }
    // SAFETY: the loop wrote every slot of both: the lengths are equal (asserted).
    unsafe { (Fresh::assume_filled(d_gate).1, Fresh::assume_filled(d_up).1) }
}

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "swiglu-backward"
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
        let (g, u, grad) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let n = g.len();
        // [d gate; d up].
        let out = par_fresh_pairs(n, rows_per_task(1), |range, d_gate, d_up| {
            let (gc, uc, yc) = (&g[range.clone()], &u[range.clone()], &grad[range]);
            swiglu_backward_chunk((gc, uc, yc), d_gate, d_up)
        });
        Ok((CpuStorage::F32(out), Shape::from(2 * n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda_kernels::{f32_view, launch, output, storage, SWIGLU};
        use candle_core::backend::BackendStorage;

        let dev = s1.device();
        let (g, u, dy) = (
            f32_view(s1, l1, self.name())?,
            f32_view(s2, l2, self.name())?,
            f32_view(s3, l3, self.name())?,
        );
        let n = l1.shape().elem_count();
        let out = output(dev, 2 * n)?;
        let n_arg = n as u64;
        launch!(dev, "swiglu", SWIGLU, swiglu_backward_f32, n; &g, &u, &dy, &out, &n_arg);
        Ok((storage(out, dev), Shape::from(2 * n)))
    }
}
