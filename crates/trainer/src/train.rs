//! The training loop: data and model set up from a [`RunConfig`], then for each step
//! `grad_accum` micro-batches, clipping, an AdamW update at `lr_at(step)`, a line of
//! `metrics.jsonl` every `log_every` steps, and at every evaluation step a full pass over the
//! validation set (one line of `eval.jsonl`) and a checkpoint. A step is a pure function of
//! (weights, optimizer moments, batch, seed, step), and all of those are in the checkpoint, so
//! a resumed run continues with the very losses the uninterrupted one would have had.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use dynact_data::{prepare_dataset, BatchLoader, Dataset};
use dynact_model::checkpoint::{save_config, save_weights, CONFIG_FILE, WEIGHTS_FILE};
use dynact_model::{init_model, Checkpoint, ForwardCtx, ParamSummary, Transformer};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::config::{NonFinitePolicy, RunConfig};
use crate::eval::{evaluate, EvalResult};
use crate::optim::AdamW;
use crate::rundir::{
    read_trainer_state, RunDir, TrainerState, EVAL_FILE, METRICS_FILE, OPTIMIZER_FILE,
    RUN_CONFIG_FILE, TOKENIZER_FILE, TRAINER_STATE_FILE,
};
use crate::schedule::lr_at;

/// How the run was asked to start.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue the run in the run directory from its latest checkpoint.
    pub resume: bool,
    /// Whether `model.vocab_size` was set explicitly (else it follows the tokenizer).
    pub vocab_size_given: bool,
    /// Stop (as if interrupted) after this step: for tests of resuming.
    pub stop_after: Option<u64>,
    /// Set to request a clean stop after the current step (Ctrl-C).
    pub interrupt: Option<Arc<AtomicBool>>,
    /// No progress bar and no per-step lines (tests).
    pub quiet: bool,
}

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
}

/// Keys that may change when a run is resumed: how long it runs, what it logs and evaluates,
/// and where it runs. Everything else would make the resumed run a different run.
const RESUMABLE_CHANGES: &[&str] = &[
    "name",
    "run_dir",
    "device",
    "dtype",
    "train.steps",
    "train.log_every",
    "train.keep_last",
    "train.threads",
    "train.on_nonfinite",
    "eval.",
    "data.cache_dir",
];

/// The first key (dotted) whose value differs between the run being resumed and the config
/// given now, outside [`RESUMABLE_CHANGES`].
fn config_difference(saved: &RunConfig, given: &RunConfig) -> Option<String> {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }
    let (mut a, mut b) = (vec![], vec![]);
    flatten("", &serde_json::to_value(saved).ok()?, &mut a);
    flatten("", &serde_json::to_value(given).ok()?, &mut b);
    a.into_iter().zip(b).find_map(|((key, va), (_, vb))| {
        let free = RESUMABLE_CHANGES
            .iter()
            .any(|k| key == *k || (k.ends_with('.') && key.starts_with(k)));
        (!free && va != vb)
            .then(|| format!("{key} is {va} in the run but {vb} in the config given"))
    })
}

/// Runs (or resumes) training as configured.
pub fn run(mut cfg: RunConfig, opts: RunOptions) -> Result<RunReport> {
    crate::set_cpu_threads(cfg.train.threads);
    let device = crate::parse_device(&cfg.device)?;
    let dtype = crate::parse_dtype(&cfg.dtype)?;
    let run_dir = RunDir::new(cfg.run_dir());
    let log = |msg: String| {
        if !opts.quiet {
            eprintln!("{msg}");
        }
    };

    // The run directory: a fresh one, or the one being resumed.
    let resume_from = if opts.resume {
        if !run_dir.holds_run() {
            bail!(
                "--resume {}: no run there (no {RUN_CONFIG_FILE}); start it without --resume",
                run_dir.path.display()
            );
        }
        let saved: RunConfig = toml::from_str(
            &std::fs::read_to_string(run_dir.file(RUN_CONFIG_FILE)).with_context(|| {
                format!("cannot read {}", run_dir.file(RUN_CONFIG_FILE).display())
            })?,
        )
        .with_context(|| {
            format!(
                "{} is not a valid run config",
                run_dir.file(RUN_CONFIG_FILE).display()
            )
        })?;
        if !opts.vocab_size_given {
            cfg.model.vocab_size = saved.model.vocab_size;
        }
        if let Some(diff) = config_difference(&saved, &cfg) {
            bail!(
                "cannot resume {}: {diff}; resume with the run's own config (drop --config and the flags that change it)",
                run_dir.path.display()
            );
        }
        match run_dir.latest_checkpoint()? {
            Some(dir) => Some(dir),
            None => bail!(
                "cannot resume {}: it holds no complete checkpoint yet; start it again with a new --run-dir",
                run_dir.path.display()
            ),
        }
    } else {
        if run_dir.holds_run() {
            bail!(
                "{} already holds a run; continue it with --resume {0}, or pick another --run-dir",
                run_dir.path.display()
            );
        }
        None
    };

    let data_start = Instant::now();
    let dataset = prepare_dataset(&cfg.data)?;
    let tok_vocab = dataset.tokenizer.vocab_size();
    if !opts.vocab_size_given && !opts.resume {
        cfg.model.vocab_size = tok_vocab;
    } else if cfg.model.vocab_size < tok_vocab {
        bail!(
            "model.vocab_size {} is smaller than the tokenizer's {tok_vocab}; raise it or leave it unset",
            cfg.model.vocab_size
        );
    }
    dataset
        .train
        .check_vocab(cfg.model.vocab_size, "the training data")?;
    crate::config::validate(&cfg).map_err(|e| anyhow::anyhow!(e))?;
    log(format!(
        "data: {} ({:.1}s)",
        dataset.description,
        data_start.elapsed().as_secs_f64()
    ));
    let unigram = crate::eval::unigram_ppl(&dataset.train, &dataset.val, cfg.model.vocab_size);
    log(format!(
        "baseline: unigram perplexity of the validation set {unigram:.3} (train token frequencies)"
    ));
    // Fail now, not at the first evaluation, when the validation set is too short.
    dynact_data::eval_windows(dataset.val.len(), cfg.train.seq_len)
        .context("the validation set")?;

    std::fs::create_dir_all(&run_dir.path)
        .with_context(|| format!("cannot create run dir {}", run_dir.path.display()))?;
    if resume_from.is_none() {
        // Written first, so the run directory says what ran even if training fails.
        dynact_model::checkpoint::atomic_write_bytes(
            &run_dir.file(RUN_CONFIG_FILE),
            cfg.to_toml().as_bytes(),
        )?;
        save_config(&cfg.model, &run_dir.file(CONFIG_FILE))?;
        dataset.tokenizer.save(&run_dir.file(TOKENIZER_FILE))?;
    }

    let (varmap, model, state) = match &resume_from {
        None => {
            let (varmap, model) = init_model(&cfg.model, cfg.seed, &device)?;
            let state = TrainerState {
                step: 0,
                tokens_seen: 0,
                loader: Default::default(),
                seed: cfg.seed,
                optimizer_steps: 0,
                elapsed_s: 0.0,
            };
            (varmap, model, state)
        }
        Some(dir) => {
            let ckpt = Checkpoint::load_dir(dir, &device)?;
            let model = ckpt.model(&device)?;
            (ckpt.varmap, model, read_trainer_state(dir)?)
        }
    };
    let model = model.with_compute_dtype(dtype);
    let mut opt = AdamW::new(&varmap, &cfg.optim)?;
    if let Some(dir) = &resume_from {
        opt.load(&dir.join(OPTIMIZER_FILE), state.optimizer_steps, &device)?;
        // Lines logged after that checkpoint, by the run that was interrupted, are replaced
        // by the ones this run writes.
        for file in [METRICS_FILE, EVAL_FILE] {
            run_dir.truncate_jsonl(file, state.step)?;
        }
        log(format!(
            "resuming {} at step {}",
            run_dir.path.display(),
            state.step
        ));
    }
    let params = ParamSummary::of(&cfg.model)?;
    log(format!(
        "model: {} ffn, {} layers, d {}, parameters:\n{params}",
        cfg.model.ffn.name(),
        cfg.model.num_hidden_layers,
        cfg.model.hidden_size,
    ));

    let mut loader = BatchLoader::new(
        dataset.train.clone(),
        cfg.train.seq_len,
        cfg.train.batch_size,
        cfg.seed,
        0,
        1,
    )?;
    loader.restore(&state.loader)?;

    let mut trainer = Trainer {
        unigram_ppl: unigram,
        dtype,
        cfg,
        run_dir,
        device,
        dataset,
        model,
        varmap,
        opt,
        loader,
        state,
    };
    trainer.train(&opts)
}

struct Trainer {
    unigram_ppl: f64,
    /// Compute dtype of forward passes.
    dtype: candle_core::DType,
    cfg: RunConfig,
    run_dir: RunDir,
    device: Device,
    dataset: Dataset,
    model: Transformer,
    varmap: VarMap,
    opt: AdamW,
    loader: BatchLoader,
    state: TrainerState,
}

/// A distinct dropout seed for every (step, micro-batch) of a run.
fn micro_seed(seed: u64, step: u64, micro: usize) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

impl Trainer {
    fn train(&mut self, opts: &RunOptions) -> Result<RunReport> {
        let total = self.cfg.train.steps;
        let start_step = self.state.step;
        let show_bar = !opts.quiet && std::io::stderr().is_terminal();
        let bar = if show_bar {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template"),
            );
            b.set_position(start_step);
            b
        } else {
            ProgressBar::hidden()
        };
        let mut report = RunReport {
            unigram_ppl: self.unigram_ppl,
            run_dir: self.run_dir.path.clone(),
            last_step: start_step,
            interrupted: false,
            evals: vec![],
            losses: vec![],
            tokens_per_s: 0.0,
            step_time_s: 0.0,
        };
        let tokens_per_step = self.cfg.tokens_per_step() as u64;
        let run_start = Instant::now();
        let elapsed_before = self.state.elapsed_s;
        let (mut window_start, mut window_tokens) = (Instant::now(), 0u64);
        let mut train_time = 0f64;

        while self.state.step < total {
            let step = self.state.step + 1;
            let step_start = Instant::now();
            let lr = lr_at(step, total, &self.cfg.optim);
            let (loss, grads) = self.accumulate(step)?;
            let grad_norm = self.opt.grad_norm(&grads)?;
            if loss.is_finite() && grad_norm.is_finite() {
                let clip = self.cfg.optim.grad_clip;
                let scale = if clip > 0.0 && grad_norm > clip {
                    clip / grad_norm
                } else {
                    1.0
                };
                self.opt.step(&grads, lr, scale)?;
            } else {
                let what = if loss.is_finite() {
                    "gradient norm"
                } else {
                    "loss"
                };
                match self.cfg.train.on_nonfinite {
                    NonFinitePolicy::Skip => bar.suspend(|| {
                        eprintln!(
                            "warning: step {step}: non-finite {what}; batch skipped, no update"
                        )
                    }),
                    NonFinitePolicy::Stop => {
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
            }
            drop(grads);
            train_time += step_start.elapsed().as_secs_f64();

            self.state.step = step;
            self.state.optimizer_steps = self.opt.step;
            self.state.tokens_seen += tokens_per_step;
            self.state.loader = self.loader.state();
            report.last_step = step;
            report.losses.push((step, loss));
            window_tokens += tokens_per_step;

            if step.is_multiple_of(self.cfg.train.log_every) || step == total {
                let secs = window_start.elapsed().as_secs_f64();
                let tps = window_tokens as f64 / secs.max(1e-9);
                let mut line = json!({
                    "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                    "tokens_per_s": tps,
                    "elapsed_s": elapsed_before + run_start.elapsed().as_secs_f64(),
                });
                self.add_dynact_stats(&mut line)?;
                self.run_dir.append_jsonl(METRICS_FILE, &line)?;
                bar.set_message(format!("loss {loss:.4}  {tps:.0} tok/s"));
                if !show_bar && !opts.quiet {
                    eprintln!("step {step:>6}/{total}  loss {loss:.4}  lr {lr:.2e}  |g| {grad_norm:.3}  {tps:.0} tok/s");
                }
                (window_start, window_tokens) = (Instant::now(), 0);
            }
            bar.set_position(step);

            let interrupted = opts
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst))
                || opts.stop_after == Some(step);
            if self.cfg.is_eval_step(step) {
                self.state.elapsed_s = elapsed_before + run_start.elapsed().as_secs_f64();
                let result = bar.suspend(|| self.evaluate_and_log(step, !opts.quiet))?;
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

    /// Forward and backward over `grad_accum` micro-batches; returns the mean loss and the
    /// summed gradients of the mean loss.
    fn accumulate(&mut self, step: u64) -> Result<(f32, GradStore)> {
        let accum = self.cfg.train.grad_accum;
        let mut total: Option<GradStore> = None;
        let mut loss_sum = 0f32;
        for micro in 0..accum {
            let batch = self.loader.next_batch();
            let (b, t) = (batch.batch_size, batch.seq_len);
            let x = Tensor::from_vec(batch.inputs, (b, t), &self.device)?;
            let y = Tensor::from_vec(batch.targets, (b, t), &self.device)?;
            let ctx = ForwardCtx::train(micro_seed(self.cfg.seed, step, micro));
            let loss = self.model.loss(&x, &y, &ctx)?;
            loss_sum += loss.to_scalar::<f32>()?;
            let loss = if accum > 1 {
                (loss / accum as f64)?
            } else {
                loss
            };
            let grads = loss.backward()?;
            total = Some(match total {
                None => grads,
                Some(mut acc) => {
                    for var in self.varmap.all_vars() {
                        if let Some(g) = grads.get(&var) {
                            let sum = match acc.get(&var) {
                                Some(a) => (a + g)?,
                                None => g.clone(),
                            };
                            acc.insert(&var, sum);
                        }
                    }
                    acc
                }
            });
        }
        Ok((loss_sum / accum as f32, total.expect("grad_accum >= 1")))
    }

    /// alpha and beta of every layer (per-channel: their means, plus `alpha_std`/`beta_std`).
    fn add_dynact_stats(&self, line: &mut serde_json::Value) -> Result<()> {
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
        line["alpha"] = json!(a);
        line["beta"] = json!(b);
        if per_channel {
            line["alpha_std"] = json!(a_std);
            line["beta_std"] = json!(b_std);
        }
        Ok(())
    }

    fn evaluate_and_log(&self, step: u64, print: bool) -> Result<EvalResult> {
        let lens = self.dataset.tokenizer.token_byte_lengths();
        // The same weights, detached: evaluation records no autograd graph.
        let checkpoint = Checkpoint {
            config: self.cfg.model.clone(),
            varmap: self.varmap.clone(),
        };
        let model = checkpoint
            .inference_model(&self.device)?
            .with_compute_dtype(self.dtype);
        let r = evaluate(
            &model,
            &self.dataset.val,
            self.cfg.train.seq_len,
            self.cfg.eval.batch_size,
            None,
            Some(&lens),
            &self.device,
            |_, _| {},
        )?;
        let elapsed = self.state.elapsed_s;
        self.run_dir.append_jsonl(
            EVAL_FILE,
            &json!({
                "step": step, "tokens_seen": self.state.tokens_seen, "val_ce": r.ce,
                "val_ppl": r.ppl, "val_bpb": r.bpb, "elapsed_s": elapsed,
                "val_tokens": r.tokens,
            }),
        )?;
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
        let state = serde_json::to_string_pretty(&self.state)?;
        let write = |dir: &Path| -> Result<()> {
            save_weights(&self.varmap, &dir.join(WEIGHTS_FILE))?;
            save_config(&self.cfg.model, &dir.join(CONFIG_FILE))?;
            self.dataset.tokenizer.save(&dir.join(TOKENIZER_FILE))?;
            self.opt.save(&dir.join(OPTIMIZER_FILE))?;
            dynact_model::checkpoint::atomic_write_bytes(
                &dir.join(TRAINER_STATE_FILE),
                state.as_bytes(),
            )?;
            Ok(())
        };
        let dir = self.run_dir.save_checkpoint(step, write, || Ok(()))?;
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

/// The table printed at the end of a run: every evaluation of this invocation, then speed.
pub fn print_summary(name: &str, r: &RunReport) {
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
