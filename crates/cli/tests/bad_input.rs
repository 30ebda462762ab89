//! docs/bad-input.md, row by row: each command, run as written in a folder set up as the page
//! describes, exits with code 1 and prints exactly the one line the page shows (`…` matching
//! what depends on the machine).

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn exe(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_train-lm"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{name} is not built next to train-lm; run the tests with --workspace"
    );
    path
}

/// (command, expected line) of every table row: both cells are `code`.
fn rows(doc: &str) -> Vec<(String, String)> {
    doc.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            if cells.len() != 2 {
                return None;
            }
            let cmd = cells[0]
                .trim_start_matches('|')
                .trim()
                .strip_prefix('`')?
                .strip_suffix('`')?;
            let err = cells[1]
                .trim_end_matches('|')
                .trim()
                .strip_prefix('`')?
                .strip_suffix('`')?;
            Some((cmd.to_string(), err.to_string()))
        })
        .collect()
}

/// Whether `line` is `pattern`, where each `…` in the pattern stands for any text.
fn matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let mut rest = match line.strip_prefix(parts[0]) {
        Some(r) => r,
        None => return false,
    };
    for (i, part) in parts.iter().enumerate().skip(1) {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

fn set_up(dir: &Path) {
    let trained = finish(
        tiny_train_lm(dir)
            .args(["--steps", "2", "--eval-at", "2", "--run-dir", "run"])
            .current_dir(dir),
    );
    assert_eq!(trained.code, 0, "{}", trained.stderr);
    let ckpt = dir.join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::copy(
        dir.join("run/step-000002/config.json"),
        ckpt.join("config.json"),
    )
    .unwrap();
    let weights = std::fs::read(dir.join("run/step-000002/model.safetensors")).unwrap();
    std::fs::write(ckpt.join("model.safetensors"), &weights[..100]).unwrap();
    std::fs::create_dir_all(dir.join("bert")).unwrap();
    std::fs::write(dir.join("bert/config.json"), r#"{"model_type": "bert"}"#).unwrap();
    std::fs::write(dir.join("bert/model.safetensors"), &weights).unwrap();
    std::fs::write(dir.join("notes.txt"), "hello\n").unwrap();
    std::fs::write(dir.join("tiny.txt"), "x").unwrap();
    std::fs::write(dir.join("typo.toml"), "[model]\nhiden_size = 64\n").unwrap();
}

#[test]
fn every_row_of_the_bad_input_page_holds() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/bad-input.md"),
    )
    .unwrap();
    let rows = rows(&doc);
    assert!(rows.len() >= 20, "only {} rows found", rows.len());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    set_up(dir);
    for (cmd, expected) in rows {
        let mut words = cmd.split_whitespace();
        let program = exe(words.next().unwrap());
        let args: Vec<&str> = words.collect();
        let r = run(program.to_str().unwrap(), &args, dir, &[]);
        assert_eq!(r.code, 1, "`{cmd}`: exit {}; stderr: {}", r.code, r.stderr);
        assert!(!r.stderr.contains("panicked"), "`{cmd}`: {}", r.stderr);
        // Notices (a dropped evaluation step, say) may come first; the error is the last line.
        let last = r.stderr.lines().last().unwrap_or("");
        assert!(
            matches(&expected, last),
            "`{cmd}`:\n  expected {expected}\n  got      {last}"
        );
    }
    // Nothing was written by the failed commands: no run folder r1 was left behind.
    assert!(!dir.join("r1").exists());
}

#[test]
fn the_wildcard_matches_only_what_it_should() {
    assert!(matches("error: a (dir …)", "error: a (dir /tmp/x)"));
    assert!(!matches("error: a (dir …)", "error: b (dir /tmp/x)"));
    assert!(matches("exact", "exact"));
    assert!(!matches("exact", "exact and more"));
}
