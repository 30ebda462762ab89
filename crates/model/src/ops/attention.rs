//! Causal attention, softmax(scale q k^T) v with each query seeing the keys up to its own
//! position, and optional inverted dropout on the probabilities: the fused CPU kernel (one
//! (batch, head) at a time, its (T, S) scores in a buffer of the task that stays in cache, so
//! the (B, H, T, S) scores and probabilities are never in memory, in either pass) beside
//! [`causal_attention_reference`], the composition of matrix products,
//! [`super::causal_softmax`] and seeded dropout that every other case runs.
//!
//! Letters: B batch, H query heads, G key/value heads (H a multiple of G), T queries at
//! positions S-T .. S-1, S keys, D head width.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::exp::exp;
use super::exp::{exp_shifted_sum_in_room_loop, exp_shifted_sum_loop, wide_fma};
use super::fresh::{par_fresh_chunks_each, Fresh};
use super::panel_product::{self, MatRef};
use super::rope::rotate_rows_from;
use super::{cast, causal_softmax, f32_slice, fused, lane_dot, product, row_max, Form, LANES};
use crate::philox::apply_dropout_from;
use crate::philox_dropout::PhiloxDropout;

/// Causal attention of q (B, H, T, D) over k and v (B, G, S, D), with dropout on the
/// probabilities when given (probability (b, h, i, j) of this pass takes mask element
/// `first + ((b H + h) T + i) S + j`, as the op on the whole (B, H, T, S) tensor would): (B, H, T, D) in q's dtype. f32 inputs on a CPU take the fused
/// kernel, which computes everything in f32; elsewhere [`causal_attention_reference`] runs,
/// its matrix products in `matmul_dtype` (`mask`, the (T, S) causal mask the caller keeps on
/// the device, or None).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    dropout: Option<PhiloxDropout>,
    matmul_dtype: DType,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    if fused(q) && fused(k) && fused(v) {
        let op = CausalAttention {
            scale: scale as f32,
            dropout,
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    causal_attention_reference(q, k, v, scale, matmul_dtype, mask, |probs| match dropout {
        Some(d) => d.apply(&probs),
        None => Ok(probs),
    })
}

/// [`causal_attention`] as a composition of differentiable Candle ops: the scores and the
/// weighted values as matrix products in `matmul_dtype`, the softmax in f32, and `dropout`
/// applied to the f32 probabilities (B, H, T, S). What the fused kernel is tested against, and
/// what runs with a dropout generator the kernel does not draw from.
pub fn causal_attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    matmul_dtype: DType,
    mask: Option<&Tensor>,
    dropout: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let rep = q.dim(1)? / k.dim(1)?;
    let (k, v) = (repeat_kv(k, rep)?, repeat_kv(v, rep)?); // (B, H, S, D)
    let scores = product(q, &k, Form::ABt, matmul_dtype)?; // (B, H, T, S), f32
    let probs = dropout(causal_softmax(&scores, scale, mask)?)?;
    cast(
        &product(&probs, &v.contiguous()?, Form::AB, matmul_dtype)?,
        q.dtype(),
    )
}

/// (B, G, S, D) -> (B, G * rep, S, D), each key/value head serving `rep` query heads.
pub fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, g, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, g, rep, s, d))?
        .reshape((b, g * rep, s, d))
}

struct CausalAttention {
    scale: f32,
    dropout: Option<PhiloxDropout>,
}

/// The shapes of one attention pass.
#[derive(Clone, Copy, Debug)]
struct Dims {
    h: usize,
    g: usize,
    t: usize,
    s: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Layout, k: &Layout, v: &Layout) -> Result<Dims> {
        let (&[b, h, t, d], &[kb, g, s, kd]) = (q.dims(), k.dims()) else {
            candle_core::bail!("causal-attention: q, k and v must be (B, heads, positions, D)");
        };
        if kb != b || kd != d || v.dims() != k.dims() || g == 0 || h % g != 0 || s < t {
            candle_core::bail!(
                "causal-attention: q {:?}, k {:?}, v {:?} do not fit (B, H, T, D), (B, G, S, D) with H a multiple of G and S >= T",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        Ok(Dims { h, g, t, s, d })
    }
}

/// Query rows per block of the causal tiling. The rows of a block see the keys up to its last
/// row's, so the products skip the blocks above the diagonal: about half of the work when
/// T = S is many blocks, three quarters at T = 64 (cpu-repro), where blocks of 64 were one
/// block and did all of it (attention's products 5.5% of a cpu-repro evaluation pass, 4.4%
/// with 32). 32 keeps the scores' blocks a multiple of the panel kernel's 32 keys. The
/// blocks' size changes no value where they take the panel kernel (AVX-512, T a multiple of
/// 32); a short block of the gemm crate's can take its small-product kernels, which add in
/// another order, and the keys' and values' gradients add the blocks' sums.
const ROW_BLOCK: usize = 32;

/// The row blocks of a head: (first row, rows, keys the last row sees).
fn row_blocks(Dims { t, s, .. }: Dims) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..t).step_by(ROW_BLOCK).map(move |first| {
        let rows = ROW_BLOCK.min(t - first);
        (first, rows, s - t + first + rows)
    })
}

/// out (T, S) = A (T, D) B^T (D, S) where a row sees keys: the scores of the causal row
/// blocks (each row past its last key is left as it was). The blocks the panel kernel takes
/// (keys a multiple of 32, AVX-512) read B^T from `bt` (S x D elements), written first, since
/// that kernel reads its right factor's rows in place (on micro, the gemm crate's products and
/// packing took 4.9% of an evaluation pass, the kernel's with the transposes 4.2%); the gemm
/// crate reads B transposed in place for the others, as before.
fn causal_scores(out: &mut [f32], a: &[f32], b: &[f32], bt: &mut [f32], dims: Dims) {
    let Dims { s, d, .. } = dims;
    if row_blocks(dims).any(|(_, _, keys)| panel_product::takes(keys)) {
        panel_product::transpose(&b[..s * d], &mut bt[..s * d], d);
    }
    for (first, rows, keys) in row_blocks(dims) {
        let b_t = match panel_product::takes(keys) {
            true => MatRef::rows(bt, s),
            false => MatRef::transposed(b, d),
        };
        panel_product::product(
            (&mut out[first * s..], s),
            MatRef::rows(&a[first * d..], d),
            b_t,
            (rows, keys, d),
            false,
        );
    }
}

/// out (T, D) = P (T, S) M (S, D) for a causal P (0 past the keys each row sees), block by
/// block, row i times `row_scales[i]` where given. The rows of M and of out lie `m_stride` and
/// `out_stride` elements apart (D where they are a head's own matrices). Writes every element
/// of out's (T, D) and reads none: out may be fresh. Where the panel kernel takes the product,
/// each tile of its rows stops at the keys its own last row sees (22% fewer terms at T = 64):
/// the terms past them are zeros times M, which leave every sum as it was where M is finite
/// (an infinite or NaN value of a later key no longer reaches earlier rows).
fn causal_product(
    (out, out_stride): (&mut [MaybeUninit<f32>], usize),
    p: &[f32],
    (m, m_stride): (&[f32], usize),
    dims: Dims,
    row_scales: Option<&[f32]>,
) {
    let Dims { t, s, d, .. } = dims;
    let m_rows = MatRef::rows(m, m_stride);
    let tile_rows = match panel_product::takes_product(m_rows, d) {
        true => panel_product::ROWS,
        false => t.max(1),
    };
    for (first, rows, _) in row_blocks(dims) {
        for tile in (first..first + rows).step_by(tile_rows) {
            // A whole block (gemm) sees the block's keys, as its last row does.
            let tile_rows = tile_rows.min(first + rows - tile);
            panel_product::product_into(
                (&mut out[tile * out_stride..], out_stride),
                MatRef::rows(&p[tile * s..], s),
                m_rows,
                (tile_rows, d, s - t + tile + tile_rows),
                row_scales.map(|scales| &scales[tile..]),
            );
        }
    }
}

/// out (S, D) += P^T (S, T) M (T, D) for a causal P, block by block.
fn add_causal_product_transposed(out: &mut [f32], p: &[f32], m: &[f32], dims: Dims) {
    let Dims { s, d, .. } = dims;
    for (first, rows, keys) in row_blocks(dims) {
        panel_product::product(
            (out, d),
            MatRef::transposed(&p[first * s..], s),
            MatRef::rows(&m[first * d..], d),
            (keys, d, rows),
            true,
        );
    }
}

/// The steps of [`CausalAttention::exponentials`] after the scores, over all of a head's rows
/// in one call (a dispatch per row cost a seventh of these rows' time: they are short, 1 to S
/// keys): [`softmax_rows_avx512`] where the CPU has AVX-512, else the portable loop. The same
/// bits either way (tested).
fn softmax_rows(e: &mut [f32], inv_sums: &mut [f32], dims: Dims, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
        assert!(
            dims.s >= dims.t && e.len() >= dims.t * dims.s && inv_sums.len() >= dims.t,
            "softmax rows: {dims:?} with buffers of {} and {}",
            e.len(),
            inv_sums.len()
        );
        // SAFETY: the CPU has the features; the buffers hold the head's rows (asserted).
        unsafe { softmax_rows_avx512(e, inv_sums, dims, scale) };
        return;
    }
    softmax_rows_portable(e, inv_sums, dims, scale)
}

wide_fma!(
    /// [`softmax_rows`] as plain loops that the compiler vectorizes.
    fn softmax_rows_portable(e: &mut [f32], inv_sums: &mut [f32], dims: Dims, scale: f32) =
        softmax_rows_loop
);

/// [`softmax_rows`] in AVX-512 registers, 16 keys at a time, a row's last few through masks:
/// where the loops took a row's maximum, exponentials and sum in 32-lane blocks with short
/// tails and an in-memory fold, these took 6.0% of a micro evaluation pass (4.5% this way) and
/// 5.7% of a cpu-repro one (3.1%). The arithmetic is the loops': exp on the same values, lane
/// l of 32 adding the keys l, l + 32, ... and [`super::fold_lanes`]' butterfly.
///
/// The rows go in groups of 16: their maxima first, then their exponentials, each group's 16
/// vectors of maxima and of sums reduced together ([`reduce_16`]) and the 16 sums inverted in
/// one division, where each row's own reductions and division were chains that took a third
/// of the kernel's time, the rows being short (3.6% -> 3.0% of a cpu-repro evaluation pass,
/// perf).
///
/// # Safety
/// AVX-512F and FMA; `e` holds T rows of S and `inv_sums` T values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn softmax_rows_avx512(e: &mut [f32], inv_sums: &mut [f32], dims: Dims, scale: f32) {
    use std::arch::x86_64::*;
    let Dims { t, s, .. } = dims;
    // The lanes of a vector holding the first n (all 16 from n = 16 on).
    let first = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
    // SAFETY: every load and store is masked to the head's row i (i < T, keys <= S), and to
    // the group's rows in inv_sums.
    unsafe {
        let (neg_inf, scale) = (_mm512_set1_ps(f32::NEG_INFINITY), _mm512_set1_ps(scale));
        for (first_row, rows, keys) in row_blocks(dims) {
            for group in (first_row..first_row + rows).step_by(16) {
                let group_rows = 16.min(first_row + rows - group);
                let base = e.as_mut_ptr();
                let row = |r: usize| base.add((group + r) * s);
                let visible = |r: usize| s - t + group + r + 1;
                // The maxima: -inf in the lanes past the visible keys (and for the rows past
                // the group's); max(x, m) keeps m where x is NaN, as row_max passes NaNs over.
                let mut maxima = [neg_inf; 16];
                for (r, m) in maxima.iter_mut().enumerate().take(group_rows) {
                    for c in 0..visible(r).div_ceil(16) {
                        let lanes = first(visible(r) - 16 * c);
                        *m = _mm512_max_ps(
                            _mm512_mask_loadu_ps(neg_inf, lanes, row(r).add(16 * c)),
                            *m,
                        );
                    }
                }
                let shifts: [f32; 16] =
                    std::mem::transmute(reduce_16(maxima, |a, b| _mm512_max_ps(a, b)));
                // The exponentials: the lanes past the visible keys hold the maximum (an
                // exponential of 1, cheap), are left out of the sums and stored as 0. Each
                // row's two vectors of sums (lanes l and l + 16 of 32) added: fold_lanes' first
                // step.
                let mut sums = [_mm512_setzero_ps(); 16];
                for (r, row_sum) in sums.iter_mut().enumerate().take(group_rows) {
                    let (row, visible) = (row(r), visible(r));
                    let shift = _mm512_set1_ps(shifts[r]);
                    let vectors = visible.div_ceil(16);
                    let mut halves = [_mm512_setzero_ps(); 2];
                    for c in 0..vectors {
                        let lanes = first(visible - 16 * c);
                        let x = _mm512_mask_loadu_ps(shift, lanes, row.add(16 * c));
                        let mut z: [f32; 16] =
                            std::mem::transmute(_mm512_mul_ps(_mm512_sub_ps(x, shift), scale));
                        for v in z.iter_mut() {
                            *v = exp(*v);
                        }
                        let y: __m512 = std::mem::transmute(z);
                        let half = &mut halves[c % 2];
                        *half = _mm512_mask_add_ps(*half, lanes, *half, y);
                        let room = first(keys - 16 * c);
                        _mm512_mask_storeu_ps(row.add(16 * c), room, _mm512_maskz_mov_ps(lanes, y));
                    }
                    for c in (16 * vectors..keys).step_by(16) {
                        _mm512_mask_storeu_ps(row.add(c), first(keys - c), _mm512_setzero_ps());
                    }
                    *row_sum = _mm512_add_ps(halves[0], halves[1]);
                }
                // The rest of fold_lanes (lanes l and l + 8, then + 4, + 2, + 1), and 1 / sum:
                // the division IEEE rounds as the scalar one did.
                let totals = reduce_16(sums, |a, b| _mm512_add_ps(a, b));
                let inverses = _mm512_div_ps(_mm512_set1_ps(1.0), totals);
                _mm512_mask_storeu_ps(
                    inv_sums.as_mut_ptr().add(group),
                    first(group_rows),
                    inverses,
                );
            }
        }
    }
}

/// Each of 16 vectors reduced to one value by `op` in [`super::fold_lanes`]' butterfly after its
/// first step (lanes l and l + 8 of 16, then + 4, + 2, + 1), all 16 at once: lane r of the
/// result is vector r's. Each step combines the same pairs of lanes as the butterfly of one
/// vector would, its halves gathered across vectors (eight, four, two, then one vector).
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn reduce_16(
    v: [std::arch::x86_64::__m512; 16],
    op: impl Fn(std::arch::x86_64::__m512, std::arch::x86_64::__m512) -> std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Lanes l and l + 8: vector p holds vector 2p's eight in lanes 0-7, 2p + 1's in 8-15.
    let eights: [__m512; 8] = std::array::from_fn(|p| {
        let (a, b) = (v[2 * p], v[2 * p + 1]);
        op(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xee>(a, b),
        )
    });
    // Lanes l and l + 4: quarter j of vector q holds vector 4q + j's four.
    let fours: [__m512; 4] = std::array::from_fn(|q| {
        let (a, b) = (eights[2 * q], eights[2 * q + 1]);
        op(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xdd>(a, b),
        )
    });
    // Lanes l and l + 2: in quarter j of vector r, lanes 0-1 hold vector 8r + j's two and
    // lanes 2-3 vector 8r + 4 + j's.
    let twos: [__m512; 2] = std::array::from_fn(|r| {
        let (a, b) = (fours[2 * r], fours[2 * r + 1]);
        op(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xee>(a, b),
        )
    });
    // Lanes 0 and 1: lane i of quarter j holds vector 4i + j's value; back to lane 4i + j.
    let ones = op(
        _mm512_shuffle_ps::<0x88>(twos[0], twos[1]),
        _mm512_shuffle_ps::<0xdd>(twos[0], twos[1]),
    );
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(order, ones)
}

#[inline(always)]
fn softmax_rows_loop(e: &mut [f32], inv_sums: &mut [f32], dims: Dims, scale: f32) {
    let Dims { t, s, .. } = dims;
    for (first, rows, keys) in row_blocks(dims) {
        for i in first..first + rows {
            let row = &mut e[i * s..i * s + keys];
            let visible = s - t + i + 1;
            let max = row_max(&row[..visible]);
            // The row's exponentials as whole blocks of LANES where it has room (the block
            // past the visible keys computed in place, those keys set to the max so that
            // their exponentials are 1, cheap, and left out of the sum), where a copy of the
            // last few through the stack took a third of these rows' time.
            let whole = visible.next_multiple_of(LANES);
            let sum = if whole <= keys {
                row[visible..whole].fill(max);
                exp_shifted_sum_in_room_loop(&mut row[..whole], visible, max, scale)
            } else {
                exp_shifted_sum_loop(&mut row[..visible], max, scale)
            };
            inv_sums[i] = 1.0 / sum;
            row[visible..].fill(0.0);
        }
    }
}

wide_fma!(
    /// d P (a head's (T, S), in `dp`) becomes d S = scale P * (d P - rowsum(P * d P)) in
    /// place, 0 past the keys a row sees up to the end of its row block (the products before
    /// left older values there): the softmax's backward, all rows behind one dispatch as
    /// [`softmax_rows`].
    fn softmax_backward_rows(dp: &mut [f32], p: &[f32], dims: Dims, scale: f32) =
        softmax_backward_rows_loop
);

#[inline(always)]
fn softmax_backward_rows_loop(dp: &mut [f32], p: &[f32], dims: Dims, scale: f32) {
    let Dims { t, s, .. } = dims;
    for (first, rows, keys) in row_blocks(dims) {
        for i in first..first + rows {
            let (ds, pr) = (&mut dp[i * s..i * s + keys], &p[i * s..]);
            let visible = s - t + i + 1;
            let dot = lane_dot(&pr[..visible], &ds[..visible]);
            for (x, pj) in ds[..visible].iter_mut().zip(pr) {
                *x = scale * pj * (*x - dot);
            }
            ds[visible..].fill(0.0);
        }
    }
}

thread_local! {
    /// Each thread's attention buffers, kept from call to call up to [`RETAINED_SCRATCH`].
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The most f32 a thread keeps for the next call (32 MB: two (T, S) buffers and the small ones
/// beside them up to T = S of about 2,000); larger buffers are freed when their task ends, as
/// fresh ones always were.
const RETAINED_SCRATCH: usize = 8 << 20;

/// The buffers of one rayon task (the heads it takes): its thread's retained scratch, handed
/// back when the task ends. They hold what earlier heads left there (finite or not): the
/// kernels write every element they read first. Zeroed vectors per task cost 0.6% of a micro
/// training step (memset); these stay in cache.
struct Scratch(Vec<f32>);

impl Scratch {
    fn take() -> Self {
        Scratch(SCRATCH.with(|s| s.take()))
    }

    /// Buffers of the given lengths, cut from the scratch (grown as needed).
    fn buffers<const N: usize>(&mut self, lens: [usize; N]) -> [&mut [f32]; N] {
        let total = lens.iter().sum::<usize>();
        if self.0.len() < total {
            self.0.resize(total, 0.0);
        }
        let mut rest = &mut self.0[..total];
        lens.map(|n| {
            let (buffer, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            buffer
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.len() <= RETAINED_SCRATCH {
            let kept = std::mem::take(&mut self.0);
            // At thread exit the slot may be gone already; the buffer is freed then.
            let _ = SCRATCH.try_with(|s| *s.borrow_mut() = kept);
        }
    }
}

/// One (batch, query head) of a pass: its queries, the keys and values of its key/value head,
/// and where its dropout mask starts.
struct Head<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    mask_first: u64,
}

impl CausalAttention {
    fn head<'a>(
        &self,
        dims: Dims,
        (q, k, v): (&'a [f32], &'a [f32], &'a [f32]),
        bh: usize,
    ) -> Head<'a> {
        let Dims { h, g, t, s, d } = dims;
        let kv = (bh / h) * g + (bh % h) / (h / g);
        Head {
            q: &q[bh * t * d..(bh + 1) * t * d],
            keys: &k[kv * s * d..(kv + 1) * s * d],
            values: &v[kv * s * d..(kv + 1) * s * d],
            mask_first: self.dropout.map_or(0, |dr| dr.first) + (bh * t * s) as u64,
        }
    }

    /// The head's (T, S) exponentials e^(scale (score - row max)) into `e`, 0 past the keys a
    /// row sees up to the end of its row block (the products read no further), and each row's
    /// 1 / sum in `inv_sums` (T): the probabilities before dropout are `e` times that. The
    /// scores as a matrix product per row block, then the causal softmax's steps row by row,
    /// as [`super::causal_softmax`] takes them.
    fn exponentials(&self, head: &Head, dims: Dims, [e, inv_sums, bt]: [&mut [f32]; 3]) {
        causal_scores(e, head.q, head.keys, bt, dims);
        softmax_rows(e, inv_sums, dims, self.scale);
    }

    /// The head's (T, S) probabilities before dropout into `p` ([`Self::exponentials`] times
    /// each row's 1 / sum), with `inv_sums` (T) and `bt` (S x D) as scratch.
    fn probabilities(&self, head: &Head, dims: Dims, [p, inv_sums, bt]: [&mut [f32]; 3]) {
        let Dims { t, s, .. } = dims;
        self.exponentials(head, dims, [&mut *p, &mut *inv_sums, bt]);
        for (i, (row, inv)) in p.chunks_mut(s).zip(&*inv_sums).enumerate() {
            let visible = s - t + i + 1;
            row[..visible].iter_mut().for_each(|x| *x *= inv);
        }
    }

    /// `from` with the head's dropout mask applied, in `to`; without dropout, `from` itself
    /// (no copy).
    fn drop<'a>(&self, head: &Head, from: &'a [f32], to: &'a mut [f32]) -> &'a [f32] {
        match self.dropout {
            Some(dr) => {
                apply_dropout_from(dr.seed, head.mask_first, dr.keep, dr.scale, from, to);
                to
            }
            None => from,
        }
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
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
        let dims = Dims::of(l1, l2, l3)?;
        let inputs = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let Dims { t, s, d, .. } = dims;
        // One task per (batch, head), writing its (T, D) of a fresh output (no zeros first):
        // its (T, S) exponentials stay in its thread's scratch ([`Scratch`]); the buffer for
        // them after dropout only with dropout. The rows are normalised as the product stores
        // them (times 1 / sum), (T, D) values instead of the (T, S) exponentials (dropout
        // scales each element, so it commutes).
        let kept_len = self.dropout.map_or(0, |_| t * s);
        let out = par_fresh_chunks_each(inputs.0.len(), t * d, |range, fresh| {
            let mut scratch = Scratch::take();
            let [e, kept, inv_sums, bt] = scratch.buffers([t * s, kept_len, t, s * d]);
            let head = self.head(dims, inputs, range.start / (t * d));
            self.exponentials(&head, dims, [&mut *e, &mut *inv_sums, bt]);
            let y = fresh.into_slots();
            causal_product(
                (&mut *y, d),
                self.drop(&head, e, kept),
                (head.values, d),
                dims,
                Some(inv_sums),
            );
            // SAFETY: the product wrote all (T, D) of y.
            unsafe { Fresh::assume_filled(y) }.1
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One flat tensor: [d q; d k; d v].
        let flat = q.apply_op3_no_bwd(
            k,
            v,
            &CausalAttentionBackward {
                forward: CausalAttention {
                    scale: self.scale,
                    dropout: self.dropout,
                },
                grad: grad.contiguous()?,
            },
        )?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        Ok((
            Some(flat.narrow(0, 0, nq)?.reshape(q.shape())?),
            Some(flat.narrow(0, nq, nk)?.reshape(k.shape())?),
            Some(flat.narrow(0, nq + nk, nk)?.reshape(k.shape())?),
        ))
    }
}

/// The gradients of [`CausalAttention`] from [q; k; v] (flat) and d y, recomputing each head's
/// probabilities: with P the probabilities, M the dropout mask (scale where kept, 0 where
/// dropped, all ones without dropout), P' = M * P and G = d y,
///   d V = P'^T G,   d P = M * (G V^T),
///   d S = scale P * (d P - rowsum(P * d P))   (the softmax's backward),
///   d Q = d S K,   d K = d S^T Q.
struct CausalAttentionBackward {
    forward: CausalAttention,
    grad: Tensor,
}

impl CustomOp3 for CausalAttentionBackward {
    fn name(&self) -> &'static str {
        "causal-attention-backward"
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
        let dims = Dims::of(l1, l2, l3)?;
        let (q, k, v) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let (grad_storage, grad_layout) = self.grad.storage_and_layout();
        let candle_core::Storage::Cpu(grad_storage) = &*grad_storage else {
            candle_core::bail!("{}: the gradient is not on the CPU", self.name());
        };
        let grad = f32_slice(grad_storage, grad_layout, self.name())?;
        let Dims { h, g, t, s, d } = dims;
        let fwd = &self.forward;
        let (nq, nk) = (q.len(), k.len());
        let mut out = vec![0f32; nq + 2 * nk];
        let (dq, dkv) = out.split_at_mut(nq);
        let (dk, dv) = dkv.split_at_mut(nk);
        // One task per (batch, key/value head): the d q of its query heads, and its d k and
        // d v, which those heads add to in order. Its (T, S) buffers come from its thread's
        // scratch ([`Scratch`]; the two for values after dropout only with dropout).
        let kept_len = fwd.dropout.map_or(0, |_| t * s);
        let rep = h / g;
        dq.par_chunks_mut(rep * t * d)
            .zip(dk.par_chunks_mut(s * d).zip(dv.par_chunks_mut(s * d)))
            .enumerate()
            .for_each_init(Scratch::take, |scratch, (bg, (dq, (dk, dv)))| {
                let sizes = [t * s, kept_len, kept_len, t * s, t, s * d];
                let [p, kept, dp_kept, dp, inv_sums, bt] = scratch.buffers(sizes);
                for (r, dq) in dq.chunks_mut(t * d).enumerate() {
                    let bh = (bg / g) * h + (bg % g) * rep + r;
                    let head = fwd.head(dims, (q, k, v), bh);
                    let gy = &grad[bh * t * d..(bh + 1) * t * d];
                    fwd.probabilities(&head, dims, [&mut *p, &mut *inv_sums, &mut *bt]);
                    // d k and d v add up over the heads, onto out's zeros.
                    add_causal_product_transposed(dv, fwd.drop(&head, p, kept), gy, dims);
                    // d P: the mask applied to d (P after dropout); without dropout, the
                    // scores go straight into d P.
                    match fwd.dropout {
                        Some(dr) => {
                            causal_scores(dp_kept, gy, head.values, bt, dims);
                            apply_dropout_from(
                                dr.seed,
                                head.mask_first,
                                dr.keep,
                                dr.scale,
                                dp_kept,
                                dp,
                            );
                        }
                        None => causal_scores(dp, gy, head.values, bt, dims),
                    }
                    softmax_backward_rows(dp, p, dims, fwd.scale);
                    // SAFETY: the product writes values only.
                    let dq = unsafe { panel_product::slots_of(dq) };
                    causal_product((dq, d), dp, (head.keys, d), dims, None);
                    add_causal_product_transposed(dk, dp, head.q, dims);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from(nq + 2 * nk)))
    }
}

/// Causal attention for inference (no input tracks a gradient): RoPE and attention in one
/// pass over the projections as they come, q (B, T, H, D) and k, v (B, T, G, D), queries and
/// keys at the same T positions, `cos` and `sin` (T, D) their rows of RoPE's tables; returns y
/// (B, T, H, D), the layout the output projection takes. Each task rotates a head's queries
/// and keys into its scratch, reads the values and writes y where they lie, so the rotated
/// (B, heads, T, D) copies and the moves of v and y never happen (RoPE and the moves took 5%
/// of a micro evaluation pass). The arithmetic of [`super::rope`], [`causal_attention`] and
/// [`super::heads_last`] in turn, so the same bits (tested). None where that kernel does not
/// apply (off the CPU, not f32, a tracked gradient, an odd D, other shapes) or would leave
/// cores idle (its tasks are the B batch elements: fewer than the threads): the caller takes
/// the composition then.
pub fn inference_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    scale: f64,
) -> Result<Option<Tensor>> {
    let inputs = [q, k, v, cos, sin];
    if inputs.iter().any(|x| !fused(x) || x.track_op()) {
        return Ok(None);
    }
    let (&[b, t, h, d], &[kb, s, g, kd]) = (q.dims(), k.dims()) else {
        return Ok(None);
    };
    let fits = kb == b && kd == d && v.dims() == k.dims() && s == t && g > 0 && h % g == 0;
    if !fits || d % 2 != 0 || cos.dims() != [t, d] || sin.dims() != [t, d] {
        return Ok(None);
    }
    if b < rayon::current_num_threads() {
        return Ok(None);
    }
    let table = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
    let op = InferenceAttention {
        dims: Dims { h, g, t, s, d },
        scale: scale as f32,
        cos: table(cos)?,
        sin: table(sin)?,
    };
    let y = q
        .contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?;
    Ok(Some(y))
}

/// The kernel of [`inference_attention`].
struct InferenceAttention {
    dims: Dims,
    scale: f32,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl InferenceAttention {
    /// Rows of `of` (`stride` apart, each starting at `at`) rotated into the rows of `to`, row
    /// i by RoPE's row i.
    fn rotated(&self, to: &mut [f32], (of, at, stride): (&[f32], usize, usize)) {
        rotate_rows_from(to, (&of[at..], stride), (&self.cos, &self.sin), self.dims.d);
    }
}

impl CustomOp3 for InferenceAttention {
    fn name(&self) -> &'static str {
        "inference-attention"
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
        let (q, k, v) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let dims = self.dims;
        let Dims { h, g, t, s, d } = dims;
        // A position's row: H heads of D in q and y, G in k and v.
        let (row, kv_row) = (h * d, g * d);
        let attention = CausalAttention {
            scale: self.scale,
            dropout: None,
        };
        // One task per batch element: its (T, H D) block of a fresh y (no zeros first) is
        // its own, each head's D columns written by its product.
        let out = par_fresh_chunks_each(q.len(), t * row, |range, fresh| {
            let bi = range.start / (t * row);
            let mut scratch = Scratch::take();
            let [e, inv_sums, bt, qr, kr] = scratch.buffers([t * s, t, s * d, t * d, s * d]);
            let q = &q[bi * t * row..][..t * row];
            let (k, v) = (
                &k[bi * s * kv_row..][..s * kv_row],
                &v[bi * s * kv_row..][..s * kv_row],
            );
            let y = fresh.into_slots();
            for kv in 0..g {
                self.rotated(kr, (k, kv * d, kv_row));
                for head in kv * (h / g)..(kv + 1) * (h / g) {
                    self.rotated(qr, (q, head * d, row));
                    // The values are read in place below, not through the head.
                    let rotated = Head {
                        q: qr,
                        keys: kr,
                        values: &[],
                        mask_first: 0,
                    };
                    attention.exponentials(&rotated, dims, [&mut *e, &mut *inv_sums, &mut *bt]);
                    causal_product(
                        (&mut y[head * d..], row),
                        e,
                        (&v[kv * d..], kv_row),
                        dims,
                        Some(inv_sums),
                    );
                }
            }
            // SAFETY: the H heads' products wrote all (T, H D) of y.
            unsafe { Fresh::assume_filled(y) }.1
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn what_earlier_heads_leave_in_the_scratch_never_reaches_a_result() {
        // A pass over NaN inputs fills this thread's scratch with NaN (rayon's threads too);
        // a smaller pass after it must match the reference, values and gradients. Heads of 8
        // (the gemm crate's products) and of 32 (the panel kernel's, tile by tile).
        let dev = &Device::Cpu;
        for d in [8usize, 32] {
            let nan = Tensor::full(f32::NAN, (2, 2, 150, d), dev).unwrap();
            let y = causal_attention(&nan, &nan, &nan, 0.3, None, DType::F32, None).unwrap();
            assert!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0].is_nan());
            let var = |seed: u64| {
                let n = 2 * 2 * 70 * d;
                let v: Vec<f32> = (0..n)
                    .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0)
                    .collect();
                Var::from_vec(v, (2, 2, 70, d), dev).unwrap()
            };
            let (q, k, v) = (var(1), var(2), var(3));
            let run = |fused: bool| {
                let y = match fused {
                    true => causal_attention(&q, &k, &v, 0.3, None, DType::F32, None),
                    false => causal_attention_reference(&q, &k, &v, 0.3, DType::F32, None, Ok),
                }
                .unwrap();
                let grads = (&y * &y).unwrap().sum_all().unwrap().backward().unwrap();
                let mut all = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for x in [&q, &k, &v] {
                    all.extend(
                        grads
                            .get(x)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap(),
                    );
                }
                all
            };
            let (fused, reference) = (run(true), run(false));
            for (a, b) in fused.iter().zip(&reference) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "D {d}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn inference_attention_computes_the_bits_of_rope_attention_and_the_move_back() {
        // Against the composition it replaces, bit for bit: shapes with grouped heads, T not
        // a multiple of the row blocks or of the panel kernel's 32 keys, and T past one row
        // block; RoPE tables of a real model at an offset.
        let dev = &Device::Cpu;
        let values = |dims: (usize, usize, usize, usize), seed: u64| {
            let n = dims.0 * dims.1 * dims.2 * dims.3;
            let v: Vec<f32> = (0..n)
                .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 250.0 - 2.0)
                .collect();
            Tensor::from_vec(v, dims, dev).unwrap()
        };
        // Two threads, so that two batch elements are enough for the op to run.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (b, t, h, g, d) in [
            (2, 37, 4, 2, 8),
            (3, 64, 2, 2, 32),
            (2, 100, 4, 1, 16),
            (2, 40, 2, 1, 64),
        ] {
            let cfg = crate::ModelConfig {
                hidden_size: h * d,
                num_attention_heads: h,
                num_key_value_heads: g,
                max_position_embeddings: t + 5,
                ..crate::ModelConfig::default()
            };
            let tables = crate::attention::RotaryTables::new(&cfg, dev).unwrap();
            let (cos, sin) = tables.rows(5, t, DType::F32).unwrap();
            let (q, k, v) = (
                values((b, t, h, d), 1),
                values((b, t, g, d), 2),
                values((b, t, g, d), 3),
            );
            let scale = 1.0 / (d as f64).sqrt();
            let fused = pool
                .install(|| inference_attention(&q, &k, &v, (&cos, &sin), scale))
                .unwrap()
                .expect("f32 on a CPU, nothing tracked, a batch element per thread");
            let composed = super::super::heads_last(
                &causal_attention(
                    &super::super::rope(&q, &cos, &sin).unwrap(),
                    &super::super::rope(&k, &cos, &sin).unwrap(),
                    &super::super::heads_first(&v).unwrap(),
                    scale,
                    None,
                    DType::F32,
                    None,
                )
                .unwrap(),
            )
            .unwrap();
            let bits = |x: &Tensor| {
                let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
            };
            assert_eq!(fused.dims(), &[b, t, h, d]);
            assert_eq!(bits(&fused), bits(&composed), "{:?}", (b, t, h, g, d));
        }
        // A tracked input (training), and fewer batch elements than threads, are left to the
        // composition.
        let q = Var::from_tensor(&values((2, 4, 2, 8), 4)).unwrap();
        let k = values((2, 4, 2, 8), 5);
        let table = values((1, 1, 4, 8), 6).reshape((4, 8)).unwrap();
        let run = |q: &Tensor, k: &Tensor| {
            pool.install(|| inference_attention(q, k, k, (&table, &table), 0.5))
                .unwrap()
        };
        assert!(run(q.as_tensor(), &k).is_none());
        assert!(run(&k, &k).is_some());
        let one = k.narrow(0, 0, 1).unwrap();
        assert!(run(&one, &one).is_none());
    }

    #[test]
    fn softmax_rows_compute_the_bits_of_each_row_s_own_passes() {
        // Rows whose last block is computed in place and rows without the room for it (T not
        // a multiple of 32), with NaN left past each row block's keys as earlier heads leave
        // it: every row as its maximum and exp_shifted_sum over its visible keys alone give it,
        // 0 up to the end of its block. Some rows hold a NaN, -inf, keys whose exponentials
        // underflow, only zeros of both signs, or only -inf.
        let special = |i: usize, j: usize| match (i % 11, j % 5) {
            (3, 0) => Some(f32::NAN),
            (4, 1) => Some(f32::NEG_INFINITY),
            (5, 2) => Some(-300.0),
            (6, _) => Some(if j.is_multiple_of(2) { -0.0 } else { 0.0 }),
            (7, _) => Some(f32::NEG_INFINITY),
            _ => None,
        };
        // NaNs compare as one value: their payloads are not the kernels' to keep.
        let bits = |v: &[f32]| {
            let canonical = |x: &f32| {
                if x.is_nan() {
                    f32::NAN.to_bits()
                } else {
                    x.to_bits()
                }
            };
            v.iter().map(canonical).collect::<Vec<_>>()
        };
        if !panel_product::takes(LANES) {
            eprintln!("no AVX-512 here: the portable loops are compared with themselves");
        }
        for (t, s) in [(128usize, 128usize), (150, 153), (7, 11)] {
            let dims = Dims {
                h: 1,
                g: 1,
                t,
                s,
                d: 8,
            };
            let mut e = vec![f32::NAN; t * s];
            for (first, rows, keys) in row_blocks(dims) {
                for i in first..first + rows {
                    for j in 0..keys {
                        e[i * s + j] =
                            special(i, j).unwrap_or(((i * 31 + j * 17) % 101) as f32 / 7.0 - 6.0);
                    }
                }
            }
            let (mut fast, mut inv_sums) = (e.clone(), vec![0f32; t]);
            softmax_rows(&mut fast, &mut inv_sums, dims, 0.35);
            // The portable loops compute the same bits as the AVX-512 kernel.
            let (mut portable, mut portable_sums) = (e.clone(), vec![0f32; t]);
            softmax_rows_portable(&mut portable, &mut portable_sums, dims, 0.35);
            assert_eq!(
                bits(&portable),
                bits(&fast),
                "T {t}: portable against dispatched"
            );
            assert_eq!(bits(&portable_sums), bits(&inv_sums), "T {t}: their sums");
            for (first, rows, keys) in row_blocks(dims) {
                for i in first..first + rows {
                    let visible = s - t + i + 1;
                    let mut row = e[i * s..i * s + visible].to_vec();
                    let max = row_max(&row);
                    let sum = crate::ops::exp::exp_shifted_sum(&mut row, max, 0.35);
                    row.resize(keys, 0.0);
                    assert_eq!(
                        bits(&fast[i * s..i * s + keys]),
                        bits(&row),
                        "T {t} row {i}"
                    );
                    assert_eq!(bits(&inv_sums[i..=i]), bits(&[1.0 / sum]), "T {t} row {i}");
                }
            }
            // The backward rows likewise, on those probabilities and a d P with NaN past the
            // visible keys (where an overflow would leave inf).
            let mut p = fast;
            let mut dp = e.iter().map(|x| x.sin()).collect::<Vec<_>>();
            for (i, (row, d_row)) in p.chunks_mut(s).zip(dp.chunks_mut(s)).enumerate() {
                let visible = s - t + i + 1;
                row[..visible].iter_mut().for_each(|x| *x *= inv_sums[i]);
                d_row[visible..].fill(f32::NAN);
            }
            let plain = dp.clone();
            softmax_backward_rows(&mut dp, &p, dims, 0.35);
            for (first, rows, keys) in row_blocks(dims) {
                for i in first..first + rows {
                    let visible = s - t + i + 1;
                    let (pr, ds) = (&p[i * s..i * s + visible], &plain[i * s..i * s + visible]);
                    let dot = lane_dot(pr, ds);
                    let mut row: Vec<f32> = pr
                        .iter()
                        .zip(ds)
                        .map(|(p, x)| 0.35 * p * (x - dot))
                        .collect();
                    row.resize(keys, 0.0);
                    assert_eq!(bits(&dp[i * s..i * s + keys]), bits(&row), "T {t} row {i}");
                }
            }
        }
    }
}
