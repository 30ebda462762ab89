//! What the simulator's tests share: nvcc (to make real PTX), the project's kernels compiled
//! as the product build compiles them, and seeded inputs.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

/// nvcc from PATH or from the repository's `.cuda-toolchain/` (scripts/cuda-toolchain.sh).
/// Without one, a test returns early with a notice, unless DYNACT_CUDA_SIM_REQUIRE_NVCC is set
/// (as CI sets it), where a missing nvcc fails the test.
pub fn nvcc() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let local = repo.join(".cuda-toolchain/nvidia/cu13/bin/nvcc");
    let found = if local.is_file() {
        Some(local)
    } else {
        Command::new("nvcc")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| PathBuf::from("nvcc"))
    };
    if found.is_none() {
        assert!(
            std::env::var_os("DYNACT_CUDA_SIM_REQUIRE_NVCC").is_none(),
            "nvcc not found: run `eval \"$(scripts/cuda-toolchain.sh)\"` first"
        );
        eprintln!("skipped: nvcc not found (scripts/cuda-toolchain.sh installs it)");
    }
    found
}

/// PTX of `crates/model/kernels/{name}.cu` for the product build's GPU generation, with its flags
/// (cudaforge's `--ptx --default-stream per-thread` plus build.rs's `-std=c++17 -O3`);
/// `fmad = false` also turns off nvcc's contraction of a*b+c into fma, which the host
/// emulation (plain C) does not do either.
pub fn project_ptx(nvcc: &Path, name: &str, fmad: bool) -> String {
    compile_ptx(nvcc, &format!("../model/kernels/{name}.cu"), fmad)
}

/// PTX of the CUDA source at `path` (relative to this crate) for the GPU generation the
/// product build targets (CUDA_COMPUTE_CAP, as scripts/cuda-toolchain.sh sets it: 80 unless
/// told otherwise), with the product build's flags.
pub fn compile_ptx(nvcc: &Path, path: &str, fmad: bool) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let status = Command::new(nvcc)
        .args([
            "--ptx",
            &format!("-gencode=arch=compute_{cap},code=sm_{cap}"),
        ])
        .args(["--default-stream", "per-thread", "-std=c++17", "-O3"])
        .arg(format!("-fmad={fmad}"))
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("nvcc runs");
    assert!(status.success(), "nvcc failed on {}", src.display());
    std::fs::read_to_string(out).unwrap()
}

/// Seeded values in [-scale, scale) (xorshift; the tests need variety, not quality).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The largest distance in units in the last place between two f32 slices (NaN equal to NaN).
pub fn max_ulp(a: &[f32], b: &[f32]) -> u32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()) {
                0
            } else {
                let key = |v: f32| {
                    let b = v.to_bits() as i64;
                    if b & 0x8000_0000 != 0 {
                        0x8000_0000 - b
                    } else {
                        b
                    }
                };
                (key(*x) - key(*y)).unsigned_abs().min(u32::MAX as u64) as u32
            }
        })
        .max()
        .unwrap_or(0)
}

/// The largest |a - b| / (|b| + floor): a relative error that tolerates cancellation near 0.
pub fn max_rel(a: &[f32], b: &[f32], floor: f32) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (y.abs() + floor))
        .fold(0.0, f32::max)
}

/// max |a - b| over max |b| (NaNs must sit at the same places).
pub fn normwise(a: &[f32], b: &[f32]) -> f32 {
    let scale = b
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.is_nan(), y.is_nan(), "a NaN on one side only");
        if !y.is_nan() {
            worst = worst.max((x - y).abs());
        }
    }
    worst / scale.max(f32::MIN_POSITIVE)
}
