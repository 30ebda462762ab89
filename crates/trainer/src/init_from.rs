//! `--init-from SOURCE` (config key `init_from`): a new run that starts from existing weights (a
//! run, a checkpoint folder, a `.safetensors` file or `hf://OWNER/NAME[@REV]`) with a fresh
//! optimizer and schedule. The model's shape comes from SOURCE; a run may still choose its
//! FFN, dropout and dynAct settings. A SwiGLU source trained as dynActGLU gets alpha and beta
//! at their initial values (1 and 0 by default: the same function at step 0); a dynActGLU
//! source cannot become SwiGLU without changing what it computes, so that is refused.

use anyhow::{bail, Result};
use candle_core::Device;
use candle_nn::VarMap;
use dynact_model::{init_model, Checkpoint, ModelConfig, Transformer};

use crate::model_source::{load_checkpoint, SourceOptions};

/// The run's first parameters: every tensor of SOURCE, and alpha and beta at their initial
/// values where SOURCE has none (a SwiGLU source trained as dynActGLU).
pub fn initial_weights(
    cfg: &ModelConfig,
    init_from: &str,
    seed: u64,
    device: &Device,
) -> Result<(VarMap, Transformer)> {
    let source = load_checkpoint(init_from, &SourceOptions::default(), device)?;
    starting_from(&source.checkpoint, cfg, seed, device)
}

/// A model of `cfg` whose tensors are `source`'s (alpha and beta drawn as for a fresh model
/// where `source` has none).
pub fn starting_from(
    source: &Checkpoint,
    cfg: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<(VarMap, Transformer)> {
    let (varmap, model) = init_model(cfg, seed, device)?;
    let ours = varmap.data().lock().expect("varmap lock poisoned");
    let theirs = source.varmap.data().lock().expect("varmap lock poisoned");
    for (name, var) in theirs.iter() {
        let Some(target) = ours.get(name) else {
            bail!(
                "--init-from: the source's tensor `{name}` has no place in a {} model",
                cfg.ffn.name()
            );
        };
        target.set(var.as_tensor())?;
    }
    drop((ours, theirs));
    Ok((varmap, model))
}
