//! `exp` over a slice of f32, eight or sixteen elements at a time. The kernels shaped like a
//! softmax (attention's probabilities, the causal softmax, cross-entropy) spent about 12% of
//! a `small` training step in glibc's `expf`, which Rust calls once per element, and the SiLU
//! of the FFN gates (SwiGLU, dynActGLU) 3-6% more. Those gates' CUDA kernels compute the same
//! steps (`kernels/exp.cuh`), so their exp is the CPU's bit for bit on a GPU too.
//!
//! The method is Cephes' `expf`: x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 in two parts, so
//! that n ln 2 is exact), e^r from a degree-7 polynomial, 2^n put into the exponent bits.
//! Within 1 ulp of the exact value (0.97 at worst in a sweep of every exponent); results
//! under 2^-126 (x < -87.34) are 0; NaN stays NaN. It is written as plain branch-free
//! arithmetic that the compiler vectorizes. Its products and sums are fused multiply-adds
//! (`mul_add`, rounded once) where the steps allow: a third fewer operations than separate
//! multiplies and adds (exp fell from 9.3% to 6.6% of an evaluation pass). A fused multiply-add
//! has one correct result, so the AVX-512 and AVX2 paths (with their FMA instructions) and the
//! scalar one (where `mul_add` may call the C library's `fmaf`, slowly, on a CPU without them)
//! compute the same bits on every CPU. [`exp_shifted_sum`] is a softmax row's pass: the
//! shifted exponentials and their sum at once. Each has its loop compiled three times
//! (AVX-512, AVX2, the baseline) behind explicit wrappers with `target_feature` (`wide_fma!`
//! writes them; a kernel with many short rows puts its whole row loop behind one): inlining a
//! closure into such a wrapper is up to the compiler, and a missed one would leave exp on the
//! baseline's 4 lanes and software `fmaf`.

use super::{fold_lanes, LANES};

/// Defines `$name`, which runs `$body` (an `#[inline(always)]` fn of the same arguments, with
/// lifetime parameters only) compiled for AVX-512 or AVX2 with FMA where the CPU has
/// them, else as it is: the explicit wrappers this module's comment explains, one per width.
macro_rules! wide_fma {
    ($(#[$doc:meta])* $vis:vis fn $name:ident$(<$($lt:lifetime),+>)?($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $body:path) => {
        $(#[$doc])*
        $vis fn $name$(<$($lt),+>)?($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                fn avx512$(<$($lt),+>)?($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2$(<$($lt),+>)?($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use wide_fma;

wide_fma!(
    /// Replaces every element of `xs` by its exponential.
    pub fn exp_in_place(xs: &mut [f32]) = exp_loop
);

/// The loop each path compiles with its own vector width.
#[inline(always)]
fn exp_loop(xs: &mut [f32]) {
    for x in xs {
        *x = exp(*x);
    }
}

wide_fma!(
    /// Replaces every x of `xs` by e^((x - shift) scale) and returns their sum, added in
    /// [`super::lane_sum`]'s order: a softmax row's exponentials and their sum in one pass over it, where
    /// the shift, the exponentials and the sum took three.
    pub fn exp_shifted_sum(xs: &mut [f32], shift: f32, scale: f32) -> f32 = exp_shifted_sum_loop
);

/// Lane l adds elements l, l + 32, ... in order, as [`super::lane_sum`] does, then
/// [`fold_lanes`].
#[inline(always)]
pub(crate) fn exp_shifted_sum_loop(xs: &mut [f32], shift: f32, scale: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut blocks = xs.chunks_exact_mut(LANES);
    for block in &mut blocks {
        add_exp_block(block, &mut lanes, LANES, shift, scale);
    }
    // The last few elements as a whole block, so that they take vectors as well (attention's
    // rows of 1 to T keys end in up to 31 of them).
    let tail = blocks.into_remainder();
    if !tail.is_empty() {
        let mut block = [0f32; LANES];
        block[..tail.len()].copy_from_slice(tail);
        add_exp_block(&mut block, &mut lanes, tail.len(), shift, scale);
        tail.copy_from_slice(&block[..tail.len()]);
    }
    fold_lanes(lanes)
}

/// The sum [`exp_shifted_sum_loop`] returns (the same bits: its lanes and fold), reading `xs`
/// only: cross-entropy's log-sum-exp needs no exponentials written.
#[inline(always)]
pub(crate) fn exp_shifted_sum_read_only_loop(xs: &[f32], shift: f32, scale: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut blocks = xs.chunks_exact(LANES);
    for block in &mut blocks {
        for (x, lane) in block.iter().zip(&mut lanes) {
            *lane += exp((*x - shift) * scale);
        }
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut block = [0f32; LANES];
        block[..tail.len()].copy_from_slice(tail);
        add_exp_block(&mut block, &mut lanes, tail.len(), shift, scale);
    }
    fold_lanes(lanes)
}

/// [`exp_shifted_sum_loop`] of `xs[..n]` where `xs` has room for the block of [`LANES`] that
/// holds the last of them: that block is computed in place, the lanes past `n` left out of the
/// sum (as the padded copy does) and their elements overwritten with exponentials of whatever
/// they held. The same bits over `xs[..n]`, without the copies through the stack. Values there
/// whose exponentials are subnormal would be slow (the CPU's assists): the caller sets them.
#[inline(always)]
pub(crate) fn exp_shifted_sum_in_room_loop(
    xs: &mut [f32],
    n: usize,
    shift: f32,
    scale: f32,
) -> f32 {
    assert!(
        xs.len() == n.next_multiple_of(LANES),
        "exp_shifted_sum_in_room: {} elements are not the whole blocks that hold {n}",
        xs.len()
    );
    let mut lanes = [0f32; LANES];
    for (b, block) in xs.chunks_exact_mut(LANES).enumerate() {
        add_exp_block(block, &mut lanes, (n - b * LANES).min(LANES), shift, scale);
    }
    fold_lanes(lanes)
}

/// A block of [`LANES`] elements replaced by e^((x - shift) scale), the first `n` of them
/// added to their lanes; the lanes past them add 0, which leaves a lane's sum (>= +0) as it
/// is, even where those exponentials overflow or are NaN.
#[inline(always)]
fn add_exp_block(block: &mut [f32], lanes: &mut [f32; LANES], n: usize, shift: f32, scale: f32) {
    for (l, (x, lane)) in block.iter_mut().zip(lanes).enumerate() {
        *x = exp((*x - shift) * scale);
        *lane += if l < n { *x } else { 0.0 };
    }
}

/// e^x, as described in the module's comment.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds an f32 of magnitude under 2^22 to an integer (ties to even).
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4; // exact in 9 bits, so n * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    const OVERFLOW: f32 = 88.722_83; // ln(f32::MAX)
    const UNDERFLOW: f32 = -87.336_55; // ln(2^-126)

    // Keeps n within the exponent's range; a NaN stays NaN.
    let clamped = x.clamp(UNDERFLOW, OVERFLOW);
    let rounded = clamped.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = rounded - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, clamped));
    let mut p: f32 = 1.987_569_2e-4;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e_r = p.mul_add(r * r, r) + 1.0;
    // 2^n as two factors, since 2^128 (n at the top of the range) is not an f32. The integer
    // n is in the low bits of `rounded` (a conversion with `as` would not vectorize).
    let n = rounded.to_bits() as i32 - ROUND.to_bits() as i32;
    let low = n.min(127);
    let two_to_low = f32::from_bits(((low + 127) as u32) << 23);
    let two_to_rest = if n > low { 2.0 } else { 1.0 };
    let y = e_r * two_to_low * two_to_rest;
    if x > OVERFLOW {
        f32::INFINITY
    } else if x < UNDERFLOW {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between an f32 and the exact value (an f64).
    fn ulps(got: f32, exact: f64) -> f64 {
        let ulp = (exact as f32).abs().max(f32::MIN_POSITIVE);
        let ulp = f32::from_bits(ulp.to_bits() + 1) - ulp;
        (got as f64 - exact).abs() / ulp as f64
    }

    #[test]
    fn exp_is_within_one_ulp_over_the_whole_range() {
        // Every 613th f32 from -87.3 to 88.7: all exponents, many mantissas.
        let (lo, hi) = (-87.33f32, 88.72f32);
        let mut inputs = Vec::new();
        for start in [0f32.to_bits(), 0f32.to_bits() | 0x8000_0000] {
            let mut bits = start;
            loop {
                let x = f32::from_bits(bits);
                if x < lo || x > hi {
                    break;
                }
                inputs.push(x);
                bits += 613;
            }
        }
        let mut ys = inputs.clone();
        exp_in_place(&mut ys);
        let worst = inputs
            .iter()
            .zip(&ys)
            .map(|(&x, &y)| (ulps(y, (x as f64).exp()), x))
            .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        assert!(inputs.len() > 2_000_000, "{}", inputs.len());
        assert!(worst.0 <= 1.0, "{} ulp at x = {}", worst.0, worst.1);
        // Exact where e^x is representable.
        let mut exact = [0.0f32, -0.0];
        exp_in_place(&mut exact);
        assert_eq!(exact, [1.0, 1.0]);
    }

    #[test]
    fn exp_of_the_edges_and_of_nan() {
        let mut xs = [
            f32::NEG_INFINITY,
            -1000.0,
            -87.4,
            89.0,
            f32::INFINITY,
            f32::NAN,
        ];
        exp_in_place(&mut xs);
        assert_eq!(xs[..5], [0.0, 0.0, 0.0, f32::INFINITY, f32::INFINITY]);
        assert!(xs[5].is_nan());
    }

    #[test]
    fn shifted_exponentials_and_their_sum_are_those_of_the_separate_passes() {
        // The passes the fused one replaces: shift and scale, exp, lane_sum; every length up
        // to three warps and a row of 257, through the dispatched path and the baseline one,
        // in place, in room and as the sum alone.
        for n in (0..=96).chain([257]) {
            let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * 9.0).collect();
            let (shift, scale) = (2.5f32, 0.177);
            let mut separate: Vec<f32> = xs.iter().map(|x| (x - shift) * scale).collect();
            exp_in_place(&mut separate);
            let sum = crate::ops::lane_sum(n, |j| separate[j]);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let (mut fused, mut plain) = (xs.clone(), xs.clone());
            assert_eq!(
                exp_shifted_sum(&mut fused, shift, scale).to_bits(),
                sum.to_bits()
            );
            assert_eq!(
                exp_shifted_sum_loop(&mut plain, shift, scale).to_bits(),
                sum.to_bits()
            );
            assert_eq!(bits(&fused), bits(&separate), "n = {n}");
            assert_eq!(bits(&plain), bits(&separate), "n = {n}");
            // The sum alone, reading the row only.
            let sum_of = exp_shifted_sum_read_only_loop(&xs, shift, scale);
            assert_eq!(sum_of.to_bits(), sum.to_bits(), "n = {n}");
            // In place in the whole blocks, whatever the room past n holds.
            let mut room = xs.clone();
            let junk = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30, 0.0];
            room.extend((n..n.next_multiple_of(LANES)).map(|j| junk[j % junk.len()]));
            let in_room = exp_shifted_sum_in_room_loop(&mut room, n, shift, scale);
            assert_eq!(in_room.to_bits(), sum.to_bits(), "n = {n}");
            assert_eq!(bits(&room[..n]), bits(&separate), "n = {n}");
        }
    }

    #[test]
    fn padded_lanes_add_nothing_even_where_their_exponential_overflows() {
        // The padded block computes e^((0 - shift) scale) past the tail: e^1000 = inf here,
        // which a mask by multiplication would turn into NaN. Real -inf and NaN inputs too.
        for n in [1usize, 5, 31, 33, 40] {
            let mut xs: Vec<f32> = (0..n).map(|i| -1000.0 + (i % 7) as f32).collect();
            xs[0] = f32::NEG_INFINITY;
            let mut expected: Vec<f32> = xs.iter().map(|x| x + 1000.0).collect();
            exp_in_place(&mut expected);
            let sum = crate::ops::lane_sum(n, |j| expected[j]);
            assert!(sum.is_finite());
            assert_eq!(
                exp_shifted_sum(&mut xs, -1000.0, 1.0).to_bits(),
                sum.to_bits()
            );
            assert_eq!(xs, expected, "n = {n}");
        }
        let mut with_nan = [1.0, f32::NAN, 2.0];
        assert!(exp_shifted_sum(&mut with_nan, 0.0, 1.0).is_nan());
    }

    #[test]
    fn every_vector_width_computes_the_same_bits() {
        // The dispatched path (AVX-512 or AVX2 here) against the loop compiled for the
        // baseline CPU, on lengths that leave every kind of remainder.
        for n in [1usize, 7, 8, 15, 16, 17, 100, 1000] {
            let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * 80.0).collect();
            let (mut fast, mut plain) = (xs.clone(), xs.clone());
            exp_in_place(&mut fast);
            exp_loop(&mut plain);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&plain), "n = {n}");
        }
    }
}
