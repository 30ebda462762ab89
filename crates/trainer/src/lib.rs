//! dynact-trainer: wires the model and data crates into training and evaluation. The
//! command-line tools that call it are dynact-cli's (which also runs experiment grids and
//! compares runs with dynact-compare); the run directory's format is dynact-run's. The binaries
//! are thin: flags -> a validated config -> one call here.
//!
//! [`config`] (the run TOML) and [`launch`] (which config a run starts from, resume and
//! init-from) -> [`resolve`] (the config settled once against the run directory, the data and
//! the ranks) -> [`train`] (setup, the training step and the loop, using [`optim`],
//! [`schedule`] and [`eval`]). [`model_source`] resolves what `eval-ppl` and `generate` are
//! pointed at (a safetensors file, a checkpoint folder, a run directory or
//! `hf://OWNER/NAME`); [`model_api`] is what they ask of a model of any architecture;
//! [`eval_data`] picks what `eval-ppl` scores; [`sample`] is the decoding loop of `generate`.

pub mod adamw_kernels;
pub mod config;
pub mod eval;
pub mod eval_data;
pub mod init_from;
pub mod language_model;
pub mod launch;
pub mod model_api;
pub mod model_source;
pub mod optim;
pub mod peak_flops;
pub mod public_models;
pub mod resolve;
pub mod row_shards;
pub mod sample;
pub mod schedule;
pub mod train;

use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// `cpu`, `cuda`, `cuda:N` or `metal` -> a Candle device, with a hint when the build lacks it.
pub fn parse_device(spec: &str) -> Result<Device> {
    spec.parse::<config::DeviceSpec>()?.open()
}

/// Refuses a dtype the device cannot compute in: bf16 on an NVIDIA GPU older than compute
/// capability 8.0 (Ampere), whose kernels have no bf16 arithmetic. f32 runs anywhere.
pub fn check_dtype_on(device: &Device, dtype: DType) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let (Device::Cuda(gpu), DType::BF16) = (device, dtype) {
        let (major, minor) = gpu.cuda_stream().context().compute_capability()?;
        if major < 8 {
            bail!(
                "bf16 needs an NVIDIA GPU of compute capability 8.0 or newer (A100, RTX 30 series and later); this one is {major}.{minor}: use --dtype f32"
            );
        }
    }
    let _ = (device, dtype);
    Ok(())
}

/// `f32`, `bf16` or `f16` -> the compute dtype of an evaluation (`eval-ppl`, `generate`); a
/// run's `dtype` is f32 or bf16 ([`config::RunDtype`]).
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => bail!("unknown dtype `{other}`: expected f32 or bf16"),
    }
}

/// The CPU settings of every binary, made before any tensor work starts: the thread count
/// (0 keeps Candle's default of one per physical core) and the allocator's.
///
/// RAYON_NUM_THREADS (read by gemm and rayon) is set either way: Candle looks the default up
/// again (parsing /proc/cpuinfo) on every matrix product, which cost 6-8% of a micro step on
/// 2 cores.
///
/// Candle 0.11 also runs element-wise ops on a spinning pool of its own (CANDLE_NUM_THREADS)
/// beside the rayon pool of gemm and this project's fused kernels. Training and evaluation
/// split each batch into one row shard per thread ([`row_shards`]), which keeps every core
/// busy; that pool would only serialize the shards' element-wise ops behind its lock. So it
/// is off unless CANDLE_NUM_THREADS says otherwise.
pub fn set_up_cpu(threads: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = if threads > 0 {
            threads
        } else {
            candle_core::utils::get_num_threads()
        };
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    keep_freed_memory_mapped();
}

/// mimalloc's `mi_option_purge_delay` (`reset_delay` before mimalloc 2), which
/// libmimalloc-sys does not name (`tests/allocator.rs` pins the index to its default).
pub const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc (the binaries' allocator) to keep the memory it frees instead of handing it
/// back to the kernel. Every training step frees and allocates the same large buffers again;
/// handed back, they returned as fresh pages the kernel zeroes on first touch: 70,000 page
/// faults and 10% of the time of a `small` bench row, for 2% more peak RSS.
/// MIMALLOC_PURGE_DELAY, where set, still wins.
fn keep_freed_memory_mapped() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option, which mimalloc reads when it next purges.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

/// Logging for the binaries: tracing to stderr, filtered by RUST_LOG (default: warnings).
pub fn init_logging() {
    init_logging_and_trace(None).expect("no trace file to create");
}

/// Logging as [`init_logging`]; with `trace`, also every span of the run (data, forward,
/// backward, all-reduce, optimizer, evaluation, checkpoint; host time, so on a GPU the time
/// to queue the kernels) into that Chrome trace file, for Perfetto or chrome://tracing. Under
/// an MPI launcher, rank N > 0 writes `FILE.rankN`. The file is complete when the returned
/// guard is dropped.
pub fn init_logging_and_trace(
    trace: Option<&std::path::Path>,
) -> anyhow::Result<Option<tracing_chrome::FlushGuard>> {
    use tracing_subscriber::prelude::*;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    let (chrome, guard) = match trace {
        Some(path) => {
            let path = match dynact_dist::launch_from_env() {
                Some(l) if l.rank > 0 => {
                    let mut p = path.as_os_str().to_owned();
                    p.push(format!(".rank{}", l.rank));
                    std::path::PathBuf::from(p)
                }
                _ => path.to_path_buf(),
            };
            // The layer would panic on a file it cannot create: say so as an error first.
            std::fs::File::create(&path).map_err(|e| {
                anyhow::anyhow!(
                    "--trace {}: cannot create the trace file: {e}",
                    path.display()
                )
            })?;
            let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new()
                .file(path)
                .include_args(true)
                .build();
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(fmt).with(chrome).init();
    Ok(guard)
}

/// Prints an error as one line, `error: <message: cause: cause>`, and returns exit code 1.
pub fn report_error(e: &anyhow::Error) -> std::process::ExitCode {
    let msg = format!("{e:#}");
    eprint_line(&format!(
        "error: {}",
        msg.split_whitespace().collect::<Vec<_>>().join(" ")
    ));
    std::process::ExitCode::FAILURE
}

/// Prints `line` and a newline to stderr in one write, so that the lines of ranks sharing a
/// terminal or pipe (`mpirun`) never interleave mid-line, as `eprintln!`'s pieces can.
pub fn eprint_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// The peak resident memory of this process so far, in MB (VmHWM; NaN where /proc is absent).
pub fn peak_memory_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
