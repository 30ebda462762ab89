//! `eval.sample_tokens`: at every evaluation the model continues a fixed prompt with the run's
//! seed into samples.jsonl; a resumed run rewrites the samples after its checkpoint, as it
//! rewrites its other logs.

mod common;

use common::*;
use dynact_run::SampleRecord;

#[test]
fn samples_are_written_at_each_evaluation_and_resume_reproduces_them() {
    let dir = tempfile::tempdir().unwrap();
    let r = finish(
        tiny_train_lm(dir.path())
            .args(["--steps", "4", "--eval-at", "2,4", "--run-dir", "run"])
            .args([
                "--set",
                "eval.sample_tokens=16",
                "--set",
                "eval.sample_prompt=\"The \"",
            ])
            .current_dir(dir.path()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("sample step 2: \"The \" -> "),
        "{}",
        r.stderr
    );
    let path = dir.path().join("run/samples.jsonl");
    let samples: Vec<SampleRecord> = records(&path);
    assert_eq!(samples.iter().map(|s| s.step).collect::<Vec<_>>(), [2, 4]);
    for s in &samples {
        assert_eq!(
            (s.tokens, s.prompt.as_str(), s.temperature),
            (16, "The ", 0.8)
        );
        // An untrained byte-level model writes bytes that are not all UTF-8: the text has
        // them replaced, one character each at most.
        assert!((1..=16).contains(&s.text.chars().count()), "{:?}", s.text);
    }

    // Back to the checkpoint at step 2: the run goes on from there, bit for bit, and writes
    // the same sample at step 4 in place of the one it replaces.
    let before = std::fs::read_to_string(&path).unwrap();
    std::fs::write(dir.path().join("run/latest"), "step-000002").unwrap();
    let again = finish(
        tiny_train_lm(dir.path())
            .args(["--resume", "run"])
            .current_dir(dir.path()),
    );
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);

    // An empty prompt is refused before the run starts.
    let bad = finish(
        tiny_train_lm(dir.path())
            .args(["--steps", "2", "--run-dir", "bad"])
            .args([
                "--set",
                "eval.sample_tokens=4",
                "--set",
                "eval.sample_prompt=",
            ])
            .current_dir(dir.path()),
    );
    assert_error(&bad, &["eval.sample_prompt is empty"]);
    assert!(!dir.path().join("bad").exists());
}
