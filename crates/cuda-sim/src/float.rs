//! Float arithmetic with PTX's rounding modes, flush-to-zero and approximate instructions.
//!
//! The host computes in round-to-nearest; a directed mode (`.rm`, `.rp`, `.rz`) is obtained
//! from the nearest result and the sign of the exact error, which an error-free transformation
//! (TwoSum, an fma residual) gives exactly. Approximate instructions (`ex2.approx`, ...) are
//! computed in f64 and rounded once, well within PTX's documented bounds (2 ulp for `ex2`).

use crate::inst::Round;

/// `x` with a subnormal flushed to a zero of the same sign (`.ftz`).
pub fn ftz32(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// Rounds the exact value `s + e` (with `|e| <= ulp(s)/2`, `s` the f64 nearest) to f32.
pub fn round_to_f32(s: f64, e: f64, mode: Round) -> f32 {
    let r = s as f32;
    if mode == Round::Nearest || !s.is_finite() {
        return r;
    }
    let d = s - r as f64;
    // The sign of exact - r: d when nonzero (then |d| > |e|), else e's.
    let sign = if d != 0.0 {
        d.signum()
    } else if e != 0.0 {
        e.signum()
    } else {
        0.0
    };
    directed(r, sign, mode)
}

fn directed(r: f32, sign: f64, mode: Round) -> f32 {
    let down = sign < 0.0;
    let up = sign > 0.0;
    match mode {
        Round::Nearest => r,
        Round::Down if down => r.next_down(),
        Round::Up if up => r.next_up(),
        Round::Zero if (r > 0.0 && down) || (r < 0.0 && up) => {
            if r > 0.0 {
                r.next_down()
            } else {
                r.next_up()
            }
        }
        _ => r,
    }
}

fn directed64(r: f64, err: f64, mode: Round) -> f64 {
    match mode {
        Round::Nearest => r,
        Round::Down if err < 0.0 => r.next_down(),
        Round::Up if err > 0.0 => r.next_up(),
        Round::Zero if (r > 0.0 && err < 0.0) || (r < 0.0 && err > 0.0) => {
            if r > 0.0 {
                r.next_down()
            } else {
                r.next_up()
            }
        }
        _ => r,
    }
}

/// Knuth's TwoSum: `a + b == s + e` exactly.
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

pub fn add32(a: f32, b: f32, mode: Round) -> f32 {
    if mode == Round::Nearest {
        return a + b;
    }
    let (s, e) = two_sum(a as f64, b as f64);
    round_to_f32(s, e, mode)
}

pub fn mul32(a: f32, b: f32, mode: Round) -> f32 {
    if mode == Round::Nearest {
        return a * b;
    }
    // Exact: 24 x 24 bits fit f64's 53.
    round_to_f32(a as f64 * b as f64, 0.0, mode)
}

pub fn fma32(a: f32, b: f32, c: f32, mode: Round) -> f32 {
    if mode == Round::Nearest {
        return a.mul_add(b, c);
    }
    let (s, e) = two_sum(a as f64 * b as f64, c as f64);
    round_to_f32(s, e, mode)
}

pub fn div32(a: f32, b: f32, mode: Round) -> f32 {
    if mode == Round::Nearest {
        return a / b;
    }
    let q = a as f64 / b as f64;
    let residual = (-q).mul_add(b as f64, a as f64) / b as f64;
    round_to_f32(q, residual, mode)
}

pub fn add64(a: f64, b: f64, mode: Round) -> f64 {
    let (s, e) = two_sum(a, b);
    if s.is_finite() {
        directed64(s, e, mode)
    } else {
        s
    }
}

pub fn mul64(a: f64, b: f64, mode: Round) -> f64 {
    let p = a * b;
    if p.is_finite() {
        directed64(p, a.mul_add(b, -p), mode)
    } else {
        p
    }
}

pub fn fma64(a: f64, b: f64, c: f64, mode: Round) -> f64 {
    let r = a.mul_add(b, c);
    if mode == Round::Nearest || !r.is_finite() {
        return r;
    }
    // The error of an fma is not itself an fma; its sign is that of (a*b - (r - c)), which
    // TwoSum over the exact product's two parts gives.
    let p = a * b;
    let p_err = a.mul_add(b, -p);
    let (s, e) = two_sum(p, c);
    let err = (s - r) + (e + p_err);
    directed64(r, err, mode)
}

pub fn div64(a: f64, b: f64, mode: Round) -> f64 {
    let q = a / b;
    if q.is_finite() {
        directed64(q, (-q).mul_add(b, a) / b, mode)
    } else {
        q
    }
}

/// `min`/`max` of PTX: a NaN operand yields the other, and -0 < +0.
pub fn min32(a: f32, b: f32) -> f32 {
    if a.is_nan() {
        b
    } else if b.is_nan() {
        a
    } else if a == b {
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else if a < b {
        a
    } else {
        b
    }
}

pub fn max32(a: f32, b: f32) -> f32 {
    if a.is_nan() {
        b
    } else if b.is_nan() {
        a
    } else if a == b {
        if a.is_sign_positive() {
            a
        } else {
            b
        }
    } else if a > b {
        a
    } else {
        b
    }
}

pub fn min64(a: f64, b: f64) -> f64 {
    if a.is_nan() || (b < a) || (a == b && b.is_sign_negative()) {
        if b.is_nan() {
            a
        } else {
            b
        }
    } else {
        a
    }
}

pub fn max64(a: f64, b: f64) -> f64 {
    if a.is_nan() || (b > a) || (a == b && b.is_sign_positive()) {
        if b.is_nan() {
            a
        } else {
            b
        }
    } else {
        a
    }
}

/// A float rounded to an integral value with `cvt`'s `.rni`, `.rmi`, `.rpi`, `.rzi`.
pub fn round_integral(x: f64, mode: Round) -> f64 {
    match mode {
        Round::Nearest => x.round_ties_even(),
        Round::Down => x.floor(),
        Round::Up => x.ceil(),
        Round::Zero => x.trunc(),
    }
}

/// An approximate unary f32 instruction, computed in f64 and rounded once.
pub fn approx32(x: f32, ftz: bool, f: impl Fn(f64) -> f64) -> f32 {
    let x = if ftz { ftz32(x) } else { x };
    let y = f(x as f64) as f32;
    if ftz {
        ftz32(y)
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2^-31, far below half an ulp of 1.
    const TINY: f32 = f32::from_bits(0x3000_0000);

    #[test]
    fn directed_fma_rounds_toward_its_side() {
        assert_eq!(fma32(1.0, 1.0, TINY, Round::Nearest), 1.0);
        assert_eq!(fma32(1.0, 1.0, TINY, Round::Down), 1.0);
        assert_eq!(fma32(1.0, 1.0, TINY, Round::Up), 1.0f32.next_up());
        assert_eq!(fma32(1.0, 1.0, -TINY, Round::Down), 1.0f32.next_down());
        assert_eq!(fma32(1.0, 1.0, -TINY, Round::Zero), 1.0f32.next_down());
        assert_eq!(fma32(-1.0, 1.0, TINY, Round::Zero), (-1.0f32).next_up());
        // The expf idiom nvcc emits: fma.rm of (x * 252 + 12582913) keeps the integer below.
        assert_eq!(fma32(0.5, 252.0, 12_582_913.0, Round::Down), 12_583_039.0);
    }

    #[test]
    fn directed_division_and_sums_bracket_the_exact_value() {
        let (d, u) = (div32(1.0, 3.0, Round::Down), div32(1.0, 3.0, Round::Up));
        assert_eq!(d.next_up(), u);
        assert!((d as f64) < 1.0 / 3.0 && 1.0 / 3.0 < u as f64);
        assert_eq!(add32(1.0, TINY, Round::Up), 1.0f32.next_up());
        assert_eq!(add32(f32::MAX, f32::MAX, Round::Down), f32::MAX);
        assert_eq!(add32(f32::MAX, f32::MAX, Round::Up), f32::INFINITY);
        assert_eq!(
            mul64(1.0 + f64::EPSILON, 1.0 + f64::EPSILON, Round::Up),
            (1.0 + 2.0 * f64::EPSILON) + f64::EPSILON
        );
    }

    #[test]
    fn min_max_prefer_numbers_and_order_signed_zeros() {
        assert_eq!(max32(f32::NAN, 2.0), 2.0);
        assert_eq!(min32(1.0, f32::NAN), 1.0);
        assert!(max32(-0.0, 0.0).is_sign_positive());
        assert!(min32(0.0, -0.0).is_sign_negative());
    }

    #[test]
    fn flush_to_zero_keeps_the_sign() {
        assert_eq!(ftz32(-1e-40).to_bits(), (-0.0f32).to_bits());
        assert_eq!(ftz32(1e-30), 1e-30);
    }
}
