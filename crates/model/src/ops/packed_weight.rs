//! An inference model's linear layers on AVX-512: each weight packed once, when the model is
//! built, into the panels its product's kernel reads. The gemm crate packs a weight into the
//! same layout on every product (it cannot know the weight is fixed): 3.3% of a cpu-repro
//! evaluation pass, and its driver about 1% more.
//!
//! A panel holds 64 outputs (four AVX-512 vectors) for every input in order; a tile of the
//! kernel is one panel by 6 rows of the input, 24 accumulators. Each output element is one
//! chain of fused multiply-adds over the input in order, in the blocks of depth the gemm
//! crate cuts (512 or more, [`depth_block`]), each block's chain added to the sum before it:
//! the gemm crate's blocked kernels compute the same bits (tested), so a model gives the same
//! values packed or not wherever the gemm crate takes those kernels (two rows or more).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Outputs per panel: four AVX-512 vectors.
const WIDTH: usize = 64;

/// Input rows per tile: 6 rows of 4 vectors are 24 of the 32 registers.
const ROWS: usize = 6;

/// The gemm crate's threshold (m n k) for sharing one product among threads.
const THREADING_THRESHOLD: usize = 48 * 48 * 256;

/// A linear layer's fixed weight in panels, for [`PackedWeight::product`].
#[derive(Clone)]
pub struct PackedWeight {
    /// Inputs.
    k: usize,
    /// Outputs.
    n: usize,
    /// Panel p holds (input kk, output p * 64 + i) at `panels[(p * k + kk) * 64 + i]`, zeros
    /// past the last output.
    panels: Vec<f32>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight({} inputs, {} outputs)", self.k, self.n)
    }
}

impl PackedWeight {
    /// Whether this CPU runs the kernel (AVX-512).
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The weight `w_t`, stored (inputs k, outputs n) row-major (a linear layer's (out, in)
    /// weight transposed), in panels.
    pub fn of_transposed(w_t: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(
            w_t.len(),
            k * n,
            "packed weight: {k} x {n} is not the weight's size"
        );
        let count = n.div_ceil(WIDTH);
        let mut panels = vec![0f32; count * k * WIDTH];
        for (p, panel) in panels.chunks_exact_mut((k * WIDTH).max(1)).enumerate() {
            let (first, width) = (p * WIDTH, WIDTH.min(n - p * WIDTH));
            for (kk, row) in panel.chunks_exact_mut(WIDTH).enumerate() {
                row[..width].copy_from_slice(&w_t[kk * n + first..][..width]);
            }
        }
        PackedWeight { k, n, panels }
    }

    /// (inputs, outputs).
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// y (rows, n) = x (rows, k) times the weight, its panels shared among the pool's threads
    /// where the product is large enough to pay for it (as the gemm crate shares its own).
    /// Panics without AVX-512 ([`PackedWeight::available`]) or where x is not (rows, k).
    pub fn product(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        assert!(Self::available(), "packed product: the CPU lacks AVX-512");
        assert_eq!(
            x.len(),
            rows * k,
            "packed product: the input is not {rows} rows of {k}"
        );
        let len = rows * n;
        if k == 0 {
            return vec![0f32; len];
        }
        let mut y = Vec::<f32>::with_capacity(len);
        let out = SendPtr(y.as_mut_ptr());
        let depth = depth_block(n, rows, k);
        let count = n.div_ceil(WIDTH);
        // The panels `range`, each written in full into y.
        let panels = |range: std::ops::Range<usize>| {
            let out = &out;
            for p in range {
                // SAFETY: the CPU has AVX-512 (asserted); panel p's columns of y's rows lie
                // inside y's capacity, x holds rows * k (asserted), and the panel k * 64.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    self.panel_product(p, x, rows, depth, out.0)
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (p, out, depth);
            }
        };
        let tasks = rayon::current_num_threads().min(count);
        if tasks < 2 || rows * n * k < THREADING_THRESHOLD {
            panels(0..count);
        } else {
            (0..tasks)
                .into_par_iter()
                .for_each(|t| panels(t * count / tasks..(t + 1) * count / tasks));
        }
        // SAFETY: every panel wrote its columns of every row: all of y.
        unsafe { y.set_len(len) };
        y
    }

    /// Panel p's columns of y (rows, n) at `y`, in tiles of 6 rows, depth block by block.
    ///
    /// # Safety
    /// AVX-512; x holds rows * k; y has room for rows * n.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn panel_product(&self, p: usize, x: &[f32], rows: usize, depth: usize, y: *mut f32) {
        let (k, n) = (self.k, self.n);
        let columns = WIDTH.min(n - p * WIDTH);
        for start in (0..k).step_by(depth) {
            let tile = Tile {
                panel: self.panels[(p * k + start) * WIDTH..].as_ptr(),
                x_stride: k,
                y_stride: n,
                depth: depth.min(k - start),
                columns,
                add: start > 0,
            };
            for first in (0..rows).step_by(ROWS) {
                let at = (
                    x[first * k + start..].as_ptr(),
                    // SAFETY: row `first`'s panel columns lie inside y (the caller's room).
                    unsafe { y.add(first * n + p * WIDTH) },
                );
                // SAFETY: the tile's rows of x and y lie inside them (first + rows ≤ rows),
                // and the panel's depth rows inside the panels.
                unsafe { tile.run(ROWS.min(rows - first), at) }
            }
        }
    }
}

/// y (rows, n) = x (rows, k) times `weight`, x an f32 CPU tensor: an inference product, with
/// no backward pass (the caller keeps tensors that need gradients off it).
pub fn packed_product(x: &Tensor, weight: &Arc<PackedWeight>) -> Result<Tensor> {
    x.contiguous()?
        .apply_op1_no_bwd(&PackedProduct(weight.clone()))
}

/// The op of [`packed_product`].
struct PackedProduct(Arc<PackedWeight>);

impl CustomOp1 for PackedProduct {
    fn name(&self) -> &'static str {
        "packed-product"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, k) = l.shape().dims2()?;
        let (inputs, outputs) = self.0.dims();
        if k != inputs || !PackedWeight::available() {
            candle_core::bail!(
                "packed product: rows of {k} for a weight of {inputs} inputs, or no AVX-512"
            );
        }
        let x = super::f32_slice(s, l, self.name())?;
        Ok((
            CpuStorage::F32(self.0.product(x, rows)),
            Shape::from((rows, outputs)),
        ))
    }
}

/// The depth the gemm crate's blocked kernels sum over in one chain: for a product of m rows
/// of its kernel (our outputs: it computes the transposed product) by n columns (our rows),
/// k deep, k itself up to 512; beyond, blocks of its own size (from the caches) of equal depth.
fn depth_block(m: usize, n: usize, k: usize) -> usize {
    if m <= 64 && n <= 64 {
        k.min(512)
    } else {
        gemm_common::cache::kernel_params(m, n, k, WIDTH, ROWS, 4).kc
    }
    .max(1)
}

/// What every tile of one panel and depth block shares.
#[cfg(target_arch = "x86_64")]
struct Tile {
    /// The panel at the block's first input.
    panel: *const f32,
    x_stride: usize,
    y_stride: usize,
    /// Inputs in the block.
    depth: usize,
    /// Valid columns of the panel (1 to 64).
    columns: usize,
    /// Whether the block's sums are added to y's values (the blocks after the first).
    add: bool,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// The tile of `rows` (1 to 6) rows at (x, y).
    ///
    /// # Safety
    /// AVX-512, and the pointers valid for the tile's elements at the strides.
    unsafe fn run(&self, rows: usize, at: (*const f32, *mut f32)) {
        // SAFETY: passed on from the caller.
        unsafe {
            match rows {
                6 => self.rows::<6>(at),
                5 => self.rows::<5>(at),
                4 => self.rows::<4>(at),
                3 => self.rows::<3>(at),
                2 => self.rows::<2>(at),
                _ => self.rows::<1>(at),
            }
        }
    }

    /// R rows by the panel: per input, the panel's four vectors, and each row's element
    /// broadcast into a fused multiply-add with them.
    ///
    /// # Safety
    /// As [`Tile::run`].
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize>(&self, (x, y): (*const f32, *mut f32)) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's pointers, at the tile's strides.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 4]; R];
            let x_rows: [*const f32; R] = std::array::from_fn(|r| x.add(r * self.x_stride));
            // One input's step: the panel's four vectors times each row's element.
            let step = |acc: &mut [[__m512; 4]; R], kk: usize| {
                let w = self.panel.add(kk * WIDTH);
                let w = [
                    _mm512_loadu_ps(w),
                    _mm512_loadu_ps(w.add(16)),
                    _mm512_loadu_ps(w.add(32)),
                    _mm512_loadu_ps(w.add(48)),
                ];
                for (acc, row) in acc.iter_mut().zip(x_rows) {
                    let v = _mm512_set1_ps(*row.add(kk));
                    for (acc, w) in acc.iter_mut().zip(w) {
                        *acc = _mm512_fmadd_ps(w, v, *acc);
                    }
                }
            };
            // Four steps a turn of the loop: fewer instructions that are not arithmetic.
            let whole = self.depth - self.depth % 4;
            for kk in (0..whole).step_by(4) {
                for u in 0..4 {
                    step(&mut acc, kk + u);
                }
            }
            for kk in whole..self.depth {
                step(&mut acc, kk);
            }
            for (r, acc) in acc.iter().enumerate() {
                let row = y.add(r * self.y_stride);
                for (q, &sum) in acc.iter().enumerate() {
                    let valid = self.columns.saturating_sub(16 * q).min(16);
                    if valid == 0 {
                        break;
                    }
                    let (mask, at) = ((u32::MAX >> (32 - valid)) as __mmask16, row.add(16 * q));
                    let value = match self.add {
                        true => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), sum),
                        false => sum,
                    };
                    _mm512_mask_storeu_ps(at, mask, value);
                }
            }
        }
    }
}

/// y's pointer, handed to the tasks that write its disjoint panels of columns.
struct SendPtr(*mut f32);
// SAFETY: the tasks write disjoint columns and end before y is read.
unsafe impl Sync for SendPtr {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values as values;

    /// y = x w_t by the gemm crate, as the unpacked layer computes it.
    fn gemm_crate(x: &[f32], w_t: &[f32], (rows, k, n): (usize, usize, usize)) -> Vec<f32> {
        let mut y = vec![f32::NAN; rows * n];
        // SAFETY: the three matrices at these strides lie inside their slices.
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w_t.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
        y
    }

    #[test]
    fn packed_products_are_the_gemm_crate_s_bits_and_near_a_plain_sum() {
        if !PackedWeight::available() {
            eprintln!("no AVX-512 here: the packed product never runs");
            return;
        }
        // Rows under, at and past a tile; outputs under, at and past a panel and a vector;
        // depths of one block and of several (past 512); shared among threads or not.
        for (rows, k, n) in [
            (2, 3, 2),
            (6, 128, 64),
            (7, 33, 17),
            (13, 128, 200),
            (384, 128, 704),
            (100, 1100, 130),
            (70, 600, 65),
        ] {
            let x = values(rows * k, 1);
            let w_t = values(k * n, 2);
            let packed = PackedWeight::of_transposed(&w_t, k, n);
            let ours = packed.product(&x, rows);
            let theirs = gemm_crate(&x, &w_t, (rows, k, n));
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{rows}x{k}x{n}: element {i}");
                let (r, c) = (i / n, i % n);
                let exact: f64 = (0..k)
                    .map(|kk| x[r * k + kk] as f64 * w_t[kk * n + c] as f64)
                    .sum();
                assert!(
                    (*a as f64 - exact).abs() < 1e-5 * k as f64,
                    "{a} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn an_empty_depth_gives_zeros() {
        if !PackedWeight::available() {
            return;
        }
        let packed = PackedWeight::of_transposed(&[], 0, 5);
        assert_eq!(packed.product(&[], 3), vec![0f32; 15]);
    }
}
