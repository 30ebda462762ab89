//! The model configuration: Hugging Face Llama keys plus this project's `ffn` choice and `dynact`
//! block. The same struct is the `[model]` table of a run's TOML and, through
//! [`ModelConfig::to_hf_json`] / [`ModelConfig::from_hf_json`], the checkpoint's `config.json`,
//! which stays readable by `transformers` (4.x and 5.x key layouts are both accepted on input).

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Which feed-forward block every layer uses.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum FfnKind {
    /// `down(silu(gate x) * up x)`: the Llama MLP.
    #[default]
    Swiglu,
    /// `down(f(gate x) * up x)` with `f(x) = base(x)(alpha - beta) + beta x` trainable per layer.
    Dynactglu,
}

impl FfnKind {
    pub fn name(self) -> &'static str {
        match self {
            FfnKind::Swiglu => "swiglu",
            FfnKind::Dynactglu => "dynactglu",
        }
    }
}

impl std::str::FromStr for FfnKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "swiglu" => Ok(FfnKind::Swiglu),
            "dynactglu" | "dynact" => Ok(FfnKind::Dynactglu),
            other => Err(format!(
                "unknown ffn `{other}`: expected `swiglu` or `dynactglu`"
            )),
        }
    }
}

/// The base nonlinearity that dynAct scales and mixes with the identity.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum BaseAct {
    #[default]
    Silu,
    /// Exact (erf) GELU.
    Gelu,
    Mish,
    Relu,
}

/// How many (alpha, beta) pairs a layer has.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// Two scalars per layer, as in the paper.
    #[default]
    PerLayer,
    /// Two vectors over the FFN hidden channels.
    PerChannel,
}

/// dynAct's options; the defaults make step 0 of dynActGLU equal to SwiGLU.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct DynActConfig {
    pub base: BaseAct,
    pub granularity: Granularity,
    pub alpha_init: f64,
    pub beta_init: f64,
}

impl Default for DynActConfig {
    fn default() -> Self {
        DynActConfig {
            base: BaseAct::Silu,
            granularity: Granularity::PerLayer,
            alpha_init: 1.0,
            beta_init: 0.0,
        }
    }
}

/// Shape and behaviour of the decoder. Field names are the Hugging Face Llama `config.json` keys.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub ffn: FfnKind,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head width; `hidden_size / num_attention_heads` when absent (0 means "derive").
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Dropout on attention weights and on both residual branches while training.
    pub dropout: f64,
    /// Standard deviation of the normal initialisation.
    pub initializer_range: f64,
    pub dynact: DynActConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            ffn: FfnKind::Swiglu,
            vocab_size: 257,
            hidden_size: 128,
            intermediate_size: 352,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            head_dim: 0,
            max_position_embeddings: 1024,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: false,
            dropout: 0.0,
            initializer_range: 0.02,
            dynact: DynActConfig::default(),
        }
    }
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        if self.head_dim > 0 {
            self.head_dim
        } else {
            self.hidden_size / self.num_attention_heads.max(1)
        }
    }

    /// normal(0, initializer_range), for embeddings and projections.
    pub fn weight_init(&self) -> candle_nn::Init {
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: self.initializer_range,
        }
    }

    /// The projections that write into the residual stream (`o_proj`, `down_proj`) start
    /// 1/sqrt(2 layers) smaller, as in GPT-2, so the stream's variance does not grow with depth.
    pub fn residual_init(&self) -> candle_nn::Init {
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: self.initializer_range / (2.0 * self.num_hidden_layers as f64).sqrt(),
        }
    }

    /// Checks every constraint the modules rely on, so a bad config fails before any allocation.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.head_dim == 0 && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head dimension {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        // The rotary tables hold every position: keep them to a sane size.
        if self.max_position_embeddings > 1 << 20 {
            return bad(format!(
                "max_position_embeddings {} is over the supported 1048576",
                self.max_position_embeddings
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0 && self.initializer_range > 0.0) {
            return bad("rms_norm_eps, rope_theta and initializer_range must be positive".into());
        }
        if !(self.dynact.alpha_init.is_finite() && self.dynact.beta_init.is_finite()) {
            return bad("dynact alpha_init and beta_init must be finite".into());
        }
        Ok(())
    }

    /// The `config.json` of a checkpoint: Llama keys, so that a SwiGLU checkpoint is an ordinary
    /// Llama checkpoint for `transformers`. A dynActGLU checkpoint gets its own `model_type` so
    /// that `transformers` refuses it rather than silently dropping alpha and beta.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let (arch, model_type) = match self.ffn {
            FfnKind::Swiglu => ("LlamaForCausalLM", "llama"),
            FfnKind::Dynactglu => ("DynActLlamaForCausalLM", "dynact_llama"),
        };
        let mut json = serde_json::json!({
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim(),
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": false,
            "attention_dropout": self.dropout,
            "mlp_bias": false,
            "initializer_range": self.initializer_range,
            "pretraining_tp": 1,
            "use_cache": true,
            "torch_dtype": "float32",
            "ffn": self.ffn,
            "dropout": self.dropout,
            "dynact": self.dynact,
        });
        if self.ffn == FfnKind::Dynactglu {
            // transformers loads dynActGLU through the remote code written beside the weights.
            json["auto_map"] = serde_json::json!({
                "AutoConfig": "configuration_dynact_llama.DynActLlamaConfig",
                "AutoModelForCausalLM": "modeling_dynact_llama.DynActLlamaForCausalLM",
            });
        }
        json
    }

    /// Reads a `config.json` written by this project or by `transformers` 4.x / 5.x for a Llama
    /// model. Keys this model has no use for (token ids, dtype, ...) are ignored; features it
    /// does not implement (biases, RoPE scaling, other activations) are refused by name.
    pub fn from_hf_json(text: &str) -> std::result::Result<ModelConfig, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let obj = v.as_object().ok_or("the top level is not a JSON object")?;
        let keys = HfKeys(obj);
        refuse_unsupported(&keys)?;
        let rope_theta = read_rope_theta(&keys)?;

        let d = ModelConfig::default();
        let vocab_size = keys.required("vocab_size")?;
        let hidden_size = keys.required("hidden_size")?;
        let intermediate_size = keys.required("intermediate_size")?;
        let num_hidden_layers = keys.required("num_hidden_layers")?;
        let num_attention_heads = keys.required("num_attention_heads")?;
        let ffn = match keys.get("ffn") {
            Some(x) => serde_json::from_value(x.clone()).map_err(|e| format!("`ffn`: {e}"))?,
            None if keys.get("model_type").and_then(|x| x.as_str()) == Some("dynact_llama") => {
                FfnKind::Dynactglu
            }
            None => FfnKind::Swiglu,
        };
        let dynact = match keys.get("dynact") {
            Some(x) => serde_json::from_value(x.clone()).map_err(|e| format!("`dynact`: {e}"))?,
            None => DynActConfig::default(),
        };
        let cfg = ModelConfig {
            ffn,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: keys
                .usize_key("num_key_value_heads")?
                .unwrap_or(num_attention_heads),
            head_dim: keys.usize_key("head_dim")?.unwrap_or(0),
            max_position_embeddings: keys.usize_key("max_position_embeddings")?.unwrap_or(2048),
            rms_norm_eps: keys.f64_key("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10_000.0),
            tie_word_embeddings: keys
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            dropout: keys.f64_key("dropout")?.unwrap_or(0.0),
            initializer_range: keys
                .f64_key("initializer_range")?
                .unwrap_or(d.initializer_range),
            dynact,
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

/// The keys of a `config.json` object, read with the checks and messages of
/// [`ModelConfig::from_hf_json`]; a `null` value counts as absent.
struct HfKeys<'a>(&'a serde_json::Map<String, serde_json::Value>);

impl HfKeys<'_> {
    fn get(&self, k: &str) -> Option<&serde_json::Value> {
        self.0.get(k).filter(|x| !x.is_null())
    }

    fn usize_key(&self, k: &str) -> std::result::Result<Option<usize>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(x) => x
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or(format!("`{k}` must be a non-negative integer, found {x}")),
        }
    }

    fn f64_key(&self, k: &str) -> std::result::Result<Option<f64>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or(format!("`{k}` must be a number, found {x}")),
        }
    }

    fn required(&self, k: &str) -> std::result::Result<usize, String> {
        self.usize_key(k)?
            .ok_or(format!("missing required key `{k}`"))
    }
}

/// Refuses, by name, the features of a `config.json` this model does not implement: other
/// architectures and activations, biases, RoPE scaling.
fn refuse_unsupported(keys: &HfKeys) -> std::result::Result<(), String> {
    if let Some(mt) = keys.get("model_type").and_then(|x| x.as_str()) {
        if !matches!(mt, "llama" | "dynact_llama") {
            return Err(format!(
                "model_type `{mt}` is not supported; only Llama-architecture checkpoints can be loaded"
            ));
        }
    }
    if let Some(act) = keys.get("hidden_act").and_then(|x| x.as_str()) {
        if act != "silu" {
            return Err(format!(
                "hidden_act `{act}` is not supported; Llama checkpoints use `silu`"
            ));
        }
    }
    for k in ["attention_bias", "mlp_bias"] {
        if keys.get(k).and_then(|x| x.as_bool()) == Some(true) {
            return Err(format!("`{k}: true` is not supported (no bias tensors)"));
        }
    }
    if let Some(scaling) = keys.get("rope_scaling") {
        return Err(format!("rope_scaling {scaling} is not supported"));
    }
    Ok(())
}

/// `rope_theta`, at the top level (transformers 4.x) or in `rope_parameters` (5.x, which may
/// also name a scaling type there: refused unless `default`).
fn read_rope_theta(keys: &HfKeys) -> std::result::Result<Option<f64>, String> {
    let mut rope_theta = keys.f64_key("rope_theta")?;
    if let Some(rp) = keys.get("rope_parameters").and_then(|x| x.as_object()) {
        if let Some(t) = rp.get("rope_theta").and_then(|x| x.as_f64()) {
            rope_theta = Some(t);
        }
        if let Some(kind) = rp.get("rope_type").and_then(|x| x.as_str()) {
            if kind != "default" {
                return Err(format!("rope_type `{kind}` is not supported"));
            }
        }
    }
    Ok(rope_theta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_json_round_trips() {
        let cfg = ModelConfig {
            ffn: FfnKind::Dynactglu,
            num_key_value_heads: 2,
            tie_word_embeddings: true,
            dynact: DynActConfig {
                base: BaseAct::Mish,
                granularity: Granularity::PerChannel,
                alpha_init: 0.5,
                beta_init: 0.25,
            },
            ..ModelConfig::default()
        };
        let text = serde_json::to_string_pretty(&cfg.to_hf_json()).unwrap();
        let back = ModelConfig::from_hf_json(&text).unwrap();
        assert_eq!(
            back,
            ModelConfig {
                head_dim: 32,
                ..cfg
            }
        );
    }

    #[test]
    fn reads_transformers_5_layout() {
        // As written by transformers 5.x: rope_theta inside rope_parameters, `dtype` not `torch_dtype`.
        let text = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":100,
            "hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2,"max_position_embeddings":128,"rms_norm_eps":1e-05,
            "rope_parameters":{"rope_theta":500000.0,"rope_type":"default"},"tie_word_embeddings":true,
            "dtype":"bfloat16","bos_token_id":1,"eos_token_id":2,"hidden_act":"silu"}"#;
        let cfg = ModelConfig::from_hf_json(text).unwrap();
        assert_eq!(cfg.rope_theta, 500000.0);
        assert_eq!(cfg.num_key_value_heads, 2);
        assert_eq!(cfg.head_dim(), 16);
        assert!(cfg.tie_word_embeddings);
        assert_eq!(cfg.ffn, FfnKind::Swiglu);
    }

    #[test]
    fn refuses_unsupported_features_by_name() {
        let base = r#""vocab_size":100,"hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,"num_attention_heads":4"#;
        let err =
            ModelConfig::from_hf_json(&format!(r#"{{{base},"rope_scaling":{{"type":"llama3"}}}}"#))
                .unwrap_err();
        assert!(err.contains("rope_scaling"), "{err}");
        let err =
            ModelConfig::from_hf_json(&format!(r#"{{{base},"model_type":"gpt2"}}"#)).unwrap_err();
        assert!(err.contains("gpt2"), "{err}");
        let err = ModelConfig::from_hf_json(r#"{"hidden_size":64}"#).unwrap_err();
        assert!(err.contains("vocab_size"), "{err}");
    }

    #[test]
    fn validate_rejects_indivisible_heads() {
        let cfg = ModelConfig {
            hidden_size: 130,
            ..ModelConfig::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("divisible"));
    }
}
