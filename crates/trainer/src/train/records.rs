//! What a run records as it goes: a metrics record from a step's results, an evaluation and
//! its record, training checkpoints; each handed to the loggers (`logger.rs`).

use super::logger::Logger;
use super::*;

impl Trainer {
    /// The record of a logged step, with alpha and beta of every layer for dynActGLU.
    pub(super) fn metrics_record(
        &self,
        stats: &StepStats,
        tokens_per_s: f64,
        elapsed_s: f64,
        eta_s: f64,
        mfu: Option<f64>,
    ) -> Result<MetricsRecord> {
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
        Ok(record)
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

    /// Scores the validation set (split over the ranks); rank 0 hands the record to `loggers`.
    pub(super) fn evaluate_and_log(
        &self,
        step: u64,
        loggers: &mut [Box<dyn Logger>],
    ) -> Result<EvalResult> {
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
        for logger in loggers {
            logger.eval(&record, &r)?;
        }
        Ok(r)
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
        let contents = CheckpointContents {
            model_config: &self.cfg.model,
            varmap: &self.varmap,
            tokenizer: &self.dataset.tokenizer,
            optimizer: self.opt.state_tensors(),
            state: &self.state,
        };
        let dir = self.run_dir.save_training_checkpoint(step, &contents)?;
        for logger in loggers {
            logger.checkpoint(step, &dir)?;
        }
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
