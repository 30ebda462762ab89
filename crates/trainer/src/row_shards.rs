//! A batch split by rows into shards that run at once, one per CPU thread: the forward and
//! backward of a training micro-batch, and the scores of an evaluation batch.
//!
//! Why: the small models this project trains on CPUs are made of many small ops. Run one after
//! the other on all cores, each op splits its work and the cores wait for each other at its end
//! (on 2 cores, 1 -> 2 threads sped a cpu-repro step up only 1.12x, while two MPI ranks of one
//! thread each, one half-batch each, ran 1.9x faster). A shard per thread runs its ops
//! unsplit; the matrix products still share idle cores through rayon's work stealing.
//!
//! The shards draw the dropout masks their rows get in the whole batch
//! ([`ForwardCtx::from_row`]), so a split step computes the step of the whole batch; only the
//! order of float sums (the gradients of the weights, summed over rows) differs.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use dynact_model::{ForwardCtx, Transformer};
use rayon::prelude::*;

/// How many shards a batch of `rows` is split into on `device`: one per thread of the rayon
/// pool on a CPU (at most one per row), one on a GPU, whose kernels fill it on their own.
pub fn shard_count(device: &Device, rows: usize) -> usize {
    if device.is_cpu() {
        rayon::current_num_threads().clamp(1, rows.max(1))
    } else {
        1
    }
}

/// Rows `first..first + len` of shard `s` of `shards` over `rows` rows (sizes differ by at most
/// one).
fn shard_rows(rows: usize, shards: usize, s: usize) -> (usize, usize) {
    let first = rows * s / shards;
    (first, rows * (s + 1) / shards - first)
}

/// The mean next-token loss of `inputs` -> `targets` (B, T), as a scalar tensor left on the
/// device (reading it would wait for the device), and the gradients of `weight` times it,
/// computed as `shards` row shards at once.
pub fn loss_and_grads(
    model: &Transformer,
    inputs: &Tensor,
    targets: &Tensor,
    ctx: ForwardCtx,
    weight: f64,
    shards: usize,
    params: &[Var],
) -> Result<(Tensor, GradStore)> {
    let rows = inputs.dim(0)?;
    let shard = |s: usize| -> Result<(Tensor, GradStore)> {
        let (first, len) = shard_rows(rows, shards, s);
        let forward = tracing::info_span!("forward", shard = s).entered();
        let loss = model.loss(
            &inputs.narrow(0, first, len)?,
            &targets.narrow(0, first, len)?,
            &ctx.from_row(first),
        )?;
        drop(forward);
        // This shard's share of the mean over all rows (every row has T targets).
        let share = len as f64 / rows as f64;
        let _backward = tracing::info_span!("backward", shard = s).entered();
        let grads = (&loss * (weight * share))?.backward()?;
        Ok(((loss * share)?, grads))
    };
    let mut results: Vec<(Tensor, GradStore)> = if shards <= 1 {
        vec![shard(0)?]
    } else if !inputs.device().is_cpu() {
        // One after another: a GPU's kernels must stay on this thread's stream (NCCL and the
        // sums below read them there), and it has no idle cores to fill anyway.
        (0..shards).map(shard).collect::<Result<_>>()?
    } else {
        (0..shards)
            .into_par_iter()
            .map(shard)
            .collect::<Result<_>>()?
    };
    let (mut loss, mut total) = results.remove(0);
    for (l, grads) in results {
        loss = (loss + l)?;
        add_grads(&mut total, grads, params)?;
    }
    Ok((loss, total))
}

/// `total += grads` for every parameter in `params` (a parameter missing from one side takes
/// the other's gradient).
pub fn add_grads(total: &mut GradStore, mut grads: GradStore, params: &[Var]) -> Result<()> {
    for var in params {
        if let Some(g) = grads.remove(var) {
            let sum = match total.get(var) {
                Some(t) => (t + g)?,
                None => g,
            };
            total.insert(var, sum);
        }
    }
    Ok(())
}

/// The loss of every target (B * T,) of `ids` -> `targets` (B, T), the rows scored as
/// [`shard_count`] shards at once.
pub fn token_nll(model: &Transformer, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let rows = ids.dim(0)?;
    let shards = shard_count(ids.device(), rows);
    if shards <= 1 {
        return Ok(model.token_nll(ids, targets)?);
    }
    let parts = (0..shards)
        .into_par_iter()
        .map(|s| {
            let (first, len) = shard_rows(rows, shards, s);
            Ok(model.token_nll(&ids.narrow(0, first, len)?, &targets.narrow(0, first, len)?)?)
        })
        .collect::<Result<Vec<Tensor>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_row_once_in_order() {
        for rows in 1..20 {
            for shards in 1..=rows {
                let mut next = 0;
                for s in 0..shards {
                    let (first, len) = shard_rows(rows, shards, s);
                    assert_eq!(first, next);
                    assert!(len == rows / shards || len == rows / shards + 1);
                    next += len;
                }
                assert_eq!(next, rows);
            }
        }
    }
}
