//! The small public models people compare against, for `eval-ppl` and `generate`: Qwen2,
//! Mistral and Phi-3 through candle-transformers, and GPT-2 (which candle-transformers 0.11
//! lacks) written here. `config.json`'s `model_type` picks the architecture; Llama stays on
//! this project's own model. Weights are read as stored (f32, bf16, f16) and computed in f32.
//!
//! candle-transformers' Mistral and Phi-3 return logits for the last position only, so their
//! per-token losses are computed one position at a time through their KV cache (exact, and
//! slower than one pass); Qwen2 exposes its hidden states, which go through the head at once.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use candle_transformers::models::{mistral, phi3, qwen2};

use crate::model_api::ModelInfo;

/// `model_type`s this module loads.
pub const SUPPORTED: &[&str] = &["gpt2", "qwen2", "mistral", "phi3"];

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
    /// The `model_type` of a config.json, if it names one of [`SUPPORTED`].
    pub fn model_type(config_text: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(config_text).ok()?;
        let t = v.get("model_type")?.as_str()?;
        SUPPORTED.contains(&t).then(|| t.to_string())
    }

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
            "gpt2" => PublicModel::Gpt2(Gpt2::new(&cfg, vb)?),
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

/// GPT-2 (transformers' GPT2LMHeadModel): learned positions, pre-LayerNorm blocks, fused QKV
/// in Conv1D layout (weights stored (in, out)), the tanh GELU, head tied to the embeddings.
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Gpt2Block>,
    ln_f: LayerNorm,
    heads: usize,
}

struct Gpt2Block {
    ln_1: LayerNorm,
    c_attn: (Tensor, Tensor),
    attn_proj: (Tensor, Tensor),
    ln_2: LayerNorm,
    c_fc: (Tensor, Tensor),
    mlp_proj: (Tensor, Tensor),
}

/// x (.., in) @ W (in, out) + b: transformers' Conv1D.
fn conv1d(x: &Tensor, (w, b): &(Tensor, Tensor)) -> candle_core::Result<Tensor> {
    x.broadcast_matmul(w)?.broadcast_add(b)
}

impl Gpt2 {
    fn new(cfg: &serde_json::Value, vb: VarBuilder) -> Result<Self> {
        let c = usize_of(cfg, &["n_embd", "hidden_size"])?;
        let layers = usize_of(cfg, &["n_layer", "num_hidden_layers"])?;
        let heads = usize_of(cfg, &["n_head", "num_attention_heads"])?;
        let vocab = usize_of(cfg, &["vocab_size"])?;
        let positions = usize_of(cfg, &["n_positions", "max_position_embeddings"])?;
        let inner = cfg
            .get("n_inner")
            .and_then(|v| v.as_u64())
            .map_or(4 * c, |v| v as usize);
        let activation = cfg
            .get("activation_function")
            .and_then(|v| v.as_str())
            .unwrap_or("gelu_new");
        if !["gelu_new", "gelu_pytorch_tanh"].contains(&activation) {
            bail!("GPT-2 with activation_function `{activation}` is not supported (only the tanh GELU, gelu_new)");
        }
        let eps = cfg
            .get("layer_norm_epsilon")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5);
        // save_pretrained writes `transformer.`-prefixed names; the original repositories do not.
        let vb = if vb.contains_tensor("transformer.wte.weight") {
            vb.pp("transformer")
        } else {
            vb
        };
        let ln = |vb: VarBuilder| candle_nn::layer_norm(c, eps, vb);
        let conv = |vb: VarBuilder, i: usize, o: usize| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((vb.get((i, o), "weight")?, vb.get(o, "bias")?))
        };
        let blocks = (0..layers)
            .map(|i| {
                let b = vb.pp(format!("h.{i}"));
                Ok(Gpt2Block {
                    ln_1: ln(b.pp("ln_1"))?,
                    c_attn: conv(b.pp("attn.c_attn"), c, 3 * c)?,
                    attn_proj: conv(b.pp("attn.c_proj"), c, c)?,
                    ln_2: ln(b.pp("ln_2"))?,
                    c_fc: conv(b.pp("mlp.c_fc"), c, inner)?,
                    mlp_proj: conv(b.pp("mlp.c_proj"), inner, c)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Gpt2 {
            wte: candle_nn::embedding(vocab, c, vb.pp("wte"))?,
            wpe: candle_nn::embedding(positions, c, vb.pp("wpe"))?,
            blocks,
            ln_f: ln(vb.pp("ln_f"))?,
            heads,
        })
    }

    /// ids (B, T) -> logits (B, T, V).
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let pos = Tensor::arange(0u32, t as u32, ids.device())?;
        let mut x = self
            .wte
            .forward(ids)?
            .broadcast_add(&self.wpe.forward(&pos)?)?;
        let c = x.dim(D::Minus1)?;
        let (h, d) = (self.heads, c / self.heads);
        let mask: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), ids.device())?;
        for blk in &self.blocks {
            let qkv = conv1d(&blk.ln_1.forward(&x)?, &blk.c_attn)?; // (B, T, 3C)
            let split = |i: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(D::Minus1, i * c, c)?
                    .reshape((b, t, h, d))?
                    .transpose(1, 2)?
                    .contiguous() // (B, H, T, D)
            };
            let (q, k, v) = (split(0)?, split(1)?, split(2)?);
            let att = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
            x = (x + conv1d(&y, &blk.attn_proj)?)?;
            let m = conv1d(&blk.ln_2.forward(&x)?, &blk.c_fc)?.gelu()?; // tanh GELU
            x = (x + conv1d(&m, &blk.mlp_proj)?)?;
        }
        self.ln_f
            .forward(&x)?
            .broadcast_matmul(&self.wte.embeddings().t()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::IndexOp;

    #[test]
    fn transformers_5_configs_are_normalized() {
        let v = normalized_config(
            r#"{"model_type": "qwen2", "max_position_embeddings": 64, "sliding_window": null,
                "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}"#,
        )
        .unwrap();
        assert_eq!(v["rope_theta"], 500000.0);
        assert_eq!(v["sliding_window"], 64);
        assert_eq!(
            PublicModel::model_type(r#"{"model_type": "gpt2"}"#).as_deref(),
            Some("gpt2")
        );
        assert_eq!(PublicModel::model_type(r#"{"model_type": "llama"}"#), None);
    }

    #[test]
    fn causal_mask_hides_the_future() {
        // Position 0's logits must not change when later tokens change.
        let cfg = serde_json::json!({"n_embd": 8, "n_layer": 1, "n_head": 2, "vocab_size": 11, "n_positions": 8});
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let m = Gpt2::new(&cfg, vb).unwrap();
        let a = m
            .forward(&Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap())
            .unwrap();
        let b = m
            .forward(&Tensor::new(&[[1u32, 7, 9]], &Device::Cpu).unwrap())
            .unwrap();
        let d: f32 = (a.i((0, 0)).unwrap() - b.i((0, 0)).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0);
    }
}
