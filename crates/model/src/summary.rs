//! Parameter counts by group, computed from the config alone (no weights needed); each tensor's
//! group follows its [`ParamKind`], matrices split by the block they belong to.

use std::fmt;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::param_kind::ParamKind;

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ParamSummary {
    pub embeddings: usize,
    pub attention: usize,
    pub ffn: usize,
    /// alpha and beta of every layer (0 for SwiGLU).
    pub dynact: usize,
    pub norms: usize,
    /// 0 when tied to the embeddings.
    pub lm_head: usize,
}

impl ParamSummary {
    pub fn of(cfg: &ModelConfig) -> Result<Self> {
        let mut s = ParamSummary::default();
        for (name, shape) in crate::checkpoint::expected_tensors(cfg)? {
            let n: usize = shape.iter().product();
            let group = match ParamKind::of(&name) {
                ParamKind::DynActScalar => &mut s.dynact,
                ParamKind::Norm => &mut s.norms,
                ParamKind::Embedding => &mut s.embeddings,
                // Matrices are grouped by the block they belong to.
                ParamKind::Matrix if name.contains(".self_attn.") => &mut s.attention,
                ParamKind::Matrix if name.contains(".mlp.") => &mut s.ffn,
                ParamKind::Matrix => &mut s.lm_head,
            };
            *group += n;
        }
        Ok(s)
    }

    pub fn total(&self) -> usize {
        self.embeddings + self.attention + self.ffn + self.dynact + self.norms + self.lm_head
    }
}

impl fmt::Display for ParamSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            ("embeddings", self.embeddings),
            ("attention", self.attention),
            ("ffn", self.ffn),
            ("dynact", self.dynact),
            ("norms", self.norms),
            ("lm_head", self.lm_head),
            ("total", self.total()),
        ];
        for (name, n) in rows {
            writeln!(f, "  {name:<11} {n:>12}")?;
        }
        Ok(())
    }
}
