//! Command-line arguments that `eval-ppl` and `generate` share: which model to load, from
//! where, on which device and in which dtype.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;

use dynact_trainer::model_source::{load_model, CheckpointStep, LoadedModel, SourceOptions};
use dynact_trainer::{check_dtype_on, parse_device, parse_dtype, set_up_cpu};

#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// A .safetensors file, a checkpoint folder, a run directory or hf://OWNER/NAME[@REVISION].
    pub source: String,
    /// For a run directory: the checkpoint of this step, or `best` (the lowest val_ppl so
    /// far). Default: the latest.
    #[arg(long)]
    pub step: Option<CheckpointStep>,
    /// A config.json to use instead of the one beside the weights.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A tokenizer.json to use instead of the one beside the weights.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, bf16 or f16 (weights are held in f32). Default: the run's dtype for
    /// a run directory (so its logged val_ppl is reproduced), else f32.
    #[arg(long)]
    pub dtype: Option<String>,
    /// CPU threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl ModelArgs {
    /// Sets the CPU thread count, opens the device and loads the model onto it.
    pub fn load(&self) -> Result<(Device, LoadedModel)> {
        set_up_cpu(self.threads);
        let device = parse_device(&self.device)?;
        let dtype = self.dtype.as_deref().map(parse_dtype).transpose()?;
        if let Some(dtype) = dtype {
            check_dtype_on(&device, dtype)?;
        }
        let opts = SourceOptions {
            config: self.config.clone(),
            tokenizer: self.tokenizer.clone(),
            step: self.step,
            dtype,
        };
        let model = load_model(&self.source, &opts, &device)?;
        Ok((device, model))
    }
}
