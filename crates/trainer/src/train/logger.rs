//! The logger seam: what a run reports as it goes goes through [`Logger`], which the trainer
//! calls on rank 0 at every logged step (`train.log_every` and the last), every evaluation and
//! every checkpoint. Each record is built once from the step's or the evaluation's results
//! (`records.rs`); the sinks only write it: [`JsonlLogger`] (the run directory's metrics.jsonl
//! and eval.jsonl), [`ConsoleLogger`] (the progress bar's message, or plain lines without a
//! terminal) and [`TensorBoardLogger`] (`log.tensorboard`). A new sink is one more
//! implementation. Samples (`eval.sample_tokens`) go to samples.jsonl and the console.

use std::path::Path;

use anyhow::Result;
use dynact_run::tensorboard::EventWriter;
use dynact_run::{
    EvalRecord, MetricsRecord, RunDir, SampleRecord, EVAL_FILE, METRICS_FILE, SAMPLES_FILE,
};
use indicatif::ProgressBar;

use crate::eval::EvalResult;
use crate::peak_flops::format_duration;

/// A sink for what a run reports.
pub trait Logger {
    /// A logged training step.
    fn step(&mut self, record: &MetricsRecord) -> Result<()>;
    /// An evaluation of the validation set (`result` has what the record does not keep).
    fn eval(&mut self, record: &EvalRecord, result: &EvalResult) -> Result<()>;
    /// Text sampled at an evaluation.
    fn sample(&mut self, _record: &SampleRecord) -> Result<()> {
        Ok(())
    }
    /// A training checkpoint written whole to `dir`.
    fn checkpoint(&mut self, _step: u64, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// One JSON line per record in the run directory: metrics.jsonl and eval.jsonl.
pub struct JsonlLogger {
    pub run_dir: RunDir,
}

impl Logger for JsonlLogger {
    fn step(&mut self, record: &MetricsRecord) -> Result<()> {
        self.run_dir.append_jsonl(METRICS_FILE, record)
    }

    fn eval(&mut self, record: &EvalRecord, _: &EvalResult) -> Result<()> {
        self.run_dir.append_jsonl(EVAL_FILE, record)
    }

    fn sample(&mut self, record: &SampleRecord) -> Result<()> {
        self.run_dir.append_jsonl(SAMPLES_FILE, record)
    }
}

/// The terminal: a step's loss and speed as the progress bar's message, or as a line when
/// there is no bar (nohup, Slurm, a grid's log files); an evaluation as a line.
pub struct ConsoleLogger {
    pub bar: ProgressBar,
    /// The run's last step.
    pub total: u64,
    /// No lines at all (tests).
    pub quiet: bool,
}

impl Logger for ConsoleLogger {
    fn step(&mut self, r: &MetricsRecord) -> Result<()> {
        let (step, total, tps) = (r.step, self.total, r.tokens_per_s);
        let mfu_text = r
            .mfu
            .map_or(String::new(), |m| format!("  mfu {:.1}%", 100.0 * m));
        self.bar
            .set_message(format!("loss {:.4}  {tps:.0} tok/s{mfu_text}", r.loss));
        if self.bar.is_hidden() && !self.quiet {
            eprintln!(
                "step {step:>6}/{total}  loss {:.4}  lr {:.2e}  |g| {:.3}  {tps:.0} tok/s{mfu_text}  eta {}",
                r.loss,
                r.lr,
                r.grad_norm,
                format_duration(r.eta_s.unwrap_or(f64::NAN))
            );
        }
        Ok(())
    }

    fn eval(&mut self, record: &EvalRecord, r: &EvalResult) -> Result<()> {
        if !self.quiet {
            let train = record
                .train_ce
                .map_or(String::new(), |ce| format!("  train_ce {ce:.4}"));
            eprintln!(
                "eval step {}: val_ce {:.4}  val_ppl {:.4}  val_bpb {}{train}  ({} tokens, {:.1}s)",
                record.step,
                r.ce,
                r.ppl,
                r.bpb.map_or("-".into(), |b| format!("{b:.4}")),
                r.tokens,
                r.seconds
            );
        }
        Ok(())
    }

    fn sample(&mut self, r: &SampleRecord) -> Result<()> {
        if !self.quiet {
            // One line: escapes show line breaks; a long sample is cut (samples.jsonl has it).
            let text: String = format!("{:?}", r.text).chars().take(160).collect();
            eprintln!("sample step {}: {:?} -> {text}", r.step, r.prompt);
        }
        Ok(())
    }

    fn checkpoint(&mut self, step: u64, dir: &Path) -> Result<()> {
        tracing::info!(step, dir = %dir.display(), "checkpoint saved");
        Ok(())
    }
}

/// TensorBoard event files in the run directory (`log.tensorboard`): each logged step's loss,
/// learning rate, gradient norm, tokens/s, MFU and, for dynActGLU, alpha and beta of every
/// layer; each evaluation's scores. A resumed run starts a new file, which tells TensorBoard
/// to drop what the earlier files logged after its checkpoint.
pub struct TensorBoardLogger {
    writer: EventWriter,
}

impl TensorBoardLogger {
    /// A new event file in `run_dir`, for a run going on from its checkpoint at `step` (0:
    /// a new run).
    pub fn create(run_dir: &Path, step: u64) -> Result<Self> {
        Ok(TensorBoardLogger {
            writer: EventWriter::create(run_dir, step + 1)?,
        })
    }
}

impl Logger for TensorBoardLogger {
    fn step(&mut self, r: &MetricsRecord) -> Result<()> {
        let mut values = vec![
            ("train/loss".to_string(), r.loss as f64),
            ("train/lr".to_string(), r.lr),
            ("train/grad_norm".to_string(), r.grad_norm),
            ("train/tokens_per_s".to_string(), r.tokens_per_s),
        ];
        values.extend(r.mfu.map(|m| ("train/mfu".to_string(), m)));
        values.extend(
            r.device_memory_mb
                .map(|m| ("train/device_memory_mb".to_string(), m)),
        );
        for (name, per_layer) in [("alpha", &r.alpha), ("beta", &r.beta)] {
            for (layer, v) in per_layer.iter().flatten().enumerate() {
                values.push((format!("dynact/{name}/layer_{layer:02}"), *v));
            }
        }
        self.writer.scalars(r.step, &values)
    }

    fn eval(&mut self, r: &EvalRecord, _: &EvalResult) -> Result<()> {
        let optional = [
            ("val_bpb", r.val_bpb),
            ("train_ce", r.train_ce),
            ("train_ppl", r.train_ppl),
        ];
        let values: Vec<(String, f64)> = [("val_ce", Some(r.val_ce)), ("val_ppl", Some(r.val_ppl))]
            .into_iter()
            .chain(optional)
            .filter_map(|(name, v)| v.map(|v| (format!("eval/{name}"), v)))
            .collect();
        self.writer.scalars(r.step, &values)
    }
}
