//! The binaries as a new user meets them: `--help` texts, resuming a run that is already
//! complete, a checkpoint folder of a run given to eval-ppl, and the evaluation cap.

mod common;

use std::path::Path;

use common::*;

fn train(dir: &Path, args: &[&str]) -> Run {
    tiny_train(dir, args, &[])
}

fn eval_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every file under `dir` with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_train_lm_flag_names_its_config_key_and_default() {
    let r = run(
        env!("CARGO_BIN_EXE_train-lm"),
        &["--help"],
        Path::new("."),
        &[],
    );
    assert_eq!(r.code, 0);
    for (flag, key, default) in [
        ("--seed", "seed", "0"),
        ("--steps", "train.steps", "400"),
        ("--eval-every", "eval.eval_every", "0"),
        ("--batch-size", "train.batch_size", "16"),
        ("--grad-accum", "train.grad_accum", "1"),
        ("--lr", "optim.lr", "0.002"),
        ("--seq-len", "train.seq_len", "128"),
    ] {
        let line = r
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(flag) && l.contains(&format!("{flag} <")))
            .unwrap_or_else(|| panic!("{flag} not in --help:\n{}", r.stdout));
        assert!(
            line.contains(&format!("[sets {key}; without --config: {default}]")),
            "{line}"
        );
    }
    for (exe, about) in [
        (env!("CARGO_BIN_EXE_generate"), "Continue a prompt"),
        (env!("CARGO_BIN_EXE_eval-ppl"), "Perplexity of a checkpoint"),
    ] {
        let r = run(exe, &["--help"], Path::new("."), &[]);
        assert!(r.stdout.starts_with(about), "{}", r.stdout);
    }
}

#[test]
fn resuming_a_complete_run_says_so_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = train(
        dir.path(),
        &["--steps", "3", "--eval-at", "3", "--run-dir", "run"],
    );
    assert_eq!(t.code, 0, "{}", t.stderr);
    let run = dir.path().join("run");
    // Every metrics line carries the ETA and the MFU (CPU: against a measured matmul peak).
    for line in std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(m["eta_s"].as_f64().is_some_and(|e| e >= 0.0), "{line}");
        assert!(
            m["mfu"].as_f64().is_some_and(|u| u > 0.0 && u < 1.0),
            "{line}"
        );
    }
    assert!(
        t.stderr.contains(" mfu ") && t.stderr.contains(" eta "),
        "{}",
        t.stderr
    );
    let before = snapshot(&run);
    let r = train(dir.path(), &["--resume", "run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("already complete at step 3")
            && r.stdout.contains("train-lm --resume run --steps 6"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("tokens/s"), "{}", r.stdout);
    assert!(snapshot(&run) == before, "the run directory changed");
}

#[test]
fn a_checkpoint_folder_of_a_run_is_scored_on_the_runs_validation_set() {
    let dir = tempfile::tempdir().unwrap();
    let t = train(
        dir.path(),
        &["--steps", "4", "--eval-at", "2", "--run-dir", "run"],
    );
    assert_eq!(t.code, 0, "{}", t.stderr);
    let logged = eval_lines(&dir.path().join("run"))[0]["val_ppl"]
        .as_f64()
        .unwrap();
    let v = json_of(&eval_ppl(&["run/step-000002", "--json"], dir.path(), &[]));
    assert_eq!(v["step"], 2);
    assert!(rel_diff(v["ppl"].as_f64().unwrap(), logged) < 1e-9);
    // From inside the run directory too.
    let v = json_of(&eval_ppl(
        &["step-000002", "--json"],
        &dir.path().join("run"),
        &[],
    ));
    assert!(rel_diff(v["ppl"].as_f64().unwrap(), logged) < 1e-9);
    assert_error(
        &eval_ppl(&["run/step-000002", "--step", "4"], dir.path(), &[]),
        &["--step 4", "different checkpoints"],
    );
}

#[test]
fn eval_max_tokens_caps_evaluation_and_eval_ppl_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = train(
        dir.path(),
        &[
            "--steps",
            "2",
            "--eval-at",
            "2",
            "--run-dir",
            "run",
            "--set",
            "eval.max_tokens=100",
        ],
    );
    assert_eq!(t.code, 0, "{}", t.stderr);
    let line = &eval_lines(&dir.path().join("run"))[0];
    // Windows of train.seq_len 32: three fit in 100 tokens.
    assert_eq!(line["val_tokens"], 96);
    let v = json_of(&eval_ppl(&["run", "--json"], dir.path(), &[]));
    assert_eq!(v["tokens"], 96);
    assert!(
        rel_diff(
            v["ppl"].as_f64().unwrap(),
            line["val_ppl"].as_f64().unwrap()
        ) < 1e-9
    );
    let all = json_of(&eval_ppl(
        &["run", "--json", "--max-tokens", "0"],
        dir.path(),
        &[],
    ));
    assert!(all["tokens"].as_u64().unwrap() > 96, "{all}");

    let r = train(
        dir.path(),
        &[
            "--steps",
            "2",
            "--run-dir",
            "other",
            "--set",
            "eval.max_tokens=10",
        ],
    );
    assert_error(&r, &["eval.max_tokens 10", "train.seq_len 32"]);
}
