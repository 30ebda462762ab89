//! An inference model's linear layers on AVX-512: each weight packed once, when the model is
//! built, into the panels its product's kernel reads. The gemm crate packs a weight into the
//! same layout on every product (it cannot know the weight is fixed): 3.3% of a cpu-repro
//! evaluation pass, and its driver about 1% more.
//!
//! A panel holds 64 outputs (four AVX-512 vectors) for every input in order; a tile of the
//! kernel is one panel by 6 rows of the input, 24 accumulators. Each output element is one
//! chain of fused multiply-adds over the input in order, in the blocks of depth the gemm
//! crate cuts (all of k up to 512, [`depth_block`]), each block's chain added to the sum
//! before it: the gemm crate's blocked kernels compute the same bits (tested), so a model
//! gives the same values packed or not wherever the gemm crate takes those kernels (two rows
//! or more, two outputs or more, k of 3 or more; elsewhere it takes matrix-vector paths).
//!
//! A gated FFN's gate and up weights pack together ([`PackedWeight::of_gate_up`]): each panel
//! holds 32 channels' gates and the same 32 channels' ups, and its tiles end in the gate's
//! activation ([`PackedWeight::gated_product`]). The gates and ups are never stored: apart,
//! the gate's pass over them took 4.7% of a cpu-repro evaluation pass.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::SendPtr;

/// Outputs per panel: four AVX-512 vectors.
const WIDTH: usize = 64;

/// Channels per panel of a gate and up pack: half a panel each.
const PANEL_CHANNELS: usize = WIDTH / 2;

/// Input rows per tile: 6 rows of 4 vectors are 24 of the 32 registers.
const ROWS: usize = 6;

/// A linear layer's fixed weight in panels, for [`PackedWeight::product`], or a gated FFN's
/// gate and up weights, for [`PackedWeight::gated_product`].
pub struct PackedWeight {
    /// Inputs.
    k: usize,
    /// Outputs: all of them, or the channels of a gate and up pack (half of them).
    n: usize,
    gated: bool,
    /// Panel p holds (input kk, output p * 64 + i) at `panels[(p * k + kk) * 64 + i]`, zeros
    /// past the last output; in a gate and up pack, i < 32 is channel p * 32 + i's gate and
    /// i >= 32 channel p * 32 + i - 32's up.
    panels: Vec<f32>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outputs = if self.gated {
            "gated channels"
        } else {
            "outputs"
        };
        write!(f, "PackedWeight({} inputs, {} {outputs})", self.k, self.n)
    }
}

impl PackedWeight {
    /// The deepest input [`PackedWeight::gated_product`] takes on every shape: the gemm crate
    /// sums up to 512 inputs in one block ([`depth_block`]).
    pub const MAX_GATED_DEPTH: usize = 512;

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
        Self::pack(w_t, k, n, false)
    }

    /// The gate and up weights `w_t` of a gated FFN of `c` channels, stored (inputs k, 2c)
    /// row-major, each row its c gates' weights then its c ups' (the two layers' weights,
    /// transposed, side by side), in panels of 32 channels' gates and ups.
    pub fn of_gate_up(w_t: &[f32], k: usize, c: usize) -> Self {
        Self::pack(w_t, k, c, true)
    }

    fn pack(w_t: &[f32], k: usize, n: usize, gated: bool) -> Self {
        let stored = if gated { 2 * n } else { n };
        assert_eq!(
            w_t.len(),
            k * stored,
            "packed weight: {k} x {stored} is not the weight's size"
        );
        // Where panel p's outputs come from in a row of w_t, and how many: one run, or a run
        // of gates and one of ups.
        let runs = |p: usize| -> Vec<(usize, usize, usize)> {
            match gated {
                false => vec![(0, p * WIDTH, WIDTH.min(n - p * WIDTH))],
                true => {
                    let (first, width) = (
                        p * PANEL_CHANNELS,
                        PANEL_CHANNELS.min(n - p * PANEL_CHANNELS),
                    );
                    vec![(0, first, width), (PANEL_CHANNELS, n + first, width)]
                }
            }
        };
        let count = n.div_ceil(if gated { PANEL_CHANNELS } else { WIDTH });
        let mut panels = vec![0f32; count * k * WIDTH];
        for (p, panel) in panels.chunks_exact_mut((k * WIDTH).max(1)).enumerate() {
            for (kk, row) in panel.chunks_exact_mut(WIDTH).enumerate() {
                for (to, from, width) in runs(p) {
                    row[to..to + width].copy_from_slice(&w_t[kk * stored + from..][..width]);
                }
            }
        }
        PackedWeight {
            k,
            n,
            gated,
            panels,
        }
    }

    /// (inputs, outputs), or (inputs, channels) of a gate and up pack.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Panels in the pack (each of k rows; none stored where k is 0).
    fn count(&self) -> usize {
        let per_panel = if self.gated { PANEL_CHANNELS } else { WIDTH };
        self.n.div_ceil(per_panel)
    }

    /// y (rows, n) = x (rows, k) times the weight, its panels shared among the pool's threads
    /// where the product is large enough to pay for it (as the gemm crate shares its own).
    /// Panics without AVX-512 ([`PackedWeight::available`]), on a gate and up pack, or where
    /// x is not (rows, k).
    pub fn product(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert!(
            !self.gated,
            "packed product: a gate and up pack has no plain product"
        );
        let (k, n) = (self.k, self.n);
        let depth = depth_block(n, rows, k);
        self.for_each_tile(x, rows, |p, out, first_row, tile_rows| {
            // Panel p's columns of y, block by block of depth; none where k is 0.
            let columns = WIDTH.min(n - p * WIDTH);
            if k == 0 {
                // SAFETY: the tile's rows of panel p's columns lie inside y (for_each_tile's
                // room).
                unsafe {
                    for r in first_row..first_row + tile_rows {
                        out.add(r * n + p * WIDTH).write_bytes(0, columns);
                    }
                }
            }
            for start in (0..k).step_by(depth) {
                let tile = Tile {
                    panel: self.panels[(p * k + start) * WIDTH..].as_ptr(),
                    x_stride: k,
                    depth: depth.min(k - start),
                };
                let end = Store {
                    // SAFETY: row `first_row`'s panel columns lie inside y (for_each_tile's
                    // room).
                    y: unsafe { out.add(first_row * n + p * WIDTH) },
                    y_stride: n,
                    columns,
                    accumulate: start > 0,
                };
                // SAFETY: the tile's rows of x and y lie inside them, the panel's depth rows
                // inside the panels (for_each_tile's promise).
                unsafe { tile.run(tile_rows, x[first_row * k + start..].as_ptr(), &end) }
            }
        })
    }

    /// Whether [`PackedWeight::gated_product`] takes `rows` rows of `k` inputs: a gate and up
    /// pack of k inputs, k > 0, and no deeper than one block of the gemm crate's (the gates
    /// and ups would need storing between blocks).
    pub fn takes_gated(&self, rows: usize, k: usize) -> bool {
        self.gated && k > 0 && k == self.k && depth_block(2 * self.n, rows, k) >= k
    }

    /// h (rows, c) = value(g, u, j) for each row's gate g and up u of each channel j, where
    /// [g | u] = x (rows, k) times the gate and up weights: the gated FFN's hidden layer in
    /// one kernel. None where the pack does not take the product
    /// ([`PackedWeight::takes_gated`]). `value` must give what the FFN's own kernel gives for
    /// (g, u): the pass after the two products this replaces.
    pub fn gated_product<F>(&self, x: &[f32], rows: usize, value: &F) -> Option<Vec<f32>>
    where
        F: Fn(f32, f32, usize) -> f32 + Sync,
    {
        let (k, c) = (self.k, self.n);
        if !self.takes_gated(rows, k) {
            return None;
        }
        Some(self.for_each_tile(x, rows, |p, out, first_row, tile_rows| {
            let tile = Tile {
                panel: self.panels[p * k * WIDTH..].as_ptr(),
                x_stride: k,
                depth: k,
            };
            let end = GatedStore {
                // SAFETY: row `first_row`'s channels of panel p lie inside h (for_each_tile's
                // room).
                h: unsafe { out.add(first_row * c + p * PANEL_CHANNELS) },
                h_stride: c,
                channels: PANEL_CHANNELS.min(c - p * PANEL_CHANNELS),
                first_channel: p * PANEL_CHANNELS,
                value,
            };
            // SAFETY: as in product.
            unsafe { tile.run(tile_rows, x[first_row * k..].as_ptr(), &end) }
        }))
    }

    /// The product's output (rows, n): `tile(p, out, first_row, rows)` writes panel p's part
    /// of rows first_row.. first_row + rows (at most 6) of it, for every panel and tile of
    /// rows. Where the product is large enough, the threads share the pairs of a panel and a
    /// part of the rows (the panels alone where there are as many as threads).
    fn for_each_tile<T>(&self, x: &[f32], rows: usize, tile: T) -> Vec<f32>
    where
        T: Fn(usize, *mut f32, usize, usize) + Sync,
    {
        let (k, n) = (self.k, self.n);
        assert!(Self::available(), "packed product: the CPU lacks AVX-512");
        assert_eq!(
            x.len(),
            rows * k,
            "packed product: the input is not {rows} rows of {k}"
        );
        let len = rows * n;
        let mut y = Vec::<f32>::with_capacity(len);
        let out = SendPtr(y.as_mut_ptr());
        let (count, row_tiles) = (self.count(), rows.div_ceil(ROWS));
        let threads = rayon::current_num_threads();
        let shared =
            threads > 1 && rows * self.panels.len() >= gemm_common::gemm::get_threading_threshold();
        let parts = match shared {
            true => threads.div_ceil(count.max(1)).clamp(1, row_tiles.max(1)),
            false => 1,
        };
        // The u-th pair of a panel and a part of the rows, panel by panel.
        let pair = |u: usize| {
            // The whole SendPtr (a closure would capture its field alone, which is not Sync).
            let out = &out;
            let (p, part) = (u / parts, u % parts);
            for t in part * row_tiles / parts..(part + 1) * row_tiles / parts {
                let first_row = t * ROWS;
                tile(p, out.0, first_row, ROWS.min(rows - first_row));
            }
        };
        let pairs = count * parts;
        let tasks = threads.min(pairs);
        if !shared || tasks < 2 {
            (0..pairs).for_each(pair);
        } else {
            (0..tasks)
                .into_par_iter()
                .for_each(|t| (t * pairs / tasks..(t + 1) * pairs / tasks).for_each(pair));
        }
        // SAFETY: every pair wrote its panel's columns of its rows: all of y.
        unsafe { y.set_len(len) };
        y
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
        if k != inputs {
            candle_core::bail!("packed product: rows of {k} for a weight of {inputs} inputs");
        }
        if self.0.gated {
            candle_core::bail!("packed product: a gate and up pack has no plain product");
        }
        if !PackedWeight::available() {
            candle_core::bail!("packed product: the CPU lacks AVX-512");
        }
        let x = super::f32_slice(s, l, self.name())?;
        Ok((
            CpuStorage::F32(self.0.product(x, rows)),
            Shape::from((rows, outputs)),
        ))
    }
}

/// h (rows, c) of a gated FFN from x (rows, k), an f32 CPU tensor, and its gate and up pack
/// ([`PackedWeight::gated_product`]); None where the pack does not take x or the product, and
/// where x needs a gradient (the op has no backward pass: inference).
pub fn gated_packed_product<F>(
    x: &Tensor,
    weight: &Arc<PackedWeight>,
    value: F,
) -> Result<Option<Tensor>>
where
    F: Fn(f32, f32, usize) -> f32 + Send + Sync,
{
    let (rows, k) = x.dims2()?;
    let untracked = super::fused(x) && !x.track_op();
    if !untracked || !PackedWeight::available() || !weight.takes_gated(rows, k) {
        return Ok(None);
    }
    let op = GatedProduct {
        weight: weight.clone(),
        value,
    };
    x.contiguous()?.apply_op1_no_bwd(&op).map(Some)
}

/// The op of [`gated_packed_product`].
struct GatedProduct<F> {
    weight: Arc<PackedWeight>,
    value: F,
}

impl<F: Fn(f32, f32, usize) -> f32 + Send + Sync> CustomOp1 for GatedProduct<F> {
    fn name(&self) -> &'static str {
        "gated-packed-product"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, _) = l.shape().dims2()?;
        let x = super::f32_slice(s, l, self.name())?;
        match self.weight.gated_product(x, rows, &self.value) {
            Some(h) => Ok((CpuStorage::F32(h), Shape::from((rows, self.weight.n)))),
            None => candle_core::bail!("gated packed product: the pack does not take the input"),
        }
    }
}

/// The depth the gemm crate's blocked kernels sum over in one chain, for a product of m rows
/// of its kernel (our outputs: it computes the transposed product) by n columns (our rows), k
/// deep: where both are 64 or fewer, 512 (its last block what is left); else its own block
/// from the caches, at least 512 and at most k, evened out over the blocks k needs. Either
/// way all of k up to 512.
fn depth_block(m: usize, n: usize, k: usize) -> usize {
    if m <= 64 && n <= 64 {
        k.min(512)
    } else {
        gemm_common::cache::kernel_params(m, n, k, WIDTH, ROWS, 4).kc
    }
    .max(1)
}

/// One panel's block of depth, which its tiles share.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Tile {
    /// The panel at the block's first input.
    panel: *const f32,
    x_stride: usize,
    /// Inputs in the block.
    depth: usize,
}

/// What a tile does with its rows' sums.
trait TileEnd {
    /// Row r's four vectors of sums.
    ///
    /// # Safety
    /// AVX-512, and the ending's pointers valid for row r.
    #[cfg(target_arch = "x86_64")]
    unsafe fn row(&self, r: usize, sums: [std::arch::x86_64::__m512; 4]);
}

/// Stores the sums into y's valid columns, or adds them to y's values.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Store {
    /// The tile's first row's first column.
    y: *mut f32,
    y_stride: usize,
    /// Valid columns of the panel (1 to 64).
    columns: usize,
    /// Whether the sums are added to y's values (the blocks of depth after the first).
    accumulate: bool,
}

impl TileEnd for Store {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn row(&self, r: usize, sums: [std::arch::x86_64::__m512; 4]) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's pointers; the masks keep to the valid columns.
        unsafe {
            let row = self.y.add(r * self.y_stride);
            for (q, sum) in sums.into_iter().enumerate() {
                let valid = self.columns.saturating_sub(16 * q).min(16);
                if valid == 0 {
                    break;
                }
                let (mask, at) = ((u32::MAX >> (32 - valid)) as __mmask16, row.add(16 * q));
                let value = match self.accumulate {
                    true => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), sum),
                    false => sum,
                };
                _mm512_mask_storeu_ps(at, mask, value);
            }
        }
    }
}

/// Stores value(gate, up, channel) of the panel's valid channels into h.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct GatedStore<'a, F> {
    /// The tile's first row's first channel.
    h: *mut f32,
    h_stride: usize,
    /// Valid channels of the panel (1 to 32).
    channels: usize,
    /// The panel's first channel.
    first_channel: usize,
    value: &'a F,
}

impl<F: Fn(f32, f32, usize) -> f32> TileEnd for GatedStore<'_, F> {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn row(&self, r: usize, sums: [std::arch::x86_64::__m512; 4]) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's pointers; the loops write the valid channels only, through
        // the pointer (h is not yet initialized).
        unsafe {
            let (mut gate, mut up) = ([0f32; PANEL_CHANNELS], [0f32; PANEL_CHANNELS]);
            _mm512_storeu_ps(gate.as_mut_ptr(), sums[0]);
            _mm512_storeu_ps(gate.as_mut_ptr().add(16), sums[1]);
            _mm512_storeu_ps(up.as_mut_ptr(), sums[2]);
            _mm512_storeu_ps(up.as_mut_ptr().add(16), sums[3]);
            let row = self.h.add(r * self.h_stride);
            let mut hidden = [0f32; PANEL_CHANNELS];
            if self.channels == PANEL_CHANNELS {
                // A whole panel: a loop of known length, in vectors.
                for j in 0..PANEL_CHANNELS {
                    hidden[j] = (self.value)(gate[j], up[j], self.first_channel + j);
                }
                _mm512_storeu_ps(row, _mm512_loadu_ps(hidden.as_ptr()));
                _mm512_storeu_ps(row.add(16), _mm512_loadu_ps(hidden.as_ptr().add(16)));
            } else {
                for j in 0..self.channels {
                    row.add(j)
                        .write((self.value)(gate[j], up[j], self.first_channel + j));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// The tile of `rows` (1 to 6) rows of x at `x`, its sums handed to `end`.
    ///
    /// # Safety
    /// AVX-512, x valid for the tile's rows at the stride, and `end` for them.
    unsafe fn run<E: TileEnd>(&self, rows: usize, x: *const f32, end: &E) {
        // SAFETY: passed on from the caller.
        unsafe {
            match rows {
                6 => self.rows::<6, E>(x, end),
                5 => self.rows::<5, E>(x, end),
                4 => self.rows::<4, E>(x, end),
                3 => self.rows::<3, E>(x, end),
                2 => self.rows::<2, E>(x, end),
                _ => self.rows::<1, E>(x, end),
            }
        }
    }

    /// R rows by the panel: per input, the panel's four vectors, and each row's element
    /// broadcast into a fused multiply-add with them.
    ///
    /// # Safety
    /// As [`Tile::run`].
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize, E: TileEnd>(&self, x: *const f32, end: &E) {
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
            for (r, sums) in acc.into_iter().enumerate() {
                end.row(r, sums);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Tile {
    /// Never called: [`PackedWeight::available`] is false.
    unsafe fn run<E: TileEnd>(&self, _rows: usize, _x: *const f32, _end: &E) {
        unreachable!("packed products need AVX-512")
    }
}

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
            (10, 1100, 40),
            (64, 600, 64),
            (65, 600, 64),
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
    fn gated_products_are_the_gate_of_the_plain_product_s_bits() {
        if !PackedWeight::available() {
            return;
        }
        let value = |g: f32, u: f32, j: usize| g / (1.0 + (-g).exp()) * u + j as f32;
        // Channels under, at and past a panel's 32; rows under, at and past a tile; threads.
        for (rows, k, c) in [(1, 5, 3), (6, 64, 32), (13, 40, 45), (384, 128, 352)] {
            let x = values(rows * k, 3);
            let w_t = values(k * 2 * c, 4);
            let plain = PackedWeight::of_transposed(&w_t, k, 2 * c).product(&x, rows);
            let gated = PackedWeight::of_gate_up(&w_t, k, c);
            let h = gated
                .gated_product(&x, rows, &value)
                .expect("one block deep");
            assert_eq!(h.len(), rows * c);
            for (i, h) in h.iter().enumerate() {
                let (r, j) = (i / c, i % c);
                let want = value(plain[r * 2 * c + j], plain[r * 2 * c + c + j], j);
                assert_eq!(
                    h.to_bits(),
                    want.to_bits(),
                    "{rows}x{k}x{c}: row {r} channel {j}"
                );
            }
        }
        // Deeper than a block of the gemm crate's: not taken; a plain pack has no gate.
        let deep = PackedWeight::of_gate_up(&values(1100 * 64, 5), 1100, 32);
        assert!(deep
            .gated_product(&values(70 * 1100, 6), 70, &value)
            .is_none());
        let plain = PackedWeight::of_transposed(&values(10 * 64, 5), 10, 64);
        assert!(plain.gated_product(&values(10, 6), 1, &value).is_none());
    }

    #[test]
    fn an_empty_depth_gives_zeros_and_no_rows_nothing() {
        if !PackedWeight::available() {
            return;
        }
        let packed = PackedWeight::of_transposed(&[], 0, 70);
        assert_eq!(packed.product(&[], 3), vec![0f32; 210]);
        // No rows: an empty product, plain or gated.
        let w_t = values(8 * 2 * 40, 7);
        assert!(PackedWeight::of_transposed(&w_t, 8, 80)
            .product(&[], 0)
            .is_empty());
        let gated = PackedWeight::of_gate_up(&w_t, 8, 40);
        let h = gated.gated_product(&[], 0, &|g: f32, u: f32, _| g * u);
        assert_eq!(h, Some(vec![]));
    }
}
