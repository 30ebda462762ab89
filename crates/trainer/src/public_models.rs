//! The small public models people compare against, for `eval-ppl` and `generate`: Qwen2,
//! Mistral and Phi-3 through candle-transformers, and GPT-2 (which candle-transformers 0.11
//! lacks) from dynact-model. `config.json`'s `model_type` picks the architecture; Llama stays on
//! this project's own model. Weights are read as stored (f32, bf16, f16) and computed in f32.
//!
//! candle-transformers' Mistral and Phi-3 return logits for the last position only, so their
//! per-token losses are computed one position at a time through their KV cache (exact, and
//! slower than one pass); Qwen2 exposes its hidden states, which go through the head at once.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{mistral, phi3, qwen2};
use dynact_model::gpt2::{Gpt2, Gpt2Config};

use crate::model_api::ModelInfo;

/// `model_type`s this module loads.
pub const SUPPORTED: &[&str] = &["gpt2", "qwen2", "mistral", "phi3"];

/// Which code loads a checkpoint, from its config.json's `model_type`, decided once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// This project's decoder: `llama`, `dynact_llama`, or no `model_type` (its own configs
    /// before it wrote one).
    Ours,
    /// One of [`SUPPORTED`], through [`PublicModel`].
    Public,
}

impl Architecture {
    /// The architecture of the config.json at `path` (its text); any other `model_type` is
    /// refused with the list of supported ones. Text that is not JSON is left to the config
    /// reader, which says what is wrong with it.
    pub fn of_config(path: &Path, text: &str) -> Result<Architecture> {
        let model_type = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("model_type")?.as_str().map(str::to_string));
        match model_type.as_deref() {
            None | Some("llama" | "dynact_llama") => Ok(Architecture::Ours),
            Some(t) if SUPPORTED.contains(&t) => Ok(Architecture::Public),
            Some(other) => bail!(
                "{}: model_type `{other}` is not supported; supported: llama and dynact_llama (this project's), {}",
                path.display(),
                SUPPORTED.join(", ")
            ),
        }
    }
}

pub enum PublicModel {
    Gpt2(Gpt2),
    Qwen2 {
        model: qwen2::Model,
        lm_head: Tensor,
    },
    Mistral(mistral::Model),
    Phi3(phi3::Model),
}

/// transformers 5.x moves `rope_theta` into `rope_parameters`; candle-transformers' configs
/// want it at the top, and Qwen2's wants a sliding window even when none is used.
fn normalized_config(text: &str) -> Result<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(text).context("config.json is not JSON")?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| anyhow!("config.json is not a JSON object"))?;
    if !obj.contains_key("rope_theta") {
        let theta = obj
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .cloned()
            .unwrap_or(serde_json::json!(10000.0));
        obj.insert("rope_theta".into(), theta);
    }
    if obj.get("sliding_window").is_none_or(|w| w.is_null()) {
        if let Some(max) = obj.get("max_position_embeddings").cloned() {
            if obj.get("model_type").and_then(|t| t.as_str()) == Some("qwen2") {
                obj.insert("sliding_window".into(), max);
            }
        }
    }
    for (key, default) in [
        ("max_window_layers", serde_json::json!(0)),
        ("use_sliding_window", serde_json::json!(false)),
    ] {
        obj.entry(key).or_insert(default);
    }
    Ok(v)
}

fn usize_of(v: &serde_json::Value, keys: &[&str]) -> Result<usize> {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(|x| x.as_u64()))
        .map(|x| x as usize)
        .ok_or_else(|| anyhow!("config.json has no {}", keys.join(" or ")))
}

impl PublicModel {
    /// Loads the model that `config_text` describes from `weights` onto `device`.
    pub fn load(
        config_text: &str,
        weights: &[PathBuf],
        device: &Device,
    ) -> Result<(PublicModel, ModelInfo)> {
        let cfg = normalized_config(config_text)?;
        let model_type = cfg["model_type"].as_str().unwrap_or_default().to_string();
        // SAFETY: the files are memory-mapped read-only and not changed while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(weights, DType::F32, device)? };
        let parse =
            |what: &str, e: serde_json::Error| anyhow!("config.json of this {what} model: {e}");
        let info = ModelInfo {
            model_type: model_type.clone(),
            ffn: None,
            vocab_size: usize_of(&cfg, &["vocab_size"])?,
            max_positions: usize_of(&cfg, &["max_position_embeddings", "n_positions"])?,
            layers: usize_of(&cfg, &["num_hidden_layers", "n_layer"])?,
            hidden_size: usize_of(&cfg, &["hidden_size", "n_embd"])?,
        };
        let model = match model_type.as_str() {
            "gpt2" => {
                let c: Gpt2Config =
                    serde_json::from_value(cfg.clone()).map_err(|e| parse("gpt2", e))?;
                PublicModel::Gpt2(Gpt2::new(&c, vb)?)
            }
            "qwen2" => {
                let c: qwen2::Config = serde_json::from_value(cfg.clone())
                    .map_err(|e| parse("qwen2", e))?;
                let lm_head = if vb.contains_tensor("lm_head.weight") {
                    vb.get((c.vocab_size, c.hidden_size), "lm_head.weight")?
                } else {
                    vb.get((c.vocab_size, c.hidden_size), "model.embed_tokens.weight")?
                };
                PublicModel::Qwen2 {
                    model: qwen2::Model::new(&c, vb)?,
                    lm_head,
                }
            }
            "mistral" => {
                let c: mistral::Config = serde_json::from_value(cfg.clone())
                    .map_err(|e| parse("mistral", e))?;
                PublicModel::Mistral(mistral::Model::new(&c, vb)?)
            }
            "phi3" => {
                let c: phi3::Config = serde_json::from_value(cfg.clone())
                    .map_err(|e| parse("phi3", e))?;
                PublicModel::Phi3(phi3::Model::new(&c, vb)?)
            }
            other => bail!(
                "model_type `{other}` is not supported; supported: llama (and this project's dynact_llama), {}",
                SUPPORTED.join(", ")
            ),
        };
        Ok((model, info))
    }

    /// Clears any KV cache: the next call starts a new sequence.
    pub fn reset(&mut self) {
        match self {
            PublicModel::Gpt2(_) => {}
            PublicModel::Qwen2 { model, .. } => model.clear_kv_cache(),
            PublicModel::Mistral(m) => m.clear_kv_cache(),
            PublicModel::Phi3(m) => m.clear_kv_cache(),
        }
    }

    /// Logits (B, T, V), f32, of every position of `ids` (B, T), from an empty cache.
    pub fn all_logits(&mut self, ids: &Tensor) -> Result<Tensor> {
        self.reset();
        let logits = match self {
            PublicModel::Gpt2(m) => m.forward(ids)?,
            PublicModel::Qwen2 { model, lm_head } => model
                .forward(ids, 0, None)?
                .broadcast_matmul(&lm_head.t()?)?,
            PublicModel::Mistral(_) | PublicModel::Phi3(_) => {
                // Last-position logits only: feed one position at a time through the cache.
                let t = ids.dim(1)?;
                let mut steps = Vec::with_capacity(t);
                for pos in 0..t {
                    let step = ids.narrow(1, pos, 1)?.contiguous()?;
                    steps.push(self.step_logits(&step, pos)?);
                }
                Tensor::cat(&steps, 1)?
            }
        };
        self.reset();
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// Logits (B, 1, V) of the last position after feeding `ids` (B, T) at `offset`, through
    /// the model's cache (GPT-2 keeps none: it needs the whole sequence, offset 0).
    fn step_logits(&mut self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let t = ids.dim(1)?;
        Ok(match self {
            PublicModel::Gpt2(m) => m.forward(ids)?.narrow(1, t - 1, 1)?,
            PublicModel::Qwen2 { model, lm_head } => model
                .forward(ids, offset, None)?
                .narrow(1, t - 1, 1)?
                .broadcast_matmul(&lm_head.t()?)?,
            PublicModel::Mistral(m) => m.forward(ids, offset)?,
            PublicModel::Phi3(m) => m.forward(ids, offset)?,
        })
    }

    /// Logits (V,) of the next token after `ids` (1, T) that follow `offset` tokens fed since
    /// the last reset. GPT-2 recomputes from the start, so it is given the whole sequence.
    pub fn next_logits(&mut self, ids: &Tensor, offset: usize, history: &[u32]) -> Result<Tensor> {
        let logits = match self {
            PublicModel::Gpt2(_) => {
                let all = Tensor::from_slice(history, (1, history.len()), ids.device())?;
                self.step_logits(&all, 0)?
            }
            _ => self.step_logits(ids, offset)?,
        };
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers_5_configs_are_normalized() {
        let v = normalized_config(
            r#"{"model_type": "qwen2", "max_position_embeddings": 64, "sliding_window": null,
                "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}"#,
        )
        .unwrap();
        assert_eq!(v["rope_theta"], 500000.0);
        assert_eq!(v["sliding_window"], 64);
        let arch = |text: &str| Architecture::of_config(Path::new("config.json"), text).unwrap();
        assert_eq!(arch(r#"{"model_type": "gpt2"}"#), Architecture::Public);
        assert_eq!(arch(r#"{"model_type": "llama"}"#), Architecture::Ours);
    }
}
