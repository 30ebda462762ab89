//! dynact-run: the run directory that `train-lm` writes and `eval-ppl`, `generate` and
//! `compare-runs` read. This crate is its one owner: the layout, the records logged, the
//! training checkpoint and what a resume may change are all defined here.
//!
//! ```text
//! checkpoints/<run>/
//!   run.toml         the resolved run config, every default written out
//!   config.json      the model config (Hugging Face Llama keys plus `ffn` and `dynact`)
//!   tokenizer.json
//!   metrics.jsonl    one MetricsRecord per logged training step
//!   eval.jsonl       one EvalRecord per evaluation
//!   latest           the name of the newest complete checkpoint folder
//!   best             the name of the checkpoint with the lowest val_ppl so far (never pruned)
//!   run.lock         pid and host of the train-lm writing the run (while it runs)
//!   step-000562/     a training checkpoint:
//!     model.safetensors  config.json  tokenizer.json    a complete Hugging Face model folder:
//!     tokenizer_config.json  special_tokens_map.json  generation_config.json  README.md
//!     optimizer.safetensors   AdamW moments `m.<param>`, `v.<param>`, format version in metadata
//!     trainer_state.json      TrainerState: step, tokens seen, loader position, seed, version
//! ```
//!
//! Reading order: [`layout`] (paths, `latest`, the whole-folder checkpoint protocol, pruning)
//! -> [`lock`] (one writer per run) -> [`records`] (the JSON lines) -> [`state`] (TrainerState) -> [`checkpoint`] (saving and
//! loading a training checkpoint) -> [`resume`] (which config keys a resume may change, over
//! the dotted keys of [`config_keys`]).

pub mod checkpoint;
pub mod config_keys;
pub mod hub_folder;
pub mod layout;
pub mod lock;
pub mod records;
pub mod resume;
pub mod state;
pub mod tensorboard;

pub use checkpoint::{CheckpointContents, TrainingCheckpoint, OPTIMIZER_FORMAT_VERSION};
pub use hub_folder::RunFacts;
pub use layout::{
    step_dir_name, RunDir, BEST_FILE, EVAL_FILE, LATEST_FILE, METRICS_FILE, OPTIMIZER_FILE,
    RUN_CONFIG_FILE, SAMPLES_FILE, TOKENIZER_FILE, TRAINER_STATE_FILE,
};
pub use lock::{RunLock, LOCK_FILE};
pub use records::{EvalRecord, MetricsRecord, SampleRecord};
pub use state::{TrainerState, TRAINER_STATE_VERSION};
