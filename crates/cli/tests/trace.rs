//! `train-lm --trace FILE` writes the run's spans as a Chrome trace (a JSON array of events).

mod common;

use std::collections::BTreeSet;

use common::*;

#[test]
fn a_trace_holds_every_phase_of_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let r = finish(
        tiny_train_lm(dir.path())
            .args(["--steps", "3", "--eval-at", "2", "--run-dir", "run"])
            .args(["--trace", "trace.json"])
            .current_dir(dir.path()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(dir.path().join("trace.json")).unwrap();
    let events: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let names: BTreeSet<&str> = events.iter().filter_map(|e| e["name"].as_str()).collect();
    for phase in [
        "step",
        "data",
        "forward",
        "backward",
        "optimizer",
        "settle",
        "evaluation",
        "checkpoint",
    ] {
        assert!(names.contains(phase), "{phase} not in {names:?}");
    }
    // Three steps, each opened and closed once (or as one complete event).
    let steps = events
        .iter()
        .filter(|e| e["name"] == "step" && e["ph"] != "E")
        .count();
    assert_eq!(steps, 3, "{text}");

    let bad = finish(
        tiny_train_lm(dir.path())
            .args(["--steps", "1", "--run-dir", "bad"])
            .args(["--trace", "no/such/dir/trace.json"])
            .current_dir(dir.path()),
    );
    assert_error(&bad, &["--trace no/such/dir/trace.json", "cannot create"]);
    assert!(!dir.path().join("bad").exists());
}
