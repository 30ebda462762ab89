//! A training checkpoint: the folder `step-NNNNNN` of a run directory, saved whole (see
//! [`RunDir::save_checkpoint`]) and read back whole. It is an ordinary model checkpoint
//! (`model.safetensors`, `config.json`, `tokenizer.json` and the rest of a Hugging Face model
//! folder, [`crate::hub_folder`]; loadable by any tool) plus the two
//! files that make a resumed run continue to the bit: `optimizer.safetensors` (the optimizer's
//! tensors, with `dynact_optimizer` and `format_version` in the safetensors metadata) and
//! `trainer_state.json` ([`TrainerState`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use dynact_data::Tokenizer;
use dynact_model::checkpoint::WEIGHTS_FILE;
use dynact_model::checkpoint::{save_checkpoint_config, save_tensors_with_metadata, save_weights};
use dynact_model::{Checkpoint, ModelConfig};

use crate::hub_folder::{write_hub_files, RunFacts};
use crate::layout::{RunDir, OPTIMIZER_FILE, TOKENIZER_FILE};
use crate::state::TrainerState;

/// The `optimizer.safetensors` format this build writes (and the newest it reads). Version 0
/// files (no `format_version` in the metadata) hold the same tensors.
pub const OPTIMIZER_FORMAT_VERSION: u32 = 1;
const OPTIMIZER_KIND: &str = "adamw";

/// Everything a training checkpoint is saved from.
pub struct CheckpointContents<'a> {
    pub model_config: &'a ModelConfig,
    pub varmap: &'a VarMap,
    pub tokenizer: &'a Tokenizer,
    /// The optimizer's tensors by name (AdamW: `m.<param>` and `v.<param>`).
    pub optimizer: Vec<(String, Tensor)>,
    pub state: &'a TrainerState,
    /// What the model card says of the run.
    pub facts: RunFacts,
}

impl CheckpointContents<'_> {
    /// About how many bytes the checkpoint takes: f32 weights plus the optimizer's tensors, and
    /// room for the small files.
    pub fn estimated_bytes(&self) -> u64 {
        let weights: usize = self.varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        let optimizer: usize = self.optimizer.iter().map(|(_, t)| t.elem_count()).sum();
        4 * (weights + optimizer) as u64 + 100_000
    }

    /// Writes every file of the checkpoint of `step` into the (temporary) folder `dir`.
    pub fn write_into(&self, dir: &Path, step: u64) -> Result<()> {
        save_weights(self.varmap, &dir.join(WEIGHTS_FILE))?;
        save_checkpoint_config(self.model_config, dir)?;
        self.tokenizer.save(&dir.join(TOKENIZER_FILE))?;
        write_hub_files(dir, step, self.model_config, self.tokenizer, &self.facts)?;
        let version = OPTIMIZER_FORMAT_VERSION.to_string();
        save_tensors_with_metadata(
            &self.optimizer,
            &[
                ("dynact_optimizer", OPTIMIZER_KIND),
                ("format_version", &version),
            ],
            &dir.join(OPTIMIZER_FILE),
        )?;
        self.state.write(dir)
    }
}

impl RunDir {
    /// Saves a training checkpoint of `step` and names it in `latest`; the previous one stays
    /// complete until the new one is.
    pub fn save_training_checkpoint(
        &self,
        step: u64,
        contents: &CheckpointContents,
    ) -> Result<PathBuf> {
        self.save_checkpoint(
            step,
            contents.estimated_bytes(),
            |dir| contents.write_into(dir, step),
            || Ok(()),
        )
    }
}

/// A training checkpoint read back from disk.
pub struct TrainingCheckpoint {
    pub dir: PathBuf,
    /// The model weights (f32 `Var`s) and config.
    pub weights: Checkpoint,
    /// The optimizer's tensors by name.
    pub optimizer: HashMap<String, Tensor>,
    pub state: TrainerState,
}

impl TrainingCheckpoint {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let state = TrainerState::read(dir)?;
        let weights = Checkpoint::load_dir(dir, device)?;
        let optimizer = read_optimizer(&dir.join(OPTIMIZER_FILE), device)?;
        Ok(TrainingCheckpoint {
            dir: dir.to_path_buf(),
            weights,
            optimizer,
            state,
        })
    }
}

/// The tensors of `optimizer.safetensors`, after checking its kind and version.
fn read_optimizer(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read optimizer state {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("optimizer state {} is not safetensors: {e}", path.display()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if let Some(kind) = meta.get("dynact_optimizer") {
        if kind != OPTIMIZER_KIND {
            bail!(
                "optimizer state {} is for `{kind}`, and train-lm uses {OPTIMIZER_KIND}",
                path.display()
            );
        }
    }
    let version: u32 = match meta.get("format_version") {
        None => 0,
        Some(v) => v.parse().map_err(|_| {
            anyhow!(
                "optimizer state {}: format_version `{v}` is not a number",
                path.display()
            )
        })?,
    };
    if version > OPTIMIZER_FORMAT_VERSION {
        bail!(
            "optimizer state {} has format_version {version}, and this train-lm reads up to {OPTIMIZER_FORMAT_VERSION}; use the dynact-lm version that wrote the run",
            path.display()
        );
    }
    candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| anyhow!("cannot read optimizer state {}: {e}", path.display()))
}
