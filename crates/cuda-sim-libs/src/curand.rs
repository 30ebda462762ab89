//! cuRAND's host API (`libcurand.so.10`) as Candle's device calls it. The numbers come from
//! a seeded SplitMix64 stream, not cuRAND's generators: a run on the simulator is repeatable,
//! but a tensor drawn on the device differs from one drawn on a GPU (this project initialises
//! its models on the CPU, so training does not depend on it).

use std::ffi::{c_int, c_ulonglong, c_void};

use crate::driver::{fault, ILLEGAL_ADDRESS};
use crate::{state, Handle};

pub type Status = c_int;
const SUCCESS: Status = 0;
const NOT_INITIALIZED: Status = 101;
const LAUNCH_FAILURE: Status = 201;

#[no_mangle]
pub unsafe extern "C" fn curandCreateGenerator(
    generator: *mut *mut c_void,
    _kind: c_int,
) -> Status {
    if generator.is_null() {
        return NOT_INITIALIZED;
    }
    let mut guard = state();
    let s = guard.as_mut().expect("state() creates the device");
    generator.write(s.new_handle(Handle::Rng { seed: 0, offset: 0 }));
    SUCCESS
}

#[no_mangle]
pub extern "C" fn curandDestroyGenerator(_generator: *mut c_void) -> Status {
    SUCCESS
}

#[no_mangle]
pub extern "C" fn curandSetStream(_generator: *mut c_void, _stream: *mut c_void) -> Status {
    SUCCESS
}

fn update(generator: *mut c_void, f: impl FnOnce(&mut u64, &mut u64)) -> Status {
    let mut guard = state();
    let s = guard.as_mut().expect("state() creates the device");
    match s.handle_mut(generator) {
        Some(Handle::Rng { seed, offset }) => {
            f(seed, offset);
            SUCCESS
        }
        _ => NOT_INITIALIZED,
    }
}

#[no_mangle]
pub extern "C" fn curandSetPseudoRandomGeneratorSeed(
    generator: *mut c_void,
    seed: c_ulonglong,
) -> Status {
    update(generator, |s, o| {
        *s = seed;
        *o = 0;
    })
}

#[no_mangle]
pub extern "C" fn curandSetGeneratorOffset(generator: *mut c_void, offset: c_ulonglong) -> Status {
    update(generator, |_, o| *o = offset)
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `n` elements at `out` with `value(u1, u2)` of uniform draws in (0, 1].
fn generate<T: Copy>(
    generator: *mut c_void,
    out: u64,
    n: usize,
    value: impl Fn(f64, f64) -> T,
) -> Status {
    let mut guard = state();
    let s = guard.as_mut().expect("state() creates the device");
    let Some(Handle::Rng { seed, offset }) = s.handle_mut(generator).cloned() else {
        return NOT_INITIALIZED;
    };
    let uniform =
        |i: u64| ((splitmix(seed ^ splitmix(offset + i)) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let values: Vec<T> = (0..n as u64)
        .map(|i| value(uniform(2 * i), uniform(2 * i + 1)))
        .collect();
    if let Some(Handle::Rng { offset: o, .. }) = s.handle_mut(generator) {
        *o += 2 * n as u64;
    }
    // SAFETY: T is a plain number; the view covers exactly the vector.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            values.as_ptr() as *const u8,
            std::mem::size_of_val(values.as_slice()),
        )
    };
    match s.gpu.write(out, bytes) {
        Ok(()) => SUCCESS,
        Err(e) => {
            fault(s, format!("curandGenerate: {e}"), ILLEGAL_ADDRESS);
            LAUNCH_FAILURE
        }
    }
}

fn normal(u1: f64, u2: f64) -> f64 {
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[no_mangle]
pub extern "C" fn curandGenerateUniform(generator: *mut c_void, out: u64, n: usize) -> Status {
    generate(generator, out, n, |u, _| u as f32)
}

#[no_mangle]
pub extern "C" fn curandGenerateUniformDouble(
    generator: *mut c_void,
    out: u64,
    n: usize,
) -> Status {
    generate(generator, out, n, |u, _| u)
}

#[no_mangle]
pub extern "C" fn curandGenerateNormal(
    generator: *mut c_void,
    out: u64,
    n: usize,
    mean: f32,
    std: f32,
) -> Status {
    generate(generator, out, n, |a, b| {
        (mean as f64 + std as f64 * normal(a, b)) as f32
    })
}

#[no_mangle]
pub extern "C" fn curandGenerateNormalDouble(
    generator: *mut c_void,
    out: u64,
    n: usize,
    mean: f64,
    std: f64,
) -> Status {
    generate(generator, out, n, |a, b| mean + std * normal(a, b))
}
