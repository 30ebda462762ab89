//! What `eval-ppl` and `generate` are pointed at, resolved to a loaded model: a `.safetensors`
//! file (config.json and tokenizer.json beside it, or given), a checkpoint folder, a run
//! directory (its latest checkpoint, or step N, with the run's config for its validation set),
//! or `hf://OWNER/NAME[/SUBFOLDER][@REVISION]` fetched through the Hugging Face cache
//! (`model.safetensors`, else the shards of `model.safetensors.index.json`).
//!
//! [`eval_data`] then picks what `eval-ppl` scores: the run's validation set (exactly the
//! stream `train-lm` evaluates), or any `--data` source of the data crate, whole (`test`) or
//! its held-out validation part (`val`).
//!
//! Every failure is one line that names the file, tensor or repository and what to do.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use dynact_data::hub::{self, HfUri, RepoKind};
use dynact_data::source::Resolved;
use dynact_data::{prepare_dataset, tokenize_source, DataConfig, TokenStream, Tokenizer};
use dynact_model::checkpoint::{
    read_config, weight_files, CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
};
use dynact_model::{Checkpoint, ModelConfig, Transformer};

use crate::config::RunConfig;
use crate::rundir::{RunDir, RUN_CONFIG_FILE, TOKENIZER_FILE};

/// How to resolve a source beyond its path.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// A config.json to use instead of the one beside the weights.
    pub config: Option<PathBuf>,
    /// A tokenizer.json to use instead of the one beside the weights.
    pub tokenizer: Option<PathBuf>,
    /// For a run directory: the checkpoint of this step instead of the latest.
    pub step: Option<u64>,
    /// The compute dtype of the forward pass (weights are held in f32); default: the run's
    /// for a run directory, else f32.
    pub dtype: Option<DType>,
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
pub struct LoadedSource {
    pub model: Transformer,
    /// The compute dtype the model runs in.
    pub dtype: DType,
    pub config: ModelConfig,
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

impl LoadedSource {
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

/// Resolves `spec` and loads the model it names onto `device`.
pub fn load_source(spec: &str, opts: &SourceOptions, device: &Device) -> Result<LoadedSource> {
    let located = if spec.starts_with("hf://") {
        locate_hub(spec, opts)?
    } else {
        locate_local(Path::new(spec), opts)?
    };
    if opts.step.is_some() && !matches!(located.kind, SourceKind::Run { .. }) {
        bail!("--step is for run directories, and {spec} is not one (no {RUN_CONFIG_FILE})");
    }
    let config_path = opts.config.clone().unwrap_or(located.config);
    if !config_path.is_file() {
        bail!(
            "{}: no such file; a checkpoint needs its {CONFIG_FILE} (pass --config PATH/config.json)",
            config_path.display()
        );
    }
    let config = read_config(&config_path)?;
    for w in &located.weights {
        if !w.is_file() {
            bail!("{}: no such file", w.display());
        }
    }
    let checkpoint = Checkpoint::load(&located.weights, config.clone(), device)?;
    // A run directory computes in the run's dtype unless told otherwise, so that its logged
    // val_ppl is reproduced.
    let dtype = match (opts.dtype, &located.run) {
        (Some(d), _) => d,
        (None, Some(run)) => crate::parse_dtype(&run.dtype)?,
        (None, None) => DType::F32,
    };
    let model = checkpoint
        .inference_model(device)?
        .with_compute_dtype(dtype);

    let (mut tokenizer, mut tokenizer_path, mut tokenizer_problem) = (None, None, None);
    if let Some(p) = &opts.tokenizer {
        tokenizer = Some(Tokenizer::from_file(p)?);
        tokenizer_path = Some(p.clone());
    } else if let Some(p) = located.tokenizers.iter().find(|p| p.is_file()) {
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
        if t.vocab_size() > config.vocab_size {
            tracing::warn!(
                "the tokenizer has {} ids but the model only {}; ids at or above {} will be refused",
                t.vocab_size(),
                config.vocab_size,
                config.vocab_size
            );
        }
    }
    Ok(LoadedSource {
        model,
        dtype,
        config,
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
        return Ok(Located {
            config: dir.join(CONFIG_FILE),
            weights,
            tokenizers: vec![dir.join(TOKENIZER_FILE)],
            run: None,
            kind: SourceKind::File,
            description: path.display().to_string(),
        });
    }
    let run_dir = RunDir::new(path);
    if run_dir.holds_run() {
        let run_toml = run_dir.file(RUN_CONFIG_FILE);
        let text = std::fs::read_to_string(&run_toml)
            .with_context(|| format!("cannot read {}", run_toml.display()))?;
        let run: RunConfig = toml::from_str(&text).map_err(|e| {
            anyhow!(
                "{} is not a valid run config: {}",
                run_toml.display(),
                e.message()
            )
        })?;
        let (ckpt, step) = match opts.step {
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
                    .and_then(|n| n.to_string_lossy().strip_prefix("step-")?.parse().ok());
                (d, step)
            }
        };
        let weights = weight_files(&ckpt)?;
        return Ok(Located {
            config: ckpt.join(CONFIG_FILE),
            weights,
            tokenizers: vec![ckpt.join(TOKENIZER_FILE), run_dir.file(TOKENIZER_FILE)],
            run: Some(run),
            kind: SourceKind::Run { step },
            description: ckpt.display().to_string(),
        });
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
    mut fetch: impl FnMut(&str) -> Result<PathBuf>,
) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not valid JSON: {e}", index.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{} has no `weight_map` object", index.display()))?;
    let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        bail!("{} lists no weight files", index.display());
    }
    names.into_iter().map(&mut fetch).collect()
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

/// Which part of the evaluation data to score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The held-out validation part: a run's validation set, or the last `val_fraction` of
    /// `--data` cut as training cuts it.
    Val,
    /// All of `--data` (a test set is data of its own).
    Test,
}

impl std::str::FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Split> {
        match s {
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            other => bail!("--split `{other}`: expected val or test"),
        }
    }
}

/// Tokens to score, with the UTF-8 length of every id when the text is known (bits per byte).
pub struct EvalData {
    pub stream: TokenStream,
    pub byte_lengths: Option<Vec<u32>>,
    pub description: String,
}

/// The evaluation data for `src`: `data` (any source of the data crate) when given, else the
/// run's validation set. `cache_dir` overrides where tokenized text is cached.
pub fn eval_data(
    src: &LoadedSource,
    data: Option<&str>,
    split: Option<Split>,
    cache_dir: Option<&Path>,
) -> Result<EvalData> {
    let vocab = src.config.vocab_size;
    let mut base = src.run.as_ref().map(|r| r.data.clone()).unwrap_or_default();
    if let Some(dir) = cache_dir {
        base.cache_dir = dir.to_path_buf();
    }
    let Some(spec) = data else {
        let Some(run) = &src.run else {
            bail!("SOURCE is not a run directory, so there is no default evaluation set; pass --data (a text file, folder, glob, .bin token shards, builtin or hf://datasets/...)");
        };
        if split == Some(Split::Test) {
            bail!("a run has no test split (only its validation set); pass the test files with --data");
        }
        // Exactly the stream train-lm evaluates: the run's own [data] table.
        let ds = prepare_dataset(&base)
            .with_context(|| format!("preparing the run's validation set ({})", run.data.source))?;
        ds.val
            .check_vocab(vocab, "the run's validation set")
            .with_context(|| format!("the model's vocabulary is {vocab}"))?;
        return Ok(EvalData {
            stream: ds.val,
            byte_lengths: Some(ds.tokenizer.token_byte_lengths()),
            description: format!("validation set of the run ({})", ds.description),
        });
    };

    let split = split.unwrap_or(Split::Test);
    let resolved = dynact_data::source::resolve(spec)?;
    let (stream, byte_lengths, what) = if let Resolved::Bin(paths) = &resolved {
        let all = TokenStream::open(paths)?;
        let stream = match split {
            Split::Test => all,
            Split::Val => {
                let n = all.len();
                let cut = (n as f64 * (1.0 - base.val_fraction)).floor() as usize;
                all.slice(cut, n)
            }
        };
        let lens = src.tokenizer.as_ref().map(|t| t.token_byte_lengths());
        (stream, lens, "token shards")
    } else {
        let tok = src.require_tokenizer(&format!("--data {spec} is text, which"))?;
        let path = src
            .tokenizer_path
            .as_ref()
            .ok_or_else(|| anyhow!("the tokenizer has no file"))?;
        let cfg = DataConfig {
            source: spec.to_string(),
            val_source: None,
            tokenizer: path.display().to_string(),
            ..base
        };
        let stream = match split {
            Split::Test => tokenize_source(spec, tok, &cfg)?,
            Split::Val => prepare_dataset(&cfg)?.val,
        };
        (stream, Some(tok.token_byte_lengths()), "text")
    };
    stream
        .check_vocab(vocab, spec)
        .with_context(|| format!("the model's vocabulary is {vocab}"))?;
    let part = match split {
        Split::Test => "all of",
        Split::Val => "validation part of",
    };
    Ok(EvalData {
        description: format!("{part} {spec} ({what}, {} tokens)", stream.len()),
        stream,
        byte_lengths,
    })
}
