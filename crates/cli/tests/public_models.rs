//! `eval-ppl` and `generate` on public architectures (GPT-2, Qwen2, Mistral, Phi-3) from a
//! Hugging Face cache laid out by the test with HF_HUB_OFFLINE=1. The models are tiny random
//! ones whose files, and whose perplexity and greedy continuation computed by transformers,
//! were written by `tests/reference/make_arch_fixtures.py` into `tests/fixtures/archs/`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dynact_data::{shard, Tokenizer};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const ARCHS: &[&str] = &["gpt2", "qwen2", "mistral", "phi3"];

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/archs")
        .join(arch)
}

/// `models--test--tiny-<arch>` with the fixture's files in a snapshot named by refs/main.
fn lay_out(hub: &Path, arch: &str) {
    let root = hub.join(format!("models--test--tiny-{arch}"));
    let snap = root.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), COMMIT).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture(arch).join(f), snap.join(f)).unwrap();
    }
}

#[test]
fn public_architectures_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf-home");
    let env: &[(&str, &Path)] = &[("HF_HOME", &home)];
    for arch in ARCHS {
        lay_out(&home.join("hub"), arch);
        let expected: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(arch).join("expected.json")).unwrap(),
        )
        .unwrap();
        let ids: Vec<u32> = expected["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let bin = dir.path().join(format!("{arch}.bin"));
        shard::write_shard(&bin, &ids, 300).unwrap();
        let source = format!("hf://test/tiny-{arch}");

        // The token ids transformers scored, in the same windows.
        let ours = json_of(&eval_ppl(
            &[
                &source,
                "--data",
                bin.to_str().unwrap(),
                "--seq-len",
                "16",
                "--json",
            ],
            dir.path(),
            env,
        ));
        let (got, want) = (
            ours["ppl"].as_f64().unwrap(),
            expected["ppl"].as_f64().unwrap(),
        );
        eprintln!(
            "{arch}: eval-ppl {got}, transformers {want}, relative {:.1e}",
            rel_diff(got, want)
        );
        assert!(rel_diff(got, want) <= 1e-4, "{arch}: {got} vs {want}");
        assert_eq!(ours["tokens"], expected["tokens"]);
        assert_eq!(ours["model_type"], *arch);

        // The same text through the model's own tokenizer: the same ids, so the same number,
        // and bits per byte from that tokenizer.
        let text = dir.path().join(format!("{arch}.txt"));
        std::fs::write(&text, expected["text"].as_str().unwrap()).unwrap();
        let cache = dir.path().join("cache");
        let from_text = json_of(&eval_ppl(
            &[
                &source,
                "--data",
                text.to_str().unwrap(),
                "--seq-len",
                "16",
                "--json",
                "--cache-dir",
                cache.to_str().unwrap(),
            ],
            dir.path(),
            env,
        ));
        assert!(
            rel_diff(from_text["ppl"].as_f64().unwrap(), want) <= 1e-4,
            "{arch} text"
        );
        assert!(from_text["bpb"].as_f64().is_some_and(|b| b > 0.0));

        // Greedy decoding continues the prompt as transformers' generate does.
        let r = run(
            env!("CARGO_BIN_EXE_generate"),
            &[
                &source,
                "--prompt",
                expected["prompt"].as_str().unwrap(),
                "--temperature",
                "0",
                "--max-new-tokens",
                "8",
                "--ignore-eos",
            ],
            dir.path(),
            env,
        );
        assert_eq!(r.code, 0, "{arch}: {}", r.stderr);
        let greedy: Vec<u32> = expected["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let tok = Tokenizer::from_file(&fixture(arch).join("tokenizer.json")).unwrap();
        let want_text = format!(
            "{}{}",
            expected["prompt"].as_str().unwrap(),
            tok.decode(&greedy).unwrap()
        );
        assert_eq!(
            r.stdout.trim_end_matches('\n'),
            want_text,
            "{arch}: greedy text"
        );
    }

    // An architecture nobody implements is refused with the list of supported ones.
    let root = home.join("hub/models--test--tiny-bert");
    let snap = root.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), COMMIT).unwrap();
    std::fs::write(
        snap.join("config.json"),
        r#"{"model_type": "bert", "vocab_size": 10}"#,
    )
    .unwrap();
    std::fs::copy(
        fixture("gpt2").join("model.safetensors"),
        snap.join("model.safetensors"),
    )
    .unwrap();
    let r = eval_ppl(&["hf://test/tiny-bert", "--data", "x.bin"], dir.path(), env);
    assert_error(&r, &["bert", "gpt2, qwen2, mistral, phi3"]);
}
