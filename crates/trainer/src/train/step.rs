//! One optimizer step: the step's micro-batches (this rank's share), their gradients summed
//! over the ranks, clipping and the AdamW update.

use super::*;

/// A distinct dropout seed for every (step, micro-batch) of a run.
fn micro_seed(seed: u64, step: u64, micro: usize) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

impl Trainer {
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
}
