//! Data-parallel training over MPI ranks (`--features mpi`, `mpirun` on the PATH): two ranks
//! train as one process with the same global batch (losses, final weights, evaluation), a
//! two-rank run killed mid-way resumes bit for bit, and a run continues on another number of
//! ranks. Without the feature, a process started by an MPI launcher is refused with one line, as
//! is a torchrun-style launch on CPUs (or on GPUs without NCCL).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A one-layer model with dropout, 2 sequences per micro-batch, 2 micro-batches per step.
fn tiny_args(dir: &Path, ffn: &str, steps: u64, eval_at: &str, run: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "model.hidden_size=32",
        "model.intermediate_size=64",
        "model.num_hidden_layers=1",
        "model.num_attention_heads=2",
        "model.num_key_value_heads=2",
        "model.dropout=0.1",
        "data.builtin_bytes=100000",
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.seq_len=32",
        "train.log_every=1",
        // One thread per rank: two ranks on two cores.
        "train.threads=1",
    ]
    .iter()
    .flat_map(|kv| ["--set".to_string(), kv.to_string()])
    .collect();
    let cache = format!("data.cache_dir=\"{}\"", dir.join("cache").display());
    args.extend(["--set".into(), cache]);
    for a in [
        "--ffn",
        ffn,
        "--steps",
        &steps.to_string(),
        "--eval-at",
        eval_at,
        "--run-dir",
        run,
    ] {
        args.push(a.to_string());
    }
    args
}

/// `mpirun -np N train-lm ARGS` (root is allowed: CI machines run as root).
fn mpirun(n: usize, args: &[String], dir: &Path) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &n.to_string(),
    ])
    .arg(env!("CARGO_BIN_EXE_train-lm"))
    .args(args)
    .current_dir(dir)
    .env("HF_HUB_OFFLINE", "1");
    cmd
}

fn single(args: &[String], dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train-lm"));
    cmd.args(args).current_dir(dir).env("HF_HUB_OFFLINE", "1");
    cmd
}

/// True when the tests can launch ranks; otherwise says why they are skipped.
fn can_launch() -> bool {
    if !cfg!(feature = "mpi") {
        eprintln!("skipped: built without the mpi feature (cargo test --features mpi)");
        return false;
    }
    let ok = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: no mpirun on the PATH");
    }
    ok
}

fn ok(mut cmd: Command) -> Run {
    let r = finish(&mut cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r
}

/// (step, loss, grad_norm) of every line of a run's metrics.jsonl.
fn metrics(run: &Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
                v["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn val_ppl(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["val_ppl"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// The weights of the run's latest checkpoint, by name.
fn weights(run: &Path) -> Vec<(String, Vec<f32>)> {
    let latest = std::fs::read_to_string(run.join("latest")).unwrap();
    let file = run.join(latest.trim()).join("model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn assert_close(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], tol: f64) {
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            let d = (x - y).abs() as f64;
            assert!(d <= tol * (y.abs() as f64).max(1e-3), "{na}: {x} vs {y}");
        }
    }
}

#[test]
fn two_ranks_train_as_one_process_with_the_same_global_batch() {
    if !can_launch() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for ffn in ["swiglu", "dynactglu"] {
        let one = format!("one-{ffn}");
        let two = format!("two-{ffn}");
        ok(single(&tiny_args(d, ffn, 30, "15,30", &one), d));
        let r = ok(mpirun(2, &tiny_args(d, ffn, 30, "15,30", &two), d));
        assert!(r.stderr.contains("data parallel: 2 ranks"), "{}", r.stderr);
        let (m1, m2) = (metrics(&d.join(&one)), metrics(&d.join(&two)));
        assert_eq!(m1.len(), 30);
        assert_eq!(m2.len(), 30, "rank 0 alone writes the logs");
        for ((s1, l1, g1), (s2, l2, g2)) in m1.iter().zip(&m2) {
            assert_eq!(s1, s2);
            assert!(
                rel_diff(*l2, *l1) <= 1e-5,
                "{ffn} step {s1}: loss {l2} vs {l1}"
            );
            assert!(
                rel_diff(*g2, *g1) <= 1e-4,
                "{ffn} step {s1}: |g| {g2} vs {g1}"
            );
        }
        assert_close(&weights(&d.join(&two)), &weights(&d.join(&one)), 1e-5);
        let (p1, p2) = (val_ppl(&d.join(&one)), val_ppl(&d.join(&two)));
        assert_eq!(p1.len(), 2);
        for (a, b) in p1.iter().zip(&p2) {
            assert!(rel_diff(*b, *a) <= 1e-5, "{ffn}: val_ppl {b} vs {a}");
        }
    }
}

#[test]
fn a_two_rank_run_killed_mid_way_resumes_bit_for_bit_and_on_other_world_sizes() {
    if !can_launch() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let steps = 200;
    // The reference: two ranks, never interrupted.
    ok(mpirun(
        2,
        &tiny_args(d, "dynactglu", steps, "10,200", "whole"),
        d,
    ));

    // The same run, one rank killed (SIGKILL) once the step-10 checkpoint is there.
    let args = tiny_args(d, "dynactglu", steps, "10,200", "killed");
    let mut job = mpirun(2, &args, d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !d.join("killed/latest").exists() {
        assert!(job.try_wait().unwrap().is_none(), "the job ended early");
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ranks = String::from_utf8(
        Command::new("pgrep")
            .args(["-P", &job.id().to_string(), "-f", "train-lm"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let victim = ranks
        .lines()
        .last()
        .expect("the ranks are children of mpirun");
    Command::new("kill").args(["-9", victim]).status().unwrap();
    let status = job.wait().unwrap();
    assert!(!status.success(), "the job must fail when a rank dies");
    let latest = std::fs::read_to_string(d.join("killed/latest")).unwrap();
    assert_eq!(latest.trim(), "step-000010", "killed before the end");

    // Resumed on two ranks: every later loss, norm, evaluation and weight is the same bits.
    let mut resume = mpirun(2, &["--resume".to_string(), "killed".to_string()], d);
    resume.stdout(Stdio::null());
    ok(resume);
    assert_eq!(metrics(&d.join("killed")), metrics(&d.join("whole")));
    assert_eq!(val_ppl(&d.join("killed")), val_ppl(&d.join("whole")));
    assert_eq!(weights(&d.join("killed")), weights(&d.join("whole")));

    // A run may continue on another number of ranks with the same global batch: the step-10
    // checkpoint continued by one process follows the two-rank run to float rounding (its
    // first 30 steps are compared).
    let one = d.join("continued");
    std::fs::create_dir_all(&one).unwrap();
    for f in [
        "run.toml",
        "config.json",
        "tokenizer.json",
        "metrics.jsonl",
        "eval.jsonl",
    ] {
        std::fs::copy(d.join("whole").join(f), one.join(f)).unwrap();
    }
    Command::new("cp")
        .arg("-r")
        .arg(d.join("whole/step-000010"))
        .arg(&one)
        .status()
        .unwrap();
    std::fs::write(one.join("latest"), "step-000010").unwrap();
    ok(single(&["--resume".into(), "continued".into()], d));
    let (m1, m2) = (metrics(&one), metrics(&d.join("whole")));
    assert_eq!(m1.len(), steps as usize);
    for ((s, a, _), (_, b, _)) in m1.iter().zip(&m2).take(30) {
        assert!(rel_diff(*a, *b) <= 1e-5, "step {s}: {a} vs {b}");
    }
}

#[test]
fn bad_launches_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A torchrun-style launch (no MPI) is for NCCL ranks on GPUs: refused on CPUs, and on GPUs
    // by a build without NCCL.
    let torchrun = |device: &str| {
        let mut args = tiny_args(d, "swiglu", 2, "2", "run");
        args.extend(["--device".into(), device.into()]);
        let mut cmd = single(&args, d);
        cmd.env("RANK", "1")
            .env("WORLD_SIZE", "2")
            .env("LOCAL_RANK", "1");
        finish(&mut cmd)
    };
    assert_error(&torchrun("cpu"), &["torchrun-style", "mpirun"]);
    if !cfg!(feature = "nccl") {
        assert_error(
            &torchrun("cuda"),
            &["built without NCCL", "--features nccl"],
        );
    }
    assert!(!d.join("run").exists(), "nothing is written");
    if !cfg!(feature = "mpi") {
        // An MPI launcher's environment, and a train-lm without MPI.
        let r = finish(
            single(&tiny_args(d, "swiglu", 2, "2", "run"), d)
                .env("OMPI_COMM_WORLD_RANK", "0")
                .env("OMPI_COMM_WORLD_SIZE", "2"),
        );
        assert_error(&r, &["built without MPI", "--features mpi"]);
        return;
    }
    if !can_launch() {
        return;
    }
    let args: Vec<String> = tiny_args(d, "swiglu", 2, "2", "run")
        .into_iter()
        .map(|a| a.replace("train.grad_accum=2", "train.grad_accum=3"))
        .collect();
    let r = finish(&mut mpirun(2, &args, d));
    assert_ne!(r.code, 0);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {}", r.stderr));
    assert!(
        line.contains("train.grad_accum 3 cannot be split over 2 ranks"),
        "{line}"
    );
    assert!(!d.join("run").exists(), "nothing is written");
}
