//! The peak FLOP/s that model FLOPs utilisation (MFU) is measured against: `train.peak_flops`
//! when set; on CPU a matmul measured at start-up (the machine's own attainable peak, all
//! threads); on NVIDIA GPUs the datasheet's dense tensor-core figure for the compute dtype,
//! looked up by the name `nvidia-smi` reports. Unknown GPUs get no MFU unless configured.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

/// Where a peak figure came from, for the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Peak {
    pub flops: f64,
    pub source: String,
}

/// Dense peak FLOP/s of known NVIDIA GPUs: (name fragment, bf16/f16 tensor core, f32). The
/// first fragment the name contains wins, so longer names come before their prefixes.
const GPUS: &[(&str, f64, f64)] = &[
    ("H200", 989.4e12, 66.9e12),
    ("H100 PCIe", 756.0e12, 51.2e12),
    ("H100", 989.4e12, 66.9e12),
    ("A100", 312.0e12, 19.5e12),
    ("L40S", 362.1e12, 91.6e12),
    ("L40", 181.0e12, 90.5e12),
    ("L4", 121.0e12, 30.3e12),
    ("A10", 125.0e12, 31.2e12),
    ("RTX 4090", 165.2e12, 82.6e12),
    ("RTX 3090", 71.0e12, 35.6e12),
];

/// The peak for `device` computing in `dtype`; `configured` (> 0) wins.
pub fn peak_flops(device: &Device, dtype: DType, configured: f64) -> Option<Peak> {
    if configured > 0.0 {
        return Some(Peak {
            flops: configured,
            source: "train.peak_flops".into(),
        });
    }
    match device {
        Device::Cpu => measured_cpu_matmul().map(|flops| Peak {
            flops,
            source: "measured f32 matmul on this CPU".into(),
        }),
        Device::Cuda(_) => {
            let name = gpu_name()?;
            let (_, half, single) = GPUS.iter().find(|(n, _, _)| name.contains(n))?;
            let flops = if dtype == DType::F32 { *single } else { *half };
            Some(Peak {
                flops,
                source: format!("{name}, {dtype:?} datasheet peak"),
            })
        }
        _ => None,
    }
}

/// The name of the first visible GPU, from nvidia-smi.
fn gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", "-i", "0"])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !name.is_empty()).then_some(name)
}

/// Best FLOP/s of a 512x512x512 f32 matmul over a few repetitions, after warm-up ones that
/// wake the thread pool (about 50 ms).
pub fn measured_cpu_matmul() -> Option<f64> {
    let n = 512;
    let a = Tensor::ones((n, n), DType::F32, &Device::Cpu).ok()?;
    let b = Tensor::ones((n, n), DType::F32, &Device::Cpu).ok()?;
    for _ in 0..3 {
        a.matmul(&b).ok()?;
    }
    let mut best = f64::INFINITY;
    for _ in 0..8 {
        let start = Instant::now();
        a.matmul(&b).ok()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Some(2.0 * (n * n * n) as f64 / best.max(1e-9))
}

/// `1h02m`, `3m05s`, `42s`.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_peak_wins_and_cpu_is_measured() {
        let p = peak_flops(&Device::Cpu, DType::F32, 1e12).unwrap();
        assert_eq!(p.flops, 1e12);
        let cpu = peak_flops(&Device::Cpu, DType::F32, 0.0).unwrap();
        // Any CPU of the last decade does between 1 GFLOP/s and 100 TFLOP/s of f32 matmul.
        assert!(cpu.flops > 1e9 && cpu.flops < 1e14, "{cpu:?}");
        assert_eq!(format_duration(42.4), "42s");
        assert_eq!(format_duration(185.0), "3m05s");
        assert_eq!(format_duration(3720.0), "1h02m");
    }
}
