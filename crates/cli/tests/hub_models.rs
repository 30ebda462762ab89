//! `eval-ppl hf://OWNER/NAME[@REVISION]` against a Hugging Face cache folder laid out by the
//! test (`models--OWNER--NAME/{refs,blobs,snapshots}`) with HF_HUB_OFFLINE=1: plain Llama
//! checkpoints as transformers writes them (4.x and 5.x config.json, bf16 and f16 weights,
//! sharded through model.safetensors.index.json, grouped-query attention, tied and untied
//! embeddings), revisions by branch and by commit, and a repository or revision missing from
//! the cache.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use common::*;
use dynact_data::{shard, TokenStream, Tokenizer};
use dynact_model::checkpoint::read_config;
use dynact_model::{Checkpoint, FfnKind, ModelConfig};
use dynact_trainer::eval::{evaluate, EvalResult};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const COMMIT_V1: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// A snapshot folder of `owner/name` at `commit`, named by `refs/<branch>`.
fn snapshot(hub: &Path, repo: &str, branch: &str, commit: &str) -> PathBuf {
    let root = hub.join(format!("models--{}", repo.replace('/', "--")));
    let snap = root.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs").join(branch), commit).unwrap();
    snap
}

/// Writes `bytes` as a blob and links `snap/name` to it, as huggingface_hub does.
fn blob_file(snap: &Path, name: &str, bytes: &[u8]) {
    let root = snap.parent().unwrap().parent().unwrap();
    let blobs = root.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = blobs.join(format!("blob-{name}"));
    std::fs::write(&blob, bytes).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&blob, snap.join(name)).unwrap();
    #[cfg(not(unix))]
    std::fs::write(snap.join(name), bytes).unwrap();
}

/// config.json as transformers 5.x writes it for a small Llama with GQA and tied embeddings.
fn config_v5(cfg: &ModelConfig) -> String {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "dtype": "bfloat16", "head_dim": cfg.head_dim(),
        "hidden_act": "silu", "hidden_size": cfg.hidden_size, "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings, "mlp_bias": false,
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads, "pretraining_tp": 1,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "tie_word_embeddings": cfg.tie_word_embeddings, "transformers_version": "5.0.0",
        "use_cache": true, "vocab_size": cfg.vocab_size
    })
    .to_string()
}

/// config.json as transformers 4.x writes it (rope_theta at the top, torch_dtype).
fn config_v4(cfg: &ModelConfig) -> String {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": false, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads, "rms_norm_eps": cfg.rms_norm_eps,
        "rope_scaling": null, "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings, "torch_dtype": "float16",
        "transformers_version": "4.44.0", "vocab_size": cfg.vocab_size
    })
    .to_string()
}

/// The perplexity the library gives for the weight files as loaded (widened to f32).
fn reference(files: &[PathBuf], config: &Path, tokens: &[u32], seq_len: usize) -> EvalResult {
    let cfg = read_config(config).unwrap();
    let ckpt = Checkpoint::load(files, cfg, &Device::Cpu).unwrap();
    let model = ckpt.model(&Device::Cpu).unwrap();
    let stream = TokenStream::from_tokens(tokens.to_vec());
    evaluate(
        &model,
        &stream,
        seq_len,
        4,
        None,
        None,
        &Device::Cpu,
        |_, _| {},
    )
    .unwrap()
}

struct Hub {
    _dir: tempfile::TempDir,
    home: PathBuf,
    work: PathBuf,
    tokens: Vec<u32>,
    /// (bf16 sharded GQA tied, f16 untied) snapshot folders
    sharded: PathBuf,
    untied: PathBuf,
}

fn lay_out_hub() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf-home");
    let hub = home.join("hub");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let text = "Hugging Face caches hold snapshots of repositories. ".repeat(12);
    std::fs::write(work.join("t.txt"), &text).unwrap();
    let tokens = Tokenizer::bytes().encode(&text).unwrap();
    shard::write_shard(&work.join("t.bin"), &tokens, 257).unwrap();
    let tok_json = Tokenizer::bytes().to_json().unwrap();

    // 1. tied embeddings, GQA (4 heads, 2 kv), bf16, two shards, transformers 5.x config.
    let cfg = ModelConfig {
        tie_word_embeddings: true,
        ..tiny(FfnKind::Swiglu)
    };
    let scratch = dir.path().join("scratch");
    let (varmap, _) = write_checkpoint(&scratch, &cfg, 21, false);
    let snap = snapshot(&hub, "someone/tiny-llama", "main", COMMIT);
    let all = tensors_as(&varmap, DType::BF16);
    let (a, b): (Vec<_>, Vec<_>) = all.into_iter().partition(|(k, _)| k.contains("layers.0."));
    let mut weight_map = serde_json::Map::new();
    for (name, part) in [
        ("model-00001-of-00002.safetensors", &a),
        ("model-00002-of-00002.safetensors", &b),
    ] {
        write_tensors(&snap.join(name), part);
        for (k, _) in part.iter() {
            weight_map.insert(k.clone(), name.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    blob_file(
        &snap,
        "model.safetensors.index.json",
        index.to_string().as_bytes(),
    );
    blob_file(&snap, "config.json", config_v5(&cfg).as_bytes());
    blob_file(&snap, "tokenizer.json", tok_json.as_bytes());

    // 2. untied, f16, one file, transformers 4.x config, on branch v1 only; no tokenizer.
    let cfg = tiny(FfnKind::Swiglu);
    let (varmap, _) = write_checkpoint(&scratch, &cfg, 22, false);
    let untied = snapshot(&hub, "someone/untied", "v1", COMMIT_V1);
    write_tensors(
        &untied.join("model.safetensors"),
        &tensors_as(&varmap, DType::F16),
    );
    std::fs::write(untied.join("config.json"), config_v4(&cfg)).unwrap();

    Hub {
        home,
        work,
        tokens,
        sharded: snap,
        untied,
        _dir: dir,
    }
}

#[test]
fn hub_checkpoints_from_an_offline_cache() {
    let h = lay_out_hub();
    let env: [(&str, &Path); 1] = [("HF_HOME", &h.home)];
    let shards = vec![
        h.sharded.join("model-00001-of-00002.safetensors"),
        h.sharded.join("model-00002-of-00002.safetensors"),
    ];
    let want = reference(&shards, &h.sharded.join("config.json"), &h.tokens, 16);
    // by branch (refs/main), by commit, text and token shards
    for source in [
        "hf://someone/tiny-llama".to_string(),
        format!("hf://someone/tiny-llama@{COMMIT}"),
    ] {
        for data in ["t.txt", "t.bin"] {
            let v = json_of(&eval_ppl(
                &[
                    &source,
                    "--data",
                    data,
                    "--seq-len",
                    "16",
                    "--batch-size",
                    "4",
                    "--json",
                ],
                &h.work,
                &env,
            ));
            assert!(
                rel_diff(v["ppl"].as_f64().unwrap(), want.ppl) < 1e-6,
                "{source} {data}: {} vs {}",
                v["ppl"],
                want.ppl
            );
            assert_eq!(v["tokens"].as_u64().unwrap() as usize, want.tokens);
            assert_eq!(v["windows"].as_u64().unwrap() as usize, want.windows);
            assert!(v["source"].as_str().unwrap().contains("someone/tiny-llama"));
        }
    }
    let cfg = read_config(&h.sharded.join("config.json")).unwrap();
    assert!(cfg.tie_word_embeddings && cfg.num_key_value_heads == 2);

    // f16, untied, transformers 4.x config, a branch other than main; no tokenizer in the repo,
    // so token shards work and text asks for --tokenizer.
    let want = reference(
        &[h.untied.join("model.safetensors")],
        &h.untied.join("config.json"),
        &h.tokens,
        32,
    );
    let v = json_of(&eval_ppl(
        &[
            "hf://someone/untied@v1",
            "--data",
            "t.bin",
            "--seq-len",
            "32",
            "--json",
        ],
        &h.work,
        &env,
    ));
    assert!(rel_diff(v["ppl"].as_f64().unwrap(), want.ppl) < 1e-6);
    assert!(v["bpb"].is_null(), "no tokenizer, so no bytes: {v}");
    assert_error(
        &eval_ppl(
            &["hf://someone/untied@v1", "--data", "t.txt"],
            &h.work,
            &env,
        ),
        &["tokenizer", "--tokenizer"],
    );
    let tok = h.work.join("tokenizer.json");
    Tokenizer::bytes().save(&tok).unwrap();
    let v = json_of(&eval_ppl(
        &[
            "hf://someone/untied@v1",
            "--data",
            "t.txt",
            "--tokenizer",
            tok.to_str().unwrap(),
            "--seq-len",
            "32",
            "--json",
        ],
        &h.work,
        &env,
    ));
    assert!(rel_diff(v["ppl"].as_f64().unwrap(), want.ppl) < 1e-6);
    assert!(v["bpb"].as_f64().unwrap() > 0.0);
}

#[test]
fn hub_repos_or_revisions_missing_offline_say_how_to_fetch() {
    let h = lay_out_hub();
    let env: [(&str, &Path); 1] = [("HF_HOME", &h.home)];
    let e = |args: &[&str], needles: &[&str]| assert_error(&eval_ppl(args, &h.work, &env), needles);
    e(
        &["hf://someone/absent", "--data", "t.bin"],
        &[
            "hf://someone/absent",
            "HF_HUB_OFFLINE",
            "huggingface-cli download someone/absent --revision main",
        ],
    );
    e(
        &["hf://someone/tiny-llama@v9", "--data", "t.bin"],
        &[
            "revision v9",
            "huggingface-cli download someone/tiny-llama --revision v9",
        ],
    );
    // the untied repo has no main branch
    e(
        &["hf://someone/untied", "--data", "t.bin"],
        &["revision main"],
    );
    // a dataset path is not a model
    e(
        &["hf://datasets/someone/data/x.txt", "--data", "t.bin"],
        &["dataset"],
    );
    // a shard listed in the index but missing from the snapshot
    std::fs::remove_file(h.sharded.join("model-00002-of-00002.safetensors")).unwrap();
    e(
        &["hf://someone/tiny-llama", "--data", "t.bin"],
        &["model-00002-of-00002.safetensors"],
    );
}
