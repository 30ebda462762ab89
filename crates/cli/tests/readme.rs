//! Every `sh` and `python` block of README.md, run as written, in order, in a scratch copy of
//! the repository (the files git tracks, as a fresh clone has them), with the built binaries
//! on PATH. Fails on the first command that fails. What it changes, and why:
//! - `cargo run --release --bin X --` runs the built `X`; other `cargo` lines (test, install,
//!   bench) are not run: this test is part of `cargo test`, and CI builds everything anyway.
//! - the cpu-repro grid trains 30 steps per run instead of 3,430 (half an hour on 2 cores).
//! - `python` blocks run when `$DYNACT_PYTHON` (else `python3`) imports transformers; they are
//!   skipped, saying so, otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Commands too long for a test, and what is appended to them.
const SHORTER: &[(&str, &str)] = &[(
    "--config configs/cpu-repro.toml --ffn swiglu,dynactglu --seeds 0,1,2",
    " --steps 30 --set eval.max_tokens=4096",
)];

struct Block {
    lang: String,
    /// Commands (continuation lines joined) or, for python, the whole script.
    body: Vec<String>,
    line: usize,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut out = vec![];
    let mut current: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                current = Some(Block {
                    lang: lang.trim().to_string(),
                    body: vec![],
                    line: i + 1,
                })
            }
            (Some(_), Some(_)) => out.push(current.take().unwrap()),
            (Some(b), None) => match b.body.last_mut() {
                Some(prev) if prev.ends_with('\\') => {
                    prev.pop();
                    prev.push_str(line.trim_start());
                }
                _ => b.body.push(line.to_string()),
            },
            (None, None) => {}
        }
    }
    out.retain(|b| b.lang == "sh" || b.lang == "python");
    out
}

/// The repository's tracked files copied to `dest`.
fn scratch_copy(repo: &Path, dest: &Path) {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git ls-files failed");
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let rel = Path::new(std::str::from_utf8(name).unwrap());
        let (from, to) = (repo.join(rel), dest.join(rel));
        if from.is_file() {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&from, &to).unwrap();
        }
    }
}

/// The shell command to run for a README line, or None when it is not run.
fn command_for(line: &str) -> Option<String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut cmd = match line.strip_prefix("cargo run --release --bin ") {
        Some(rest) => {
            let (bin, args) = rest.split_once(' ').unwrap_or((rest, ""));
            let args = args.trim_start();
            let args = args.strip_prefix("--").unwrap_or(args);
            format!("{bin} {args}")
        }
        None if line.starts_with("cargo ") => return None,
        None => line.to_string(),
    };
    for (pattern, extra) in SHORTER {
        if cmd.contains(pattern) {
            // Before a trailing comment, if any.
            match cmd.find(" #") {
                Some(at) => cmd.insert_str(at, extra),
                None => cmd.push_str(extra),
            }
        }
    }
    Some(cmd)
}

fn python() -> Option<String> {
    let py = std::env::var("DYNACT_PYTHON").unwrap_or_else(|_| "python3".into());
    Command::new(&py)
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(py)
}

#[test]
fn every_readme_command_runs_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("dynact-lm");
    scratch_copy(&repo, &work);

    let train_lm = PathBuf::from(env!("CARGO_BIN_EXE_train-lm"));
    let bin_dir = train_lm.parent().unwrap().to_path_buf();
    if !bin_dir.join("compare-runs").is_file() {
        eprintln!(
            "skipped: compare-runs is not built next to train-lm; run the tests with --workspace"
        );
        return;
    }
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut ran = 0;
    for block in blocks(&readme) {
        if block.lang == "python" {
            let Some(py) = python() else {
                eprintln!(
                    "README.md:{}: python block skipped (no transformers)",
                    block.line
                );
                continue;
            };
            let out = Command::new(py)
                .arg("-c")
                .arg(block.body.join("\n"))
                .current_dir(&work)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "README.md:{}: the python block failed:\n{}",
                block.line,
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
            continue;
        }
        for line in &block.body {
            let Some(cmd) = command_for(line) else {
                continue;
            };
            eprintln!("README.md:{}: {cmd}", block.line);
            let out = Command::new("bash")
                .args(["-c", &cmd])
                .current_dir(&work)
                .env("PATH", &path)
                .env("HF_HUB_OFFLINE", "1")
                .output()
                .unwrap();
            let tail = |b: &[u8]| {
                let s = String::from_utf8_lossy(b).into_owned();
                s.lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert!(
                out.status.success(),
                "README.md:{}: `{cmd}` failed ({}):\n{}\n{}",
                block.line,
                out.status,
                tail(&out.stdout),
                tail(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 8, "only {ran} README commands found");
}

#[test]
fn cargo_lines_map_to_the_built_binaries() {
    assert_eq!(
        command_for("cargo run --release --bin train-lm            # the default job").as_deref(),
        Some("train-lm # the default job")
    );
    assert_eq!(
        command_for("cargo run --release --bin train-lm -- --steps 3").as_deref(),
        Some("train-lm  --steps 3")
    );
    assert_eq!(command_for("cargo test --release --workspace"), None);
    let grid = command_for(
        "train-lm --config configs/cpu-repro.toml --ffn swiglu,dynactglu --seeds 0,1,2 --jobs 2",
    )
    .unwrap();
    assert!(
        grid.ends_with("--jobs 2 --steps 30 --set eval.max_tokens=4096"),
        "{grid}"
    );
}
