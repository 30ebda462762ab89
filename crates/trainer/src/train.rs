//! Training: [`run`] sets up data, model and optimizer from a [`RunConfig`] (or from the
//! latest checkpoint of the run being resumed), then [`Trainer::train`] loops over
//! [`Trainer::train_step`], logging a [`MetricsRecord`] every `log_every` steps and, at every
//! evaluation step, scoring the whole validation set and saving a training checkpoint.
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
    CheckpointContents, EvalRecord, MetricsRecord, RunDir, RunLock, TrainerState,
    TrainingCheckpoint, EVAL_FILE, METRICS_FILE,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{NonFinitePolicy, RunConfig};
use crate::eval::{evaluate_on, EvalResult};
use crate::optim::AdamW;
use crate::peak_flops::{format_duration, peak_flops, Peak};
use crate::resolve::{Resolution, ResolvedRun};
use crate::row_shards;
use crate::schedule::lr_at;

pub use crate::resolve::RunOptions;

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
    let mut trainer = Trainer::assemble(cfg, run_dir, lock, dataset, start, device, dtype, comm)?;
    match &peak {
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
    trainer.peak = peak;
    trainer.unigram_ppl = unigram;
    trainer.train(&opts)
}

/// Where training starts: the parameters and model, the optimizer and the trainer state.
type Start = (VarMap, Transformer, AdamW, TrainerState);

/// Step 0 of a run from these weights: a new optimizer and a fresh state.
fn step_zero((varmap, model): (VarMap, Transformer), cfg: &RunConfig) -> Result<Start> {
    let opt = AdamW::new(&varmap, &cfg.optim)?;
    Ok((varmap, model, opt, TrainerState::start(cfg.seed)))
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
    if !writer {
        return Ok((ckpt.weights.varmap, model, opt, ckpt.state));
    }
    for file in [METRICS_FILE, EVAL_FILE] {
        run_dir.truncate_jsonl(file, ckpt.state.step)?;
    }
    // Checkpoints after it (written, but never named in `latest`, when the run stopped) are of
    // a timeline this run replaces; left, they would outrank its own in pruning.
    for step in run_dir.checkpoint_steps()? {
        if step > ckpt.state.step {
            let dir = run_dir.step_dir(step);
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    Ok((ckpt.weights.varmap, model, opt, ckpt.state))
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
}

impl Trainer {
    /// A trainer over `dataset` with a fresh model and nothing on disk (no run directory is
    /// written: [`Trainer::train_step`] is all it is for). What the benchmarks time.
    pub fn in_memory(cfg: RunConfig, dataset: Dataset) -> Result<Trainer> {
        let device = crate::parse_device(&cfg.device)?;
        let dtype = crate::config::run_dtype(&cfg.dtype)?;
        let start = step_zero(init_model(&cfg.model, cfg.seed, &device)?, &cfg)?;
        let run_dir = RunDir::new(cfg.run_dir());
        let comm = Rc::new(Communicator::single());
        Trainer::assemble(cfg, run_dir, None, dataset, start, device, dtype, comm)
    }

    /// A trainer at `start`, its loader at the state's position (no peak FLOP/s and no
    /// baseline yet: `run` sets them). Every rank's loader walks the same global order of
    /// micro-batches (and keeps the same state), taking its own share of each step.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        mut cfg: RunConfig,
        run_dir: RunDir,
        lock: Option<RunLock>,
        dataset: Dataset,
        (varmap, model, opt, state): Start,
        device: Device,
        dtype: DType,
        comm: Rc<Communicator>,
    ) -> Result<Trainer> {
        cfg.train.row_shards =
            crate::resolve::resolve_row_shards(cfg.train.row_shards, &device, cfg.train.batch_size);
        let mut loader = BatchLoader::new(
            dataset.train.clone(),
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
            _lock: lock,
            comm,
            flops_per_token: training_flops_per_token(&cfg.model, cfg.train.seq_len)?,
            peak: None,
            model: model.with_compute_dtype(dtype),
            unigram_ppl: f64::NAN,
            run_dir,
            dtype,
            cfg,
            device,
            dataset,
            varmap,
            opt,
            loader,
            state,
        })
    }

    /// The model with the current weights detached (no autograd graph), for evaluation.
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

/// A distinct dropout seed for every (step, micro-batch) of a run.
fn micro_seed(seed: u64, step: u64, micro: usize) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

impl Trainer {
    /// Steps until `train.steps` (or an interrupt), evaluating and saving as configured.
    fn train(&mut self, opts: &RunOptions) -> Result<RunReport> {
        let total = self.cfg.train.steps;
        let start_step = self.state.step;
        let root = self.comm.is_root();
        let quiet = opts.quiet || !root;
        let bar = progress_bar(total, start_step, quiet);
        let mut report =
            RunReport::new(self.run_dir.path.clone(), self.unigram_ppl, self.state.step);
        let tokens_per_step = self.cfg.tokens_per_step() as u64;
        let run_start = Instant::now();
        let elapsed_before = self.state.elapsed_s;
        let (mut window_start, mut window_tokens) = (Instant::now(), 0u64);
        let mut train_time = 0f64;

        while self.state.step < total {
            let stats = self.train_step(self.state.step + 1)?;
            let step = stats.step;
            if let Some(what) = stats.skipped {
                bar.suspend(|| {
                    eprintln!("warning: step {step}: non-finite {what}; batch skipped, no update")
                });
            }
            train_time += stats.seconds;
            report.last_step = step;
            report.losses.push((step, stats.loss));
            window_tokens += tokens_per_step;

            if root && (step.is_multiple_of(self.cfg.train.log_every) || step == total) {
                let tps = window_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
                let elapsed = elapsed_before + run_start.elapsed().as_secs_f64();
                // At this invocation's pace so far, evaluations and checkpoints included.
                let done = (step - start_step) as f64;
                let eta = run_start.elapsed().as_secs_f64() / done * (total - step) as f64;
                let mfu = self
                    .peak
                    .as_ref()
                    .map(|p| tps * self.flops_per_token / p.flops);
                self.log_metrics(&stats, tps, elapsed, eta, mfu)?;
                let mfu_text = mfu.map_or(String::new(), |m| format!("  mfu {:.1}%", 100.0 * m));
                bar.set_message(format!("loss {:.4}  {tps:.0} tok/s{mfu_text}", stats.loss));
                if bar.is_hidden() && !quiet {
                    eprintln!(
                        "step {step:>6}/{total}  loss {:.4}  lr {:.2e}  |g| {:.3}  {tps:.0} tok/s{mfu_text}  eta {}",
                        stats.loss,
                        stats.lr,
                        stats.grad_norm,
                        format_duration(eta)
                    );
                }
                (window_start, window_tokens) = (Instant::now(), 0);
            }
            bar.set_position(step);

            let asked = opts
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst));
            // The ranks stop at the same step: a Ctrl-C seen by any of them stops all.
            let asked = match self.comm.size() {
                1 => asked,
                _ => self.comm.all_reduce_max_u64(asked as u64) == 1,
            };
            let interrupted = asked || opts.stop_after == Some(step);
            if self.cfg.is_eval_step(step) {
                self.state.elapsed_s = elapsed_before + run_start.elapsed().as_secs_f64();
                let result = bar.suspend(|| self.evaluate_and_log(step, !quiet))?;
                report.evals.push((step, self.state.tokens_seen, result));
                self.save(step)?;
                window_start = Instant::now();
            } else if interrupted {
                self.state.elapsed_s = elapsed_before + run_start.elapsed().as_secs_f64();
                self.save(step)?;
            }
            if interrupted {
                report.interrupted = true;
                break;
            }
        }
        bar.finish_and_clear();
        let steps_run = report.losses.len().max(1) as f64;
        report.step_time_s = train_time / steps_run;
        report.tokens_per_s = tokens_per_step as f64 / report.step_time_s.max(1e-12);
        Ok(report)
    }

    /// One optimizer step: forward and backward over `grad_accum` micro-batches, the global
    /// gradient norm, clipping, and an AdamW update at `lr_at(step)`. A non-finite loss or
    /// norm stops the run (the last checkpoint stays) or, with `on_nonfinite = "skip"`, skips
    /// the update.
    pub fn train_step(&mut self, step: u64) -> Result<StepStats> {
        let start = Instant::now();
        let lr = lr_at(step, self.cfg.train.steps, &self.cfg.optim);
        let (loss, grads) = self.accumulate(step)?;
        let grad_norm = self.opt.grad_norm(&grads)?;
        let nonfinite = if !loss.is_finite() {
            Some("loss")
        } else if !grad_norm.is_finite() {
            Some("gradient norm")
        } else {
            None
        };
        match (nonfinite, self.cfg.train.on_nonfinite) {
            (None, _) => {
                let clip = self.cfg.optim.grad_clip;
                let scale = if clip > 0.0 && grad_norm > clip {
                    clip / grad_norm
                } else {
                    1.0
                };
                self.opt.step(&grads, lr, scale)?;
            }
            (Some(_), NonFinitePolicy::Skip) => {}
            (Some(what), NonFinitePolicy::Stop) => {
                let last = self
                    .run_dir
                    .latest_checkpoint()
                    .ok()
                    .flatten()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none yet".into());
                bail!(
                    "non-finite {what} at step {step}; the last good checkpoint ({last}) is kept; lower optim.lr or set train.on_nonfinite = \"skip\""
                );
            }
        }
        self.state.step = step;
        self.state.optimizer_steps = self.opt.step;
        self.state.tokens_seen += self.cfg.tokens_per_step() as u64;
        self.state.loader = self.loader.state();
        Ok(StepStats {
            step,
            loss,
            lr,
            grad_norm,
            skipped: nonfinite,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Forward and backward over this rank's share of the step's `grad_accum` micro-batches
    /// (all of them in a single process); returns the mean loss and the gradients of the mean
    /// loss over all of them, summed over the ranks. Micro-batch m of a step has the same
    /// windows and dropout masks whatever the number of ranks.
    fn accumulate(&mut self, step: u64) -> Result<(f32, GradStore)> {
        let accum = self.cfg.train.grad_accum;
        let per_rank = accum / self.comm.size();
        let mine = self.comm.rank() * per_rank..(self.comm.rank() + 1) * per_rank;
        let mut total: Option<GradStore> = None;
        let mut loss_sum: Option<Tensor> = None;
        for micro in 0..accum {
            // Every rank draws every batch, so the loader's state is the same on all of them.
            let batch = self.loader.next_batch();
            if !mine.contains(&micro) {
                continue;
            }
            let (b, t) = (batch.batch_size, batch.seq_len);
            let x = Tensor::from_vec(batch.inputs, (b, t), &self.device)?;
            let y = Tensor::from_vec(batch.targets, (b, t), &self.device)?;
            let ctx = ForwardCtx::train(micro_seed(self.cfg.seed, step, micro))
                .with_rng(self.cfg.train.dropout_rng);
            let (loss, grads) = row_shards::loss_and_grads(
                &self.model,
                &x,
                &y,
                ctx,
                1.0 / accum as f64,
                self.cfg.train.row_shards.clamp(1, b),
                &self.params_by_name,
            )?;
            // Summed on the device, read once per step.
            loss_sum = Some(match loss_sum {
                None => loss,
                Some(sum) => (sum + loss)?,
            });
            match total.as_mut() {
                None => total = Some(grads),
                Some(acc) => row_shards::add_grads(acc, grads, &self.params_by_name)?,
            }
        }
        let mut grads = total.expect("grad_accum >= 1");
        let loss_sum = match loss_sum {
            Some(sum) => sum.to_dtype(DType::F32)?,
            None => Tensor::zeros((), DType::F32, &self.device)?,
        };
        let loss_sum = match self.comm.size() {
            1 if !self.comm.on_gpu() => loss_sum.to_scalar::<f32>()?,
            _ => self.all_reduce_grads_and_loss(&mut grads, &loss_sum)?,
        };
        Ok((loss_sum / accum as f32, grads))
    }

    /// Sums the gradients and `loss_sum` over the ranks as one flat f32 buffer in
    /// parameter-name order with the loss last (one collective): on the GPUs for NCCL ranks,
    /// else on the host (MPI). Returns the summed loss.
    fn all_reduce_grads_and_loss(&self, grads: &mut GradStore, loss_sum: &Tensor) -> Result<f32> {
        let vars = &self.params_by_name;
        let mut parts = Vec::with_capacity(vars.len() + 1);
        for var in vars {
            parts.push(match grads.get(var) {
                Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
                None => Tensor::zeros(var.elem_count(), DType::F32, var.device())?,
            });
        }
        parts.push(loss_sum.reshape(1)?);
        let flat = Tensor::cat(&parts, 0)?;
        let sum = if self.comm.on_gpu() {
            self.sum_on_device(&flat)?
        } else {
            let mut host = flat.to_vec1::<f32>()?;
            self.comm.all_reduce_sum_f32(&mut host);
            Tensor::from_vec(host, flat.elem_count(), &self.device)?
        };
        let mut at = 0;
        for var in vars {
            let n = var.elem_count();
            // A parameter without a gradient stays without one, as in a single process (the
            // ranks run the same graph, so they agree on which those are).
            if grads.get(var).is_some() {
                let g = sum.narrow(0, at, n)?.reshape(var.shape())?;
                grads.insert(var, g.to_dtype(var.dtype())?);
            }
            at += n;
        }
        Ok(sum.narrow(0, at, 1)?.squeeze(0)?.to_scalar::<f32>()?)
    }

    /// `flat` summed over NCCL ranks on the GPUs.
    #[cfg(feature = "nccl")]
    fn sum_on_device(&self, flat: &Tensor) -> Result<Tensor> {
        Ok(self
            .comm
            .all_reduce_sum_on_device(flat)
            .expect("an NCCL rank reduces on the device")?)
    }

    #[cfg(not(feature = "nccl"))]
    fn sum_on_device(&self, _: &Tensor) -> Result<Tensor> {
        unreachable!("only a build with NCCL has GPU ranks")
    }

    /// One line of `metrics.jsonl`, with alpha and beta of every layer for dynActGLU.
    fn log_metrics(
        &self,
        stats: &StepStats,
        tokens_per_s: f64,
        elapsed_s: f64,
        eta_s: f64,
        mfu: Option<f64>,
    ) -> Result<()> {
        let mut record = MetricsRecord {
            step: stats.step,
            loss: stats.loss,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            tokens_per_s,
            elapsed_s,
            eta_s: Some(eta_s),
            mfu,
            alpha: None,
            beta: None,
            alpha_std: None,
            beta_std: None,
        };
        self.add_dynact_stats(&mut record)?;
        self.run_dir.append_jsonl(METRICS_FILE, &record)
    }

    /// alpha and beta of every layer (per-channel: their means, plus `alpha_std`/`beta_std`).
    fn add_dynact_stats(&self, record: &mut MetricsRecord) -> Result<()> {
        let acts = self.model.dynacts();
        if acts.is_empty() {
            return Ok(());
        }
        let per_channel = acts[0].alpha().elem_count() > 1;
        let (mut a, mut b, mut a_std, mut b_std) = (vec![], vec![], vec![], vec![]);
        for act in acts {
            for (t, mean, std) in [
                (act.alpha(), &mut a, &mut a_std),
                (act.beta(), &mut b, &mut b_std),
            ] {
                let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
                let m = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
                let var = v.iter().map(|x| (*x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64;
                mean.push(m);
                std.push(var.sqrt());
            }
        }
        record.alpha = Some(a);
        record.beta = Some(b);
        if per_channel {
            record.alpha_std = Some(a_std);
            record.beta_std = Some(b_std);
        }
        Ok(())
    }

    fn evaluate_and_log(&self, step: u64, print: bool) -> Result<EvalResult> {
        let lens = self.dataset.tokenizer.token_byte_lengths();
        // The same weights, detached: evaluation records no autograd graph.
        let model = self.inference_model()?;
        let r = evaluate_on(
            &self.comm,
            &model,
            &self.dataset.val,
            self.cfg.train.seq_len,
            self.cfg.eval.batch_size,
            self.cfg.eval_max_windows(),
            Some(&lens),
            &self.device,
            |_, _| {},
        )?;
        let record = EvalRecord {
            step,
            tokens_seen: self.state.tokens_seen,
            val_ce: r.ce,
            val_ppl: r.ppl,
            val_bpb: r.bpb,
            elapsed_s: self.state.elapsed_s,
            val_tokens: Some(r.tokens as u64),
        };
        if !self.comm.is_root() {
            return Ok(r);
        }
        self.run_dir.append_jsonl(EVAL_FILE, &record)?;
        if print {
            eprintln!(
                "eval step {step}: val_ce {:.4}  val_ppl {:.4}  val_bpb {}  ({} tokens, {:.1}s)",
                r.ce,
                r.ppl,
                r.bpb.map_or("-".into(), |b| format!("{b:.4}")),
                r.tokens,
                r.seconds
            );
        }
        Ok(r)
    }

    fn save(&self, step: u64) -> Result<()> {
        // Every rank holds the same weights, optimizer and loader state; rank 0 writes them
        // while the others wait (untimed: a large checkpoint on a slow disk takes a while).
        if !self.comm.is_root() {
            self.comm.barrier_untimed();
            return Ok(());
        }
        self.write_checkpoint(step)?;
        self.comm.barrier_untimed();
        Ok(())
    }

    fn write_checkpoint(&self, step: u64) -> Result<()> {
        let contents = CheckpointContents {
            model_config: &self.cfg.model,
            varmap: &self.varmap,
            tokenizer: &self.dataset.tokenizer,
            optimizer: self.opt.state_tensors(),
            state: &self.state,
        };
        let dir = self.run_dir.save_training_checkpoint(step, &contents)?;
        tracing::info!(step, dir = %dir.display(), "checkpoint saved");
        // The new checkpoint is complete; failing to delete old ones must not stop the run.
        if let Err(e) = self
            .run_dir
            .prune(self.cfg.train.keep_last, &self.cfg.eval.eval_at)
        {
            eprintln!("warning: could not delete old checkpoints: {e:#}");
        }
        Ok(())
    }
}

/// A progress bar on a terminal; hidden otherwise (then plain lines are printed).
fn progress_bar(total: u64, start: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(start);
    bar
}

/// The table printed at the end of a run: every evaluation of this invocation, then speed.
pub fn print_summary(name: &str, r: &RunReport) {
    if r.already_complete {
        println!(
            "run {name} ({}) is already complete at step {}; nothing to do. To train it further, resume with more steps: train-lm --resume {} --steps {}",
            r.run_dir.display(),
            r.last_step,
            r.run_dir.display(),
            2 * r.last_step
        );
        return;
    }
    if !r.evals.is_empty() {
        println!("\nrun {name} ({})", r.run_dir.display());
        println!("| step | tokens seen | val_ce | val_ppl | val_bpb |");
        println!("|-----:|------------:|-------:|--------:|--------:|");
        for (step, tokens, e) in &r.evals {
            let bpb = e.bpb.map_or("-".to_string(), |b| format!("{b:.4}"));
            println!("| {step} | {tokens} | {:.4} | {:.4} | {bpb} |", e.ce, e.ppl);
        }
        println!("unigram baseline: val_ppl {:.4}", r.unigram_ppl);
    }
    println!(
        "{} steps, {:.3} s/step, {:.0} tokens/s (training only)",
        r.losses.len(),
        r.step_time_s,
        r.tokens_per_s
    );
}
