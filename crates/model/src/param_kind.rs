//! The kind of each model parameter (decayed matrix, embedding, norm gain, dynAct scalar),
//! decided once, here, from its Hugging Face tensor name. The optimizer (which parameters get
//! weight decay), the parameter summary and the checkpoint code all ask [`ParamKind::of`]
//! instead of matching names themselves.

/// What a parameter of the model is. Weight decay, by convention, applies to [`Matrix`]
/// parameters only; an [`Embedding`] is decayed only when the optimizer is told to
/// (`decay_embeddings`); norm gains and dynAct's alpha and beta never are.
///
/// [`Matrix`]: ParamKind::Matrix
/// [`Embedding`]: ParamKind::Embedding
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A projection matrix: `self_attn.{q,k,v,o}_proj.weight`, `mlp.{gate,up,down}_proj.weight`,
    /// and an untied `lm_head.weight`.
    Matrix,
    /// The token embedding, `model.embed_tokens.weight` (which is also the LM head when tied).
    Embedding,
    /// An RMSNorm gain: `input_layernorm`, `post_attention_layernorm`, the final `model.norm`.
    Norm,
    /// dynAct's `mlp.act_fn.alpha` or `mlp.act_fn.beta` (one value per layer or per channel).
    DynActScalar,
}

impl ParamKind {
    /// The kind of the parameter called `name` (a Hugging Face Llama tensor name, as
    /// [`crate::expected_tensors`] lists them). Names the model does not create count as
    /// matrices.
    pub fn of(name: &str) -> ParamKind {
        if name.contains("act_fn.") {
            ParamKind::DynActScalar
        } else if name.contains("norm") {
            ParamKind::Norm
        } else if name.contains("embed_tokens") {
            ParamKind::Embedding
        } else {
            ParamKind::Matrix
        }
    }

    /// Whether this kind gets weight decay by convention: [`ParamKind::Matrix`] only.
    pub fn decayed_by_default(self) -> bool {
        self == ParamKind::Matrix
    }

    /// Whether an optimizer decays this kind: matrices always, the embedding when
    /// `decay_embeddings` is set, norms and dynAct scalars never.
    pub fn decays(self, decay_embeddings: bool) -> bool {
        match self {
            ParamKind::Matrix => true,
            ParamKind::Embedding => decay_embeddings,
            ParamKind::Norm | ParamKind::DynActScalar => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ParamKind::{self, *};
    use crate::checkpoint::expected_tensors;
    use crate::config::{FfnKind, ModelConfig};

    /// Every tensor of `cfg` by name, with its kind, written out by hand.
    fn listed(cfg: &ModelConfig) -> Vec<(String, ParamKind)> {
        let mut list = vec![("model.embed_tokens.weight".to_string(), Embedding)];
        for i in 0..cfg.num_hidden_layers {
            let l = format!("model.layers.{i}");
            list.push((format!("{l}.input_layernorm.weight"), Norm));
            for p in ["q", "k", "v", "o"] {
                list.push((format!("{l}.self_attn.{p}_proj.weight"), Matrix));
            }
            list.push((format!("{l}.post_attention_layernorm.weight"), Norm));
            for p in ["gate", "up", "down"] {
                list.push((format!("{l}.mlp.{p}_proj.weight"), Matrix));
            }
            if cfg.ffn == FfnKind::Dynactglu {
                list.push((format!("{l}.mlp.act_fn.alpha"), DynActScalar));
                list.push((format!("{l}.mlp.act_fn.beta"), DynActScalar));
            }
        }
        list.push(("model.norm.weight".to_string(), Norm));
        if !cfg.tie_word_embeddings {
            list.push(("lm_head.weight".to_string(), Matrix));
        }
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// The trainer's weight-decay rule as it stood before it asked `ParamKind`.
    fn name_rule_decays(name: &str, rank: usize, decay_embeddings: bool) -> bool {
        if rank < 2 || name.contains("act_fn.") || name.contains("norm") {
            return false;
        }
        decay_embeddings || !name.contains("embed_tokens")
    }

    #[test]
    fn every_model_tensor_has_its_kind() {
        for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
            for tie_word_embeddings in [false, true] {
                let cfg = ModelConfig {
                    ffn,
                    tie_word_embeddings,
                    num_hidden_layers: 2,
                    ..ModelConfig::default()
                };
                let what = format!("{ffn:?}, tied = {tie_word_embeddings}");
                let mut tensors = expected_tensors(&cfg).unwrap();
                tensors.sort();
                let names: Vec<&String> = tensors.iter().map(|(n, _)| n).collect();
                let list = listed(&cfg);
                assert_eq!(
                    names,
                    list.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    "{what}"
                );
                for ((name, shape), (_, kind)) in tensors.iter().zip(&list) {
                    assert_eq!(ParamKind::of(name), *kind, "{name} ({what})");
                    let rank = shape.len();
                    assert_eq!(rank >= 2, matches!(kind, Matrix | Embedding), "{name} rank");
                    for decay_embeddings in [false, true] {
                        assert_eq!(
                            kind.decays(decay_embeddings),
                            name_rule_decays(name, rank, decay_embeddings),
                            "{name} decay_embeddings = {decay_embeddings}"
                        );
                    }
                    assert_eq!(kind.decayed_by_default(), kind.decays(false), "{name}");
                }
            }
        }
    }
}
