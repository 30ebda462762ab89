//! What `eval-ppl` and `generate` are pointed at, resolved to a loaded model: a `.safetensors`
//! file (config.json and tokenizer.json beside it, or given), a checkpoint folder (inside a run
//! directory or not), a run directory (its latest checkpoint, or step N, with the run's config
//! for its validation set), or `hf://OWNER/NAME[/SUBFOLDER][@REVISION]` fetched through the
//! Hugging Face cache (`model.safetensors`, else the shards of `model.safetensors.index.json`).
//!
//! Every failure is one line that names the file, tensor or repository and what to do.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use dynact_data::hub::{self, HfUri, RepoKind};
use dynact_data::Tokenizer;
use dynact_model::checkpoint::{
    index_shard_names, read_config, weight_files, CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
};
use dynact_model::{Checkpoint, ModelConfig};

use dynact_run::{RunDir, BEST_FILE, RUN_CONFIG_FILE, TOKENIZER_FILE};

use crate::config::RunConfig;
use crate::language_model::Network;
use crate::model_api::ModelInfo;
use crate::public_models::{Architecture, PublicModel};

/// How to resolve a source beyond its path.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// A config.json to use instead of the one beside the weights.
    pub config: Option<PathBuf>,
    /// A tokenizer.json to use instead of the one beside the weights.
    pub tokenizer: Option<PathBuf>,
    /// For a run directory: this checkpoint instead of the latest.
    pub step: Option<CheckpointStep>,
    /// The compute dtype of the forward pass (weights are held in f32); default: the run's
    /// for a run directory, else f32.
    pub dtype: Option<DType>,
}

/// Which checkpoint of a run directory to load (`--step`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointStep {
    /// The checkpoint of this step.
    Number(u64),
    /// The checkpoint with the lowest val_ppl so far, as the run's `best` names it.
    Best,
}

impl std::str::FromStr for CheckpointStep {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "best" => Ok(CheckpointStep::Best),
            _ => s.parse().map(CheckpointStep::Number).map_err(|_| {
                format!("`{s}` is neither a step number nor `best` (the checkpoint with the lowest val_ppl)")
            }),
        }
    }
}

impl std::fmt::Display for CheckpointStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointStep::Number(n) => write!(f, "{n}"),
            CheckpointStep::Best => f.write_str("best"),
        }
    }
}

impl CheckpointStep {
    /// The step number this choice names in `run_dir`.
    fn in_run(self, run_dir: &RunDir) -> Result<u64> {
        match self {
            CheckpointStep::Number(n) => Ok(n),
            CheckpointStep::Best => run_dir.best_step().ok_or_else(|| {
                anyhow!(
                    "{} names no best checkpoint yet (no `{BEST_FILE}` file: it is written at the first evaluation); pass --step N or omit --step for the latest",
                    run_dir.path.display()
                )
            }),
        }
    }
}

/// Which kind of thing the source was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A single `.safetensors` file (or a `model.safetensors.index.json`).
    File,
    /// A checkpoint folder.
    Folder,
    /// A run directory, at this checkpoint step (None when the step is not in the name).
    Run { step: Option<u64> },
    /// A Hugging Face model repository.
    Hub { repo_id: String, revision: String },
}

/// A model ready to evaluate, with what came with it.
pub struct LoadedModel {
    pub model: Network,
    /// The compute dtype the model runs in.
    pub dtype: DType,
    pub info: ModelInfo,
    pub tokenizer: Option<Tokenizer>,
    /// The tokenizer.json the tokenizer came from.
    pub tokenizer_path: Option<PathBuf>,
    /// Why a tokenizer.json that was found could not be used (reported when one is needed).
    pub tokenizer_problem: Option<String>,
    /// The run's resolved config, when the source is a run directory.
    pub run: Option<RunConfig>,
    pub kind: SourceKind,
    /// The weight files loaded.
    pub weights: Vec<PathBuf>,
    /// One line saying what was loaded.
    pub description: String,
}

impl LoadedModel {
    /// The tokenizer, or an error saying how to supply one; `why` says what it is needed for.
    pub fn require_tokenizer(&self, why: &str) -> Result<&Tokenizer> {
        match (&self.tokenizer, &self.tokenizer_problem) {
            (Some(t), _) => Ok(t),
            (None, Some(problem)) => bail!("{why} needs a tokenizer, but {problem}; pass --tokenizer PATH/tokenizer.json"),
            (None, None) => bail!(
                "{why} needs a tokenizer, but there is no {TOKENIZER_FILE} beside the checkpoint; pass --tokenizer PATH/tokenizer.json"
            ),
        }
    }
}

/// Files located for a source, before anything is loaded.
struct Located {
    config: PathBuf,
    weights: Vec<PathBuf>,
    /// tokenizer.json candidates, first existing one wins.
    tokenizers: Vec<PathBuf>,
    run: Option<RunConfig>,
    kind: SourceKind,
    description: String,
}

/// A source resolved and its weights read (f32 `Var`s), with what came with them.
pub struct SourceCheckpoint {
    pub checkpoint: Checkpoint,
    /// The first tokenizer.json that exists beside the weights (or the run's).
    pub tokenizer_file: Option<PathBuf>,
    /// The run's resolved config, when the source is a run directory.
    pub run: Option<RunConfig>,
    pub kind: SourceKind,
    /// The weight files loaded.
    pub weights: Vec<PathBuf>,
    /// One line saying what was loaded.
    pub description: String,
}

/// The model config of `spec` and its tokenizer.json (when it has one), without reading the
/// weights.
pub fn source_config(spec: &str) -> Result<(ModelConfig, Option<PathBuf>)> {
    let opts = SourceOptions::default();
    let located = locate(spec, &opts)?;
    let config = read_config(&located.config)?;
    Ok((config, located.tokenizers.into_iter().find(|p| p.is_file())))
}

fn locate(spec: &str, opts: &SourceOptions) -> Result<Located> {
    if spec.starts_with("hf://") {
        locate_hub(spec, opts)
    } else {
        locate_local(Path::new(spec), opts)
    }
}

/// Resolves `spec` and reads its config and weights onto `device`.
pub fn load_checkpoint(
    spec: &str,
    opts: &SourceOptions,
    device: &Device,
) -> Result<SourceCheckpoint> {
    read_checkpoint(spec, locate(spec, opts)?, opts, device)
}

/// The config.json to use for a located source, after the checks every load makes: `--step`
/// only for run directories, and the config and weight files there.
fn checked_files(spec: &str, located: &Located, opts: &SourceOptions) -> Result<PathBuf> {
    if opts.step.is_some() && !matches!(located.kind, SourceKind::Run { .. }) {
        bail!("--step is for run directories, and {spec} is not one (no {RUN_CONFIG_FILE})");
    }
    let config_path = opts.config.clone().unwrap_or(located.config.clone());
    if !config_path.is_file() {
        bail!(
            "{}: no such file; a checkpoint needs its {CONFIG_FILE} (pass --config PATH/config.json)",
            config_path.display()
        );
    }
    for w in &located.weights {
        if !w.is_file() {
            bail!("{}: no such file", w.display());
        }
    }
    Ok(config_path)
}

/// The config and weights of a located source, checked.
fn read_checkpoint(
    spec: &str,
    located: Located,
    opts: &SourceOptions,
    device: &Device,
) -> Result<SourceCheckpoint> {
    let config_path = checked_files(spec, &located, opts)?;
    let checkpoint = Checkpoint::load(&located.weights, read_config(&config_path)?, device)?;
    Ok(SourceCheckpoint {
        checkpoint,
        tokenizer_file: located.tokenizers.into_iter().find(|p| p.is_file()),
        run: located.run,
        kind: located.kind,
        weights: located.weights,
        description: located.description,
    })
}

/// Resolves `spec` and loads the model it names onto `device`, ready to evaluate: this
/// project's decoder for Llama-architecture checkpoints, a [`PublicModel`] for the other
/// supported `model_type`s.
pub fn load_model(spec: &str, opts: &SourceOptions, device: &Device) -> Result<LoadedModel> {
    let located = locate(spec, opts)?;
    let config_path = checked_files(spec, &located, opts)?;
    let config_text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let (model, info, dtype) = match Architecture::of_config(&config_path, &config_text)? {
        Architecture::Public => {
            let (model, info) = PublicModel::load(&config_text, &located.weights, device)
                .with_context(|| format!("loading {spec}"))?;
            if opts.dtype.is_some_and(|d| d != DType::F32) {
                bail!(
                    "{spec} is a {} model, which computes in f32 here; drop --dtype",
                    info.model_type
                );
            }
            let public = Network::Public {
                model,
                info: info.clone(),
            };
            (public, info, DType::F32)
        }
        Architecture::Ours => {
            let config = read_config(&config_path)?;
            let checkpoint = Checkpoint::load(&located.weights, config, device)?;
            // A run directory computes in the run's dtype unless told otherwise, so that its
            // logged val_ppl is reproduced.
            let dtype = match (opts.dtype, &located.run) {
                (Some(d), _) => d,
                (None, Some(run)) => run.dtype.dtype(),
                (None, None) => DType::F32,
            };
            let info = ModelInfo::of(&checkpoint.config);
            let model = checkpoint
                .inference_model(device)?
                .with_compute_dtype(dtype);
            (Network::Ours(model), info, dtype)
        }
    };
    let tokenizer_file = located.tokenizers.iter().find(|p| p.is_file()).cloned();

    let (mut tokenizer, mut tokenizer_path, mut tokenizer_problem) = (None, None, None);
    if let Some(p) = &opts.tokenizer {
        tokenizer = Some(Tokenizer::from_file(p)?);
        tokenizer_path = Some(p.clone());
    } else if let Some(p) = &tokenizer_file {
        // A tokenizer that fails to load only matters when text has to be (de)tokenized.
        match Tokenizer::from_file(p) {
            Ok(t) => {
                tokenizer = Some(t);
                tokenizer_path = Some(p.clone());
            }
            Err(e) => tokenizer_problem = Some(e.to_string()),
        }
    }
    if let Some(t) = &tokenizer {
        if t.vocab_size() > info.vocab_size {
            tracing::warn!(
                "the tokenizer has {} ids but the model only {}; ids at or above {} will be refused",
                t.vocab_size(),
                info.vocab_size,
                info.vocab_size
            );
        }
    }
    Ok(LoadedModel {
        model,
        dtype,
        info,
        tokenizer,
        tokenizer_path,
        tokenizer_problem,
        run: located.run,
        kind: located.kind,
        weights: located.weights,
        description: located.description,
    })
}

fn locate_local(path: &Path, opts: &SourceOptions) -> Result<Located> {
    if !path.exists() {
        bail!(
            "{}: no such file or folder; SOURCE is a .safetensors file, a checkpoint folder, a run directory or hf://OWNER/NAME",
            path.display()
        );
    }
    if path.is_file() {
        return locate_file(path);
    }
    let run_dir = RunDir::new(path);
    if run_dir.holds_run() {
        let step = opts.step.map(|s| s.in_run(&run_dir)).transpose()?;
        return locate_in_run(&run_dir, step);
    }
    // A checkpoint folder of a run is that run at that step (scored on the run's data).
    if let Some((run_dir, step)) = RunDir::containing(path) {
        if let Some(choice) = opts.step {
            if choice.in_run(&run_dir)? != step {
                bail!(
                    "--step {choice} and {} (step {step}) name different checkpoints; give the run directory with --step, or the checkpoint folder alone",
                    path.display()
                );
            }
        }
        return locate_in_run(&run_dir, Some(step));
    }
    if path.join(CONFIG_FILE).is_file() || opts.config.is_some() {
        let weights = weight_files(path)?;
        return Ok(Located {
            config: path.join(CONFIG_FILE),
            weights,
            tokenizers: vec![path.join(TOKENIZER_FILE)],
            run: None,
            kind: SourceKind::Folder,
            description: path.display().to_string(),
        });
    }
    bail!(
        "{} is neither a checkpoint folder ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a run directory ({RUN_CONFIG_FILE}); point SOURCE at one of those or at a .safetensors file",
        path.display()
    )
}

/// A `.safetensors` file or a `model.safetensors.index.json`, with config.json and
/// tokenizer.json beside it.
fn locate_file(path: &Path) -> Result<Located> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let is_index = name.ends_with(".safetensors.index.json");
    if !is_index && !name.ends_with(".safetensors") {
        bail!(
            "{} is not a safetensors file (expected NAME.safetensors or model.safetensors.index.json); PyTorch .bin/.pt checkpoints must be re-saved with safetensors first",
            path.display()
        );
    }
    let weights = if is_index {
        weight_files_from_index(path, |f| Ok(dir.join(f)))?
    } else {
        vec![path.to_path_buf()]
    };
    Ok(Located {
        config: dir.join(CONFIG_FILE),
        weights,
        tokenizers: vec![dir.join(TOKENIZER_FILE)],
        run: None,
        kind: SourceKind::File,
        description: path.display().to_string(),
    })
}

/// The checkpoint of `step` (default: the latest) of a run directory, with the run's config.
fn locate_in_run(run_dir: &RunDir, step: Option<u64>) -> Result<Located> {
    let path = &run_dir.path;
    let run = RunConfig::read(&run_dir.file(RUN_CONFIG_FILE))?;
    let (ckpt, step) = match step {
        Some(step) => {
            let d = run_dir.step_dir(step);
            if !d.join(CONFIG_FILE).is_file() {
                let have = run_dir.checkpoint_steps().unwrap_or_default();
                bail!(
                    "{} has no checkpoint for step {step} (checkpoints: {}); pick one of those with --step, or omit it for the latest",
                    path.display(),
                    list_steps(&have)
                );
            }
            (d, Some(step))
        }
        None => {
            let d = run_dir.latest_checkpoint()?.ok_or_else(|| {
                anyhow!(
                    "{} holds a run but no checkpoint yet (no `latest` file); wait for the first checkpoint or pass --step N",
                    path.display()
                )
            })?;
            let step = d
                .file_name()
                .and_then(|n| dynact_run::layout::step_of_dir_name(&n.to_string_lossy()));
            (d, step)
        }
    };
    let weights = weight_files(&ckpt)?;
    Ok(Located {
        config: ckpt.join(CONFIG_FILE),
        weights,
        tokenizers: vec![ckpt.join(TOKENIZER_FILE), run_dir.file(TOKENIZER_FILE)],
        run: Some(run),
        kind: SourceKind::Run { step },
        description: ckpt.display().to_string(),
    })
}

fn list_steps(steps: &[u64]) -> String {
    if steps.is_empty() {
        "none".to_string()
    } else {
        steps
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The shard files listed by a `model.safetensors.index.json`, each mapped through `fetch`.
fn weight_files_from_index(
    index: &Path,
    fetch: impl FnMut(&str) -> Result<PathBuf>,
) -> Result<Vec<PathBuf>> {
    index_shard_names(index)?
        .iter()
        .map(String::as_str)
        .map(fetch)
        .collect()
}

fn locate_hub(spec: &str, opts: &SourceOptions) -> Result<Located> {
    let HfUri {
        kind,
        repo_id,
        path,
        revision,
    } = hub::parse_hf_uri(spec)?;
    if kind != RepoKind::Model {
        bail!("{spec} is a dataset; SOURCE must be a model repository, hf://OWNER/NAME[@REVISION] (datasets go to --data)");
    }
    let rev = revision.as_deref();
    let revision_name = rev.unwrap_or("main").to_string();
    // A path inside the repository is a subfolder, or a .safetensors file in one.
    let (prefix, single) = match path.as_deref() {
        Some(p) if p.ends_with(".safetensors") => {
            let (dir, _) = p.rsplit_once('/').unwrap_or(("", p));
            (dir.to_string(), Some(p.to_string()))
        }
        Some(p) => (p.to_string(), None),
        None => (String::new(), None),
    };
    let in_repo = |f: &str| {
        if prefix.is_empty() {
            f.to_string()
        } else {
            format!("{prefix}/{f}")
        }
    };
    let fetch = |f: &str| -> Result<PathBuf> {
        hub::hf_file(&repo_id, RepoKind::Model, rev, f).map_err(|e| match e {
            // A model needs several files: say how to fetch the whole snapshot.
            dynact_data::DataError::HfNotCached(n) => anyhow!(
                "hf://{repo_id}: {file} (revision {rev}) is not in the Hugging Face cache at {cache} and {why}; on a connected machine run `huggingface-cli download {repo_id} --revision {rev}` with HF_HOME set to the same cache folder, then copy the cache here",
                file = n.file,
                rev = n.revision,
                cache = n.cache.display(),
                why = n.why,
            ),
            other => other.into(),
        })
    };
    let config = match &opts.config {
        Some(c) => c.clone(),
        None => fetch(&in_repo(CONFIG_FILE))?,
    };
    let weights = match single {
        Some(file) => vec![fetch(&file)?],
        None => match fetch(&in_repo(WEIGHTS_FILE)) {
            Ok(p) => vec![p],
            Err(single_err) => match fetch(&in_repo(WEIGHTS_INDEX_FILE)) {
                Ok(index) => weight_files_from_index(&index, |shard| fetch(&in_repo(shard)))?,
                Err(_) => {
                    return Err(single_err.context(format!(
                        "hf://{repo_id} (revision {revision_name}) has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} available"
                    )))
                }
            },
        },
    };
    let tokenizers = if opts.tokenizer.is_some() {
        vec![]
    } else {
        // Optional: a repository without one can still score token files.
        fetch(&in_repo(TOKENIZER_FILE)).ok().into_iter().collect()
    };
    Ok(Located {
        config,
        weights,
        tokenizers,
        run: None,
        kind: SourceKind::Hub {
            repo_id: repo_id.clone(),
            revision: revision_name.clone(),
        },
        description: format!("hf://{repo_id}@{revision_name}"),
    })
}
