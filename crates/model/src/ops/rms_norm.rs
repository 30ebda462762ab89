//! RMSNorm over the last dimension, computed in f32: the fused kernel (the weight applied in the
//! same pass; the backward yields d x and d weight, d weight summed in two deterministic stages)
//! on a CPU and on a CUDA GPU (`kernels/rms_norm.cu`), beside [`rms_norm_reference`], the
//! Candle composition every other device runs.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::exp::wide_fma;
use super::fresh::{fill_row_pairs, par_fresh_chunks, par_fresh_pairs, Filled, Fresh};
use super::ROWS_PER_BLOCK;
use super::{
    f32_slice, fold_lanes, fused, lane_dot, last_dim, rows_per_chunk, sum_block_partials, LANES,
};

/// RMSNorm over the last dimension, computed in f32: x / sqrt(mean(x^2) + eps) * weight.
/// The input is cast to f32 first, so on CPU every input dtype takes the fused kernel.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let on_device = fused(&x) || super::fused_on_cuda(&x);
    let y = if on_device && weight.elem_count() == last_dim(x.layout()) {
        x.contiguous()?.apply_op2(
            &weight.to_dtype(DType::F32)?.contiguous()?,
            RmsNorm { eps: eps as f32 },
        )?
    } else {
        rms_norm_reference(&x, weight, eps)?
    };
    y.to_dtype(dtype)
}

/// [`rms_norm`] as a composition of differentiable Candle ops (computed in f32, returned in
/// the input's dtype): what runs off the CPU, and what the fused kernel is tested against.
pub fn rms_norm_reference(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?
        .broadcast_mul(&weight.to_dtype(DType::F32)?)?
        .to_dtype(dtype)
}

/// A residual add and the RMSNorm that reads its sum: (h, [`rms_norm`]`(h, weight, eps)`) with
/// h = x + y. Where no input tracks a gradient (inference) on a CPU in f32, one kernel writes
/// both, each row's sum normalized while it is in cache, where the add took a pass of its own
/// (Candle's, 1.5% of a cpu-repro evaluation pass, perf); else the two ops as they are.
pub fn add_rms_norm(x: &Tensor, y: &Tensor, weight: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let untracked = [x, y, weight].iter().all(|t| !t.track_op());
    let fits = fused(x) && fused(y) && fused(weight) && x.shape() == y.shape();
    if !(untracked && fits && weight.elem_count() == last_dim(x.layout())) {
        let h = (x + y)?;
        let normed = rms_norm(&h, weight, eps)?;
        return Ok((h, normed));
    }
    let flat = x.contiguous()?.apply_op3_no_bwd(
        &y.contiguous()?,
        &weight.contiguous()?,
        &AddRmsNorm { eps: eps as f32 },
    )?;
    let n = x.elem_count();
    Ok((
        flat.narrow(0, 0, n)?.reshape(x.shape())?,
        flat.narrow(0, n, n)?.reshape(x.shape())?,
    ))
}

/// The kernel of [`add_rms_norm`]: one flat output, [x + y; its rows normalized], each row of
/// the two written in one task with [`RmsNorm`]'s arithmetic.
struct AddRmsNorm {
    eps: f32,
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add-rms-norm"
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
        let (x, y) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
        );
        let w = f32_slice(s3, l3, self.name())?;
        let c = last_dim(l1);
        assert_eq!(
            w.len(),
            c,
            "add-rms-norm: a weight of {} for rows of {c}",
            w.len()
        );
        let chunk = c * rows_per_chunk(x.len() / c.max(1), c);
        let out = par_fresh_pairs(x.len(), chunk, |rows, h, normed| {
            add_normalize_rows(&x[rows.clone()], &y[rows], w, self.eps, h, normed)
        });
        Ok((CpuStorage::F32(out), Shape::from(2 * x.len())))
    }
}

/// x -> x / sqrt(mean(x^2) + eps) * weight per row.
struct RmsNorm {
    eps: f32,
}

#[inline(always)]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    inv_rms_of(lane_dot(row, row), row.len(), eps)
}

/// 1 / rms from a row's sum of squares and its length.
#[inline(always)]
fn inv_rms_of(sum_of_squares: f32, len: usize, eps: f32) -> f32 {
    1.0 / (sum_of_squares / len as f32 + eps).sqrt()
}

// The rows run in wrappers compiled for the widest vectors: inside `widest`'s closure the
// compiler kept 4-lane code (the closure was not inlined), and the add-and-norm took 4.1% of a
// cpu-repro evaluation pass (perf). A wrapper takes a task's rows, not one: called row by
// row, the dispatch and the task's closure took a third as much time again as the rows.
wide_fma!(
    /// Rows of [`RmsNorm`]'s forward, of `weight`'s length.
    fn normalize_rows<'a>(rows: &[f32], weight: &[f32], eps: f32, out: Fresh<'a>) -> Filled<'a> =
        normalize_rows_loop
);

wide_fma!(
    /// Rows of [`AddRmsNorm`], of `weight`'s length: x + y filled into `h`, and each row of
    /// that sum normalized into `normed`.
    fn add_normalize_rows<'h, 'n>(
        x: &[f32],
        y: &[f32],
        weight: &[f32],
        eps: f32,
        h: Fresh<'h>,
        normed: Fresh<'n>
    ) -> (Filled<'h>, Filled<'n>) = add_normalize_rows_loop
);

#[inline(always)]
fn normalize_rows_loop<'a>(rows: &[f32], weight: &[f32], eps: f32, out: Fresh<'a>) -> Filled<'a> {
    let c = weight.len();
    // Inlined for sure, as in add_normalize_rows_loop.
    out.fill_rows(
        c,
        #[inline(always)]
        |r, out| {
            let row = &rows[r * c..][..c];
            scaled_row(row, weight, inv_rms(row, eps), out)
        },
    )
    .1
}

#[inline(always)]
fn add_normalize_rows_loop<'h, 'n>(
    x: &[f32],
    y: &[f32],
    weight: &[f32],
    eps: f32,
    h: Fresh<'h>,
    normed: Fresh<'n>,
) -> (Filled<'h>, Filled<'n>) {
    let c = weight.len();
    // Inlined for sure, so that the row is compiled at the wrapper's width.
    fill_row_pairs(
        (h, normed),
        c,
        #[inline(always)]
        |r, h, normed| {
            let at = r * c..(r + 1) * c;
            add_normalize_row(&x[at.clone()], &y[at], weight, eps, h, normed)
        },
    )
}

/// One row of [`add_normalize_rows_loop`].
#[inline(always)]
fn add_normalize_row<'h, 'n>(
    x: &[f32],
    y: &[f32],
    weight: &[f32],
    eps: f32,
    h: Fresh<'h>,
    normed: Fresh<'n>,
) -> (Filled<'h>, Filled<'n>) {
    let slots = h.into_slots();
    assert!(
        x.len() == slots.len() && y.len() == slots.len(),
        "add-rms-norm: rows of {} and {} for {} sums",
        x.len(),
        y.len(),
        slots.len()
    );
    // h's squares summed as it is written, in `lane_dot`'s lanes and order: read back for
    // the sum, h's rows stalled on their own stores (a third of the kernel, perf).
    let mut lanes = [0f32; LANES];
    let mut blocks = slots.chunks_exact_mut(LANES);
    for ((block, x), y) in (&mut blocks)
        .zip(x.chunks_exact(LANES))
        .zip(y.chunks_exact(LANES))
    {
        let block: &mut [MaybeUninit<f32>; LANES] = block.try_into().unwrap();
        let (x, y): (&[f32; LANES], &[f32; LANES]) = (x.try_into().unwrap(), y.try_into().unwrap());
        for l in 0..LANES {
            let v = x[l] + y[l];
            block[l].write(v);
            lanes[l] += v * v;
        }
    }
    let tail_start = x.len() - x.len() % LANES;
    let tail = blocks
        .into_remainder()
        .iter_mut()
        .zip(&x[tail_start..])
        .zip(&y[tail_start..]);
    for (lane, ((slot, x), y)) in lanes.iter_mut().zip(tail) {
        let v = x + y;
        slot.write(v);
        *lane += v * v;
    }
    // SAFETY: the loops wrote every slot: x, y and the slots are of one length (asserted).
    let (h, h_filled) = unsafe { Fresh::assume_filled(slots) };
    let r = inv_rms_of(fold_lanes(lanes), h.len(), eps);
    (h_filled, scaled_row(h, weight, r, normed))
}

/// `row` * `inv_rms` * `weight`, filled into `out`: the last step of the forward arithmetic of
/// [`RmsNorm`] and [`AddRmsNorm`], one row.
#[inline(always)]
fn scaled_row<'a>(row: &[f32], weight: &[f32], inv_rms: f32, out: Fresh<'a>) -> Filled<'a> {
    out.fill(row.iter().zip(weight).map(|(v, w)| v * inv_rms * w))
        .1
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let n = last_dim(l1);
        assert_eq!(
            w.len(),
            n,
            "rms-norm: a weight of {} for rows of {n}",
            w.len()
        );
        let chunk = n * rows_per_chunk(x.len() / n.max(1), n);
        let out = par_fresh_chunks(x.len(), chunk, |rows, fresh| {
            normalize_rows(&x[rows], w, self.eps, fresh)
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
        use crate::cuda_kernels::{f32_view, launch, output, storage, RMS_NORM};
        use candle_core::backend::BackendStorage;

        let dev = s1.device();
        let (x, w) = (
            f32_view(s1, l1, self.name())?,
            f32_view(s2, l2, self.name())?,
        );
        let c = last_dim(l1);
        let rows = l1.shape().elem_count() / c.max(1);
        let y = output(dev, rows * c)?;
        let (rows_arg, c_arg) = (rows as u64, c as u32);
        // One warp per row.
        let lanes = rows * super::LANES;
        launch!(dev, "rms_norm", RMS_NORM, rms_norm_f32, lanes;
            &x, &w, &y, &rows_arg, &c_arg, &self.eps);
        Ok((storage(y, dev), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // One flat tensor: [d x; d weight].
        let flat = x.apply_op3_no_bwd(weight, &grad, &RmsNormBackward { eps: self.eps })?;
        let n = x.elem_count();
        Ok((
            Some(flat.narrow(0, 0, n)?.reshape(x.shape())?),
            Some(flat.narrow(0, n, weight.elem_count())?),
        ))
    }
}

/// With x_hat = x r, r = 1/rms(x) and gw = g weight:
/// d x = r (gw - x_hat mean(gw x_hat)), d weight = sum over rows of g x_hat (in f32 over
/// blocks of 64 rows, then the blocks by [`sum_block_partials`]).
struct RmsNormBackward {
    eps: f32,
}

wide_fma!(
    /// Rows of [`RmsNormBackward`] (x, g and d x rows of `w`'s length): d x into `dx`, and
    /// g x_hat added into `acc` by channel. Compiled for the widest vectors: as a closure of
    /// the op, the compiler kept 4-lane code (2.2% of a cpu-repro training step, perf).
    fn norm_backward_rows(rows: (&[f32], &[f32], &[f32]), eps: f32, dx: &mut [f32], acc: &mut [f32]) =
        norm_backward_rows_loop
);

#[inline(always)]
fn norm_backward_rows_loop(
    (x, g, w): (&[f32], &[f32], &[f32]),
    eps: f32,
    dx: &mut [f32],
    acc: &mut [f32],
) {
    let c = w.len();
    assert!(
        c > 0 && x.len().is_multiple_of(c) && g.len() == x.len() && dx.len() == x.len(),
        "rms-norm backward: {} inputs, {} gradients and {} outputs in rows of {c}",
        x.len(),
        g.len(),
        dx.len()
    );
    let acc = &mut acc[..c];
    for (o, (xr, gr)) in dx.chunks_mut(c).zip(x.chunks(c).zip(g.chunks(c))) {
        // Every slice has length c: the loops run without bounds checks.
        let (o, xr, gr) = (&mut o[..c], &xr[..c], &gr[..c]);
        let r = inv_rms(xr, eps);
        for j in 0..c {
            acc[j] += gr[j] * (xr[j] * r);
        }
        let dot = weighted_dot(gr, w, xr, r) / c as f32;
        for j in 0..c {
            o[j] = r * (gr[j] * w[j] - xr[j] * r * dot);
        }
    }
}

/// `lane_sum(c, |j| g[j] * w[j] * (x[j] * r))` over rows of one length c, as whole blocks of
/// 32 lanes that vectorize (with the closure, lane_sum's loop did not).
#[inline(always)]
fn weighted_dot(g: &[f32], w: &[f32], x: &[f32], r: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let blocks = g
        .chunks_exact(LANES)
        .zip(w.chunks_exact(LANES))
        .zip(x.chunks_exact(LANES));
    for ((g, w), x) in blocks {
        let (g, w, x): (&[f32; LANES], &[f32; LANES], &[f32; LANES]) = (
            g.try_into().unwrap(),
            w.try_into().unwrap(),
            x.try_into().unwrap(),
        );
        for l in 0..LANES {
            lanes[l] += g[l] * w[l] * (x[l] * r);
        }
    }
    let tail_start = g.len() - g.len() % LANES;
    let tail = g[tail_start..]
        .iter()
        .zip(&w[tail_start..])
        .zip(&x[tail_start..]);
    for (lane, ((g, w), x)) in lanes.iter_mut().zip(tail) {
        *lane += g * w * (x * r);
    }
    fold_lanes(lanes)
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
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
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let g = f32_slice(s3, l3, self.name())?;
        let c = last_dim(l1);
        let mut out = vec![0f32; x.len() + c];
        let (dx, dw) = out.split_at_mut(x.len());
        let block = c * ROWS_PER_BLOCK;
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(block)
            .zip(x.par_chunks(block).zip(g.par_chunks(block)))
            .map(|(db, (xb, gb))| {
                let mut acc = vec![0f32; c];
                norm_backward_rows((xb, gb, w), self.eps, db, &mut acc);
                acc
            })
            .collect();
        let sums = sum_block_partials(&partials, c);
        dw.iter_mut().zip(&sums).for_each(|(d, s)| *d = *s as f32);
        Ok((CpuStorage::F32(out), Shape::from(x.len() + c)))
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
        use crate::cuda_kernels::{f32_view, launch, output, storage, RMS_NORM};
        use candle_core::backend::BackendStorage;

        let dev = s1.device();
        let (x, w) = (
            f32_view(s1, l1, self.name())?,
            f32_view(s2, l2, self.name())?,
        );
        let g = f32_view(s3, l3, self.name())?;
        let c = last_dim(l1);
        let rows = l1.shape().elem_count() / c.max(1);
        let blocks = rows.div_ceil(ROWS_PER_BLOCK);
        // [d x; d weight], each row's 1/rms, and the blocks' d weight partial sums.
        let out = output(dev, rows * c + c)?;
        let inv = output(dev, rows)?;
        let partials = output(dev, blocks * c)?;
        let (rows_arg, c_arg) = (rows as u64, c as u32);
        // One warp per row.
        let lanes = rows * super::LANES;
        launch!(dev, "rms_norm", RMS_NORM, rms_norm_backward_x_f32, lanes;
            &x, &w, &g, &out, &inv, &rows_arg, &c_arg, &self.eps);
        // Blocks of 256 threads: paper.toml's 256 row blocks of 384 channels make 384 blocks,
        // not 96, for 132 SMs.
        launch!(dev, "rms_norm", RMS_NORM, rms_norm_backward_w_partials_f32, blocks * c, block 256;
            &x, &g, &inv, &partials, &rows_arg, &c_arg);
        // One warp per channel, in blocks of 2 warps: 192 blocks for paper.toml's 384.
        launch!(dev, "rms_norm", RMS_NORM, rms_norm_backward_w_f32, c * super::LANES, block 64;
            &partials, &out, &rows_arg, &c_arg);
        Ok((storage(out, dev), Shape::from(rows * c + c)))
    }
}
