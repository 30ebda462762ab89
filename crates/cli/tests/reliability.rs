//! A second writer and a full disk: a live run's directory is refused to a second train-lm
//! (new run or resume) with the owner named, a killed run's stale lock is taken over, and a
//! checkpoint that does not fit on the disk stops the run with one line saying how much room
//! was needed, leaving the previous checkpoint, `latest` and the logs valid and resumable; and
//! tokenizing a corpus 20 times larger takes no more memory (the text is streamed).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run_to_end(mut cmd: Command) -> Run {
    finish(&mut cmd)
}

/// A failure after the run started: exit code 1, no panic, and a last line `error: ...`
/// containing every needle (progress lines may come before it).
fn assert_failed_with(r: &Run, needles: &[&str]) {
    assert_eq!(r.code, 1, "expected exit 1; stderr: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let last = r.stderr.lines().last().unwrap_or("");
    assert!(last.starts_with("error: "), "{}", r.stderr);
    for n in needles {
        assert!(last.contains(n), "`{n}` not in: {last}");
    }
}

fn wait_for(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_live_run_has_one_writer_and_a_killed_one_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut first = tiny_train_lm(d)
        .args(["--steps", "10000000", "--eval-at", "1", "--run-dir", "run"])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&d.join("run/latest"), &mut first);
    let owner = format!("pid {}", first.id());

    let mut second = tiny_train_lm(d);
    second
        .args(["--steps", "5", "--run-dir", "run"])
        .current_dir(d);
    assert_failed_with(
        &run_to_end(second),
        &[&owner, "another train-lm", "run.lock"],
    );
    let mut resume = tiny_train_lm(d);
    resume.args(["--resume", "run"]).current_dir(d);
    assert_failed_with(&run_to_end(resume), &[&owner]);

    first.kill().unwrap(); // SIGKILL: the lock stays behind
    first.wait().unwrap();
    assert!(d.join("run/run.lock").exists());
    let mut resume = tiny_train_lm(d);
    resume
        .args(["--resume", "run", "--steps", "100"])
        .current_dir(d);
    let r = run_to_end(resume);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("no longer running; taking it over"),
        "{}",
        r.stderr
    );
    assert!(
        !d.join("run/run.lock").exists(),
        "the lock outlived its run"
    );
}

/// A tmpfs of `kb` kilobytes mounted at `path` while this lives.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &Path, kb: usize) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kb}k"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(path.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_run_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Room for the run's small files and one checkpoint (about 330 KB), not two.
    let Some(_disk) = SmallDisk::mount(&d.join("small"), 560) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let mut cmd = tiny_train_lm(d);
    cmd.args(["--steps", "4", "--eval-at", "2,4", "--run-dir", "small/run"])
        .current_dir(d);
    let r = run_to_end(cmd);
    assert_failed_with(
        &r,
        &[
            "checkpoint of step 4 failed",
            "previous checkpoint is intact",
            "the disk is full",
            "needs about",
            "free there",
        ],
    );
    let run = d.join("small/run");
    assert_eq!(
        std::fs::read_to_string(run.join("latest")).unwrap(),
        "step-000002"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n == "run.lock")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for log in ["metrics.jsonl", "eval.jsonl"] {
        for line in std::fs::read_to_string(run.join(log)).unwrap().lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }
    // The kept checkpoint loads and the run resumes once there is room.
    let v = json_of(&eval_ppl(&["small/run", "--json"], d, &[]));
    assert_eq!(v["step"], 2);
    let roomy = d.join("roomy");
    assert!(Command::new("cp")
        .arg("-r")
        .arg(&run)
        .arg(&roomy)
        .status()
        .unwrap()
        .success());
    let mut resume = tiny_train_lm(d);
    resume.args(["--resume", "roomy"]).current_dir(d);
    let r = run_to_end(resume);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(roomy.join("latest")).unwrap(),
        "step-000004"
    );
}

/// Peak memory of `train-lm --prepare-data` on `text` repeated to about `mb` MB.
fn prepare_peak_mb(dir: &Path, text: &str, mb: usize) -> f64 {
    let path = dir.join(format!("corpus-{mb}.txt"));
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for _ in 0..(mb * 1_000_000).div_ceil(text.len()) {
            f.write_all(text.as_bytes()).unwrap();
        }
    }
    let cache = dir.join(format!("cache-{mb}"));
    let r = run(
        env!("CARGO_BIN_EXE_train-lm"),
        &[
            "--prepare-data",
            "--data",
            path.to_str().unwrap(),
            "--set",
            &format!("data.cache_dir=\"{}\"", cache.display()),
        ],
        dir,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_dir_all(&cache).unwrap();
    // "data ready: ... (S s, peak memory N MB)"
    let line = r.stdout.lines().last().unwrap_or("");
    assert!(line.starts_with("data ready: "), "{}", r.stdout);
    line.rsplit_once("peak memory ")
        .and_then(|(_, v)| v.trim_end_matches(" MB)").parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in {line:?}"))
}

#[test]
fn pretokenizing_memory_stays_flat_as_the_corpus_grows() {
    // Tiny Shakespeare repeated to 10 MB and to 200 MB, tokenized to shards (bytes): the text
    // and its ids are streamed, so 20 times the corpus costs no more than 1.5 times the memory.
    let dir = tempfile::tempdir().unwrap();
    let shakespeare =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare/input.txt");
    let text = std::fs::read_to_string(shakespeare).unwrap();
    let small = prepare_peak_mb(dir.path(), &text, 10);
    let large = prepare_peak_mb(dir.path(), &text, 200);
    eprintln!("peak memory: {small:.0} MB for 10 MB, {large:.0} MB for 200 MB");
    assert!(
        large <= 1.5 * small,
        "peak memory {large:.0} MB for 200 MB of text against {small:.0} MB for 10 MB"
    );
}

#[test]
fn a_full_disk_while_tokenizing_leaves_no_cache_entry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(_disk) = SmallDisk::mount(&d.join("small"), 1024) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    // 1.1 MB of text is 2.2 MB of u16 token shards: more than the 1 MB disk holds.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare/input.txt");
    let data = corpus.to_str().unwrap();
    let prepare = |cache: &str| {
        run(
            env!("CARGO_BIN_EXE_train-lm"),
            &[
                "--prepare-data",
                "--data",
                data,
                "--set",
                &format!("data.cache_dir=\"{cache}\""),
            ],
            d,
            &[],
        )
    };
    let r = prepare("small/cache");
    assert_error(&r, &["the disk is full", "small/cache"]);
    let left: Vec<_> = std::fs::read_dir(d.join("small/cache")).unwrap().collect();
    assert!(left.is_empty(), "a partial cache entry was left: {left:?}");
    let r = prepare("roomy-cache");
    assert_eq!(r.code, 0, "{}", r.stderr);
}
