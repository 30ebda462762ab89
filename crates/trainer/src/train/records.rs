//! What a run records as it goes: a metrics record from a step's results, an evaluation and
//! its record, training checkpoints; each handed to the loggers (`logger.rs`).

use super::logger::Logger;
use super::*;

/// A CUDA device's memory in use (total less free), MB; `None` elsewhere.
fn device_memory_mb(device: &Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some(total.saturating_sub(free) as f64 / 1e6);
    }
    let _ = device;
    None
}

impl Trainer {
    /// The record of a logged step, with alpha and beta of every layer for dynActGLU (from
    /// the model).
    pub(super) fn metrics_record(
        &self,
        stats: &StepStats,
        tokens_per_s: f64,
        elapsed_s: f64,
        eta_s: f64,
        mfu: Option<f64>,
    ) -> Result<MetricsRecord> {
        let dynact = self.model.dynact_stats()?;
        Ok(MetricsRecord {
            step: stats.step,
            loss: stats.loss,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            tokens_per_s,
            elapsed_s,
            eta_s: Some(eta_s),
            mfu,
            alpha: dynact.as_ref().map(|d| d.alpha.clone()),
            beta: dynact.as_ref().map(|d| d.beta.clone()),
            alpha_std: dynact.as_ref().and_then(|d| d.alpha_std.clone()),
            beta_std: dynact.and_then(|d| d.beta_std),
            device_memory_mb: device_memory_mb(&self.device),
        })
    }

    pub(super) fn evaluate_and_log(
        &self,
        step: u64,
        loggers: &mut [Box<dyn Logger>],
    ) -> Result<EvalResult> {
        let _span = tracing::info_span!("evaluation", step).entered();
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
        // A fixed slice of the training stream, scored as val is: overfitting shows as a gap.
        let train = match self.cfg.eval_train_windows() {
            Some(windows) => Some(evaluate_on(
                &self.comm,
                &model,
                &self.dataset.train,
                self.cfg.train.seq_len,
                self.cfg.eval.batch_size,
                Some(windows),
                None,
                &self.device,
                |_, _| {},
            )?),
            None => None,
        };
        let record = EvalRecord {
            step,
            tokens_seen: self.state.tokens_seen,
            val_ce: r.ce,
            val_ppl: r.ppl,
            val_bpb: r.bpb,
            elapsed_s: self.state.elapsed_s,
            val_tokens: Some(r.tokens as u64),
            train_ce: train.as_ref().map(|t| t.ce),
            train_ppl: train.as_ref().map(|t| t.ppl),
        };
        if !self.comm.is_root() {
            return Ok(r);
        }
        for logger in loggers.iter_mut() {
            logger.eval(&record, &r)?;
        }
        if self.cfg.eval.sample_tokens > 0 {
            let _span = tracing::info_span!("sample").entered();
            let sample = self.sample(step, model)?;
            for logger in loggers {
                logger.sample(&sample)?;
            }
        }
        Ok(r)
    }

    /// Continues `eval.sample_prompt` with the run's seed (the same draws at every evaluation).
    fn sample(&self, step: u64, model: Transformer) -> Result<SampleRecord> {
        let e = &self.cfg.eval;
        let tokenizer = &self.dataset.tokenizer;
        let prompt = tokenizer.encode(&e.sample_prompt)?;
        let mut sampler = Sampler::new(SamplingConfig {
            temperature: e.sample_temperature,
            seed: self.cfg.seed,
            ..SamplingConfig::default()
        })?;
        let mut decoder = TransformerDecoder::new(model);
        let ids = generate(
            &mut decoder,
            &prompt,
            e.sample_tokens,
            &mut sampler,
            None,
            &self.device,
            |_| Ok(()),
        )
        .context("eval.sample_prompt")?;
        Ok(SampleRecord {
            step,
            prompt: e.sample_prompt.clone(),
            text: tokenizer.decode(&ids)?,
            tokens: ids.len(),
            temperature: e.sample_temperature,
            seed: self.cfg.seed,
        })
    }

    pub(super) fn save(&self, step: u64, loggers: &mut [Box<dyn Logger>]) -> Result<()> {
        // Every rank holds the same weights, optimizer and loader state; rank 0 writes them
        // while the others wait (untimed: a large checkpoint on a slow disk takes a while).
        if !self.comm.is_root() {
            self.comm.barrier_untimed();
            return Ok(());
        }
        self.write_checkpoint(step, loggers)?;
        self.comm.barrier_untimed();
        Ok(())
    }

    fn write_checkpoint(&self, step: u64, loggers: &mut [Box<dyn Logger>]) -> Result<()> {
        let _span = tracing::info_span!("checkpoint", step).entered();
        let contents = CheckpointContents {
            model_config: &self.cfg.model,
            varmap: &self.varmap,
            tokenizer: &self.dataset.tokenizer,
            optimizer: self.opt.state_tensors(),
            state: &self.state,
            facts: RunFacts {
                run_name: self.cfg.name.clone(),
                data: self.dataset.description.clone(),
                command: std::env::args().collect::<Vec<_>>().join(" "),
                evals: self.run_dir.evals(),
                dynact: self.model.dynact_stats()?,
            },
        };
        let dir = self.run_dir.save_training_checkpoint(step, &contents)?;
        for logger in loggers {
            logger.checkpoint(step, &dir)?;
        }
        // The best checkpoint so far (the lowest val_ppl, the first of equals) is never pruned.
        let best = contents
            .facts
            .evals
            .iter()
            .filter(|e| e.val_ppl.is_finite())
            .min_by(|a, b| a.val_ppl.total_cmp(&b.val_ppl));
        if best.is_some_and(|b| b.step == step) {
            self.run_dir.mark_best(step)?;
        }
        let mut keep = self.cfg.eval.eval_at.clone();
        keep.extend(self.run_dir.best_step());
        // The new checkpoint is complete; failing to delete old ones must not stop the run.
        if let Err(e) = self.run_dir.prune(self.cfg.train.keep_last, &keep) {
            eprintln!("warning: could not delete old checkpoints: {e:#}");
        }
        Ok(())
    }
}
