//! `--init-from SOURCE` (config key `init_from`): a new run that starts from existing weights (a
//! run, a checkpoint folder, a `.safetensors` file or `hf://OWNER/NAME[@REV]`) with a fresh
//! optimizer and schedule. The model's shape comes from SOURCE; a run may still choose its
//! FFN, dropout and dynAct settings. A SwiGLU source trained as dynActGLU gets alpha and beta
//! at their initial values (1 and 0 by default: the same function at step 0); a dynActGLU
//! source cannot become SwiGLU without changing what it computes, so that is refused.

use anyhow::{bail, Result};
use candle_core::Device;
use candle_nn::VarMap;
use dynact_model::{init_model, Checkpoint, FfnKind, ModelConfig, Transformer};

use crate::config::RunConfig;
use crate::model_source::{load_checkpoint, source_config, SourceOptions};

/// Model keys a run starting from SOURCE may set to other values than SOURCE's.
fn run_may_choose(key: &str) -> bool {
    key == "ffn" || key == "dropout" || key == "initializer_range" || key.starts_with("dynact.")
}

/// Gives `cfg.model` the shape of SOURCE (`cfg.init_from`). `keys_set` are the dotted keys the
/// user set (config file or flags): those model keys keep their values when a run may choose
/// them and must equal SOURCE's otherwise (the first that does not is named); the rest come
/// from SOURCE. Without `keys_set`, every model key counts as set. The run's tokenizer becomes
/// SOURCE's tokenizer.json when the user named none.
pub fn settle_config(cfg: &mut RunConfig, keys_set: Option<&[String]>) -> Result<()> {
    let (source, tokenizer) = source_config(&cfg.init_from)?;
    let is_set = |key: &str| keys_set.is_none_or(|keys| keys.iter().any(|k| k == key));
    let ours = dynact_run::config_keys::flatten(&serde_json::to_value(&cfg.model)?);
    let theirs = dynact_run::config_keys::flatten(&serde_json::to_value(&source)?);
    let mut settled = source.clone();
    for (key, value) in &ours {
        if !is_set(&format!("model.{key}")) {
            continue;
        }
        if run_may_choose(key) {
            continue;
        }
        if theirs.get(key) != Some(value) {
            bail!(
                "model.{key} is {value} in the config but {} in --init-from {}; the model's shape comes from the source: drop model.{key}",
                theirs.get(key).unwrap_or(&serde_json::Value::Null),
                cfg.init_from
            );
        }
    }
    if is_set("model.ffn") {
        settled.ffn = cfg.model.ffn;
    }
    if is_set("model.dropout") {
        settled.dropout = cfg.model.dropout;
    }
    if is_set("model.initializer_range") {
        settled.initializer_range = cfg.model.initializer_range;
    }
    // dynAct settings one by one; a dynActGLU source keeps its base and granularity (its alpha
    // and beta have that shape and compute that function).
    let dynact = &cfg.model.dynact;
    for (key, differs) in [
        ("base", dynact.base != source.dynact.base),
        (
            "granularity",
            dynact.granularity != source.dynact.granularity,
        ),
    ] {
        if is_set(&format!("model.dynact.{key}")) && differs && source.ffn == FfnKind::Dynactglu {
            bail!(
                "model.dynact.{key} differs from the dynActGLU model in --init-from {}, whose alpha and beta were trained for its own; drop model.dynact.{key}",
                cfg.init_from
            );
        }
    }
    if is_set("model.dynact.base") {
        settled.dynact.base = dynact.base;
    }
    if is_set("model.dynact.granularity") {
        settled.dynact.granularity = dynact.granularity;
    }
    if is_set("model.dynact.alpha_init") {
        settled.dynact.alpha_init = dynact.alpha_init;
    }
    if is_set("model.dynact.beta_init") {
        settled.dynact.beta_init = dynact.beta_init;
    }
    if source.ffn == FfnKind::Dynactglu && settled.ffn == FfnKind::Swiglu {
        bail!(
            "--init-from {} is a dynActGLU model, and a SwiGLU run would drop its alpha and beta (changing what it computes); train it as dynactglu",
            cfg.init_from
        );
    }
    cfg.model = settled;
    if keys_set.is_some() && !is_set("data.tokenizer") {
        if let Some(path) = tokenizer {
            cfg.data.tokenizer = path.display().to_string();
        }
    }
    Ok(())
}

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
