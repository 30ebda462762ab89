//! dynact-model: a Llama-style decoder whose feed-forward block is SwiGLU or dynActGLU(Swish),
//! and its checkpoint format.
//!
//! Reading order: [`dynact`] (the trainable activation) -> [`ops`] (RMSNorm, softmax with its
//! causal mask, the cross-entropy losses and RoPE, one file each: a fused CPU kernel beside
//! its `_reference` composition of Candle ops) -> [`layers`] (linear, RMSNorm) and
//! [`forward_ctx`] (train or eval, seeded dropout) -> [`attention`] -> [`ffn`] (the MLP, and
//! the SwiGLU and dynActGLU gate products side by side, each fused beside its reference) ->
//! [`transformer`] -> [`config`] -> [`param_kind`] (what each tensor is, for weight decay and
//! the [`summary`]) -> [`checkpoint`]. [`gpt2`] is GPT-2, for comparisons.
//!
//! The modules form layers without cycles: `ops`, `forward_ctx`, `param_kind` and `config` use
//! no other module of the crate (but `error`); `dynact`, `layers`, `attention` and `ffn` build on them; `transformer` on those; `checkpoint` and `summary` on top. Every module is built by
//! one `new(cfg, vb)` constructor that names its tensors as Hugging Face Llama does, so the
//! same code creates a fresh model ([`seeded_var_builder`]) and loads a saved one
//! ([`Checkpoint`]). The crate knows nothing of text or files of text: it maps token ids to
//! logits.

pub mod attention;
pub mod checkpoint;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda_kernels;
pub mod dynact;
pub mod error;
pub mod ffn;
pub mod flops;
pub mod forward_ctx;
pub mod gpt2;
#[doc(hidden)]
pub mod host_emulation;
mod init;
pub mod layers;
pub mod ops;
pub mod param_chunks;
pub mod param_kind;
pub mod philox;
pub mod philox_dropout;
pub mod summary;
pub mod transformer;

pub use checkpoint::{expected_tensors, Checkpoint};
pub use config::{BaseAct, DynActConfig, FfnKind, Granularity, ModelConfig};
pub use dynact::DynAct;
pub use error::{ModelError, Result};
pub use forward_ctx::{DropoutRng, ForwardCtx};
pub use init::seeded_var_builder;
pub use param_kind::ParamKind;
pub use summary::ParamSummary;
pub use transformer::{DynActStats, KvCache, Transformer};

/// A fresh model of `cfg` with parameters drawn from `seed`, and the `VarMap` that owns them.
pub fn init_model(
    cfg: &ModelConfig,
    seed: u64,
    device: &candle_core::Device,
) -> Result<(candle_nn::VarMap, Transformer)> {
    let varmap = candle_nn::VarMap::new();
    let model = Transformer::new(cfg, seeded_var_builder(&varmap, seed, device))?;
    Ok((varmap, model))
}
