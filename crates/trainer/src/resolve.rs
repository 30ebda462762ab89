//! A run resolved once: [`ResolvedRun::resolve`] takes the config as read and overridden
//! (config file, flags, `--set`; see [`crate::config`] and `launch`) together with
//! the run directory, the data and the ranks, and fills in or changes whatever they decide: the
//! model's shape and tokenizer from `init_from`, what a resumed run keeps from its own run.toml
//! (vocabulary, dropout generator, row shards), the row shards of this machine (rank 0's), the
//! vocabulary from the tokenizer, and the checks of the whole config against the data. It is
//! the only writer of the run's run.toml, config.json and tokenizer.json, and it returns the
//! typed pieces a run needs (device, compute dtype, run directory and its lock, the data, the
//! checkpoint to resume).

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use dynact_data::{prepare_dataset, Dataset};
use dynact_dist::Communicator;
use dynact_files::atomic_write_bytes;
use dynact_model::checkpoint::{save_config, CONFIG_FILE};
use dynact_model::FfnKind;
use dynact_run::{
    RunDir, RunLock, TrainerState, TrainingCheckpoint, RUN_CONFIG_FILE, TOKENIZER_FILE,
};

use crate::config::{DeviceSpec, RunConfig};
use crate::model_source::source_config;
use crate::row_shards;

/// How the run was asked to start.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue the run in the run directory from its latest checkpoint.
    pub resume: bool,
    /// Whether `model.vocab_size` was set explicitly (else it follows the tokenizer).
    pub vocab_size_given: bool,
    /// Stop (as if interrupted) after this step: for tests of resuming.
    pub stop_after: Option<u64>,
    /// Set to request a clean stop after the current step (Ctrl-C).
    pub interrupt: Option<Arc<AtomicBool>>,
    /// No progress bar and no per-step lines (tests).
    pub quiet: bool,
    /// The processes of a data-parallel run (default: this one alone). Rank 0 writes the
    /// run directory; every rank trains on its share of each step's micro-batches.
    pub comm: Rc<Communicator>,
}

/// A run ready to train: its final config and what it runs on, reads and writes.
pub struct ResolvedRun {
    /// The config as run.toml has it.
    pub cfg: RunConfig,
    /// This rank's device.
    pub device: Device,
    /// Compute dtype of forward passes (weights stay f32).
    pub dtype: DType,
    pub run_dir: RunDir,
    /// The run directory's lock (rank 0 alone holds it).
    pub lock: Option<RunLock>,
    pub dataset: Dataset,
    /// The checkpoint a resumed run continues from.
    pub resume_from: Option<TrainingCheckpoint>,
    /// The source of a new run's first weights (`cfg.init_from`; None when resuming).
    pub init_from: Option<String>,
    /// Validation perplexity of the training set's unigram distribution, for reference.
    pub unigram_ppl: f64,
}

/// What resolving a run found.
pub enum Resolution {
    /// A run to train.
    Ready(Box<ResolvedRun>),
    /// A resumed run that already reached its last step: nothing is run or touched.
    Complete { run_dir: PathBuf, step: u64 },
}

impl ResolvedRun {
    /// Resolves `cfg` against the run directory, the data and the ranks of `opts`; `log`
    /// prints a line (rank 0 unless quiet).
    pub fn resolve(
        mut cfg: RunConfig,
        opts: &RunOptions,
        log: &dyn Fn(String),
    ) -> Result<Resolution> {
        crate::set_up_cpu(cfg.train.threads);
        let comm = opts.comm.clone();
        let root = comm.is_root();
        let device = rank_device(cfg.device, &comm)?;
        let dtype = cfg.dtype.dtype();
        crate::check_dtype_on(&device, dtype)?;
        check_world(&cfg, &device, &comm)?;
        let run_dir = RunDir::new(cfg.run_dir());
        if comm.size() > 1 {
            log(format!(
                "data parallel: {} ranks, each running {} of the {} micro-batches of {} sequences per step",
                comm.size(),
                cfg.train.grad_accum / comm.size(),
                cfg.train.grad_accum,
                cfg.train.batch_size
            ));
        }

        if opts.resume && !run_dir.holds_run() {
            bail!(
                "--resume {}: no run there (no {RUN_CONFIG_FILE}); start it without --resume",
                run_dir.path.display()
            );
        }
        // One writer per run directory (rank 0), from here until this function returns.
        let lock = match root {
            true => Some(run_dir.lock()?),
            false => None,
        };
        if let Some(notice) = lock.as_ref().and_then(|l| l.notice.as_ref()) {
            eprintln!("{notice}");
        }
        let resume_from = check_run_dir(&run_dir, &mut cfg, opts)?;
        // Rank 0's thread count decides, so the ranks agree even on unlike machines.
        cfg.train.row_shards =
            resolve_row_shards(cfg.train.row_shards, &device, cfg.train.batch_size);
        let mut shards = cfg.train.row_shards.to_le_bytes().to_vec();
        comm.broadcast_bytes(&mut shards);
        cfg.train.row_shards = usize::from_le_bytes(shards.try_into().expect("one usize"));
        // Every rank has looked at the run directory before rank 0 writes to it.
        comm.barrier();
        let init_from = match resume_from {
            None => cfg.init_from.clone(),
            Some(_) => None,
        };
        if init_from.is_some() {
            settle_config(&mut cfg, None)?;
        }
        if let Some(dir) = &resume_from {
            let step = TrainerState::read(dir)?.step;
            if step >= cfg.train.steps {
                // Nothing to do, and nothing is touched.
                return Ok(Resolution::Complete {
                    run_dir: run_dir.path.clone(),
                    step,
                });
            }
        }
        let resume_from = resume_from
            .map(|dir| TrainingCheckpoint::load(&dir, &device))
            .transpose()?;
        // Rank 0 tokenizes into the cache first (untimed: a large corpus takes a while); the others
        // then find it there.
        let dataset = if root {
            let d = prepare_data(&mut cfg, opts, init_from.is_some(), log)?;
            comm.barrier_untimed();
            d
        } else {
            comm.barrier_untimed();
            prepare_data(&mut cfg, opts, init_from.is_some(), log)?
        };
        // The others read and check the cached data too (untimed: proportional to the corpus).
        comm.barrier_untimed();
        same_config_on_every_rank(&cfg, &comm)?;
        let unigram_ppl =
            crate::eval::unigram_ppl(&dataset.train, &dataset.val, cfg.model.vocab_size);
        log(format!(
            "baseline: unigram perplexity of the validation set {unigram_ppl:.3} (train token frequencies)"
        ));

        std::fs::create_dir_all(&run_dir.path)
            .with_context(|| format!("cannot create run dir {}", run_dir.path.display()))?;
        if resume_from.is_none() && root {
            // Written first, so the run directory says what ran even if training fails.
            atomic_write_bytes(&run_dir.file(RUN_CONFIG_FILE), cfg.to_toml().as_bytes())?;
            save_config(&cfg.model, &run_dir.file(CONFIG_FILE))?;
            dataset.tokenizer.save(&run_dir.file(TOKENIZER_FILE))?;
        }
        Ok(Resolution::Ready(Box::new(ResolvedRun {
            cfg,
            device,
            dtype,
            run_dir,
            lock,
            dataset,
            resume_from,
            init_from,
            unigram_ppl,
        })))
    }
}

/// Model keys a run starting from SOURCE may set to other values than SOURCE's.
fn run_may_choose(key: &str) -> bool {
    key == "ffn" || key == "dropout" || key == "initializer_range" || key.starts_with("dynact.")
}

/// Gives `cfg.model` the shape of SOURCE (`cfg.init_from`; nothing without one). `keys_set` are the dotted keys the
/// user set (config file or flags): those model keys keep their values when a run may choose
/// them and must equal SOURCE's otherwise (the first that does not is named); the rest come
/// from SOURCE. Without `keys_set`, every model key counts as set. The run's tokenizer becomes
/// SOURCE's tokenizer.json when the user named none.
pub fn settle_config(cfg: &mut RunConfig, keys_set: Option<&[String]>) -> Result<()> {
    let Some(init_from) = cfg.init_from.clone() else {
        return Ok(());
    };
    let (source, tokenizer) = source_config(&init_from)?;
    let is_set = |key: &str| keys_set.is_none_or(|keys| keys.iter().any(|k| k == key));
    let ours = dynact_run::config_keys::flatten(&serde_json::to_value(&cfg.model)?);
    let theirs = dynact_run::config_keys::flatten(&serde_json::to_value(&source)?);
    let mut settled = source.clone();
    for (key, value) in &ours {
        if !is_set(&format!("model.{key}")) {
            continue;
        }
        if run_may_choose(key) {
            continue;
        }
        if theirs.get(key) != Some(value) {
            bail!(
                "model.{key} is {value} in the config but {} in --init-from {}; the model's shape comes from the source: drop model.{key}",
                theirs.get(key).unwrap_or(&serde_json::Value::Null),
                init_from
            );
        }
    }
    if is_set("model.ffn") {
        settled.ffn = cfg.model.ffn;
    }
    if is_set("model.dropout") {
        settled.dropout = cfg.model.dropout;
    }
    if is_set("model.initializer_range") {
        settled.initializer_range = cfg.model.initializer_range;
    }
    // dynAct settings one by one; a dynActGLU source keeps its base and granularity (its alpha
    // and beta have that shape and compute that function).
    let dynact = &cfg.model.dynact;
    for (key, differs) in [
        ("base", dynact.base != source.dynact.base),
        (
            "granularity",
            dynact.granularity != source.dynact.granularity,
        ),
    ] {
        if is_set(&format!("model.dynact.{key}")) && differs && source.ffn == FfnKind::Dynactglu {
            bail!(
                "model.dynact.{key} differs from the dynActGLU model in --init-from {}, whose alpha and beta were trained for its own; drop model.dynact.{key}",
                init_from
            );
        }
    }
    if is_set("model.dynact.base") {
        settled.dynact.base = dynact.base;
    }
    if is_set("model.dynact.granularity") {
        settled.dynact.granularity = dynact.granularity;
    }
    if is_set("model.dynact.alpha_init") {
        settled.dynact.alpha_init = dynact.alpha_init;
    }
    if is_set("model.dynact.beta_init") {
        settled.dynact.beta_init = dynact.beta_init;
    }
    if source.ffn == FfnKind::Dynactglu && settled.ffn == FfnKind::Swiglu {
        bail!(
            "--init-from {} is a dynActGLU model, and a SwiGLU run would drop its alpha and beta (changing what it computes); train it as dynactglu",
            init_from
        );
    }
    cfg.model = settled;
    if keys_set.is_some() && !is_set("data.tokenizer") {
        if let Some(path) = tokenizer {
            cfg.data.tokenizer = path.display().to_string();
        }
    }
    Ok(())
}

/// Checks that the ranks can split the work: every rank runs `grad_accum / world size`
/// micro-batches, so the world size must divide `train.grad_accum`.
fn check_world(cfg: &RunConfig, device: &Device, comm: &Communicator) -> Result<()> {
    let (size, accum) = (comm.size(), cfg.train.grad_accum);
    if size == 1 {
        return Ok(());
    }
    if !accum.is_multiple_of(size) {
        bail!(
            "train.grad_accum {accum} cannot be split over {size} ranks: each rank runs grad_accum / ranks micro-batches of the step's global batch; set train.grad_accum to a multiple of {size} (e.g. {}), or launch a number of ranks that divides {accum} (e.g. {})",
            accum.div_ceil(size) * size,
            largest_divisor_at_most(accum, size)
        );
    }
    if !device.is_cpu() && !comm.on_gpu() {
        bail!(
            "data parallel over {size} ranks on {} sums gradients with NCCL, which this train-lm was built without; build it with `cargo build --release --features nccl,mpi`, or use --device cpu",
            cfg.device
        );
    }
    Ok(())
}

/// The device this process trains on: an NCCL rank's GPU (`cuda:LOCAL_RANK`, on the stream
/// NCCL uses), else the configured one.
fn rank_device(spec: DeviceSpec, comm: &Communicator) -> Result<Device> {
    #[cfg(feature = "nccl")]
    if let Some(device) = comm.nccl_device() {
        return Ok(device.clone());
    }
    let _ = comm;
    spec.open()
}

/// The config of a trainer with nothing on disk (the benchmarks'): its row shards resolved
/// for `device` as a run's are.
pub(crate) fn in_memory(mut cfg: RunConfig, device: &Device) -> RunConfig {
    cfg.train.row_shards = resolve_row_shards(cfg.train.row_shards, device, cfg.train.batch_size);
    cfg
}

/// `train.row_shards` with 0 resolved to one per thread on a CPU (see [`row_shards`]).
fn resolve_row_shards(given: usize, device: &Device, batch_size: usize) -> usize {
    match given {
        0 => row_shards::shard_count(device, batch_size),
        n => n,
    }
}

fn largest_divisor_at_most(n: usize, k: usize) -> usize {
    (1..=k.min(n))
        .rev()
        .find(|d| n.is_multiple_of(*d))
        .unwrap_or(1)
}

/// Fails unless every rank resolved the same config (the ranks were started alike).
fn same_config_on_every_rank(cfg: &RunConfig, comm: &Communicator) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mine = cfg.to_toml();
    let mut root = mine.clone().into_bytes();
    comm.broadcast_bytes(&mut root);
    let root = String::from_utf8_lossy(&root);
    if root != mine {
        let (a, b) = root
            .lines()
            .map(Some)
            .chain(std::iter::repeat(None))
            .zip(mine.lines().map(Some).chain(std::iter::repeat(None)))
            .find(|(a, b)| a != b)
            .unwrap_or((None, None));
        bail!(
            "rank {} resolved another config than rank 0 (`{}` against `{}`); start every rank with the same command and files",
            comm.rank(),
            b.unwrap_or("(end)"),
            a.unwrap_or("(end)")
        );
    }
    Ok(())
}

/// What a run checks before it trains, without a run directory: the device, and the config
/// against its data (tokenized into the cache, which the run then reuses). The experiment grid
/// calls it before it starts any run, `train-lm --prepare-data` alone. Returns the data's
/// description.
pub fn preflight(cfg: &RunConfig, vocab_size_given: bool) -> Result<String> {
    crate::check_dtype_on(&cfg.device.open()?, cfg.dtype.dtype())?;
    let mut cfg = cfg.clone();
    let opts = RunOptions {
        vocab_size_given,
        quiet: true,
        ..Default::default()
    };
    let model_given = cfg.init_from.is_some();
    Ok(prepare_data(&mut cfg, &opts, model_given, &|_| {})?.description)
}

/// Checks the run directory against what was asked: a fresh run needs an empty place, a
/// resume needs a run there whose config differs from `cfg` only in what a resume may change.
/// Returns the checkpoint to resume from.
fn check_run_dir(
    run_dir: &RunDir,
    cfg: &mut RunConfig,
    opts: &RunOptions,
) -> Result<Option<PathBuf>> {
    let shown = run_dir.path.display();
    if !opts.resume {
        if run_dir.holds_run() {
            bail!("{shown} already holds a run; continue it with --resume {shown}, or pick another --run-dir");
        }
        return Ok(None);
    }
    let saved = RunConfig::read(&run_dir.file(RUN_CONFIG_FILE))?;
    if !opts.vocab_size_given {
        cfg.model.vocab_size = saved.model.vocab_size;
    }
    // A run keeps the dropout generator (older runs: ChaCha8) and the row shards (older runs:
    // 1) it started with, so it continues bit for bit.
    cfg.train.dropout_rng = saved.train.dropout_rng;
    cfg.train.row_shards = saved.train.row_shards;
    if let Some(diff) = dynact_run::resume::forbidden_change(&saved, cfg) {
        bail!("cannot resume {shown}: {diff}; resume with the run's own config (drop --config and the flags that change it)");
    }
    match run_dir.latest_checkpoint()? {
        Some(dir) => Ok(Some(dir)),
        None => bail!(
            "cannot resume {shown}: it holds no complete checkpoint yet; start it again with a new --run-dir"
        ),
    }
}

/// Tokenizes (or loads from the cache) the training and validation data, fits the model's
/// vocabulary to the tokenizer and validates the whole config against the data.
/// The vocabulary follows the tokenizer unless it was given, or comes from the model being
/// resumed or started from (`model_given`).
fn prepare_data(
    cfg: &mut RunConfig,
    opts: &RunOptions,
    model_given: bool,
    log: &dyn Fn(String),
) -> Result<Dataset> {
    let start = Instant::now();
    let dataset = prepare_dataset(&cfg.data)?;
    let tok_vocab = dataset.tokenizer.vocab_size();
    if !opts.vocab_size_given && !opts.resume && !model_given {
        cfg.model.vocab_size = tok_vocab;
    } else if cfg.model.vocab_size < tok_vocab {
        bail!(
            "model.vocab_size {} is smaller than the tokenizer's {tok_vocab}; raise it or leave it unset",
            cfg.model.vocab_size
        );
    }
    dataset
        .train
        .check_vocab(cfg.model.vocab_size, "the training data")?;
    crate::config::validate(cfg).map_err(|e| anyhow::anyhow!(e))?;
    log(format!(
        "data: {} ({:.1}s)",
        dataset.description,
        start.elapsed().as_secs_f64()
    ));
    // Fail now, not at the first evaluation, when the validation set is too short.
    dynact_data::eval_windows(dataset.val.len(), cfg.train.seq_len)
        .context("the validation set")?;
    Ok(dataset)
}
