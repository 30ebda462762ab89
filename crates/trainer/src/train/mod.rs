//! Training: [`run`] takes the run resolved by [`crate::resolve`] and sets up model and
//! optimizer (fresh, from `init_from`, or from the latest checkpoint of the run being resumed);
//! then the loop (`train_loop.rs`) runs [`Trainer::train_step`] (`step.rs`: the micro-batches,
//! the gradient all-reduce, the update), logging a [`MetricsRecord`] every `log_every` steps
//! and, at every evaluation step, scoring the validation set and saving a training checkpoint
//! (`records.rs`); `report.rs` prints the progress bar and the summary.
//!
//! A step is a pure function of (weights, optimizer moments, batch, seed, step), and all of
//! those are in the checkpoint, so a resumed run continues with the very losses the
//! uninterrupted one would have had. (Resuming with another `train.steps` stretches the
//! learning-rate schedule over the new length from there on: an extended run, not the same one.)

use std::io::IsTerminal;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use dynact_data::{BatchLoader, Dataset};
use dynact_dist::Communicator;
use dynact_model::flops::training_flops_per_token;
use dynact_model::{init_model, Checkpoint, ForwardCtx, ParamSummary, Transformer};
use dynact_run::{
    CheckpointContents, EvalRecord, MetricsRecord, RunDir, RunFacts, RunLock, SampleRecord,
    TrainerState, TrainingCheckpoint, EVAL_FILE, METRICS_FILE, SAMPLES_FILE,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{NonFinitePolicy, RunConfig};
use crate::eval::{evaluate_on, EvalResult};
use crate::language_model::TransformerDecoder;
use crate::optim::{AdamW, StepOutcome};
use crate::peak_flops::{peak_flops, Peak};
use crate::resolve::{Resolution, ResolvedRun};
use crate::row_shards;
use crate::sample::{generate, Sampler, SamplingConfig};
use crate::schedule::lr_at;

pub mod logger;
mod records;
mod report;
mod step;
mod train_loop;

pub use crate::resolve::RunOptions;
pub use report::print_summary;

/// What a finished (or interrupted) run reports.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub run_dir: PathBuf,
    /// Validation perplexity of the training set's unigram distribution, for reference.
    pub unigram_ppl: f64,
    pub last_step: u64,
    pub interrupted: bool,
    /// (step, tokens_seen, result) of every evaluation in this invocation.
    pub evals: Vec<(u64, u64, EvalResult)>,
    /// Training losses of the steps run in this invocation, in order.
    pub losses: Vec<(u64, f32)>,
    pub tokens_per_s: f64,
    pub step_time_s: f64,
    /// The run had already reached its last step when it was resumed: nothing was run.
    pub already_complete: bool,
}

impl RunReport {
    fn new(run_dir: PathBuf, unigram_ppl: f64, last_step: u64) -> Self {
        RunReport {
            run_dir,
            unigram_ppl,
            last_step,
            interrupted: false,
            evals: vec![],
            losses: vec![],
            tokens_per_s: 0.0,
            step_time_s: 0.0,
            already_complete: false,
        }
    }

    fn complete(run_dir: PathBuf, last_step: u64) -> Self {
        RunReport {
            already_complete: true,
            ..RunReport::new(run_dir, f64::NAN, last_step)
        }
    }
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub step: u64,
    /// Mean loss of the step's micro-batches.
    pub loss: f32,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Set when the update was skipped: what was not finite (`on_nonfinite = "skip"`).
    pub skipped: Option<&'static str>,
    /// Wall time of the step.
    pub seconds: f64,
}

/// Runs (or resumes) training as configured.
pub fn run(cfg: RunConfig, opts: RunOptions) -> Result<RunReport> {
    let root = opts.comm.is_root();
    let log = |msg: String| {
        if !opts.quiet && root {
            crate::eprint_line(&msg);
        }
    };
    let run = match ResolvedRun::resolve(cfg, &opts, &log)? {
        Resolution::Ready(run) => *run,
        Resolution::Complete { run_dir, step } => return Ok(RunReport::complete(run_dir, step)),
    };
    let (cfg, device, dtype) = (run.cfg, run.device, run.dtype);
    let (run_dir, lock, dataset) = (run.run_dir, run.lock, run.dataset);
    let (resume_from, init_from, unigram) = (run.resume_from, run.init_from, run.unigram_ppl);
    let comm = opts.comm.clone();

    let start = match (resume_from, &init_from) {
        (None, Some(source)) => {
            log(format!("starting from the weights of {source}"));
            let weights = crate::init_from::initial_weights(&cfg.model, source, cfg.seed, &device)?;
            step_zero(weights, &cfg)?
        }
        (None, None) => step_zero(init_model(&cfg.model, cfg.seed, &device)?, &cfg)?,
        (Some(ckpt), _) => {
            log(format!(
                "resuming {} at step {}",
                run_dir.path.display(),
                ckpt.state.step
            ));
            restore(ckpt, &cfg, &run_dir, root, &device)?
        }
    };
    log(format!(
        "model: {} ffn, {} layers, d {}, parameters:\n{}",
        cfg.model.ffn.name(),
        cfg.model.num_hidden_layers,
        cfg.model.hidden_size,
        ParamSummary::of(&cfg.model)?,
    ));

    // The job's peak: every rank's device alike (tokens/s counts the tokens of all ranks).
    let ranks = comm.size();
    let peak = peak_flops(&device, dtype, cfg.train.peak_flops).map(|p| match ranks {
        1 => p,
        w => Peak {
            flops: p.flops * w as f64,
            source: format!("{} x {w} ranks", p.source),
        },
    });
    let mut trainer = Trainer::new(Setup {
        cfg,
        run_dir,
        lock,
        dataset,
        start,
        device,
        dtype,
        comm,
        peak,
        unigram_ppl: unigram,
    })?;
    match &trainer.peak {
        Some(p) => log(format!(
            "speed: {:.2} MFLOP per training token; peak {:.1} GFLOP/s ({})",
            trainer.flops_per_token / 1e6,
            p.flops / 1e9,
            p.source
        )),
        None => log(
            "speed: no peak FLOP/s known for this device, so no MFU; set train.peak_flops".into(),
        ),
    }
    trainer.train(&opts)
}

/// Where training starts: the parameters and model, the optimizer and the trainer state.
struct Start {
    varmap: VarMap,
    model: Transformer,
    opt: AdamW,
    state: TrainerState,
}

/// Everything a [`Trainer`] is built from.
struct Setup {
    cfg: RunConfig,
    run_dir: RunDir,
    /// The run directory's lock (None: nothing on disk, or not rank 0).
    lock: Option<RunLock>,
    dataset: Dataset,
    start: Start,
    device: Device,
    dtype: DType,
    comm: Rc<Communicator>,
    /// The job's peak FLOP/s (None: unknown, no MFU).
    peak: Option<Peak>,
    unigram_ppl: f64,
}

/// Step 0 of a run from these weights: a new optimizer and a fresh state.
fn step_zero((varmap, model): (VarMap, Transformer), cfg: &RunConfig) -> Result<Start> {
    let opt = AdamW::new(&varmap, &cfg.optim)?;
    let state = TrainerState::start(cfg.seed);
    Ok(Start {
        varmap,
        model,
        opt,
        state,
    })
}

/// The model, optimizer and state of a training checkpoint; the run's logs are cut back to
/// its step, so the lines the interrupted run wrote after it are written again.
fn restore(
    ckpt: TrainingCheckpoint,
    cfg: &RunConfig,
    run_dir: &RunDir,
    writer: bool,
    device: &Device,
) -> Result<Start> {
    let model = ckpt.weights.model(device)?;
    let mut opt = AdamW::new(&ckpt.weights.varmap, &cfg.optim)?;
    opt.restore(&ckpt.optimizer, ckpt.state.optimizer_steps)
        .with_context(|| format!("resuming from {}", ckpt.dir.display()))?;
    let start = Start {
        varmap: ckpt.weights.varmap,
        model,
        opt,
        state: ckpt.state,
    };
    if !writer {
        return Ok(start);
    }
    for file in [METRICS_FILE, EVAL_FILE, SAMPLES_FILE] {
        run_dir.truncate_jsonl(file, start.state.step)?;
    }
    // Checkpoints after it (written, but never named in `latest`, when the run stopped) are of
    // a timeline this run replaces; left, they would outrank its own in pruning.
    for step in run_dir.checkpoint_steps()? {
        if step > start.state.step {
            let dir = run_dir.step_dir(step);
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    Ok(start)
}

/// A run in progress: everything a step reads and changes.
pub struct Trainer {
    cfg: RunConfig,
    run_dir: RunDir,
    device: Device,
    /// Compute dtype of forward passes (weights stay f32).
    dtype: DType,
    dataset: Dataset,
    unigram_ppl: f64,
    model: Transformer,
    varmap: VarMap,
    opt: AdamW,
    loader: BatchLoader,
    state: TrainerState,
    /// Model FLOPs of one training token, and the device's peak FLOP/s (for MFU).
    flops_per_token: f64,
    peak: Option<Peak>,
    /// The run directory's lock, held while the trainer lives (None: nothing on disk, or not
    /// rank 0).
    _lock: Option<RunLock>,
    /// The ranks of a data-parallel run; rank 0 alone writes the run directory.
    comm: Rc<Communicator>,
    /// The parameters sorted by name: the same order on every rank, for the gradient buffer.
    params_by_name: Vec<Var>,
    /// Steps run and not yet reported ([`Trainer::settle`]).
    unsettled: Vec<step::Unsettled>,
}

impl Trainer {
    /// A trainer over `dataset` with a fresh model and nothing on disk (no run directory is
    /// written: [`Trainer::train_step`] is all it is for). What the benchmarks time.
    pub fn in_memory(cfg: RunConfig, dataset: Dataset) -> Result<Trainer> {
        let device = cfg.device.open()?;
        let dtype = cfg.dtype.dtype();
        let cfg = crate::resolve::in_memory(cfg, &device);
        let start = step_zero(init_model(&cfg.model, cfg.seed, &device)?, &cfg)?;
        Trainer::new(Setup {
            run_dir: RunDir::new(cfg.run_dir()),
            lock: None,
            dataset,
            start,
            device,
            dtype,
            comm: Rc::new(Communicator::single()),
            peak: None,
            unigram_ppl: f64::NAN,
            cfg,
        })
    }

    /// The trainer of `setup`, whole: its loader at the start state's position. Every rank's
    /// loader walks the same global order of micro-batches (and keeps the same state), taking
    /// its own share of each step.
    fn new(setup: Setup) -> Result<Trainer> {
        let (cfg, device, dtype) = (setup.cfg, setup.device, setup.dtype);
        let Start {
            varmap,
            model,
            opt,
            state,
        } = setup.start;
        let mut loader = BatchLoader::new(
            setup.dataset.train.clone(),
            cfg.train.seq_len,
            cfg.train.batch_size,
            cfg.seed,
            0,
            1,
        )?;
        loader.restore(&state.loader)?;
        let mut named: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| anyhow!("the parameter map's lock is poisoned"))?
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Trainer {
            params_by_name: named.into_iter().map(|(_, v)| v).collect(),
            unsettled: Vec::new(),
            _lock: setup.lock,
            comm: setup.comm,
            flops_per_token: training_flops_per_token(&cfg.model, cfg.train.seq_len)?,
            peak: setup.peak,
            model: model.with_compute_dtype(dtype),
            unigram_ppl: setup.unigram_ppl,
            run_dir: setup.run_dir,
            dtype,
            cfg,
            device,
            dataset: setup.dataset,
            varmap,
            opt,
            loader,
            state,
        })
    }

    /// The model with the current weights detached (no autograd graph), for evaluation: a
    /// snapshot on a CPU (see `Checkpoint::inference_model`), so make one per evaluation.
    pub fn inference_model(&self) -> Result<Transformer> {
        let checkpoint = Checkpoint {
            config: self.cfg.model.clone(),
            varmap: self.varmap.clone(),
        };
        Ok(checkpoint
            .inference_model(&self.device)?
            .with_compute_dtype(self.dtype))
    }
}
