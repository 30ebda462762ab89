//! Rotary position embedding in the Hugging Face convention: the fused kernel (the rotation
//! forward, its transpose backward) on a CPU and on a CUDA GPU (`kernels/rope.cu`), beside
//! [`rope_reference`], the `rotate_half` composition every other device runs. The fused kernel
//! also moves the heads ahead of the positions, (B, T, heads, D) to (B, heads, T, D), which
//! attention needs and which otherwise costs a transposed copy each way.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

use super::heads::{heads_first_reference, HeadRows};
use super::{f32_slice, fused};

/// Rotary position embedding in the Hugging Face convention (`x cos + rotate_half(x) sin`, with
/// `rotate_half([x1, x2]) = [-x2, x1]`) of x (B, T, heads, D), as a projection's output splits
/// into heads, returned as (B, heads, T, D); cos, sin: (T, D).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if d % 2 != 0 {
        candle_core::bail!("rope: the head width {d} is odd; rotary embeddings turn pairs of values, so it must be even");
    }
    if (fused(x) || super::fused_on_cuda(x)) && cos.dtype() == DType::F32 {
        return x
            .contiguous()?
            .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope);
    }
    rope_reference(x, cos, sin)
}

/// [`rope`] as a composition of differentiable Candle ops (the transpose to (B, heads, T, D),
/// then `x cos + rotate_half(x) sin`): what runs off the CPU, and what the fused kernel is
/// tested against.
pub fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x = heads_first_reference(x)?;
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2 (halves of the last dimension), each output row from
/// its [`HeadRows::source`]; with `inverse`, the transposed map dx1 = g1 c1 + g2 s2,
/// dx2 = g2 c2 - g1 s1, which is the backward pass.
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], rows: HeadRows, inverse: bool) -> Vec<f32> {
    let d = rows.d;
    rows.moved(x, inverse, |row, position| {
        let p = position * d;
        rotate_row(row, &cos[p..][..d], &sin[p..][..d], inverse);
    })
}

/// One row of [`rotate`], in place (`row` holds x on entry). Every half is cut to the same
/// length first, so that the loops carry no bounds checks and vectorize (with an index check
/// per element they ran one element at a time: RoPE took 5% of an evaluation pass).
#[inline(always)]
fn rotate_row(row: &mut [f32], c: &[f32], s: &[f32], inverse: bool) {
    let h = row.len() / 2;
    let (x1, x2) = row.split_at_mut(h);
    let x2 = &mut x2[..h];
    let (c1, c2, s1, s2) = (&c[..h], &c[h..][..h], &s[..h], &s[h..][..h]);
    if inverse {
        for j in 0..h {
            let (a, b) = (x1[j], x2[j]);
            x1[j] = a * c1[j] + b * s2[j];
            x2[j] = b * c2[j] - a * s1[j];
        }
    } else {
        for j in 0..h {
            let (a, b) = (x1[j], x2[j]);
            x1[j] = a * c1[j] - b * s1[j];
            x2[j] = b * c2[j] + a * s2[j];
        }
    }
}

/// [`rotate_row`] forward, from `from` into `to` (both a row of D): what a kernel that reads
/// a row where it lies takes, without copying it first.
#[inline(always)]
pub(crate) fn rotate_row_from(from: &[f32], to: &mut [f32], c: &[f32], s: &[f32]) {
    let h = to.len() / 2;
    let (y1, y2) = to.split_at_mut(h);
    let (y2, x1, x2) = (&mut y2[..h], &from[..h], &from[h..][..h]);
    let (c1, c2, s1, s2) = (&c[..h], &c[h..][..h], &s[..h], &s[h..][..h]);
    for j in 0..h {
        let (a, b) = (x1[j], x2[j]);
        y1[j] = a * c1[j] - b * s1[j];
        y2[j] = b * c2[j] + a * s2[j];
    }
}

/// Rows of D rotated from `from` into `to`: row i of `to` (D = `to.len()` / rows, the tables'
/// rows) from the D elements at `from[i * stride..]`, by the tables' row i ([`rotate_row_from`]
/// each). Where D is a multiple of 32 and the CPU has AVX-512, in its registers: the loop per
/// row spent half its time on its own bounds and alias checks, the rows being short (RoPE in
/// inference attention 2.0% of a cpu-repro evaluation pass, perf). The same bits either way.
pub(crate) fn rotate_rows_from(
    to: &mut [f32],
    (from, stride): (&[f32], usize),
    (cos, sin): (&[f32], &[f32]),
    d: usize,
) {
    let rows = to.len() / d.max(1);
    assert!(
        d > 0
            && d.is_multiple_of(2)
            && rows * d == to.len()
            && cos.len() >= to.len()
            && sin.len() >= to.len()
            && (rows == 0 || (rows - 1) * stride + d <= from.len()),
        "rotate rows: {} elements into rows of {d}, from {} at a stride of {stride}, tables of {} and {}",
        to.len(),
        from.len(),
        cos.len(),
        sin.len()
    );
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(32) && is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512; the assertion keeps every row inside the slices.
        unsafe { rotate_rows_avx512(to, from, stride, cos, sin, d) };
        return;
    }
    super::wide::widest(|| {
        for (i, row) in to.chunks_exact_mut(d).enumerate() {
            let p = i * d;
            rotate_row_from(
                &from[i * stride..][..d],
                row,
                &cos[p..][..d],
                &sin[p..][..d],
            );
        }
    })
}

/// [`rotate_rows_from`] in AVX-512 registers, 16 of a row's pairs at a time: the same
/// products, and the difference and sum of [`rotate_row_from`] (no fused multiply-adds).
///
/// # Safety
/// AVX-512F; D a multiple of 32, and the rows `rotate_rows_from` asserts inside the slices.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rotate_rows_avx512(
    to: &mut [f32],
    from: &[f32],
    stride: usize,
    cos: &[f32],
    sin: &[f32],
    d: usize,
) {
    use std::arch::x86_64::*;
    let h = d / 2;
    // SAFETY: the caller's rows, each read and written at offsets under D.
    unsafe {
        for i in 0..to.len() / d {
            let (x, y) = (from.as_ptr().add(i * stride), to.as_mut_ptr().add(i * d));
            let (c, s) = (cos.as_ptr().add(i * d), sin.as_ptr().add(i * d));
            for j in (0..h).step_by(16) {
                let (a, b) = (_mm512_loadu_ps(x.add(j)), _mm512_loadu_ps(x.add(h + j)));
                let (c1, c2) = (_mm512_loadu_ps(c.add(j)), _mm512_loadu_ps(c.add(h + j)));
                let (s1, s2) = (_mm512_loadu_ps(s.add(j)), _mm512_loadu_ps(s.add(h + j)));
                let y1 = _mm512_sub_ps(_mm512_mul_ps(a, c1), _mm512_mul_ps(b, s1));
                let y2 = _mm512_add_ps(_mm512_mul_ps(b, c2), _mm512_mul_ps(a, s2));
                _mm512_storeu_ps(y.add(j), y1);
                _mm512_storeu_ps(y.add(h + j), y2);
            }
        }
    }
}

struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
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
        let (x, cos, sin) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let (rows, shape) = HeadRows::of(l1, false, self.name())?;
        Ok((CpuStorage::F32(rotate(x, cos, sin, rows, false)), shape))
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
        cuda_rotate(s1, l1, s2, l2, s3, l3, false)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad
            .contiguous()?
            .apply_op3_no_bwd(cos, sin, &RopeBackward)?;
        Ok((Some(dx), None, None))
    }
}

struct RopeBackward;

impl CustomOp3 for RopeBackward {
    fn name(&self) -> &'static str {
        "rope-backward"
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
        let (g, cos, sin) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let (rows, shape) = HeadRows::of(l1, true, self.name())?;
        Ok((CpuStorage::F32(rotate(g, cos, sin, rows, true)), shape))
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
        cuda_rotate(s1, l1, s2, l2, s3, l3, true)
    }
}

/// `rotate` on a CUDA GPU: one thread per (row, pair) of `kernels/rope.cu`.
#[cfg(feature = "cuda")]
fn cuda_rotate(
    s1: &candle_core::CudaStorage,
    l1: &Layout,
    s2: &candle_core::CudaStorage,
    l2: &Layout,
    s3: &candle_core::CudaStorage,
    l3: &Layout,
    inverse: bool,
) -> Result<(candle_core::CudaStorage, Shape)> {
    use crate::cuda_kernels::{f32_view, launch, output, storage, ROPE};
    use candle_core::backend::BackendStorage;

    let dev = s1.device();
    let op = "rope";
    let (x, cos, sin) = (
        f32_view(s1, l1, op)?,
        f32_view(s2, l2, op)?,
        f32_view(s3, l3, op)?,
    );
    let (sizes, shape) = HeadRows::of(l1, inverse, op)?;
    let n = l1.shape().elem_count();
    let rows = n / sizes.d.max(1);
    let y = output(dev, n)?;
    let (rows_arg, t, heads, d) = (
        rows as u64,
        sizes.t as u32,
        sizes.heads as u32,
        sizes.d as u32,
    );
    let inverse = inverse as i32;
    launch!(dev, "rope", ROPE, rope_f32, rows * (sizes.d / 2);
        &x, &cos, &sin, &y, &rows_arg, &t, &heads, &d, &inverse);
    Ok((storage(y, dev), shape))
}
