//! The loop: steps until `train.steps` or an interrupt, logging every `log_every` steps and
//! evaluating and saving at every evaluation step.

use super::logger::{ConsoleLogger, JsonlLogger, Logger, TensorBoardLogger};
use super::report::progress_bar;
use super::*;

impl Trainer {
    /// Steps until `train.steps` (or an interrupt), evaluating and saving as configured.
    pub(super) fn train(&mut self, opts: &RunOptions) -> Result<RunReport> {
        let total = self.cfg.train.steps;
        let start_step = self.state.step;
        let root = self.comm.is_root();
        let quiet = opts.quiet || !root;
        let bar = progress_bar(total, start_step, quiet);
        // Rank 0 reports; the other ranks' trainers call no logger.
        let mut loggers: Vec<Box<dyn Logger>> = match root {
            true => vec![
                Box::new(JsonlLogger {
                    run_dir: self.run_dir.clone(),
                }),
                Box::new(ConsoleLogger {
                    bar: bar.clone(),
                    total,
                    quiet,
                }),
            ],
            false => vec![],
        };
        if root && self.cfg.log.tensorboard {
            let path = &self.run_dir.path;
            loggers.push(Box::new(TensorBoardLogger::create(path, start_step)?));
        }
        let mut report =
            RunReport::new(self.run_dir.path.clone(), self.unigram_ppl, self.state.step);
        let tokens_per_step = self.cfg.tokens_per_step() as u64;
        let run_start = Instant::now();
        let elapsed_before = self.state.elapsed_s;
        let (mut window_start, mut window_tokens) = (Instant::now(), 0u64);
        let mut train_time = 0f64;

        while self.state.step < total {
            self.run_step(self.state.step + 1)?;
            let step = self.state.step;
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
            let logged = step.is_multiple_of(self.cfg.train.log_every) || step == total;
            let evaluated = self.cfg.is_eval_step(step);
            // Steps queued on a GPU are read when something needs them (the same steps on
            // every rank): logging, evaluating, saving, or a full queue.
            if logged
                || evaluated
                || interrupted
                || self.opt.queued() == 0
                || self.opt.queued() == AdamW::QUEUE_CAPACITY
            {
                for stats in self.settle()? {
                    if let Some(what) = stats.skipped {
                        let step = stats.step;
                        bar.suspend(|| {
                            eprintln!(
                                "warning: step {step}: non-finite {what}; batch skipped, no update"
                            )
                        });
                    }
                    train_time += stats.seconds;
                    report.last_step = stats.step;
                    report.losses.push((stats.step, stats.loss));
                    window_tokens += tokens_per_step;
                    if root && logged && stats.step == step {
                        let tps =
                            window_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
                        let elapsed = elapsed_before + run_start.elapsed().as_secs_f64();
                        // At this invocation's pace so far, evaluations and checkpoints included.
                        let done = (step - start_step) as f64;
                        let eta = run_start.elapsed().as_secs_f64() / done * (total - step) as f64;
                        let mfu = self
                            .peak
                            .as_ref()
                            .map(|p| tps * self.flops_per_token / p.flops);
                        let record = self.metrics_record(&stats, tps, elapsed, eta, mfu)?;
                        for logger in &mut loggers {
                            logger.step(&record)?;
                        }
                        (window_start, window_tokens) = (Instant::now(), 0);
                    }
                }
            }

            if evaluated {
                self.state.elapsed_s = elapsed_before + run_start.elapsed().as_secs_f64();
                let result = bar.suspend(|| self.evaluate_and_log(step, &mut loggers))?;
                report.evals.push((step, self.state.tokens_seen, result));
                self.save(step, &mut loggers)?;
                window_start = Instant::now();
            } else if interrupted {
                self.state.elapsed_s = elapsed_before + run_start.elapsed().as_secs_f64();
                self.save(step, &mut loggers)?;
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
}
