//! The run configuration: one TOML file (`configs/*.toml`) with `[model]`, `[data]`, `[train]`,
//! `[optim]`, `[eval]` and `[log]` tables, then command-line overrides (`--set table.key=value`
//! and the named flags), then validation. Every default is written out into the run's `run.toml`, so a
//! run directory says exactly what ran.

use std::path::{Path, PathBuf};

use dynact_data::DataConfig;
use dynact_model::{DropoutRng, ModelConfig};
use serde::{Deserialize, Serialize};

mod builder;
mod choices;

pub use builder::{set_key, ConfigBuilder};
pub use choices::{DeviceSpec, RunDtype};

/// What to do when a loss or gradient is not finite.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    /// Stop with the step named; the last good checkpoint stays.
    #[default]
    Stop,
    /// Skip the batch (no update) and go on.
    Skip,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Linear warm-up, then cosine decay to `min_lr` at the last step.
    #[default]
    Cosine,
    /// Warmup-stable-decay: warm-up, constant `lr`, then linear decay to `min_lr` over the
    /// last `decay_fraction` of the steps.
    Wsd,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub seq_len: usize,
    pub log_every: u64,
    /// Checkpoints kept besides those at `eval_at` steps.
    pub keep_last: usize,
    pub on_nonfinite: NonFinitePolicy,
    /// CPU threads (0: one per physical core).
    pub threads: usize,
    /// Peak FLOP/s of one device (one rank) for MFU (0: measured on CPU, looked up for known
    /// GPUs); a data-parallel job counts it once per rank.
    pub peak_flops: f64,
    /// Data parallel: seconds a rank waits for the others in a collective before it stops the
    /// job (a rank died or hangs).
    pub rank_timeout_s: f64,
    /// The dropout mask generator: "philox4x32" (counter-based, the default) or "chacha8"
    /// (runs written before it; a resumed run keeps its own).
    pub dropout_rng: DropoutRng,
    /// Row shards a micro-batch is split into on a CPU, run at once, one per thread
    /// ([`crate::row_shards`]). 0: one per thread, fixed when the run starts and written to
    /// run.toml, so a resumed run sums its gradients in the same order on any machine. Runs
    /// written before it ran 1.
    pub row_shards: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_size: 16,
            grad_accum: 1,
            seq_len: 128,
            log_every: 10,
            keep_last: 2,
            on_nonfinite: NonFinitePolicy::Stop,
            threads: 0,
            peak_flops: 0.0,
            rank_timeout_s: 600.0,
            dropout_rng: DropoutRng::default(),
            row_shards: 0,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub schedule: ScheduleKind,
    pub decay_fraction: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to weight matrices only (never norms, alpha or beta).
    pub weight_decay: f64,
    pub decay_embeddings: bool,
    /// Global gradient-norm clip (0: off).
    pub grad_clip: f64,
    /// Learning-rate multiplier for dynAct's alpha and beta.
    pub dynact_lr_mult: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            schedule: ScheduleKind::Cosine,
            decay_fraction: 0.2,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_embeddings: false,
            grad_clip: 1.0,
            dynact_lr_mult: 1.0,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Steps at which the whole validation set is evaluated (and a checkpoint kept).
    pub eval_at: Vec<u64>,
    /// Also evaluate every N steps (0: off).
    pub eval_every: u64,
    /// Windows per evaluation batch.
    pub batch_size: usize,
    /// Score at most this many validation tokens (whole windows from the start of the
    /// validation set); 0: all of it.
    pub max_tokens: u64,
    /// Also score the first this many tokens of the training stream (whole windows, dropout
    /// off) at every evaluation, as train_ce and train_ppl in eval.jsonl; 0: off.
    pub train_tokens: u64,
    /// At every evaluation, continue `sample_prompt` by this many tokens into samples.jsonl
    /// (the run's seed, so each evaluation draws alike); 0: off.
    pub sample_tokens: usize,
    pub sample_prompt: String,
    /// 0: greedy.
    pub sample_temperature: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            eval_at: vec![],
            eval_every: 0,
            batch_size: 16,
            max_tokens: 0,
            train_tokens: 0,
            sample_tokens: 0,
            sample_prompt: "\n".to_string(),
            sample_temperature: 0.8,
        }
    }
}

/// Where a run's logs go besides metrics.jsonl, eval.jsonl and the console (a resumed run may
/// change these).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// TensorBoard event files in the run directory: every logged step's and evaluation's
    /// numbers (`tensorboard --logdir checkpoints/`).
    pub tensorboard: bool,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Run name; the run directory is `checkpoints/<name>` unless `run_dir` is set.
    pub name: String,
    /// Where the run is written (run.toml: "" for unset).
    #[serde(with = "unset_is_empty")]
    pub run_dir: Option<PathBuf>,
    pub seed: u64,
    /// Start from these weights (a run, checkpoint folder, `.safetensors` file or
    /// `hf://OWNER/NAME[@REV]`) instead of a fresh model; None (run.toml: ""): a fresh model.
    #[serde(with = "unset_is_empty")]
    pub init_from: Option<String>,
    /// `cpu`, `cuda`, `cuda:N` or `metal`.
    pub device: DeviceSpec,
    /// Compute dtype: `f32` or `bf16` (master weights stay f32).
    pub dtype: RunDtype,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub optim: OptimConfig,
    pub eval: EvalConfig,
    pub log: LogConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: "run".into(),
            run_dir: None,
            seed: 0,
            init_from: None,
            device: DeviceSpec::Cpu,
            dtype: RunDtype::F32,
            model: ModelConfig::default(),
            data: DataConfig::default(),
            train: TrainConfig::default(),
            optim: OptimConfig::default(),
            eval: EvalConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// An optional value written as a string, "" standing for unset (as run.toml has always
/// written `run_dir` and `init_from`).
mod unset_is_empty {
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T, S>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error>
    where
        T: AsRef<std::ffi::OsStr>,
        S: Serializer,
    {
        let text = v.as_ref().map(|t| t.as_ref().to_string_lossy());
        s.serialize_str(text.as_deref().unwrap_or_default())
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "" => Ok(None),
            _ => text.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// A config error: one line naming the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Value checks that serde cannot express.
pub fn validate(cfg: &RunConfig) -> Result<(), ConfigError> {
    let (t, o) = (&cfg.train, &cfg.optim);
    if t.steps == 0 {
        return err("train.steps must be at least 1");
    }
    if [t.batch_size, t.grad_accum, t.seq_len, cfg.eval.batch_size].contains(&0) || t.log_every == 0
    {
        return err(
            "batch_size, grad_accum, seq_len, log_every and eval.batch_size must be at least 1",
        );
    }
    if cfg.eval.train_tokens > 0 && cfg.eval.train_tokens < t.seq_len as u64 {
        return err(format!(
            "eval.train_tokens {} is less than one window of train.seq_len {}; raise it, or set 0 (off)",
            cfg.eval.train_tokens, t.seq_len
        ));
    }
    let e = &cfg.eval;
    if e.sample_tokens > 0 && e.sample_prompt.is_empty() {
        return err("eval.sample_prompt is empty; give the text to continue (e.g. \"\\n\"), or set eval.sample_tokens = 0 (off)");
    }
    if !(e.sample_temperature >= 0.0 && e.sample_temperature.is_finite()) {
        return err(format!(
            "eval.sample_temperature {} must be 0 (greedy) or positive",
            e.sample_temperature
        ));
    }
    if t.seq_len > cfg.model.max_position_embeddings {
        return err(format!(
            "seq_len {} is over model.max_position_embeddings {}; lower --seq-len or raise the maximum",
            t.seq_len, cfg.model.max_position_embeddings
        ));
    }
    if !(o.lr > 0.0 && o.lr.is_finite()) {
        return err(format!("lr must be positive, got {}", o.lr));
    }
    if t.row_shards > t.batch_size {
        return err(format!(
            "train.row_shards {} is more than the {} rows of a micro-batch (train.batch_size); set it to at most that, or 0 for one per thread",
            t.row_shards, t.batch_size
        ));
    }
    if !(t.rank_timeout_s > 0.0 && t.rank_timeout_s <= 1e9) {
        return err(format!(
            "train.rank_timeout_s must be a positive number of seconds (at most 1e9), got {}",
            t.rank_timeout_s
        ));
    }
    if !(0.0..=o.lr).contains(&o.min_lr) {
        return err(format!("min_lr {} must be in [0, lr {}]", o.min_lr, o.lr));
    }
    if o.warmup_steps >= t.steps {
        return err(format!(
            "warmup_steps {} must be below steps {}",
            o.warmup_steps, t.steps
        ));
    }
    if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
        return err("optim.beta1 and optim.beta2 must be in [0, 1)");
    }
    for (key, v) in [
        ("optim.weight_decay", o.weight_decay),
        ("optim.grad_clip", o.grad_clip),
        ("optim.dynact_lr_mult", o.dynact_lr_mult),
        ("optim.min_lr", o.min_lr),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return err(format!("{key} must be a finite number >= 0, got {v}"));
        }
    }
    if !(o.eps.is_finite() && o.eps > 0.0) {
        return err(format!("optim.eps must be positive, got {}", o.eps));
    }
    if o.lr * o.weight_decay >= 1.0 {
        return err(format!(
            "lr * weight_decay = {} would flip the weights' sign every step; lower optim.weight_decay",
            o.lr * o.weight_decay
        ));
    }
    if !(0.0..=1.0).contains(&o.decay_fraction) {
        return err("decay_fraction must be in [0, 1]");
    }
    if cfg.eval.max_tokens > 0 && cfg.eval.max_tokens < t.seq_len as u64 {
        return err(format!(
            "eval.max_tokens {} is less than one window of train.seq_len {}; raise it, or set 0 to score the whole validation set",
            cfg.eval.max_tokens, t.seq_len
        ));
    }
    cfg.model
        .validate()
        .map_err(|e| ConfigError(e.to_string()))?;
    Ok(())
}

impl RunConfig {
    /// Reads the resolved config of a run (its `run.toml`).
    pub fn read(path: &Path) -> anyhow::Result<RunConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let invalid = |e: toml::de::Error| {
            anyhow::anyhow!(
                "{} is not a valid run config: {}",
                path.display(),
                e.message()
            )
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(invalid)?;
        // Every key is written out, so a run.toml without the dropout generator predates it:
        // that run drew its masks from ChaCha8; one without row shards ran its batches whole.
        if let Some(toml::Value::Table(train)) = table.get_mut("train") {
            train
                .entry("dropout_rng")
                .or_insert_with(|| toml::Value::String("chacha8".to_string()));
            train.entry("row_shards").or_insert(toml::Value::Integer(1));
        }
        toml::Value::Table(table).try_into().map_err(invalid)
    }

    /// The run directory: `run_dir` when set, else `checkpoints/<name>`.
    pub fn run_dir(&self) -> PathBuf {
        match &self.run_dir {
            Some(dir) => dir.clone(),
            None => Path::new("checkpoints").join(&self.name),
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// The evaluation windows `eval.max_tokens` allows (None: all of them).
    /// The windows of the training stream scored at each evaluation (None: off).
    pub fn eval_train_windows(&self) -> Option<usize> {
        (self.eval.train_tokens > 0).then(|| self.eval.train_tokens as usize / self.train.seq_len)
    }

    pub fn eval_max_windows(&self) -> Option<usize> {
        (self.eval.max_tokens > 0).then(|| self.eval.max_tokens as usize / self.train.seq_len)
    }

    /// Every step that evaluates: the listed ones, every `eval_every`, and the last.
    pub fn is_eval_step(&self, step: u64) -> bool {
        step == self.train.steps
            || self.eval.eval_at.contains(&step)
            || (self.eval.eval_every > 0 && step.is_multiple_of(self.eval.eval_every))
    }

    pub fn tokens_per_step(&self) -> usize {
        self.train.batch_size * self.train.grad_accum * self.train.seq_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_config_round_trips_through_toml() {
        let (cfg, _) = ConfigBuilder::new().build().unwrap();
        let back: RunConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn new_runs_draw_dropout_from_philox_and_older_run_tomls_read_as_chacha() {
        let (cfg, _) = ConfigBuilder::new().build().unwrap();
        assert_eq!(cfg.train.dropout_rng, DropoutRng::Philox4x32);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, cfg.to_toml()).unwrap();
        assert_eq!(
            RunConfig::read(&path).unwrap().train.dropout_rng,
            DropoutRng::Philox4x32
        );
        // A run.toml written before the key existed.
        let old: String = cfg
            .to_toml()
            .lines()
            .filter(|l| !l.starts_with("dropout_rng"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, old).unwrap();
        assert_eq!(
            RunConfig::read(&path).unwrap().train.dropout_rng,
            DropoutRng::Chacha8
        );
    }
    #[test]
    fn older_run_tomls_read_as_one_row_shard() {
        let (cfg, _) = ConfigBuilder::new().build().unwrap();
        assert_eq!(cfg.train.row_shards, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        let mut resolved = cfg.clone();
        resolved.train.row_shards = 3;
        std::fs::write(&path, resolved.to_toml()).unwrap();
        assert_eq!(RunConfig::read(&path).unwrap().train.row_shards, 3);
        let old: String = cfg
            .to_toml()
            .lines()
            .filter(|l| !l.starts_with("row_shards"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, old).unwrap();
        assert_eq!(RunConfig::read(&path).unwrap().train.row_shards, 1);
    }
}
