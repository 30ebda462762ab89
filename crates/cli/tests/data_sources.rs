//! train-lm on a parquet corpus (written by the test, read row group by row group) with a
//! tokenizer from a Hugging Face cache laid out by the test (`--tokenizer hf://OWNER/NAME`,
//! HF_HUB_OFFLINE=1).

mod common;

use std::path::Path;

use common::*;
use dynact_data::parquet_source::write_string_columns;
use dynact_data::Tokenizer;

/// `models--OWNER--NAME` with `refs/main` and a snapshot holding `tokenizer.json`.
fn hub_with_tokenizer(hub: &Path, repo: &str, tokenizer: &Tokenizer) {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let root = hub.join(format!("models--{}", repo.replace('/', "--")));
    let snap = root.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), commit).unwrap();
    tokenizer.save(&snap.join("tokenizer.json")).unwrap();
}

#[test]
fn a_parquet_corpus_trains_with_a_tokenizer_from_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let stories = dynact_data::builtin::stories(3, 60_000);
    let texts: Vec<Option<&str>> = stories.iter().map(|s| Some(s.as_str())).collect();
    let ids: Vec<String> = (0..stories.len()).map(|i| format!("doc{i}")).collect();
    let ids: Vec<Option<&str>> = ids.iter().map(|s| Some(s.as_str())).collect();
    let corpus = dir.path().join("stories.parquet");
    write_string_columns(&corpus, &[("id", ids), ("story", texts)], 16).unwrap();

    let tokenizer = Tokenizer::train_bpe(stories.iter().map(|s| s.as_str()), 320).unwrap();
    let home = dir.path().join("hf-home");
    hub_with_tokenizer(&home.join("hub"), "someone/story-tokenizer", &tokenizer);

    let out = tiny_train_lm(dir.path())
        .args([
            "--data",
            corpus.to_str().unwrap(),
            "--set",
            "data.text_column=\"story\"",
        ])
        .args(["--tokenizer", "hf://someone/story-tokenizer"])
        .args([
            "--steps",
            "30",
            "--eval-at",
            "30",
            "--run-dir",
            "run",
            "--lr",
            "0.01",
        ])
        .current_dir(dir.path())
        .env("HF_HOME", &home)
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let run = dir.path().join("run");
    assert_eq!(
        Tokenizer::from_file(&run.join("tokenizer.json"))
            .unwrap()
            .vocab_size(),
        tokenizer.vocab_size()
    );
    let losses: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.8 * first, "loss did not fall: {first} -> {last}");

    // The wrong column, and a Hub tokenizer that is not cached, are one line each.
    let r = run_train(
        dir.path(),
        &home,
        &["--data", corpus.to_str().unwrap(), "--run-dir", "r2"],
    );
    assert_error(&r, &["no column \"text\"", "id, story", "data.text_column"]);
    let r = run_train(
        dir.path(),
        &home,
        &["--tokenizer", "hf://someone/missing", "--run-dir", "r3"],
    );
    assert_error(&r, &["someone/missing", "tokenizer.json", "HF_HUB_OFFLINE"]);
}

fn run_train(cwd: &Path, home: &Path, args: &[&str]) -> Run {
    tiny_train(cwd, args, &[("HF_HOME", home)])
}
