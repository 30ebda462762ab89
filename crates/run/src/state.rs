//! `trainer_state.json`: everything besides weights and optimizer moments that a resumed run
//! needs to continue exactly where the interrupted one stopped.
//!
//! Versions: 0 is the format written before the version was recorded (the same fields, no
//! `format_version`); 1 adds `format_version`. A file from a newer dynact-lm is refused with
//! both versions named, never half-read.

use std::path::Path;

use anyhow::{bail, Context, Result};
use dynact_data::LoaderState;
use dynact_files::atomic_write_bytes;
use serde::{Deserialize, Serialize};

use crate::layout::TRAINER_STATE_FILE;

/// The `trainer_state.json` format this build writes (and the newest it reads).
pub const TRAINER_STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TrainerState {
    /// The format of this file (0: written before versions were recorded).
    #[serde(default)]
    pub format_version: u32,
    /// Optimizer steps completed.
    pub step: u64,
    pub tokens_seen: u64,
    pub loader: LoaderState,
    /// The run's seed; dropout masks derive from (seed, step, micro-batch), so this is the
    /// RNG state.
    pub seed: u64,
    /// AdamW updates applied (fewer than `step` when non-finite batches were skipped).
    pub optimizer_steps: u64,
    /// Training wall time so far, seconds.
    pub elapsed_s: f64,
}

impl TrainerState {
    /// The state of a run that has not taken a step.
    pub fn start(seed: u64) -> Self {
        TrainerState {
            format_version: TRAINER_STATE_VERSION,
            step: 0,
            tokens_seen: 0,
            loader: LoaderState::default(),
            seed,
            optimizer_steps: 0,
            elapsed_s: 0.0,
        }
    }

    /// Reads `trainer_state.json` of the checkpoint folder `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(TRAINER_STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    fn parse(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Version {
            #[serde(default)]
            format_version: u32,
        }
        let Version { format_version } = serde_json::from_str(text)?;
        if format_version > TRAINER_STATE_VERSION {
            bail!(
                "it has format_version {format_version}, and this train-lm reads up to {TRAINER_STATE_VERSION}; use the dynact-lm version that wrote the run"
            );
        }
        let mut state: TrainerState = serde_json::from_str(text)?;
        // Read as the current version: version 0 has the same fields.
        state.format_version = TRAINER_STATE_VERSION;
        Ok(state)
    }

    /// Writes `trainer_state.json` into the checkpoint folder `dir`, atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(TRAINER_STATE_FILE);
        let text = serde_json::to_string_pretty(self)?;
        atomic_write_bytes(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_up_to_the_current_one_read_and_newer_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = TrainerState::start(7);
        state.step = 12;
        state.write(dir.path()).unwrap();
        assert_eq!(TrainerState::read(dir.path()).unwrap(), state);

        // Version 0: no format_version field.
        let v0 = r#"{"step": 3, "tokens_seen": 96, "loader": {"epoch": 0, "cursor": 6},
                     "seed": 0, "optimizer_steps": 3, "elapsed_s": 0.5}"#;
        let s = TrainerState::parse(v0).unwrap();
        assert_eq!((s.step, s.loader.cursor, s.format_version), (3, 6, 1));

        let newer = v0.replacen('{', r#"{"format_version": 9, "#, 1);
        let err = TrainerState::parse(&newer).unwrap_err().to_string();
        assert!(
            err.contains("format_version 9") && err.contains("up to 1"),
            "{err}"
        );
    }
}
