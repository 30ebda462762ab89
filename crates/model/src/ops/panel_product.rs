//! The single-threaded products of attention's heads. Those with a narrow output, n a multiple
//! of 32 columns (the weighted values and their gradients, D wide), take a kernel of their own:
//! 12 rows by 32 columns of the output at a time in AVX-512 registers, the right factor's rows
//! read where they are. The gemm crate runs these with its half-width kernel (32 columns fill 2
//! of its 4 vectors) after packing the operands: attention's products of the probabilities and
//! the values took 6% of a micro evaluation pass there. Each output element is one chain of
//! fused multiply-adds over k in order, as the gemm crate's kernels compute it (the same bits,
//! tested). The rest go to the gemm crate.

use std::mem::MaybeUninit;

/// Whether [`product`] takes the panel kernel for `n` columns on this CPU: AVX-512 and n a
/// multiple of 32.
pub(crate) fn takes(n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        n > 0 && n.is_multiple_of(PANEL) && is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = n;
        false
    }
}

/// Whether [`product`] runs the panel kernel for a right factor `b` and `n` columns: [`takes`]
/// with b's rows contiguous. Each element is then one chain over k in order, however the rows
/// are cut into calls (attention's causal tiles rely on it); the gemm crate's small-product
/// paths for short calls add in another order.
pub(crate) fn takes_product(b: MatRef, n: usize) -> bool {
    b.col_stride == 1 && takes(n)
}

/// Output columns per panel: two AVX-512 vectors.
const PANEL: usize = 32;

/// Output rows per tile: 12 rows of 2 vectors are 24 of the 32 registers.
pub(crate) const ROWS: usize = 12;

/// A row-major or transposed view of a matrix in a slice: element (r, c) is
/// `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A (rows, cols) row-major matrix.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a (rows, cols) row-major matrix: (cols, rows).
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    /// The index one past the last element a (rows, cols) matrix of this view reads.
    fn end(&self, rows: usize, cols: usize) -> usize {
        match rows == 0 || cols == 0 {
            true => 0,
            false => (rows - 1) * self.row_stride + (cols - 1) * self.col_stride + 1,
        }
    }
}

/// out (m, n), rows `out_stride` apart, = a (m, k) b (k, n), plus out's old values when
/// `accumulate`, on this thread: the panel kernel where [`takes`]`(n)` and b's rows are
/// contiguous, else the gemm crate's kernels (what Candle's CPU matmul runs). Panics if an
/// operand is smaller than the shapes say.
pub(crate) fn product(
    (out, out_stride): (&mut [f32], usize),
    a: MatRef,
    b: MatRef,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) {
    // SAFETY: out's elements all hold values, as accumulating needs, and the product writes
    // values only (slots_of).
    unsafe {
        product_into_slots(
            (slots_of(out), out_stride),
            a,
            b,
            (m, n, k),
            Ending::of(accumulate),
        )
    }
}

/// [`product`] without accumulating, into slots that need not hold values yet (a fresh
/// output): it writes every element of the (m, n) block and reads none, so the buffer needs
/// no zeros first. Where `row_scales` (m or more) are given, row i of the product is stored
/// times `row_scales[i]` (attention's 1 / row sums): one rounding of the product's value, as
/// scaling the stored row would be, without another pass over it.
pub(crate) fn product_into(
    (out, out_stride): (&mut [MaybeUninit<f32>], usize),
    a: MatRef,
    b: MatRef,
    (m, n, k): (usize, usize, usize),
    row_scales: Option<&[f32]>,
) {
    let ending = row_scales.map_or(Ending::Store, Ending::Scale);
    // SAFETY: nothing is read from out without accumulating.
    unsafe { product_into_slots((out, out_stride), a, b, (m, n, k), ending) }
}

/// What a product does with each output element it computed.
#[derive(Clone, Copy)]
enum Ending<'a> {
    /// Stores it.
    Store,
    /// Adds it to the value already there.
    Accumulate,
    /// Stores it times its row's scale (at least m of them).
    Scale(&'a [f32]),
}

impl Ending<'_> {
    fn of(accumulate: bool) -> Self {
        match accumulate {
            true => Ending::Accumulate,
            false => Ending::Store,
        }
    }
}

/// f32s seen as slots, for [`product_into`] or the like.
///
/// # Safety
/// Only values may be written through the result (never `MaybeUninit::uninit()`).
pub(crate) unsafe fn slots_of(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller writes values only.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// The body of [`product`] and [`product_into`].
///
/// # Safety
/// Where `ending` accumulates, the (m, n) block of out holds values.
unsafe fn product_into_slots(
    (out, out_stride): (&mut [MaybeUninit<f32>], usize),
    a: MatRef,
    b: MatRef,
    (m, n, k): (usize, usize, usize),
    ending: Ending,
) {
    let out_view = MatRef {
        data: &[],
        row_stride: out_stride,
        col_stride: 1,
    };
    assert!(
        n <= out_stride
            && out_view.end(m, n) <= out.len()
            && a.end(m, k) <= a.data.len()
            && b.end(k, n) <= b.data.len()
            && !matches!(ending, Ending::Scale(scales) if scales.len() < m),
        "product: operand sizes"
    );
    if takes_product(b, n) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 (takes), and the assertion keeps every element the
        // tiles read or write inside the slices, and the row scales inside theirs; out does
        // not alias a or b (&mut).
        unsafe {
            let shape = Shape {
                out_stride,
                a_rows: a.row_stride,
                a_cols: a.col_stride,
                b_rows: b.row_stride,
                k,
                accumulate: matches!(ending, Ending::Accumulate),
            };
            for panel in (0..n).step_by(PANEL) {
                for first in (0..m).step_by(ROWS) {
                    let tile = (
                        out.as_mut_ptr()
                            .cast::<f32>()
                            .add(first * out_stride + panel),
                        a.data.as_ptr().add(first * a.row_stride),
                        b.data.as_ptr().add(panel),
                    );
                    let scales = match ending {
                        Ending::Scale(scales) => Some(scales.as_ptr().add(first)),
                        _ => None,
                    };
                    tile_of(ROWS.min(m - first), tile, scales, &shape);
                }
            }
        }
        return;
    }
    // SAFETY: as above, for every index gemm forms; gemm reads out only where accumulating.
    unsafe {
        gemm_product(
            (out.as_mut_ptr().cast(), out_stride),
            a,
            b,
            (m, n, k),
            matches!(ending, Ending::Accumulate),
        )
    }
    if let Ending::Scale(scales) = ending {
        for (r, scale) in scales[..m].iter().enumerate() {
            for x in &mut out[r * out_stride..][..n] {
                // SAFETY: gemm wrote the (m, n) block.
                x.write(unsafe { x.assume_init_read() } * scale);
            }
        }
    }
}

/// `to` (cols, rows) = the transpose of `from` (rows, cols), both row-major: a right factor
/// stored transposed (attention's keys, for the scores) made into the rows [`product`]'s panel
/// kernel reads. Blocks of 16 x 16 in AVX-512 registers where both sides are multiples of 16
/// (a plain loop took 2.7% of a micro evaluation pass, writing one element at a time).
pub(crate) fn transpose(from: &[f32], to: &mut [f32], cols: usize) {
    assert!(
        cols > 0 && from.len().is_multiple_of(cols) && to.len() == from.len(),
        "transpose: {} elements are not rows of {cols}, or not {} elements",
        from.len(),
        to.len()
    );
    let rows = from.len() / cols;
    #[cfg(target_arch = "x86_64")]
    if rows.is_multiple_of(16) && cols.is_multiple_of(16) && is_x86_feature_detected!("avx512f") {
        for r in (0..rows).step_by(16) {
            for c in (0..cols).step_by(16) {
                // SAFETY: the CPU has AVX-512; the block's 16 rows of 16 lie inside both
                // slices (multiples of 16, lengths asserted).
                unsafe {
                    transpose_block(
                        from.as_ptr().add(r * cols + c),
                        cols,
                        to.as_mut_ptr().add(c * rows + r),
                        rows,
                    )
                }
            }
        }
        return;
    }
    for (c, out) in to.chunks_exact_mut(rows).enumerate() {
        for (r, o) in out.iter_mut().enumerate() {
            *o = from[r * cols + c];
        }
    }
}

/// The 16 x 16 block at `from` (rows `from_stride` apart) transposed into `to` (rows
/// `to_stride` apart): pairs of rows interleaved by element, then by pairs, then the 128-bit
/// quarters gathered twice.
///
/// # Safety
/// AVX-512; 16 rows of 16 at both pointers and strides.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_block(from: *const f32, from_stride: usize, to: *mut f32, to_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's pointers, at their strides.
    unsafe {
        let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(from.add(i * from_stride)));
        // t[2i] = r[2i] and r[2i+1] interleaved by element (lower halves of each quarter),
        // t[2i+1] the upper halves: per quarter a0 b0 a1 b1 and a2 b2 a3 b3.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // u[4g + j] holds element j (+ 4 q in quarter q) of rows 4g .. 4g + 3.
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (g, j) = (i / 4, i % 4);
            let (x, y) = (
                _mm512_castps_pd(t[4 * g + j / 2]),
                _mm512_castps_pd(t[4 * g + 2 + j / 2]),
            );
            _mm512_castpd_ps(if j % 2 == 0 {
                _mm512_unpacklo_pd(x, y)
            } else {
                _mm512_unpackhi_pd(x, y)
            })
        });
        for j in 0..4 {
            // Quarters 0 and 2, then 1 and 3, of row groups 0 and 1, and of groups 2 and 3.
            let v0 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
            let v1 = _mm512_shuffle_f32x4::<0xdd>(u[j], u[4 + j]);
            let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
            let v3 = _mm512_shuffle_f32x4::<0xdd>(u[8 + j], u[12 + j]);
            let column = |c: usize| to.add(c * to_stride);
            _mm512_storeu_ps(column(j), _mm512_shuffle_f32x4::<0x88>(v0, v2));
            _mm512_storeu_ps(column(j + 8), _mm512_shuffle_f32x4::<0xdd>(v0, v2));
            _mm512_storeu_ps(column(j + 4), _mm512_shuffle_f32x4::<0x88>(v1, v3));
            _mm512_storeu_ps(column(j + 12), _mm512_shuffle_f32x4::<0xdd>(v1, v3));
        }
    }
}

/// [`product`] by the gemm crate, single-threaded (the callers run one task per head).
///
/// # Safety
/// The operands must hold the (m, n), (m, k) and (k, n) matrices at their strides, out's
/// holding values where `accumulate`.
unsafe fn gemm_product(
    (out, out_stride): (*mut f32, usize),
    a: MatRef,
    b: MatRef,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) {
    // SAFETY: passed on from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            out_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// What every tile of one product shares.
#[cfg(target_arch = "x86_64")]
struct Shape {
    out_stride: usize,
    a_rows: usize,
    a_cols: usize,
    b_rows: usize,
    k: usize,
    accumulate: bool,
}

/// The tile of `rows` (1 to 12) rows at (out, a, b), each row stored times its scale where
/// `scales` (the tile's first row's) is given.
///
/// # Safety
/// AVX-512, and the pointers valid for the tile's elements at the strides `shape` gives
/// (`scales` for `rows` of them).
#[cfg(target_arch = "x86_64")]
unsafe fn tile_of(
    rows: usize,
    at: (*mut f32, *const f32, *const f32),
    scales: Option<*const f32>,
    shape: &Shape,
) {
    // SAFETY: passed on from the caller.
    unsafe {
        match rows {
            12 => tile::<12>(at, scales, shape),
            11 => tile::<11>(at, scales, shape),
            10 => tile::<10>(at, scales, shape),
            9 => tile::<9>(at, scales, shape),
            8 => tile::<8>(at, scales, shape),
            7 => tile::<7>(at, scales, shape),
            6 => tile::<6>(at, scales, shape),
            5 => tile::<5>(at, scales, shape),
            4 => tile::<4>(at, scales, shape),
            3 => tile::<3>(at, scales, shape),
            2 => tile::<2>(at, scales, shape),
            _ => tile::<1>(at, scales, shape),
        }
    }
}

/// R rows by 32 columns: per step of k, the two vectors of b's row, and a's element of each
/// row broadcast into a fused multiply-add with them.
///
/// # Safety
/// As [`tile_of`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize>(
    (out, a, b): (*mut f32, *const f32, *const f32),
    scales: Option<*const f32>,
    shape: &Shape,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's pointers, at the strides in `shape`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for kk in 0..shape.k {
            let row = b.add(kk * shape.b_rows);
            let (b0, b1) = (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)));
            let a_col = a.add(kk * shape.a_cols);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a_col.add(r * shape.a_rows));
                acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let o = out.add(r * shape.out_stride);
            let (mut v0, mut v1) = (acc[0], acc[1]);
            if shape.accumulate {
                v0 = _mm512_add_ps(_mm512_loadu_ps(o), v0);
                v1 = _mm512_add_ps(_mm512_loadu_ps(o.add(16)), v1);
            }
            if let Some(scales) = scales {
                let scale = _mm512_set1_ps(*scales.add(r));
                v0 = _mm512_mul_ps(v0, scale);
                v1 = _mm512_mul_ps(v1, scale);
            }
            _mm512_storeu_ps(o, v0);
            _mm512_storeu_ps(o.add(16), v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values as values;

    #[test]
    fn panel_products_match_a_plain_sum_and_the_gemm_crate() {
        if !takes(32) {
            eprintln!("no AVX-512 here: the panel product never runs");
            return;
        }
        // Rows under, at and past a tile; k of 0, 1 and more; a stored as is and transposed;
        // onto zeros and onto older values.
        for (m, n, k) in [
            (1, 32, 1),
            (12, 32, 7),
            (13, 64, 64),
            (30, 32, 0),
            (25, 96, 130),
        ] {
            for transposed in [false, true] {
                for accumulate in [false, true] {
                    let (a_rows, a_cols) = if transposed { (1, m) } else { (k, 1) };
                    let a = values(m * k, 1);
                    let b = values(k * n, 2);
                    let stride = n + 3;
                    let old = values(m * stride, 3);
                    let mut ours = old.clone();
                    let a_m = MatRef {
                        data: &a,
                        row_stride: a_rows,
                        col_stride: a_cols,
                    };
                    let b_m = MatRef::rows(&b, n);
                    product((&mut ours, stride), a_m, b_m, (m, n, k), accumulate);
                    let mut theirs = old.clone();
                    // SAFETY: the shapes and strides fit the vectors.
                    unsafe {
                        gemm_product(
                            (theirs.as_mut_ptr(), stride),
                            a_m,
                            b_m,
                            (m, n, k),
                            accumulate,
                        )
                    };
                    for r in 0..m {
                        for c in 0..stride {
                            let at = r * stride + c;
                            if c >= n {
                                assert_eq!(ours[at], old[at], "({r}, {c}) past n was written");
                                continue;
                            }
                            let dot: f64 = (0..k)
                                .map(|j| a[r * a_rows + j * a_cols] as f64 * b[j * n + c] as f64)
                                .sum();
                            let exact = dot + if accumulate { old[at] as f64 } else { 0.0 };
                            let what = format!(
                                "m {m} n {n} k {k} t {transposed} acc {accumulate} ({r}, {c})"
                            );
                            assert!(
                                (ours[at] as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()),
                                "{what}: {} vs {exact}",
                                ours[at]
                            );
                            assert_eq!(ours[at].to_bits(), theirs[at].to_bits(), "{what}: vs gemm");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn scaled_products_are_the_stored_products_times_their_rows_scales() {
        // The panel kernel (n a multiple of 32, where the CPU has AVX-512) and the gemm crate
        // (n = 20); tiles of 12 rows and a shorter last one.
        if !takes(32) {
            eprintln!("no AVX-512 here: only the gemm crate's scaled products run");
        }
        for (m, n, k) in [(13, 32, 9), (25, 64, 40), (7, 20, 16)] {
            let (a, b) = (values(m * k, 5), values(k * n, 6));
            let scales: Vec<f32> = values(m, 7).iter().map(|x| x + 1.5).collect();
            let stride = n + 1;
            let (a_m, b_m) = (MatRef::rows(&a, k), MatRef::rows(&b, n));
            let mut stored = vec![0f32; m * stride];
            product((&mut stored, stride), a_m, b_m, (m, n, k), false);
            let mut scaled = vec![MaybeUninit::new(f32::NAN); m * stride];
            product_into((&mut scaled, stride), a_m, b_m, (m, n, k), Some(&scales));
            for (r, scale) in scales.iter().enumerate() {
                for c in 0..n {
                    let at = r * stride + c;
                    // SAFETY: initialized above.
                    let ours = unsafe { scaled[at].assume_init() };
                    let expected = stored[at] * scale;
                    assert_eq!(
                        ours.to_bits(),
                        expected.to_bits(),
                        "({m}, {n}, {k}) at ({r}, {c})"
                    );
                }
            }
        }
    }

    #[test]
    fn transposes_move_every_element_to_its_mirror() {
        // Blocks of 16 (the AVX-512 path where the CPU has it) and shapes the plain loop takes.
        if !takes(32) {
            eprintln!("no AVX-512 here: only the plain loop runs");
        }
        for (rows, cols) in [
            (16usize, 16usize),
            (128, 32),
            (32, 48),
            (7, 5),
            (16, 3),
            (1, 1),
        ] {
            let from = values(rows * cols, 4);
            let mut to = vec![f32::NAN; rows * cols];
            transpose(&from, &mut to, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        to[c * rows + r].to_bits(),
                        from[r * cols + c].to_bits(),
                        "{rows} x {cols}: ({r}, {c})"
                    );
                }
            }
        }
    }
}
