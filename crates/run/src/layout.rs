//! Where things are in a run directory, and the protocol that keeps it loadable: a checkpoint
//! folder is written whole under a temporary name and renamed into place, and `latest` is
//! rewritten (atomically) only after that, so a crash at any point leaves the previous
//! checkpoint complete and `latest` naming a checkpoint that loads.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use dynact_files::{atomic_write_bytes, describe_write_error};
use dynact_model::checkpoint::CONFIG_FILE;
use serde::Serialize;

use crate::records::EvalRecord;

pub const RUN_CONFIG_FILE: &str = "run.toml";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const EVAL_FILE: &str = "eval.jsonl";
/// Text sampled at each evaluation (`eval.sample_tokens`).
pub const SAMPLES_FILE: &str = "samples.jsonl";
pub const LATEST_FILE: &str = "latest";
/// Names the checkpoint with the lowest val_ppl so far, which pruning keeps.
pub const BEST_FILE: &str = "best";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";

/// `step-000562`: checkpoint folders sort by step.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// The step of a checkpoint folder named by [`step_dir_name`].
pub fn step_of_dir_name(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

/// A run directory on disk.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into() }
    }

    /// The run directory a checkpoint folder belongs to, with that checkpoint's step, when
    /// `dir` is a `step-NNNNNN` folder inside a run directory.
    pub fn containing(dir: &Path) -> Option<(RunDir, u64)> {
        let step = step_of_dir_name(&dir.file_name()?.to_string_lossy())?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let run = RunDir::new(parent);
        run.holds_run().then_some((run, step))
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether a run was already started here.
    pub fn holds_run(&self) -> bool {
        self.file(RUN_CONFIG_FILE).is_file()
    }

    pub fn step_dir(&self, step: u64) -> PathBuf {
        self.path.join(step_dir_name(step))
    }

    /// The newest complete checkpoint, as named by `latest`.
    pub fn latest_checkpoint(&self) -> Result<Option<PathBuf>> {
        let latest = self.file(LATEST_FILE);
        if !latest.is_file() {
            return Ok(None);
        }
        let name = std::fs::read_to_string(&latest)
            .with_context(|| format!("cannot read {}", latest.display()))?;
        let dir = self.path.join(name.trim());
        if !dir.join(CONFIG_FILE).is_file() {
            bail!(
                "{} names {}, which is not a complete checkpoint",
                latest.display(),
                dir.display()
            );
        }
        Ok(Some(dir))
    }

    /// The step of the checkpoint with the lowest val_ppl so far, as named by `best` (None
    /// before the first evaluation, or for runs from before it was kept).
    pub fn best_step(&self) -> Option<u64> {
        let name = std::fs::read_to_string(self.file(BEST_FILE)).ok()?;
        step_of_dir_name(name.trim())
    }

    /// Names the checkpoint of `step` in `best`.
    pub fn mark_best(&self, step: u64) -> Result<()> {
        let path = self.file(BEST_FILE);
        atomic_write_bytes(&path, step_dir_name(step).as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The evaluations in eval.jsonl (lines that do not read are left out; compare-runs
    /// reports them).
    pub fn evals(&self) -> Vec<EvalRecord> {
        std::fs::read_to_string(self.file(EVAL_FILE))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Steps of the checkpoints present, ascending.
    pub fn checkpoint_steps(&self) -> Result<Vec<u64>> {
        let mut steps = vec![];
        if !self.path.is_dir() {
            return Ok(steps);
        }
        for entry in std::fs::read_dir(&self.path)? {
            if let Some(n) = step_of_dir_name(&entry?.file_name().to_string_lossy()) {
                steps.push(n);
            }
        }
        steps.sort_unstable();
        Ok(steps)
    }

    /// Appends one record as a JSON line to `name` (metrics.jsonl or eval.jsonl) and flushes
    /// it to disk. A line that cannot be written whole is cut off again, so the file stays a
    /// list of complete records.
    pub fn append_jsonl(&self, name: &str, record: &impl Serialize) -> Result<()> {
        let path = self.file(name);
        let line = format!("{}\n", serde_json::to_string(record)?);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot append to {}", path.display()))?;
        let before = f.metadata().map(|m| m.len()).unwrap_or(0);
        let written = f.write_all(line.as_bytes()).and_then(|_| f.sync_data());
        if let Err(e) = written {
            let _ = f.set_len(before);
            let why =
                describe_write_error(&e, &path, line.len() as u64).unwrap_or_else(|| e.to_string());
            bail!("cannot write {}: {why}", path.display());
        }
        Ok(())
    }

    /// Keeps only the lines of `name` whose step is at most `max_step` (rewritten atomically).
    pub fn truncate_jsonl(&self, name: &str, max_step: u64) -> Result<()> {
        let path = self.file(name);
        if !path.is_file() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= max_step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if kept.len() != text.len() {
            atomic_write_bytes(&path, kept.as_bytes())
                .with_context(|| format!("cannot rewrite {}", path.display()))?;
        }
        Ok(())
    }

    /// Writes a checkpoint for `step`: `write_files` fills a temporary folder, which is then
    /// renamed to `step-NNNNNN` and named in `latest`. `needed_bytes` (an estimate of the
    /// checkpoint's size) goes into the message when the disk is full. `before_rename` is a
    /// test hook.
    pub fn save_checkpoint(
        &self,
        step: u64,
        needed_bytes: u64,
        write_files: impl FnOnce(&Path) -> Result<()>,
        before_rename: impl FnOnce() -> Result<()>,
    ) -> Result<PathBuf> {
        let name = step_dir_name(step);
        let tmp = self.path.join(format!(".{name}.tmp"));
        let dest = self.path.join(&name);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let written = write_files(&tmp).and_then(|_| before_rename());
        if let Err(e) = written {
            // Measured before the partial files go, to say how much room was missing.
            let partial = folder_size(&tmp);
            let _ = std::fs::remove_dir_all(&tmp);
            let disk_full = e
                .chain()
                .filter_map(|c| c.downcast_ref::<std::io::Error>())
                .find_map(|io| describe_write_error(io, &tmp, needed_bytes.max(partial)));
            let e = match disk_full {
                Some(why) => anyhow!("{why}"),
                None => e,
            };
            return Err(e.context(format!(
                "saving the checkpoint of step {step} failed; the previous checkpoint is intact"
            )));
        }
        if dest.exists() {
            std::fs::remove_dir_all(&dest)
                .with_context(|| format!("cannot replace {}", dest.display()))?;
        }
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("cannot rename {} into place", tmp.display()))?;
        atomic_write_bytes(&self.file(LATEST_FILE), name.as_bytes())
            .with_context(|| format!("cannot write {}", self.file(LATEST_FILE).display()))?;
        Ok(dest)
    }

    /// Deletes checkpoints that are neither among the `keep_last` newest nor in `keep`.
    pub fn prune(&self, keep_last: usize, keep: &[u64]) -> Result<()> {
        let steps = self.checkpoint_steps()?;
        let recent: Vec<u64> = steps.iter().rev().take(keep_last.max(1)).copied().collect();
        for s in steps {
            if !recent.contains(&s) && !keep.contains(&s) {
                let dir = self.step_dir(s);
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot remove {}", dir.display()))?;
            }
        }
        Ok(())
    }
}

/// Bytes of the files directly in `dir` (0 when it cannot be read).
fn folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
