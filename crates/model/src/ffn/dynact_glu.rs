//! dynActGLU's gate product `dynact(gate) * up`: one fused kernel forward and one backward pass
//! that yields d(gate), d(up), d(alpha) and d(beta) together, on a CPU and on a CUDA GPU
//! (`kernels/dynact_glu.cu`, the same arithmetic and order of sums), beside
//! [`dynact_glu_reference`], the composition every other device runs. Fused, the gate costs
//! what SwiGLU's costs ([`super::swiglu`]); composed, it took an extra pass over the (B, T, F)
//! hidden activations each way and a reduction for alpha and beta.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::GateUpRows;
use crate::config::BaseAct;
use crate::dynact::{param, DynAct};
use crate::ops::exp::{exp, wide_fma};
use crate::ops::fresh::{par_fresh_chunks, par_fresh_pairs_with, Filled, Fresh};
use crate::ops::packed_weight::{gated_packed_product, PackedWeight};
use crate::ops::wide::widest;
use crate::ops::{f32_slice, prefetched_blocks, sum_block_partials, ROWS_PER_BLOCK};

/// `act(gate) * up`, gate and up of one shape (..., F). f32 inputs with a SiLU or ReLU base take
/// the fused kernel on a CPU and on a CUDA GPU (`kernels/dynact_glu.cu`).
pub fn dynact_glu(act: &DynAct, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let on_gpu =
        crate::ops::fused_on_cuda(gate) && matches!(act.base(), BaseAct::Silu | BaseAct::Relu);
    if (act.fuses(gate) || on_gpu) && up.dtype() == DType::F32 && gate.shape() == up.shape() {
        return gate.contiguous()?.apply_op3(
            &up.contiguous()?,
            &alpha_beta(act)?,
            FusedDynActGlu { base: act.base() },
        );
    }
    dynact_glu_reference(act, gate, up)
}

/// [`dynact_glu`] of gates and ups side by side: `gate_up` (..., 2F) holds each row's F gates,
/// then its F ups (one product of the stacked weights, [`crate::layers::Linear::stacked`]).
/// Untracked f32 on a CPU (inference) with a fused base takes a kernel that reads both halves
/// of each row where they are; otherwise the halves are cut out and go to [`dynact_glu`].
pub fn dynact_glu_stacked(act: &DynAct, gate_up: &Tensor) -> Result<Tensor> {
    let (gate, up) = super::halves(gate_up)?;
    let untracked = !gate_up.track_op() && !act.alpha().track_op() && !act.beta().track_op();
    if act.fuses(&gate) && untracked {
        return gate_up
            .contiguous()?
            .apply_op2_no_bwd(&alpha_beta(act)?, &StackedDynActGlu { base: act.base() });
    }
    dynact_glu(act, &gate, &up)
}

/// [alpha; beta] in f32, as the kernels take them.
fn alpha_beta(act: &DynAct) -> Result<Tensor> {
    Tensor::cat(
        &[
            act.alpha().to_dtype(DType::F32)?,
            act.beta().to_dtype(DType::F32)?,
        ],
        0,
    )
}

/// [`dynact_glu`] as Candle ops ([`DynAct::forward_reference`] times `up`).
pub fn dynact_glu_reference(act: &DynAct, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    act.forward_reference(gate)? * up
}

/// alpha and beta of every channel of a row of `c`: `params` is [alpha; beta], each of length
/// 1 (per layer) or `c` (per channel).
fn channel_params(params: &[f32], c: usize, op: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    param_count(params.len(), c, op)?;
    let (alpha, beta) = params.split_at(params.len() / 2);
    Ok((
        (0..c).map(|j| param(alpha, j)).collect(),
        (0..c).map(|j| param(beta, j)).collect(),
    ))
}

/// alpha - beta and beta by channel, as the kernels read them: one value for a layer's pair
/// (a constant in the loops, where a per-channel array cost two loads per element) or one per
/// channel (the slices of [`channel_params`]).
trait Channels: Copy + Send + Sync {
    /// The values of a row of `c` channels (a slice cut to `c`, so that the loops over the row
    /// run without bounds checks).
    fn row(self, c: usize) -> Self;
    fn at(self, j: usize) -> f32;
}

/// [`silu_gate_times_up_loop`] for one kind of [`Channels`], compiled for the CPU's widest
/// vectors: [`silu_gate_times_up_layer`] or [`silu_gate_times_up_channels`].
type SiluRow<S> = for<'a> fn(&[f32], &[f32], Fresh<'a>, (S, S)) -> (&'a mut [f32], Filled<'a>);

impl Channels for &[f32] {
    #[inline(always)]
    fn row(self, c: usize) -> Self {
        &self[..c]
    }

    #[inline(always)]
    fn at(self, j: usize) -> f32 {
        self[j]
    }
}

/// One value for every channel.
#[derive(Clone, Copy)]
struct Layer(f32);

impl Channels for Layer {
    #[inline(always)]
    fn row(self, _c: usize) -> Self {
        self
    }

    #[inline(always)]
    fn at(self, _j: usize) -> f32 {
        self.0
    }
}

/// The values per half of [alpha; beta] (`count` in all), which must be 1 or `c`.
fn param_count(count: usize, c: usize, op: &str) -> Result<usize> {
    let per = count / 2;
    if !count.is_multiple_of(2) || !(per == 1 || per == c) {
        candle_core::bail!("{op}: alpha and beta have {per} values, the input has {c} channels");
    }
    Ok(per)
}

struct FusedDynActGlu {
    base: BaseAct,
}

/// The forward pass over rows of `c` channels, alpha - beta and beta as `pairs`; `silu` is
/// the row kernel of a SiLU base.
fn forward_rows<S: Channels>(
    base: BaseAct,
    rows: GateUpRows,
    c: usize,
    (scale, beta): (S, S),
    silu: SiluRow<S>,
) -> Vec<f32> {
    par_fresh_chunks(rows.rows * c, c, |range, fresh| {
        let (gr, ur) = rows.row(range.start / c, c);
        if base == BaseAct::Silu {
            return silu(gr, ur, fresh, (scale, beta)).1;
        }
        assert_eq!(base, BaseAct::Relu, "no fused kernel for {base:?}");
        widest(|| {
            // Every slice has length c: the loop runs without bounds checks.
            let (gr, ur, scale, beta) = (&gr[..c], &ur[..c], scale.row(c), beta.row(c));
            let values = (0..c).map(|j| {
                let g = gr[j];
                gated_value(g, relu_weight(g), ur[j], scale.at(j), beta.at(j))
            });
            fresh.fill(values).1
        })
    })
}

/// The forward pass over `rows` whose alpha and beta are `params` ([alpha; beta], per layer or
/// per channel): the kernel of [`FusedDynActGlu`] and of [`StackedDynActGlu`].
fn forward(
    base: BaseAct,
    rows: GateUpRows,
    c: usize,
    params: &[f32],
    op: &str,
) -> Result<Vec<f32>> {
    let (alpha, beta) = channel_params(params, c, op)?;
    Ok(match params.len() / 2 {
        1 => {
            let pair = (Layer(alpha[0] - beta[0]), Layer(beta[0]));
            forward_rows(base, rows, c, pair, silu_gate_times_up_layer)
        }
        _ => {
            let scale: Vec<f32> = alpha.iter().zip(&beta).map(|(a, b)| a - b).collect();
            let pairs = (&scale[..], &beta[..]);
            forward_rows(base, rows, c, pairs, silu_gate_times_up_channels)
        }
    })
}

/// [`dynact_glu_stacked`]'s kernel: rows of [gate | up] (2c) and [alpha; beta] in, rows of c
/// out.
struct StackedDynActGlu {
    base: BaseAct,
}

impl candle_core::CustomOp2 for StackedDynActGlu {
    fn name(&self) -> &'static str {
        "dynact-glu-stacked"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gate_up, params) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
        );
        let (rows, shape, c) = GateUpRows::stacked(gate_up, l1);
        let out = forward(self.base, rows, c, params, self.name())?;
        Ok((CpuStorage::F32(out), shape))
    }
}

/// alpha - beta and beta of one layer.
type LayerPair = (Layer, Layer);

/// alpha - beta and beta of each channel.
type ChannelPairs<'p> = (&'p [f32], &'p [f32]);

wide_fma!(
    /// [`silu_gate_times_up_loop`] for a layer's alpha and beta.
    fn silu_gate_times_up_layer<'a>(gate: &[f32], up: &[f32], out: Fresh<'a>, params: LayerPair) -> (&'a mut [f32], Filled<'a>) =
        silu_gate_times_up_loop::<Layer>
);

wide_fma!(
    /// [`silu_gate_times_up_loop`] for a channel's alpha and beta.
    fn silu_gate_times_up_channels<'a>(gate: &[f32], up: &[f32], out: Fresh<'a>, params: ChannelPairs<'_>) -> (&'a mut [f32], Filled<'a>) =
        silu_gate_times_up_loop::<&[f32]>
);

/// For a row of gates g, (g w (alpha - beta) + beta g) u filled into `out`, with SiLU's weight
/// w = 1 / (1 + e^-g) and u the element of `up` at its place: one pass with its exponential,
/// as SwiGLU's gate ([`super::swiglu`]) computes it. A plain loop, no closure (see
/// [`Fresh::into_slots`]).
#[inline(always)]
fn silu_gate_times_up_loop<'a, S: Channels>(
    gate: &[f32],
    up: &[f32],
    out: Fresh<'a>,
    (scale, beta): (S, S),
) -> (&'a mut [f32], Filled<'a>) {
    let slots = out.into_slots();
    let c = slots.len();
    assert!(
        gate.len() == c && up.len() == c,
        "dynact-glu: a row of {} gates and {} ups for {c} outputs",
        gate.len(),
        up.len()
    );
    // Every slice has length c: the loop runs without bounds checks.
    let (gate, up, scale, beta) = (&gate[..c], &up[..c], scale.row(c), beta.row(c));
    for at in prefetched_blocks(c, [gate, up]) {
        for j in at {
            let g = gate[j];
            slots[j].write(gated_value(
                g,
                silu_weight(g),
                up[j],
                scale.at(j),
                beta.at(j),
            ));
        }
    }
    // SAFETY: the loop wrote every slot, 0..c.
    unsafe { Fresh::assume_filled(slots) }
}

/// SiLU's weight w, base(g) = g w: the sigmoid.
#[inline(always)]
fn silu_weight(g: f32) -> f32 {
    1.0 / (1.0 + exp(-g))
}

/// ReLU's weight w, base(g) = g w: the step.
#[inline(always)]
fn relu_weight(g: f32) -> f32 {
    if g > 0.0 {
        1.0
    } else {
        0.0
    }
}

/// (base(g) (alpha - beta) + beta g) u, base(g) = g w: one element of the forward kernels,
/// and what the gate and up products' tiles end in where they are one kernel
/// ([`dynact_glu_packed`]).
#[inline(always)]
fn gated_value(g: f32, w: f32, u: f32, scale: f32, beta: f32) -> f32 {
    (g * w * scale + beta * g) * u
}

/// [`dynact_glu`] of x's gate and up projections, where their weights are a gate and up pack
/// ([`PackedWeight::of_gate_up`]): one kernel for both products and the gate, the gates and
/// ups never stored. x (rows, k) and the activation's alpha and beta untracked f32 on a CPU
/// (inference) with a fused base; None otherwise, or where the pack does not take x.
pub fn dynact_glu_packed(
    act: &DynAct,
    x: &Tensor,
    pack: &Arc<PackedWeight>,
) -> Result<Option<Tensor>> {
    // x's own tracking, and whether the pack takes x, are gated_packed_product's to check.
    let untracked = !act.alpha().track_op() && !act.beta().track_op();
    if !act.fuses(x) || !untracked {
        return Ok(None);
    }
    let c = pack.dims().1;
    let params = alpha_beta(act)?.to_vec1::<f32>()?;
    let (alpha, beta) = channel_params(&params, c, "dynact-glu-packed")?;
    let base = act.base();
    if params.len() == 2 {
        let (scale, beta) = (alpha[0] - beta[0], beta[0]);
        return match base {
            BaseAct::Silu => gated_packed_product(x, pack, move |g, u, _| {
                gated_value(g, silu_weight(g), u, scale, beta)
            }),
            BaseAct::Relu => gated_packed_product(x, pack, move |g, u, _| {
                gated_value(g, relu_weight(g), u, scale, beta)
            }),
            _ => Ok(None),
        };
    }
    let scale: Vec<f32> = alpha.iter().zip(&beta).map(|(a, b)| a - b).collect();
    match base {
        BaseAct::Silu => gated_packed_product(x, pack, move |g, u, j| {
            gated_value(g, silu_weight(g), u, scale[j], beta[j])
        }),
        BaseAct::Relu => gated_packed_product(x, pack, move |g, u, j| {
            gated_value(g, relu_weight(g), u, scale[j], beta[j])
        }),
        _ => Ok(None),
    }
}

impl CustomOp3 for FusedDynActGlu {
    fn name(&self) -> &'static str {
        "dynact-glu"
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
        let (gate, up, params) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let c = *l1.dims().last().unwrap_or(&1);
        let out = forward(
            self.base,
            GateUpRows::apart(gate, up, c),
            c,
            params,
            self.name(),
        )?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
        use crate::cuda_kernels::{f32_view, launch, output, storage, DYNACT_GLU};
        use candle_core::backend::BackendStorage;

        let dev = s1.device();
        let (gate, up) = (
            f32_view(s1, l1, self.name())?,
            f32_view(s2, l2, self.name())?,
        );
        let params = f32_view(s3, l3, self.name())?;
        let c = *l1.dims().last().unwrap_or(&1);
        let per = param_count(l3.shape().elem_count(), c, self.name())? as u32;
        let n = l1.shape().elem_count();
        let y = output(dev, n)?;
        let (n_arg, c_arg) = (n as u64, c as u32);
        let relu = (self.base == BaseAct::Relu) as i32;
        launch!(dev, "dynact_glu", DYNACT_GLU, dynact_glu_f32, n;
            &gate, &up, &params, &y, &n_arg, &c_arg, &per, &relu);
        Ok((storage(y, dev), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let backward = DynActGluBackward {
            base: self.base,
            params: params.contiguous()?,
        };
        // One flat tensor: [d gate; d up; d alpha; d beta].
        let flat = gate.apply_op3_no_bwd(up, &grad, &backward)?;
        let n = gate.elem_count();
        Ok((
            Some(flat.narrow(0, 0, n)?.reshape(gate.shape())?),
            Some(flat.narrow(0, n, n)?.reshape(up.shape())?),
            // A copy of its own: a view would keep the whole flat tensor (2 n values) alive with
            // the parameters' gradients until the optimizer's step.
            Some(
                flat.narrow(0, 2 * n, params.elem_count())?
                    .force_contiguous()?,
            ),
        ))
    }
}

/// d gate = g up f'(gate), d up = g f(gate), d alpha = sum g up base(gate),
/// d beta = sum g up (gate - base(gate)), with f'(x) = base'(x)(alpha - beta) + beta.
struct DynActGluBackward {
    base: BaseAct,
    /// [alpha; beta] as the forward pass saw them, on the op's device (read there, so a GPU
    /// pass never waits for a copy to the host).
    params: Tensor,
}

impl DynActGluBackward {
    /// [d gate; d up] over rows of `c` channels, with room for `spare` more values (d alpha
    /// and d beta) after them, and per block of rows the per-channel sums
    /// [g up base(gate); g up (gate - base(gate))]; `block` is the kernel of a block of rows
    /// for this kind of [`Channels`].
    fn backward_rows<S: Channels>(
        &self,
        (gate, up, grad): (&[f32], &[f32], &[f32]),
        (c, spare): (usize, usize),
        params: (S, S),
        block: BackwardBlock<S>,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        par_fresh_pairs_with(
            gate.len(),
            c * ROWS_PER_BLOCK,
            spare,
            |range, d_gate, d_up| {
                let inputs = (&gate[range.clone()], &up[range.clone()], &grad[range]);
                block(self.base, inputs, c, params, d_gate, d_up)
            },
        )
    }
}

/// [`backward_block_loop`] for one kind of [`Channels`], compiled for the CPU's widest
/// vectors: [`backward_block_layer`] or [`backward_block_channels`]. As a closure in `widest`,
/// the compiler kept 4-lane code (4.1% of a cpu-repro training step, perf).
type BackwardBlock<S> = for<'g, 'u> fn(
    BaseAct,
    (&[f32], &[f32], &[f32]),
    usize,
    (S, S),
    Fresh<'g>,
    Fresh<'u>,
) -> (Filled<'g>, Filled<'u>, Vec<f32>);

wide_fma!(
    /// [`backward_block_loop`] for a layer's alpha - beta and beta.
    fn backward_block_layer<'g, 'u>(base: BaseAct, inputs: (&[f32], &[f32], &[f32]), c: usize, params: LayerPair, d_gate: Fresh<'g>, d_up: Fresh<'u>) -> (Filled<'g>, Filled<'u>, Vec<f32>) =
        backward_block_loop::<Layer>
);

wide_fma!(
    /// [`backward_block_loop`] for a channel's alpha - beta and beta.
    fn backward_block_channels<'g, 'u>(base: BaseAct, inputs: (&[f32], &[f32], &[f32]), c: usize, params: ChannelPairs<'_>, d_gate: Fresh<'g>, d_up: Fresh<'u>) -> (Filled<'g>, Filled<'u>, Vec<f32>) =
        backward_block_loop::<&[f32]>
);

/// A block of rows of `c` channels of [`DynActGluBackward`]: d gate and d up
/// filled in, and the block's per-channel sums [g up base(gate); g up (gate - base(gate))].
#[inline(always)]
fn backward_block_loop<'g, 'u, S: Channels>(
    base: BaseAct,
    (gb, ub, yb): (&[f32], &[f32], &[f32]),
    c: usize,
    (scale, beta): (S, S),
    d_gate: Fresh<'g>,
    d_up: Fresh<'u>,
) -> (Filled<'g>, Filled<'u>, Vec<f32>) {
    let mut acc = vec![0f32; 2 * c];
    let (acc_base, acc_linear) = acc.split_at_mut(c);
    let (d_gate, d_up) = (d_gate.into_slots(), d_up.into_slots());
    assert!(
        c > 0
            && d_gate.len().is_multiple_of(c)
            && [gb.len(), ub.len(), yb.len(), d_up.len()]
                .iter()
                .all(|&n| n == d_gate.len()),
        "dynact-glu backward: a block of {} gates, {} ups and {} gradients for {} and {} \
         outputs, rows of {c}",
        gb.len(),
        ub.len(),
        yb.len(),
        d_gate.len(),
        d_up.len()
    );
    // Plain loops, no closures (see [`Fresh::into_slots`]), each weight w computed where it is
    // used (a pass of its own for SiLU's exponentials took a fifth of the kernel).
    let rows = d_gate.chunks_exact_mut(c).zip(d_up.chunks_exact_mut(c));
    for (r, (dg, du)) in rows.enumerate() {
        let at = r * c..(r + 1) * c;
        // Every slice has length c: the loops run without bounds checks.
        let (dg, du, gr, ur, yr) = (
            &mut dg[..c],
            &mut du[..c],
            &gb[at.clone()][..c],
            &ub[at.clone()][..c],
            &yb[at][..c],
        );
        let (acc_base, acc_linear) = (&mut acc_base[..c], &mut acc_linear[..c]);
        let (scale, beta) = (scale.row(c), beta.row(c));
        // The step of element j with its weight w: base(g) = g w, base'(g) = w (1 + g (1 - w)),
        // w the sigmoid for SiLU, the step for ReLU.
        macro_rules! step {
            ($j:ident, $w:expr) => {{
                let (g, b, w) = (gr[$j], beta.at($j), $w);
                let (base, slope) = (g * w, w * (1.0 + g * (1.0 - w)));
                let gu = yr[$j] * ur[$j];
                du[$j].write(yr[$j] * (base * scale.at($j) + b * g));
                acc_base[$j] += gu * base;
                acc_linear[$j] += gu * (g - base);
                dg[$j].write(gu * (slope * scale.at($j) + b));
            }};
        }
        match base {
            BaseAct::Silu => {
                for j in 0..c {
                    step!(j, 1.0 / (1.0 + exp(-gr[j])));
                }
            }
            BaseAct::Relu => {
                for j in 0..c {
                    step!(j, if gr[j] > 0.0 { 1.0 } else { 0.0 });
                }
            }
            BaseAct::Gelu | BaseAct::Mish => unreachable!("no fused kernel for {base:?}"),
        }
    }
    // SAFETY: the loops wrote every slot of both: whole rows of c covering the block
    // (asserted).
    let (dg_filled, du_filled) =
        unsafe { (Fresh::assume_filled(d_gate).1, Fresh::assume_filled(d_up).1) };
    (dg_filled, du_filled, acc)
}

impl CustomOp3 for DynActGluBackward {
    fn name(&self) -> &'static str {
        "dynact-glu-backward"
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
        let (gate, up, grad) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let c = *l1.dims().last().unwrap_or(&1);
        let params: Vec<f32> = {
            let (storage, layout) = self.params.storage_and_layout();
            match &*storage {
                candle_core::Storage::Cpu(s) => f32_slice(s, layout, self.name())?.to_vec(),
                _ => candle_core::bail!("dynact-glu-backward: parameters off the CPU"),
            }
        };
        let (alpha, beta) = channel_params(&params, c, self.name())?;
        let n = gate.len();
        let per_param = params.len() / 2;
        let inputs = (gate, up, grad);
        let widths = (c, 2 * per_param);
        let (mut out, partials) = match per_param {
            1 => {
                let pair = (Layer(alpha[0] - beta[0]), Layer(beta[0]));
                self.backward_rows(inputs, widths, pair, backward_block_layer)
            }
            _ => {
                let scale: Vec<f32> = alpha.iter().zip(&beta).map(|(a, b)| a - b).collect();
                let pairs = (&scale[..], &beta[..]);
                self.backward_rows(inputs, widths, pairs, backward_block_channels)
            }
        };
        let sums = sum_block_partials(&partials, 2 * c);
        if per_param == 1 {
            out.push(sums[..c].iter().sum::<f64>() as f32);
            out.push(sums[c..].iter().sum::<f64>() as f32);
        } else {
            out.extend(sums.iter().map(|s| *s as f32));
        }
        Ok((CpuStorage::F32(out), Shape::from(2 * n + 2 * per_param)))
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
        use crate::cuda_kernels::{f32_view, launch, output, storage, DYNACT_GLU, DYNACT_GLU_SUMS};
        use candle_core::backend::BackendStorage;

        let dev = s1.device();
        let (gate, up) = (
            f32_view(s1, l1, self.name())?,
            f32_view(s2, l2, self.name())?,
        );
        let grad = f32_view(s3, l3, self.name())?;
        let (stored, params_layout) = self.params.storage_and_layout();
        let candle_core::Storage::Cuda(params_storage) = &*stored else {
            candle_core::bail!("dynact-glu-backward: parameters off the GPU");
        };
        let params = f32_view(params_storage, params_layout, self.name())?;
        let c = *l1.dims().last().unwrap_or(&1);
        let per = param_count(params_layout.shape().elem_count(), c, self.name())? as u32;
        let n = l1.shape().elem_count();
        let rows = n / c.max(1);
        let blocks = rows.div_ceil(ROWS_PER_BLOCK);
        // [d gate; d up; d alpha; d beta], and the blocks' partial sums for alpha and beta.
        let out = output(dev, 2 * n + 2 * per as usize)?;
        let partials = output(dev, blocks * 2 * c)?;
        let (rows_arg, n_arg, blocks_arg) = (rows as u64, n as u64, blocks as u64);
        let (c_arg, relu) = (c as u32, (self.base == BaseAct::Relu) as i32);
        launch!(dev, "dynact_glu", DYNACT_GLU, dynact_glu_backward_f32, blocks * c;
            &gate, &up, &grad, &params, &out, &partials, &rows_arg, &c_arg, &per, &relu);
        // The blocks' partials summed per (parameter, channel) in f64 by a warp each, in
        // blocks of 2 warps (2,048 of paper.toml's make 1,024 blocks), then per parameter (two
        // kernels, so that no thread sums every channel and block in series).
        // SAFETY: the first kernel writes all 2c sums before the second reads them.
        let sums = unsafe { dev.alloc::<f64>(2 * c) }?;
        launch!(dev, "dynact_glu_sums", DYNACT_GLU_SUMS, dynact_glu_channel_sums_f64,
            2 * c * crate::ops::LANES, block 64;
            &partials, &sums, &blocks_arg, &c_arg);
        launch!(dev, "dynact_glu_sums", DYNACT_GLU_SUMS, dynact_glu_param_grads_f32,
            2 * per as usize;
            &sums, &out, &n_arg, &c_arg, &per);
        Ok((storage(out, dev), Shape::from(2 * n + 2 * per as usize)))
    }
}
