//! `eval-ppl` on local sources: a run directory reproduces the `val_ppl` its eval.jsonl logged
//! (a run built by hand through the library, and a real `train-lm` run), checkpoint folders and
//! single files score `--data` in every form, and every bad input ends in one `error:` line and
//! exit code 1.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::*;
use dynact_data::{prepare_dataset, shard, DataConfig, TokenStream, Tokenizer};
use dynact_model::{DynActConfig, FfnKind, ModelConfig};
use dynact_run::RunDir;
use dynact_trainer::config::RunConfig;
use dynact_trainer::eval::evaluate;

/// Builds a run directory by hand: run.toml, a checkpoint at `step`, `latest`, and the
/// eval.jsonl line train-lm would write, computed with the library's `evaluate`. Returns the
/// logged val_ppl.
fn hand_made_run(root: &Path, ffn: FfnKind, step: u64) -> f64 {
    let mut cfg = RunConfig {
        model: ModelConfig {
            dynact: DynActConfig {
                alpha_init: 0.8,
                beta_init: 0.3,
                ..DynActConfig::default()
            },
            ..tiny(ffn)
        },
        data: DataConfig {
            source: "builtin".into(),
            builtin_bytes: 30_000,
            cache_dir: root.join("cache"),
            ..DataConfig::default()
        },
        ..RunConfig::default()
    };
    cfg.train.seq_len = 24;
    cfg.eval.batch_size = 5;
    let run = RunDir::new(root.join("run"));
    std::fs::create_dir_all(&run.path).unwrap();
    std::fs::write(run.file("run.toml"), cfg.to_toml()).unwrap();
    let ds = prepare_dataset(&cfg.data).unwrap();
    let (_, model) = write_checkpoint(&run.step_dir(step), &cfg.model, 3, true);
    ds.tokenizer.save(&run.file("tokenizer.json")).unwrap();
    std::fs::write(run.file("latest"), format!("step-{step:06}")).unwrap();
    let lens = ds.tokenizer.token_byte_lengths();
    let r = evaluate(
        &model,
        &ds.val,
        cfg.train.seq_len,
        cfg.eval.batch_size,
        None,
        Some(&lens),
        &Device::Cpu,
        |_, _| {},
    )
    .unwrap();
    let line = serde_json::json!({"step": step, "tokens_seen": 0, "val_ce": r.ce,
        "val_ppl": r.ppl, "val_bpb": r.bpb, "elapsed_s": 0.0});
    run.append_jsonl("eval.jsonl", &line).unwrap();
    r.ppl
}

fn logged_val_ppl(run: &Path, step: u64) -> f64 {
    let text = std::fs::read_to_string(run.join("eval.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["step"] == step)
        .unwrap_or_else(|| panic!("no eval line for step {step} in {text}"))["val_ppl"]
        .as_f64()
        .unwrap()
}

#[test]
fn run_dir_reproduces_the_logged_val_ppl_for_both_ffns() {
    for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
        let dir = tempfile::tempdir().unwrap();
        let logged = hand_made_run(dir.path(), ffn, 7);
        let run = dir.path().join("run");
        let run_s = run.to_str().unwrap();
        for args in [vec![run_s, "--json"], vec![run_s, "--step", "7", "--json"]] {
            let v = json_of(&eval_ppl(&args, dir.path(), &[]));
            let ppl = v["ppl"].as_f64().unwrap();
            assert!(rel_diff(ppl, logged) < 1e-6, "{ffn:?}: {ppl} vs {logged}");
            assert_eq!(v["step"], 7);
            assert_eq!(v["seq_len"], 24);
            assert!(v["bpb"].as_f64().unwrap() > 0.0);
            assert!((v["ce"].as_f64().unwrap().exp() - ppl).abs() < 1e-9 * ppl);
        }
        // Batching does not change the number; --max-tokens cuts whole windows.
        let v = json_of(&eval_ppl(
            &[run_s, "--batch-size", "3", "--json"],
            dir.path(),
            &[],
        ));
        assert!(rel_diff(v["ppl"].as_f64().unwrap(), logged) < 1e-5);
        let v = json_of(&eval_ppl(
            &[run_s, "--max-tokens", "100", "--json"],
            dir.path(),
            &[],
        ));
        assert_eq!(
            (v["windows"].as_u64(), v["tokens"].as_u64()),
            (Some(4), Some(96))
        );
        // the human-readable form names every number
        let r = eval_ppl(&[run_s], dir.path(), &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        for key in [
            "perplexity",
            "cross-entropy",
            "bits per byte",
            "tokens scored",
            "windows",
            "seconds",
            "tokens/s",
        ] {
            assert!(r.stdout.contains(key), "{key} missing: {}", r.stdout);
        }
    }
}

/// The real thing: train-lm writes a run, eval-ppl on its step-2 checkpoint gives the
/// val_ppl train-lm logged at step 2.
#[test]
fn eval_ppl_matches_train_lm_logged_val_ppl() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let args = [
        "--steps",
        "4",
        "--eval-at",
        "2",
        "--run-dir",
        run_s,
        "--set",
        "train.batch_size=2",
        "--set",
        "train.seq_len=32",
        "--set",
        "model.hidden_size=32",
        "--set",
        "model.intermediate_size=64",
        "--set",
        "model.num_hidden_layers=1",
        "--set",
        "model.num_attention_heads=2",
        "--set",
        "model.num_key_value_heads=2",
        "--set",
        "data.builtin_bytes=200000",
        "--set",
        "optim.warmup_steps=1",
    ];
    let t = run_bin_train(&args, dir.path());
    assert_eq!(t.code, 0, "train-lm failed: {}", t.stderr);
    let logged = logged_val_ppl(&run, 2);
    let v = json_of(&eval_ppl(
        &[run_s, "--step", "2", "--json"],
        dir.path(),
        &[],
    ));
    let ppl = v["ppl"].as_f64().unwrap();
    assert!(
        rel_diff(ppl, logged) < 1e-6,
        "eval-ppl {ppl} vs logged {logged}"
    );
    // and the latest checkpoint (step 4) against its own line
    let v = json_of(&eval_ppl(&[run_s, "--json"], dir.path(), &[]));
    assert!(rel_diff(v["ppl"].as_f64().unwrap(), logged_val_ppl(&run, 4)) < 1e-6);
}

fn run_bin_train(args: &[&str], cwd: &Path) -> Run {
    run(env!("CARGO_BIN_EXE_train-lm"), args, cwd, &[])
}

#[test]
fn checkpoint_folder_and_file_score_text_and_token_shards() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let cfg = tiny(FfnKind::Dynactglu);
    let (_, model) = write_checkpoint(&ckpt, &cfg, 11, true);
    let text = "The cat sat on the mat. ".repeat(20);
    std::fs::write(dir.path().join("t.txt"), &text).unwrap();
    let tokens = Tokenizer::bytes().encode(&text).unwrap();
    shard::write_shard(&dir.path().join("t.bin"), &tokens, 257).unwrap();
    let expected = evaluate(
        &model,
        &TokenStream::from_tokens(tokens.clone()),
        32,
        4,
        None,
        None,
        &Device::Cpu,
        |_, _| {},
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let cache_s = cache.to_str().unwrap();
    let weights = ckpt.join("model.safetensors");
    for source in [ckpt.to_str().unwrap(), weights.to_str().unwrap()] {
        for data in ["t.txt", "t.bin"] {
            let v = json_of(&eval_ppl(
                &[
                    source,
                    "--data",
                    data,
                    "--seq-len",
                    "32",
                    "--cache-dir",
                    cache_s,
                    "--json",
                ],
                dir.path(),
                &[],
            ));
            assert!(rel_diff(v["ppl"].as_f64().unwrap(), expected.ppl) < 1e-6);
            assert_eq!(v["tokens"].as_u64().unwrap() as usize, expected.tokens);
            assert_eq!(v["windows"].as_u64().unwrap() as usize, expected.windows);
            // bits per byte: every byte token is one byte of text
            let bpb = v["bpb"].as_f64().unwrap();
            assert!((bpb - expected.ce / std::f64::consts::LN_2).abs() < 1e-9);
        }
    }
    // --split val scores the held-out last 10% of the shard
    let v = json_of(&eval_ppl(
        &[
            ckpt.to_str().unwrap(),
            "--data",
            "t.bin",
            "--split",
            "val",
            "--seq-len",
            "8",
            "--json",
        ],
        dir.path(),
        &[],
    ));
    let n = tokens.len();
    let val_len = n - (n as f64 * 0.9).floor() as usize;
    assert_eq!(v["windows"].as_u64().unwrap() as usize, (val_len - 1) / 8);
    // bf16 compute runs and lands near the f32 number
    let v = json_of(&eval_ppl(
        &[
            ckpt.to_str().unwrap(),
            "--data",
            "t.bin",
            "--seq-len",
            "32",
            "--dtype",
            "bf16",
            "--json",
        ],
        dir.path(),
        &[],
    ));
    assert!(rel_diff(v["ppl"].as_f64().unwrap(), expected.ppl) < 0.05);
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = d.join("ckpt");
    let cfg = tiny(FfnKind::Swiglu);
    let (varmap, _) = write_checkpoint(&ckpt, &cfg, 5, true);
    std::fs::write(d.join("t.txt"), "some text to score. ".repeat(20)).unwrap();
    let ckpt_s = ckpt.to_str().unwrap();
    let e = |args: &[&str], needles: &[&str]| assert_error(&eval_ppl(args, d, &[]), needles);

    // file not found
    e(
        &["nope/model.safetensors", "--data", "t.txt"],
        &["nope/model.safetensors", "no such file"],
    );
    // not a safetensors file
    let junk = d.join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::copy(ckpt.join("config.json"), junk.join("config.json")).unwrap();
    std::fs::write(
        junk.join("model.safetensors"),
        "this is not a safetensors file",
    )
    .unwrap();
    e(
        &[junk.to_str().unwrap(), "--data", "t.txt"],
        &["not a readable safetensors file"],
    );
    // not even named like one
    std::fs::write(d.join("weights.pt"), "pickle").unwrap();
    e(
        &["weights.pt", "--data", "t.txt"],
        &["weights.pt", "not a safetensors file"],
    );
    // a truncated file
    let cut = d.join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::copy(ckpt.join("config.json"), cut.join("config.json")).unwrap();
    let bytes = std::fs::read(ckpt.join("model.safetensors")).unwrap();
    std::fs::write(cut.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    e(
        &[
            cut.join("model.safetensors").to_str().unwrap(),
            "--data",
            "t.txt",
        ],
        &["safetensors"],
    );
    // a corrupt header (garbage where the JSON header is)
    let mut bad = bytes.clone();
    for b in bad.iter_mut().skip(8).take(16) {
        *b = 0xFF;
    }
    std::fs::write(cut.join("model.safetensors"), &bad).unwrap();
    e(
        &[cut.to_str().unwrap(), "--data", "t.txt"],
        &["safetensors"],
    );
    // config and tensors disagree: the tensor is named
    let wide = d.join("wide");
    write_checkpoint(&wide, &cfg, 5, true);
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(wide.join("config.json")).unwrap()).unwrap();
    c["intermediate_size"] = 96.into();
    std::fs::write(wide.join("config.json"), c.to_string()).unwrap();
    e(
        &[wide.to_str().unwrap(), "--data", "t.txt"],
        &["model.layers.0.mlp.gate_proj.weight", "[96, 32]"],
    );
    // a missing tensor is named too
    let holes = d.join("holes");
    write_checkpoint(&holes, &cfg, 5, true);
    let kept: Vec<_> = tensors_as(&varmap, DType::F32)
        .into_iter()
        .filter(|(k, _)| k != "model.norm.weight")
        .collect();
    write_tensors(&holes.join("model.safetensors"), &kept);
    e(
        &[holes.to_str().unwrap(), "--data", "t.txt"],
        &["model.norm.weight", "missing"],
    );
    // text data but no tokenizer
    let bare = d.join("bare");
    write_checkpoint(&bare, &cfg, 5, false);
    e(
        &[bare.to_str().unwrap(), "--data", "t.txt"],
        &["tokenizer", "--tokenizer"],
    );
    // token ids outside the vocab
    shard::write_shard(&d.join("big.bin"), &[1, 2, 300, 4, 5, 6], 1000).unwrap();
    e(
        &[ckpt_s, "--data", "big.bin", "--seq-len", "2"],
        &["300", "257"],
    );
    // --seq-len above the model's maximum
    e(
        &[ckpt_s, "--data", "t.txt", "--seq-len", "65"],
        &["--seq-len 65", "max_position_embeddings 64"],
    );
    // no data for a plain checkpoint; --step on something that is not a run; no config
    e(&[ckpt_s], &["--data"]);
    e(&[ckpt_s, "--data", "t.txt", "--step", "3"], &["--step"]);
    std::fs::copy(ckpt.join("model.safetensors"), d.join("alone.safetensors")).unwrap();
    e(
        &["alone.safetensors", "--data", "t.txt"],
        &["config.json", "--config"],
    );
    e(
        &[d.to_str().unwrap(), "--data", "t.txt"],
        &["neither a checkpoint folder"],
    );
    // data too short for one window; a data source that does not exist
    std::fs::write(d.join("short.txt"), "ab").unwrap();
    e(
        &[ckpt_s, "--data", "short.txt", "--seq-len", "8"],
        &["needs 9"],
    );
    e(&[ckpt_s, "--data", "missing.txt"], &["missing.txt"]);
}

#[test]
fn run_dir_without_the_step_or_a_test_split_says_so() {
    let dir = tempfile::tempdir().unwrap();
    hand_made_run(dir.path(), FfnKind::Swiglu, 2);
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    assert_error(
        &eval_ppl(&[run_s, "--step", "5"], dir.path(), &[]),
        &["step 5", "checkpoints: 2"],
    );
    assert_error(
        &eval_ppl(&[run_s, "--split", "test"], dir.path(), &[]),
        &["no test split", "--data"],
    );
}
