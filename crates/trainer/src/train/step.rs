//! One optimizer step: the step's micro-batches (this rank's share), their gradients summed
//! over the ranks, clipping and the AdamW update; and the reports of the steps run, read from
//! the device where it decided them.

use super::*;

/// A distinct dropout seed for every (step, micro-batch) of a run.
fn micro_seed(seed: u64, step: u64, micro: usize) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// A step run and not yet reported: its outcome is on the device until [`Trainer::settle`]
/// reads it (None), or already known (decided on the host).
pub(super) struct Unsettled {
    step: u64,
    lr: f64,
    seconds: f64,
    outcome: Option<StepOutcome>,
}

impl Trainer {
    /// One optimizer step, as [`Trainer::run_step`] runs it, and its report (which, on a GPU,
    /// waits for it).
    pub fn train_step(&mut self, step: u64) -> Result<StepStats> {
        self.run_step(step)?;
        let mut settled = self.settle()?;
        Ok(settled.pop().expect("the step just run"))
    }

    /// One optimizer step: forward and backward over `grad_accum` micro-batches, the global
    /// gradient norm, clipping, and an AdamW update at `lr_at(step)`; skipped where the loss
    /// or the norm is not finite. With f32 gradients on a CUDA GPU the host does not wait for
    /// the step: the device decides it ([`AdamW::queue_step`]), and [`Trainer::settle`] reads
    /// what it did later, at logging steps.
    pub(super) fn run_step(&mut self, step: u64) -> Result<()> {
        let _span = tracing::info_span!("step", step).entered();
        let start = Instant::now();
        let lr = lr_at(step, self.cfg.train.steps, &self.cfg.optim);
        let (loss_sum, grads) = self.accumulate(step)?;
        let _optimizer = tracing::info_span!("optimizer").entered();
        let outcome = if self.opt.decides_on_device(&grads) {
            self.opt.queue_step(&loss_sum, &grads, lr)?;
            None
        } else {
            Some(self.opt.step_on_host(&loss_sum, &grads, lr)?)
        };
        self.state.step = step;
        self.state.tokens_seen += self.cfg.tokens_per_step() as u64;
        self.state.loader = self.loader.state();
        self.unsettled.push(Unsettled {
            step,
            lr,
            seconds: start.elapsed().as_secs_f64(),
            outcome,
        });
        Ok(())
    }

    /// The reports of the steps run since the last call, in order, with what the device
    /// recorded of those it decided (one copy, which waits for them; the wait counts in the
    /// last step's seconds). A step whose loss or gradient norm was not finite stops the run
    /// here (its update was skipped, and the last checkpoint stays), unless
    /// `train.on_nonfinite = "skip"`.
    pub(super) fn settle(&mut self) -> Result<Vec<StepStats>> {
        let _span = tracing::info_span!("settle").entered();
        let start = Instant::now();
        let mut read = match self.unsettled.iter().any(|u| u.outcome.is_none()) {
            true => self.opt.read_queued()?.into_iter(),
            false => Vec::new().into_iter(),
        };
        self.state.optimizer_steps = self.opt.step;
        let waited = start.elapsed().as_secs_f64();
        let accum = self.cfg.train.grad_accum as f32;
        let mut settled = Vec::with_capacity(self.unsettled.len());
        for u in std::mem::take(&mut self.unsettled) {
            let o = match u.outcome {
                Some(o) => o,
                None => read
                    .next()
                    .expect("a record of every step queued on the device"),
            };
            let loss = o.loss_sum / accum;
            let skipped = match (o.skipped, loss.is_finite()) {
                (false, _) => None,
                (true, false) => Some("loss"),
                (true, true) => Some("gradient norm"),
            };
            if let (Some(what), NonFinitePolicy::Stop) = (skipped, self.cfg.train.on_nonfinite) {
                let last = self
                    .run_dir
                    .latest_checkpoint()
                    .ok()
                    .flatten()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none yet".into());
                bail!(
                    "non-finite {what} at step {}; the last good checkpoint ({last}) is kept; lower optim.lr or set train.on_nonfinite = \"skip\"",
                    u.step
                );
            }
            settled.push(StepStats {
                step: u.step,
                loss,
                lr: u.lr,
                grad_norm: o.grad_norm,
                skipped,
                seconds: u.seconds,
            });
        }
        if let Some(last) = settled.last_mut() {
            last.seconds += waited;
        }
        Ok(settled)
    }

    /// Forward and backward over this rank's share of the step's `grad_accum` micro-batches
    /// (all of them in a single process); returns the sum of their losses (a scalar left on
    /// the device) and the gradients of the mean loss over all of them, summed over the
    /// ranks. Micro-batch m of a step has the same
    /// windows and dropout masks whatever the number of ranks.
    fn accumulate(&mut self, step: u64) -> Result<(Tensor, GradStore)> {
        let accum = self.cfg.train.grad_accum;
        let per_rank = accum / self.comm.size();
        let mine = self.comm.rank() * per_rank..(self.comm.rank() + 1) * per_rank;
        let mut total: Option<GradStore> = None;
        let mut loss_sum: Option<Tensor> = None;
        for micro in 0..accum {
            let data = tracing::info_span!("data", micro).entered();
            // Every rank draws every batch, so the loader's state is the same on all of them.
            let batch = self.loader.next_batch();
            if !mine.contains(&micro) {
                continue;
            }
            let (b, t) = (batch.batch_size, batch.seq_len);
            let x = Tensor::from_vec(batch.inputs, (b, t), &self.device)?;
            let y = Tensor::from_vec(batch.targets, (b, t), &self.device)?;
            drop(data);
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
            1 if !self.comm.on_gpu() => loss_sum,
            _ => {
                let _span = tracing::info_span!("all_reduce").entered();
                self.all_reduce_grads_and_loss(&mut grads, &loss_sum)?
            }
        };
        Ok((loss_sum, grads))
    }

    /// Sums the gradients and `loss_sum` over the ranks as one flat f32 buffer in
    /// parameter-name order with the loss last (one collective): on the GPUs for NCCL ranks,
    /// else on the host (MPI). Returns the summed loss, a scalar on the device.
    fn all_reduce_grads_and_loss(
        &self,
        grads: &mut GradStore,
        loss_sum: &Tensor,
    ) -> Result<Tensor> {
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
        Ok(sum.narrow(0, at, 1)?.squeeze(0)?)
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
}
