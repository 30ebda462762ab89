//! What makes a checkpoint folder a complete Hugging Face model folder, beside its weights,
//! `config.json` and `tokenizer.json`: the tokenizer's config and special tokens (end-of-text
//! as EOS and BOS, as GPT-2's; nothing added to a text; the model's length), the token ids in
//! `config.json` and `generation_config.json`, and a model card (`README.md`). transformers'
//! `AutoTokenizer`, its pipelines (which stop at EOS) and lm-evaluation-harness (which scores
//! a text after the BOS id) read these.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use dynact_data::Tokenizer;
use dynact_files::atomic_write_bytes;
use dynact_model::checkpoint::CONFIG_FILE;
use dynact_model::{DynActStats, FfnKind, ModelConfig};
use serde_json::{json, Value};

use crate::records::EvalRecord;

pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_FILE: &str = "special_tokens_map.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
pub const MODEL_CARD_FILE: &str = "README.md";

/// What the model card says of the run beyond the weights.
#[derive(Clone, Debug, Default)]
pub struct RunFacts {
    pub run_name: String,
    /// One line on the training data.
    pub data: String,
    /// The command that wrote the checkpoint.
    pub command: String,
    /// The run's evaluations so far (eval.jsonl).
    pub evals: Vec<EvalRecord>,
    /// dynAct's alpha and beta per layer (None for SwiGLU).
    pub dynact: Option<DynActStats>,
}

/// Writes the tokenizer config, special tokens, generation config and model card into `dir`
/// (which already holds `config.json`, whose token ids are filled in), for the checkpoint of
/// `step`.
pub fn write_hub_files(
    dir: &Path,
    step: u64,
    model: &ModelConfig,
    tokenizer: &Tokenizer,
    facts: &RunFacts,
) -> Result<()> {
    let eos_id = tokenizer.eos_id();
    let eos = tokenizer
        .hf()
        .id_to_token(eos_id)
        .with_context(|| format!("the tokenizer has no token for its end-of-text id {eos_id}"))?;
    let write_json = |name: &str, value: &Value| -> Result<()> {
        let text = serde_json::to_string_pretty(value).expect("JSON serialises");
        let path = dir.join(name);
        atomic_write_bytes(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write_json(
        TOKENIZER_CONFIG_FILE,
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model.max_position_embeddings,
            "bos_token": eos,
            "eos_token": eos,
            "add_bos_token": false,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
        }),
    )?;
    write_json(
        SPECIAL_TOKENS_FILE,
        &json!({"bos_token": eos, "eos_token": eos}),
    )?;
    write_json(
        GENERATION_CONFIG_FILE,
        &json!({"bos_token_id": eos_id, "eos_token_id": eos_id}),
    )?;
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let mut config: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", config_path.display()))?;
    config["bos_token_id"] = json!(eos_id);
    config["eos_token_id"] = json!(eos_id);
    write_json(CONFIG_FILE, &config)?;
    let card = model_card(step, model, facts);
    let path = dir.join(MODEL_CARD_FILE);
    atomic_write_bytes(&path, card.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The model card: the Hub's YAML header, what the model is, its evaluations so far, dynAct's
/// alpha and beta per layer, how to load, evaluate and upload it, and the command.
fn model_card(step: u64, model: &ModelConfig, facts: &RunFacts) -> String {
    let ffn = match model.ffn {
        FfnKind::Swiglu => "SwiGLU",
        FfnKind::Dynactglu => "dynActGLU(Swish)",
    };
    let remote = if model.ffn == FfnKind::Dynactglu {
        ", trust_remote_code=True"
    } else {
        ""
    };
    let lm_eval_remote = if model.ffn == FfnKind::Dynactglu {
        ",trust_remote_code=True"
    } else {
        ""
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "---\nlibrary_name: transformers\npipeline_tag: text-generation"
    );
    let _ = writeln!(
        s,
        "tags:\n- dynact-lm\n- {}\n- llama\n---\n",
        model.ffn.name()
    );
    let _ = writeln!(s, "# {} (step {step})\n", facts.run_name);
    let _ = writeln!(
        s,
        "A decoder-only language model trained with dynact-lm: {} layers, hidden size {}, {} \
         attention heads, feed-forward block {ffn}, vocabulary {}, context {} tokens.\n",
        model.num_hidden_layers,
        model.hidden_size,
        model.num_attention_heads,
        model.vocab_size,
        model.max_position_embeddings
    );
    if !facts.data.is_empty() {
        let _ = writeln!(s, "Training data: {}\n", facts.data);
    }
    let _ = writeln!(s, "## Evaluations so far\n");
    if facts.evals.is_empty() {
        let _ = writeln!(s, "None before this checkpoint.\n");
    } else {
        let _ = writeln!(
            s,
            "| step | tokens seen | val cross-entropy | val perplexity | val bits per byte |\n|---:|---:|---:|---:|---:|"
        );
        for e in &facts.evals {
            let bpb = e.val_bpb.map_or("-".to_string(), |b| format!("{b:.4}"));
            let _ = writeln!(
                s,
                "| {} | {} | {:.4} | {:.4} | {bpb} |",
                e.step, e.tokens_seen, e.val_ce, e.val_ppl
            );
        }
        s.push('\n');
    }
    if let Some(dynact) = &facts.dynact {
        let base = serde_json::to_value(model.dynact.base)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "## dynAct per layer\n\nf(x) = {base}(x)(alpha - beta) + beta x{}:\n\n| layer | alpha | beta |\n|---:|---:|---:|",
            if model.dynact.granularity == dynact_model::Granularity::PerChannel {
                " (means over channels)"
            } else {
                ""
            }
        );
        for (i, (a, b)) in dynact.alpha.iter().zip(&dynact.beta).enumerate() {
            let _ = writeln!(s, "| {i} | {a:.6} | {b:.6} |");
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\
         tokenizer = AutoTokenizer.from_pretrained(FOLDER{remote})\n\
         model = AutoModelForCausalLM.from_pretrained(FOLDER{remote})\n```\n\n\
         Score it with lm-evaluation-harness:\n\n```text\n\
         lm_eval --model hf --model_args pretrained=FOLDER{lm_eval_remote} --tasks wikitext\n```\n\n\
         Put it on the Hub with the Hub's own CLI (`pip install huggingface_hub`; the \
         optimizer state and trainer_state.json are only for resuming a run):\n\n```text\n\
         hf upload OWNER/NAME FOLDER . --exclude optimizer.safetensors --exclude trainer_state.json\n```\n"
    );
    if !facts.command.is_empty() {
        let _ = writeln!(
            s,
            "## Training\n\nThe command that wrote this checkpoint:\n\n```text\n{}\n```",
            facts.command
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use dynact_model::checkpoint::save_checkpoint_config;

    fn read(dir: &Path, name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    }

    #[test]
    fn a_checkpoint_folder_gets_the_files_of_a_hub_model_folder() {
        let tokenizer = Tokenizer::bytes();
        let eos_id = tokenizer.eos_id();
        for ffn in [FfnKind::Dynactglu, FfnKind::Swiglu] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = ModelConfig {
                ffn,
                vocab_size: tokenizer.vocab_size(),
                hidden_size: 16,
                intermediate_size: 32,
                num_hidden_layers: 3,
                num_attention_heads: 2,
                num_key_value_heads: 2,
                head_dim: 8,
                max_position_embeddings: 64,
                ..ModelConfig::default()
            };
            cfg.dynact.alpha_init = 0.75;
            let (_, model) = dynact_model::init_model(&cfg, 3, &Device::Cpu).unwrap();
            save_checkpoint_config(&cfg, dir.path()).unwrap();
            let evals = vec![EvalRecord {
                step: 10,
                tokens_seen: 2560,
                val_ce: 1.5,
                val_ppl: 1.5f64.exp(),
                val_bpb: Some(2.1),
                elapsed_s: 3.0,
                val_tokens: None,
                train_ce: None,
                train_ppl: None,
            }];
            let facts = RunFacts {
                run_name: "tiny-run".into(),
                data: "the built-in corpus".into(),
                command: "train-lm --steps 20".into(),
                evals,
                dynact: model.dynact_stats().unwrap(),
            };
            write_hub_files(dir.path(), 20, &cfg, &tokenizer, &facts).unwrap();

            let tok = read(dir.path(), TOKENIZER_CONFIG_FILE);
            assert_eq!(tok["eos_token"], "<|endoftext|>");
            assert_eq!(tok["bos_token"], "<|endoftext|>");
            assert_eq!(tok["add_bos_token"], false);
            assert_eq!(tok["model_max_length"], cfg.max_position_embeddings);
            assert_eq!(
                read(dir.path(), SPECIAL_TOKENS_FILE)["eos_token"],
                "<|endoftext|>"
            );
            assert_eq!(
                read(dir.path(), GENERATION_CONFIG_FILE)["eos_token_id"],
                eos_id
            );
            let config = read(dir.path(), CONFIG_FILE);
            assert_eq!(config["eos_token_id"], eos_id);
            assert_eq!(config["bos_token_id"], eos_id);
            // The rest of config.json is as written, and still reads back.
            assert_eq!(config["hidden_size"], cfg.hidden_size);
            let back =
                dynact_model::checkpoint::read_config(&dir.path().join(CONFIG_FILE)).unwrap();
            assert_eq!(back, cfg);

            let card = std::fs::read_to_string(dir.path().join(MODEL_CARD_FILE)).unwrap();
            assert!(
                card.starts_with("---\nlibrary_name: transformers\n"),
                "{card}"
            );
            assert!(card.contains("# tiny-run (step 20)"), "{card}");
            assert!(
                card.contains("| 10 | 2560 | 1.5000 | 4.4817 | 2.1000 |"),
                "{card}"
            );
            assert!(card.contains("train-lm --steps 20"), "{card}");
            let layer_rows = card
                .lines()
                .filter(|l| l.starts_with("| ") && l.ends_with(" | 0.000000 |"))
                .filter(|l| l.contains("| 0.750000 |"))
                .count();
            match ffn {
                FfnKind::Dynactglu => {
                    assert_eq!(layer_rows, cfg.num_hidden_layers, "{card}");
                    assert!(card.contains("trust_remote_code=True"), "{card}");
                }
                FfnKind::Swiglu => {
                    assert!(!card.contains("dynAct per layer"), "{card}");
                    assert!(!card.contains("trust_remote_code"), "{card}");
                }
            }
        }
    }
}
