//! GPT-2 (transformers' `GPT2LMHeadModel`), which candle-transformers lacks, so that
//! `eval-ppl` and `generate` can put this project's models beside it: learned positions,
//! pre-LayerNorm blocks, fused QKV in Conv1D layout (weights stored (in, out)), the tanh
//! GELU, the head tied to the embeddings. Computes in f32 from weights as stored.

use candle_core::{Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The keys of a GPT-2 config.json this model reads (transformers' names, or the generic ones
/// newer configs also carry).
#[derive(Clone, Debug, Deserialize)]
pub struct Gpt2Config {
    #[serde(alias = "hidden_size")]
    pub n_embd: usize,
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    pub vocab_size: usize,
    #[serde(alias = "max_position_embeddings")]
    pub n_positions: usize,
    /// The MLP's width; 4 n_embd when absent.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "tanh_gelu")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
}

fn tanh_gelu() -> String {
    "gelu_new".to_string()
}

fn default_eps() -> f64 {
    1e-5
}

/// GPT-2 with its weights, ready to score.
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
    pub fn new(cfg: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        let (c, layers, heads) = (cfg.n_embd, cfg.n_layer, cfg.n_head);
        let (vocab, positions) = (cfg.vocab_size, cfg.n_positions);
        let inner = cfg.n_inner.unwrap_or(4 * c);
        let activation = cfg.activation_function.as_str();
        if !["gelu_new", "gelu_pytorch_tanh"].contains(&activation) {
            return Err(ModelError::InvalidConfig(format!("GPT-2 with activation_function `{activation}` is not supported (only the tanh GELU, gelu_new)")));
        }
        let eps = cfg.layer_norm_epsilon;
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
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
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
    use candle_core::{DType, Device, IndexOp};

    #[test]
    fn causal_mask_hides_the_future() {
        // Position 0's logits must not change when later tokens change.
        let cfg: Gpt2Config = serde_json::from_value(serde_json::json!({"n_embd": 8, "n_layer": 1, "n_head": 2, "vocab_size": 11, "n_positions": 8})).unwrap();
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
