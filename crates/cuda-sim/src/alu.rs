//! The arithmetic of PTX on raw register bits: integer, float (with the rounding modes of
//! float.rs), half-precision and conversions. Pure functions of their operands.

use crate::float::*;
use crate::inst::*;

pub(crate) fn low_bits(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// `v` cut to `ty`'s width (registers hold values zero-extended).
pub(crate) fn mask(v: u64, ty: Ty) -> u64 {
    match ty {
        Ty::Pred => (v != 0) as u64,
        _ => v & low_bits(ty.bits()),
    }
}

/// A loaded value as a register holds it: zero-extended, or sign-extended for signed types
/// (an `ld.s8` into a 16-bit register reads back negative as `.s16`).
pub(crate) fn extend(v: u64, ty: Ty) -> u64 {
    if ty.is_signed() {
        signed(v, ty) as u64
    } else {
        mask(v, ty)
    }
}

pub(crate) fn signed(v: u64, ty: Ty) -> i64 {
    let bits = ty.bits();
    if bits >= 64 {
        v as i64
    } else {
        ((v << (64 - bits)) as i64) >> (64 - bits)
    }
}

pub(crate) fn wide_ty(ty: Ty) -> Ty {
    match ty {
        Ty::U16 => Ty::U32,
        Ty::S16 => Ty::S32,
        Ty::U32 => Ty::U64,
        Ty::S32 => Ty::S64,
        t => t,
    }
}

fn f32_of(v: u64) -> f32 {
    f32::from_bits(v as u32)
}
fn f64_of(v: u64) -> f64 {
    f64::from_bits(v)
}
fn bits32(x: f32) -> u64 {
    x.to_bits() as u64
}

fn sat32(x: f32, sat: bool) -> f32 {
    if !sat {
        x
    } else if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

pub(crate) fn compare(cmp: Cmp, ty: Ty, a: u64, b: u64) -> bool {
    use std::cmp::Ordering::*;
    if ty.is_float() {
        let (x, y) = match ty {
            Ty::F64 => (f64_of(a), f64_of(b)),
            Ty::F32 => (f32_of(a) as f64, f32_of(b) as f64),
            Ty::F16 => (
                half::f16::from_bits(a as u16).to_f64(),
                half::f16::from_bits(b as u16).to_f64(),
            ),
            _ => (
                half::bf16::from_bits(a as u16).to_f64(),
                half::bf16::from_bits(b as u16).to_f64(),
            ),
        };
        let nan = x.is_nan() || y.is_nan();
        return match cmp {
            Cmp::Eq => !nan && x == y,
            Cmp::Ne => !nan && x != y,
            Cmp::Lt => !nan && x < y,
            Cmp::Le => !nan && x <= y,
            Cmp::Gt => !nan && x > y,
            Cmp::Ge => !nan && x >= y,
            Cmp::Equ => nan || x == y,
            Cmp::Neu => nan || x != y,
            Cmp::Ltu => nan || x < y,
            Cmp::Leu => nan || x <= y,
            Cmp::Gtu => nan || x > y,
            Cmp::Geu => nan || x >= y,
            Cmp::Num => !nan,
            Cmp::Nan => nan,
        };
    }
    let ord = if ty.is_signed() {
        signed(a, ty).cmp(&signed(b, ty))
    } else {
        a.cmp(&b)
    };
    match cmp {
        Cmp::Eq => ord == Equal,
        Cmp::Ne => ord != Equal,
        Cmp::Lt => ord == Less,
        Cmp::Le => ord != Greater,
        Cmp::Gt => ord == Greater,
        Cmp::Ge => ord != Less,
        _ => false,
    }
}

/// Two-operand arithmetic (and the one-operand ops, which ignore `b`).
/// The element type of a packed pair type (`bf16x2`, `f16x2`).
fn half_of_pair(ty: Ty) -> Option<Ty> {
    match ty {
        Ty::Bf16x2 => Some(Ty::Bf16),
        Ty::F16x2 => Some(Ty::F16),
        _ => None,
    }
}

pub(crate) fn arith(op: Op, ty: Ty, a: u64, b: u64, inst: &Inst) -> Option<u64> {
    let mode = inst.round;
    if let Some(half) = half_of_pair(ty) {
        // bf16x2 / f16x2: the op on each 16-bit half.
        let lo = arith(op, half, a & 0xffff, b & 0xffff, inst)?;
        let hi = arith(op, half, (a >> 16) & 0xffff, (b >> 16) & 0xffff, inst)?;
        return Some(lo | hi << 16);
    }
    match ty {
        Ty::F32 => {
            let f = |x: u64| {
                if inst.ftz {
                    ftz32(f32_of(x))
                } else {
                    f32_of(x)
                }
            };
            let (x, y) = (f(a), f(b));
            let approx = |g: fn(f64) -> f64| approx32(x, inst.ftz, g);
            let r = match op {
                Op::Add => add32(x, y, mode),
                Op::Sub => add32(x, -y, mode),
                Op::Mul => mul32(x, y, mode),
                Op::Div => div32(x, y, mode),
                Op::Min => min32(x, y),
                Op::Max => max32(x, y),
                Op::Neg => -x,
                Op::Abs => x.abs(),
                Op::Rcp => div32(1.0, x, mode),
                Op::Sqrt => x.sqrt(),
                Op::Rsqrt => approx(|v| 1.0 / v.sqrt()),
                Op::Ex2 => approx(f64::exp2),
                Op::Lg2 => approx(f64::log2),
                Op::Sin => approx(f64::sin),
                Op::Cos => approx(f64::cos),
                Op::Tanh => approx(f64::tanh),
                Op::Copysign => y.copysign(x),
                _ => return None,
            };
            let r = if inst.ftz { ftz32(r) } else { r };
            Some(bits32(sat32(r, inst.sat)))
        }
        Ty::F64 => {
            let (x, y) = (f64_of(a), f64_of(b));
            let r = match op {
                Op::Add => add64(x, y, mode),
                Op::Sub => add64(x, -y, mode),
                Op::Mul => mul64(x, y, mode),
                Op::Div => div64(x, y, mode),
                Op::Min => min64(x, y),
                Op::Max => max64(x, y),
                Op::Neg => -x,
                Op::Abs => x.abs(),
                Op::Rcp => div64(1.0, x, mode),
                Op::Sqrt => x.sqrt(),
                Op::Rsqrt => 1.0 / x.sqrt(),
                Op::Copysign => y.copysign(x),
                _ => return None,
            };
            Some(r.to_bits())
        }
        Ty::F16 | Ty::Bf16 => {
            let to = |v: u64| -> f64 {
                if ty == Ty::F16 {
                    half::f16::from_bits(v as u16).to_f64()
                } else {
                    half::bf16::from_bits(v as u16).to_f64()
                }
            };
            let (x, y) = (to(a), to(b));
            let r = match op {
                Op::Add => x + y,
                Op::Sub => x - y,
                Op::Mul => x * y,
                Op::Min => min64(x, y),
                Op::Max => max64(x, y),
                Op::Neg => -x,
                Op::Abs => x.abs(),
                _ => return None,
            };
            Some(if ty == Ty::F16 {
                half::f16::from_f64(r).to_bits() as u64
            } else {
                half::bf16::from_f64(r).to_bits() as u64
            })
        }
        _ => int_arith(op, ty, a, b, inst),
    }
}

pub(crate) fn int_arith(op: Op, ty: Ty, a: u64, b: u64, inst: &Inst) -> Option<u64> {
    // A float type reaching here is an op the float paths do not implement: refuse it rather
    // than compute on its bits as an integer.
    if ty.is_float() {
        return None;
    }
    let bits = ty.bits();
    let s = ty.is_signed();
    let (sa, sb) = (signed(a, ty), signed(b, ty));
    Some(match op {
        Op::Add => a.wrapping_add(b),
        Op::Sub => a.wrapping_sub(b),
        Op::Mul if inst.wide => {
            if s {
                (sa.wrapping_mul(sb)) as u64
            } else {
                a.wrapping_mul(b)
            }
        }
        Op::Mul if inst.hi => {
            if s {
                ((sa as i128 * sb as i128) >> bits) as u64
            } else {
                ((a as u128 * b as u128) >> bits) as u64
            }
        }
        Op::Mul => a.wrapping_mul(b),
        Op::Div => {
            if b == 0 {
                low_bits(bits)
            } else if s {
                sa.wrapping_div(sb) as u64
            } else {
                a / b
            }
        }
        Op::Rem => {
            if b == 0 {
                a
            } else if s {
                sa.wrapping_rem(sb) as u64
            } else {
                a % b
            }
        }
        Op::Min => {
            if s {
                sa.min(sb) as u64
            } else {
                a.min(b)
            }
        }
        Op::Max => {
            if s {
                sa.max(sb) as u64
            } else {
                a.max(b)
            }
        }
        Op::Neg => (sa.wrapping_neg()) as u64,
        Op::Abs => sa.unsigned_abs(),
        Op::And => a & b,
        Op::Or => a | b,
        Op::Xor => a ^ b,
        Op::Not if ty == Ty::Pred => (a == 0) as u64,
        Op::Not => !a,
        Op::Cnot => (a == 0) as u64,
        Op::Shl => {
            if b >= bits as u64 {
                0
            } else {
                a << b
            }
        }
        Op::Shr => {
            let n = b.min(bits as u64 - 1 + (!s) as u64);
            if s {
                (sa >> n.min(63)) as u64
            } else if n >= bits as u64 {
                0
            } else {
                a >> n
            }
        }
        Op::Popc => a.count_ones() as u64,
        Op::Clz => (a.leading_zeros() - (64 - bits)) as u64,
        Op::Brev => a.reverse_bits() >> (64 - bits),
        _ => return None,
    })
}

/// mad, fma, bfe, lop3, prmt, shf: three sources (`extra` is lop3's truth table).
pub(crate) fn ternary(inst: &Inst, a: u64, b: u64, c: u64, extra: u64) -> Option<u64> {
    let ty = inst.ty;
    if let (Some(half), Op::Fma) = (half_of_pair(ty), inst.op) {
        let one = Inst {
            ty: half,
            ..inst.clone()
        };
        let lo = ternary(&one, a & 0xffff, b & 0xffff, c & 0xffff, extra)?;
        let hi = ternary(
            &one,
            (a >> 16) & 0xffff,
            (b >> 16) & 0xffff,
            (c >> 16) & 0xffff,
            extra,
        )?;
        return Some(lo | hi << 16);
    }
    match inst.op {
        Op::Fma | Op::Mad if ty == Ty::F32 => {
            let f = |x: u64| {
                if inst.ftz {
                    ftz32(f32_of(x))
                } else {
                    f32_of(x)
                }
            };
            let r = fma32(f(a), f(b), f(c), inst.round);
            let r = if inst.ftz { ftz32(r) } else { r };
            Some(bits32(sat32(r, inst.sat)))
        }
        Op::Fma | Op::Mad if ty == Ty::F64 => {
            Some(fma64(f64_of(a), f64_of(b), f64_of(c), inst.round).to_bits())
        }
        Op::Fma if ty == Ty::Bf16 || ty == Ty::F16 => {
            let to = |v: u64| -> f64 {
                if ty == Ty::F16 {
                    half::f16::from_bits(v as u16).to_f64()
                } else {
                    half::bf16::from_bits(v as u16).to_f64()
                }
            };
            let r = to(a).mul_add(to(b), to(c));
            Some(if ty == Ty::F16 {
                half::f16::from_f64(r).to_bits() as u64
            } else {
                half::bf16::from_f64(r).to_bits() as u64
            })
        }
        Op::Mad => {
            let p = if inst.wide || inst.hi {
                int_arith(Op::Mul, ty, a, b, inst)?
            } else {
                a.wrapping_mul(b)
            };
            Some(p.wrapping_add(c))
        }
        Op::Bfe => {
            let bits = ty.bits() as u64;
            let (pos, len) = (b & 0xff, c & 0xff);
            let s = ty.is_signed();
            if len == 0 {
                return Some(0);
            }
            let msb = (pos + len - 1).min(bits - 1);
            let sbit = if s { (a >> msb) & 1 == 1 } else { false };
            let mut d = 0u64;
            for i in 0..bits {
                let bit = if i < len && pos + i < bits {
                    (a >> (pos + i)) & 1 == 1
                } else {
                    sbit
                };
                d |= (bit as u64) << i;
            }
            Some(d)
        }
        Op::Lop3 => {
            let mut d = 0u64;
            for i in 0..ty.bits() {
                let idx = ((a >> i) & 1) << 2 | ((b >> i) & 1) << 1 | ((c >> i) & 1);
                d |= ((extra >> idx) & 1) << i;
            }
            Some(d)
        }
        Op::Prmt => {
            let bytes = ((b as u32 as u64) << 32 | a as u32 as u64).to_le_bytes();
            let mut d = 0u32;
            for k in 0..4 {
                let sel = (c >> (4 * k)) & 0xf;
                let byte = bytes[(sel & 7) as usize];
                let byte = if sel & 8 != 0 {
                    if byte & 0x80 != 0 {
                        0xff
                    } else {
                        0
                    }
                } else {
                    byte
                };
                d |= (byte as u32) << (8 * k);
            }
            Some(d as u64)
        }
        Op::Shf { left, wrap } => {
            let n = if wrap { c & 31 } else { c.min(32) };
            let joined = (b as u32 as u64) << 32 | a as u32 as u64;
            Some(
                if left {
                    (joined << n) >> 32
                } else {
                    joined >> n
                } & 0xffff_ffff,
            )
        }
        _ => None,
    }
}

/// `cvt` from `inst.ty2` to `inst.ty`.
pub(crate) fn convert(inst: &Inst, v: u64) -> Option<u64> {
    let (dst, src) = (inst.ty, inst.ty2);
    let to_f64 = |v: u64| -> f64 {
        match src {
            Ty::F32 => {
                let x = f32_of(v);
                (if inst.ftz { ftz32(x) } else { x }) as f64
            }
            Ty::F64 => f64_of(v),
            Ty::F16 => half::f16::from_bits(v as u16).to_f64(),
            Ty::Bf16 => half::bf16::from_bits(v as u16).to_f64(),
            _ => unreachable!("a float source"),
        }
    };
    if src.is_float() && dst.is_float() {
        let x = to_f64(v);
        let x = if inst.round_int {
            round_integral(x, inst.round)
        } else {
            x
        };
        return Some(match dst {
            Ty::F64 => x.to_bits(),
            Ty::F32 => {
                let r = round_to_f32(x, 0.0, inst.round);
                let r = if inst.ftz { ftz32(r) } else { r };
                bits32(sat32(r, inst.sat))
            }
            // Rounding to nearest even, directly from the exact value.
            Ty::F16 => half::f16::from_f64(x).to_bits() as u64,
            Ty::Bf16 => half::bf16::from_f64(x).to_bits() as u64,
            _ => return None,
        });
    }
    if src.is_float() {
        let x = round_integral(to_f64(v), inst.round);
        // Saturating, NaN to 0, as PTX's float-to-integer conversions are.
        return Some(
            match dst {
                Ty::S8 => x as i8 as u64,
                Ty::S16 => x as i16 as u64,
                Ty::S32 => x as i32 as u64,
                Ty::S64 => x as i64 as u64,
                Ty::U8 => x as u8 as u64,
                Ty::U16 => x as u16 as u64,
                Ty::U32 => x as u32 as u64,
                Ty::U64 => x as u64,
                _ => return None,
            } & low_bits(dst.bits()),
        );
    }
    if dst.is_float() {
        let x = if src.is_signed() {
            signed(v, src) as f64
        } else {
            v as f64
        };
        // Integers of 64 bits go through f64, which rounds them once: exact below 2^53.
        return Some(match dst {
            Ty::F32 => {
                if src.bits() == 64 {
                    (if src.is_signed() {
                        signed(v, src) as f32
                    } else {
                        v as f32
                    })
                    .to_bits() as u64
                } else {
                    bits32(x as f32)
                }
            }
            Ty::F64 => x.to_bits(),
            Ty::F16 => half::f16::from_f64(x).to_bits() as u64,
            Ty::Bf16 => half::bf16::from_f64(x).to_bits() as u64,
            _ => return None,
        });
    }
    // Integer to integer: extend by the source's signedness, cut (or clamp, with .sat).
    let wide = if src.is_signed() {
        signed(v, src) as u64
    } else {
        v & low_bits(src.bits())
    };
    if inst.sat {
        let (lo, hi): (i128, i128) = if dst.is_signed() {
            (
                -(1i128 << (dst.bits() - 1)),
                (1i128 << (dst.bits() - 1)) - 1,
            )
        } else {
            (0, (1i128 << dst.bits()) - 1)
        };
        let x = if src.is_signed() {
            wide as i64 as i128
        } else {
            wide as i128
        };
        return Some(x.clamp(lo, hi) as u64 & low_bits(dst.bits()));
    }
    Some(wide & low_bits(dst.bits()))
}
