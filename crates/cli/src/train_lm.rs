//! `train-lm`: trains a SwiGLU or dynActGLU decoder as a run config says, with command-line
//! overrides; `train-lm` alone runs the built-in CPU default (configs/tiny.toml's settings).
//! The flags become config keys here; which config they override, the resume and init-from
//! rules and the run itself are dynact-trainer's ([`Launch`], [`run`]).

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use dynact_dist::Communicator;
use dynact_model::FfnKind;
use dynact_run::config_keys::applies_to_ffn;
use dynact_trainer::config::RunConfig;
use dynact_trainer::launch::{self, Launch};
use dynact_trainer::train::{run, RunOptions};

use crate::experiment::{self, Grid, Sweep, Variant};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Train a small decoder LM with a SwiGLU or dynActGLU feed-forward block"
)]
pub struct Args {
    /// Run config (TOML); without it, the built-in CPU default (configs/tiny.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', help = flag_help("Feed-forward block: swiglu or dynactglu; a list (swiglu,dynactglu) runs each", "model.ffn"))]
    ffn: Option<Vec<String>>,
    #[arg(long, help = flag_help("Seed of the initial weights, the data order and dropout", "seed"))]
    seed: Option<u64>,
    /// Run an experiment grid over these seeds (with every --ffn), then compare the runs.
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Run an experiment grid over these values of a config key (with every --ffn and seed),
    /// e.g. --sweep optim.dynact_lr_mult=1,10,100 (repeatable: the values of several keys are
    /// crossed). A key SwiGLU does not read (model.dynact.*, optim.dynact_*) is not crossed
    /// with it.
    #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
    sweep: Vec<String>,
    /// Grid runs at a time, each with its share of the CPU cores (default: 1, or one per GPU
    /// with device = "cuda" and several GPUs visible).
    #[arg(long)]
    jobs: Option<usize>,
    #[arg(long, help = flag_help("Optimizer steps to train", "train.steps"))]
    steps: Option<u64>,
    #[arg(long, value_delimiter = ',', help = flag_help("Evaluation steps, comma-separated (e.g. 562,3430)", "eval.eval_at"))]
    eval_at: Option<Vec<u64>>,
    #[arg(long, help = flag_help("Also evaluate every N steps (0: off)", "eval.eval_every"))]
    eval_every: Option<u64>,
    #[arg(long, help = flag_help("Training data: builtin, a file/folder/glob, hf://datasets/..., or .bin shards", "data.source"))]
    data: Option<String>,
    #[arg(long, help = flag_help("Validation data (unset: the held-out tail of --data, data.val_fraction of it)", "data.val_source"))]
    val_data: Option<String>,
    #[arg(long, help = flag_help("bytes, bpe:VOCAB or a tokenizer.json", "data.tokenizer"))]
    tokenizer: Option<String>,
    #[arg(long, help = flag_help("cpu, cuda, cuda:N or metal", "device"))]
    device: Option<String>,
    #[arg(long, help = flag_help("Compute dtype, f32 or bf16 (weights stay f32)", "dtype"))]
    dtype: Option<String>,
    #[arg(long, help = flag_help("Write the run exactly here (unset: checkpoints/<name>)", "run_dir"))]
    run_dir: Option<PathBuf>,
    #[arg(long, value_name = "SOURCE", help = flag_help("Start a new run from these weights: a run, a checkpoint folder, a .safetensors file or hf://OWNER/NAME[@REV] (its shape and tokenizer; fresh optimizer and schedule)", "init_from"))]
    init_from: Option<String>,
    /// Continue the run in DIR from its latest checkpoint (with its own config; --steps may
    /// extend it).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    #[arg(long, help = flag_help("Sequences per micro-batch", "train.batch_size"))]
    batch_size: Option<usize>,
    #[arg(long, help = flag_help("Micro-batches per optimizer step", "train.grad_accum"))]
    grad_accum: Option<usize>,
    #[arg(long, help = flag_help("Peak learning rate", "optim.lr"))]
    lr: Option<f64>,
    #[arg(long, help = flag_help("Tokens per training sequence (and evaluation window)", "train.seq_len"))]
    seq_len: Option<usize>,
    #[arg(long, help = flag_help("Also write TensorBoard event files into the run directory (tensorboard --logdir checkpoints/)", "log.tensorboard"))]
    tensorboard: bool,
    /// Any other config key, e.g. --set optim.weight_decay=0.05 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Write a Chrome trace of the run to FILE (open it in https://ui.perfetto.dev): spans for
    /// data, forward, backward, all-reduce, optimizer, evaluation and checkpoints (host time).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Only tokenize the data into the cache and check the config against it, then exit (a
    /// run then starts at once; e.g. on a login node before a long job).
    #[arg(long)]
    prepare_data: bool,
}

/// A flag's help: what it does, the config key it sets and that key's value in the built-in
/// default config (so the help cannot drift from configs/tiny.toml).
fn flag_help(what: &str, key: &str) -> String {
    let defaults = launch::default_config()
        .and_then(|b| Ok(b.build()?))
        .map(|(cfg, _)| serde_json::to_value(cfg).expect("a config is JSON"));
    let value = defaults
        .ok()
        .and_then(|v| dynact_run::config_keys::flatten(&v).remove(key))
        .map_or("?".to_string(), |v| match v {
            serde_json::Value::String(s) if s.is_empty() => "unset".to_string(),
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => "unset".to_string(),
            other => other.to_string(),
        });
    format!("{what} [sets {key}; without --config: {value}]")
}

impl Args {
    /// What the run starts from: config, weights and run directory.
    fn launch(&self) -> Launch {
        Launch {
            config: self.config.clone(),
            resume: self.resume.clone(),
            init_from: self.init_from.clone(),
            run_dir: self.run_dir.clone(),
        }
    }
}

/// The run's config and options from the flags, and the notices about the config to print.
fn build(args: &Args) -> anyhow::Result<(RunConfig, RunOptions, Vec<String>)> {
    build_with(args, &[])
}

/// As [`build`], with `extra` assignments (`KEY=VALUE`: a grid cell's FFN and swept values)
/// applied last; one of them for a key a flag or `--set` gives too is an error.
fn build_with(
    args: &Args,
    extra: &[(String, String)],
) -> anyhow::Result<(RunConfig, RunOptions, Vec<String>)> {
    let launch = args.launch();
    let mut b = launch.builder(&args.set)?;
    let s = |v: &str| toml::Value::String(v.to_string());
    let i = |v: u64| toml::Value::Integer(v as i64);
    let mut set = |k: &str, v: Option<toml::Value>| -> anyhow::Result<()> {
        if let Some(v) = v {
            b.set_value(k, v)?;
        }
        Ok(())
    };
    if let Some([one]) = args.ffn.as_deref() {
        set("model.ffn", Some(s(one)))?;
    }
    set("seed", args.seed.map(i))?;
    set(
        "log.tensorboard",
        args.tensorboard.then_some(toml::Value::Boolean(true)),
    )?;
    set("train.steps", args.steps.map(i))?;
    set(
        "eval.eval_at",
        args.eval_at
            .as_ref()
            .map(|v| toml::Value::Array(v.iter().map(|x| i(*x)).collect())),
    )?;
    set("eval.eval_every", args.eval_every.map(i))?;
    set("data.source", args.data.as_deref().map(s))?;
    set("data.val_source", args.val_data.as_deref().map(s))?;
    set("data.tokenizer", args.tokenizer.as_deref().map(s))?;
    set("device", args.device.as_deref().map(s))?;
    set("init_from", args.init_from.as_deref().map(s))?;
    set("dtype", args.dtype.as_deref().map(s))?;
    let run_dir = launch.run_dir()?;
    set("run_dir", run_dir.map(|p| s(&p.to_string_lossy())))?;
    set("train.batch_size", args.batch_size.map(|v| i(v as u64)))?;
    set("train.grad_accum", args.grad_accum.map(|v| i(v as u64)))?;
    set("optim.lr", args.lr.map(toml::Value::Float))?;
    set("train.seq_len", args.seq_len.map(|v| i(v as u64)))?;
    for kv in &args.set {
        b.set(kv)?;
    }
    for (key, value) in extra {
        if key != "model.ffn" && b.has_cli(key) {
            anyhow::bail!(
                "--sweep {key}: its value is also given by a flag or --set; drop one of them"
            );
        }
        b.set(&format!("{key}={value}"))?;
    }
    launch.finish(b)
}

/// The grid asked for by `--ffn a,b`, `--seeds` and/or `--sweep`, if any: each cell's config
/// is built as a single run's would be, with the cell's FFN and swept values, so a bad value
/// stops the grid before any run.
fn grid(args: &Args, cfg: &RunConfig) -> anyhow::Result<Option<Grid>> {
    let ffns = args.ffn.clone().unwrap_or_default();
    if ffns.len() <= 1 && args.seeds.is_none() && args.sweep.is_empty() {
        return Ok(None);
    }
    if args.resume.is_some() {
        anyhow::bail!(
            "--resume continues one run; to resume a grid, run the same grid command again"
        );
    }
    let ffns = if ffns.is_empty() {
        vec![cfg.model.ffn]
    } else {
        ffns.iter()
            .map(|f| f.parse::<FfnKind>().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let seeds = args.seeds.clone().unwrap_or_else(|| vec![cfg.seed]);
    let sweeps = args
        .sweep
        .iter()
        .map(|s| s.parse::<Sweep>())
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, sweep) in sweeps.iter().enumerate() {
        if sweeps[..i].iter().any(|s| s.key == sweep.key) {
            anyhow::bail!(
                "--sweep {}: the key is swept twice; give all its values in one --sweep",
                sweep.key
            );
        }
        if !ffns.iter().any(|f| applies_to_ffn(&sweep.key, f.name())) {
            anyhow::bail!(
                "--sweep {}: {} does not read this key; add --ffn dynactglu",
                sweep.key,
                ffns.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut variants = vec![];
    for &ffn in &ffns {
        let read: Vec<&Sweep> = sweeps
            .iter()
            .filter(|s| applies_to_ffn(&s.key, ffn.name()))
            .collect();
        for settings in experiment::combinations(&read) {
            let mut extra = vec![("model.ffn".to_string(), ffn.name().to_string())];
            extra.extend(settings.iter().cloned());
            let (config, ..) = build_with(args, &extra).with_context(|| {
                let set: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
                match set.is_empty() {
                    true => format!("the grid's {} runs", ffn.name()),
                    false => format!("the grid's {} runs with {}", ffn.name(), set.join(" ")),
                }
            })?;
            variants.push(Variant {
                ffn,
                settings,
                config,
            });
        }
    }
    Ok(Some(Grid {
        variants,
        sweeps,
        seeds,
        jobs: args.jobs,
    }))
}

/// `train-lm`'s whole run: parse the flags, then one run (on this rank), a grid or
/// `--prepare-data`; exits with the run's status.
pub fn main() {
    let args = Args::parse();
    let mut trace = match dynact_trainer::init_logging_and_trace(args.trace.as_deref()) {
        Ok(guard) => guard,
        Err(e) => {
            dynact_trainer::report_error(&e);
            std::process::exit(1);
        }
    };
    let mut rank = 0;
    // Kept past the run so that an error can stop the other ranks (MPI_Abort) instead of
    // finalizing MPI, which would wait for them.
    let mut ranks: Option<Rc<Communicator>> = None;
    let result = build(&args).and_then(|(cfg, mut opts, notices)| {
        // Under mpirun/srun: this rank of a data-parallel run.
        let timeout = std::time::Duration::from_secs_f64(cfg.train.rank_timeout_s);
        let gpu = cfg.device.is_cuda();
        let comm = Rc::new(Communicator::from_env(timeout, gpu)?);
        rank = comm.rank();
        ranks = Some(comm.clone());
        if comm.is_root() {
            for n in notices {
                dynact_trainer::eprint_line(&n);
            }
        }
        let grid = grid(&args, &cfg)?;
        if args.trace.is_some() && (args.prepare_data || grid.is_some()) {
            anyhow::bail!("--trace records one run; drop it for --prepare-data and grids");
        }
        if comm.size() > 1 && (args.prepare_data || grid.is_some()) {
            anyhow::bail!(
                "--prepare-data and experiment grids run as one process; start them without mpirun/srun"
            );
        }
        opts.comm = comm;
        if args.prepare_data {
            let start = std::time::Instant::now();
            let description = dynact_trainer::resolve::preflight(&cfg, opts.vocab_size_given)?;
            println!(
                "data ready: {description} ({:.1} s, peak memory {:.0} MB)",
                start.elapsed().as_secs_f64(),
                dynact_trainer::peak_memory_mb()
            );
            std::process::exit(0);
        }
        if let Some(grid) = grid {
            let exe = std::env::current_exe()?;
            let dir = experiment::run_grid(&cfg, opts.vocab_size_given, &grid, &exe)?;
            let table = std::fs::read_to_string(dir.join("comparison").join("comparison.md"))?;
            println!("{table}");
            std::process::exit(0);
        }
        let interrupt = Arc::new(AtomicBool::new(false));
        let flag = interrupt.clone();
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: finishing this step and saving (Ctrl-C again to quit at once)");
        });
        opts.interrupt = Some(interrupt);
        let name = cfg.name.clone();
        run(cfg, opts).map(|r| (name, r))
    });
    match result {
        // The other ranks of a data-parallel run leave the reporting to rank 0.
        Ok(_) if rank > 0 => {}
        Ok((name, report)) => {
            dynact_trainer::train::print_summary(&name, &report);
            if report.interrupted {
                eprintln!(
                    "stopped at step {}; resume with: train-lm --resume {}",
                    report.last_step,
                    report.run_dir.display()
                );
                // Exiting skips destructors: the trace is completed first.
                drop(trace.take());
                std::process::exit(130);
            }
        }
        Err(e) => {
            let e = if rank > 0 {
                e.context(format!("rank {rank}"))
            } else {
                e
            };
            dynact_trainer::report_error(&e);
            drop(trace.take());
            if let Some(comm) = ranks.filter(|c| c.size() > 1) {
                comm.abort(1);
            }
            std::process::exit(1);
        }
    }
}
