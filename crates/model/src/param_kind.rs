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
