//! Model FLOPs of a training step, counted as nanoGPT and the PaLM paper count them for model
//! FLOPs utilisation (MFU): 6 FLOPs per token for every parameter that multiplies an
//! activation (2 forward, 4 backward), plus attention's scores and weighted sum, 12·L·T·d per
//! token (forward and backward, no causal discount). Element-wise work (norms, activations,
//! softmax) and the embedding lookup are not counted.

use crate::config::ModelConfig;
use crate::error::Result;
use crate::summary::ParamSummary;

/// Training FLOPs (forward and backward) per token at context `seq_len`.
pub fn training_flops_per_token(cfg: &ModelConfig, seq_len: usize) -> Result<f64> {
    let p = ParamSummary::of(cfg)?;
    // A tied head still multiplies by the (shared) embedding matrix.
    let head = if cfg.tie_word_embeddings {
        p.embeddings
    } else {
        p.lm_head
    };
    let matmul_params = (p.attention + p.ffn + head) as f64;
    let attention_width = (cfg.num_attention_heads * cfg.head_dim()) as f64;
    let attention = 12.0 * cfg.num_hidden_layers as f64 * seq_len as f64 * attention_width;
    Ok(6.0 * matmul_params + attention)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FfnKind;

    #[test]
    fn counts_by_hand() {
        // d 8, 2 heads of 4, ffn 16, 1 layer, vocab 10, untied, T 4:
        // attention 4·8·8 = 256, ffn 3·8·16 = 384, head 10·8 = 80 -> 6·720 = 4320;
        // attention scores 12·1·4·8 = 384.
        let cfg = ModelConfig {
            ffn: FfnKind::Swiglu,
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 2,
            max_position_embeddings: 4,
            tie_word_embeddings: false,
            ..ModelConfig::default()
        };
        assert_eq!(training_flops_per_token(&cfg, 4).unwrap(), 4320.0 + 384.0);
        let tied = ModelConfig {
            tie_word_embeddings: true,
            ..cfg
        };
        assert_eq!(training_flops_per_token(&tied, 4).unwrap(), 4320.0 + 384.0);
    }
}
