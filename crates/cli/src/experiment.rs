//! Seeded experiment grids: every (ffn, swept values, seed) cell of a config trained one after
//! another (or `jobs` at a time, each a child `train-lm` process with its share of the cores),
//! each seed seeing the same data order and the same initial weights for both FFNs, then
//! compared with dynact-compare into `<experiment>/comparison/`. An interrupted grid, started
//! again with the same command, skips finished runs and resumes unfinished ones.
//!
//! A sweep (`--sweep KEY=V1,V2,...`) crosses the values of any config key with the FFNs and
//! seeds; a key the FFN does not read (`model.dynact.*` for SwiGLU) is not crossed with it.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use dynact_files::atomic_write_bytes;
use dynact_model::FfnKind;
use dynact_run::{EvalRecord, RunDir, TrainerState, EVAL_FILE};
use dynact_trainer::config::{DeviceSpec, RunConfig};

#[derive(Clone, Debug)]
pub struct Grid {
    /// Each FFN with each combination of the swept values it reads, each run once per seed.
    pub variants: Vec<Variant>,
    /// The `--sweep`s the variants come from (none for a grid of FFNs and seeds alone).
    pub sweeps: Vec<Sweep>,
    pub seeds: Vec<u64>,
    /// Runs at a time (None: one, or one per GPU when several are visible).
    pub jobs: Option<usize>,
}

/// One FFN with one combination of swept values, and the config they make.
#[derive(Clone, Debug)]
pub struct Variant {
    pub ffn: FfnKind,
    /// The swept keys this FFN reads, each with its value here (as given).
    pub settings: Vec<(String, String)>,
    pub config: RunConfig,
}

impl Variant {
    /// The run's name within the experiment: `dynactglu-dynact_lr_mult=10-seed1` (each swept
    /// key by its last part, unless two swept keys share it).
    fn cell_name(&self, seed: u64, sweeps: &[Sweep]) -> String {
        let mut name = self.ffn.name().to_string();
        for (key, value) in &self.settings {
            let last = key.rsplit('.').next().unwrap_or(key);
            let shared = sweeps
                .iter()
                .filter(|s| s.key.rsplit('.').next() == Some(last))
                .count()
                > 1;
            let key = if shared { key.as_str() } else { last };
            name.push_str(&format!("-{key}={}", file_name_safe(value)));
        }
        format!("{name}-seed{seed}")
    }
}

/// `--sweep KEY=V1,V2,...`: the values of one config key to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    pub key: String,
    /// As given, each parsed as `--set KEY=VALUE` would parse it.
    pub values: Vec<String>,
}

impl std::str::FromStr for Sweep {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Sweep> {
        let example = "e.g. --sweep optim.dynact_lr_mult=1,10,100";
        let Some((key, list)) = text.split_once('=') else {
            bail!("--sweep {text}: expected KEY=V1,V2,..., {example}");
        };
        let key = key.trim().to_string();
        match key.as_str() {
            "model.ffn" => bail!("--sweep {text}: the FFNs are swept by --ffn swiglu,dynactglu"),
            "seed" => bail!("--sweep {text}: seeds are swept by --seeds 0,1,2"),
            "name" | "run_dir" => {
                bail!("--sweep {text}: each run's name and directory come from the grid's")
            }
            _ => {}
        }
        let values = split_values(list);
        if key.is_empty() || values.iter().any(|v| v.is_empty()) {
            bail!("--sweep {text}: a key and values separated by commas are needed, {example}");
        }
        if let Some(v) = values
            .iter()
            .enumerate()
            .find_map(|(i, v)| values[..i].contains(v).then_some(v))
        {
            bail!("--sweep {text}: the value {v} is given twice");
        }
        Ok(Sweep { key, values })
    }
}

/// Splits `1,10,100` at commas outside brackets and quotes, so `[1,2],[3]` is two arrays.
fn split_values(list: &str) -> Vec<String> {
    let (mut values, mut current) = (vec![], String::new());
    let (mut depth, mut quote) = (0i32, None);
    for c in list.chars() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            ('[' | '{', None) => depth += 1,
            (']' | '}', None) => depth -= 1,
            (',', None) if depth == 0 => {
                values.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    values.push(current.trim().to_string());
    values
}

/// Every combination of the sweeps' values, in order (the last sweep varying fastest); one
/// empty combination without sweeps.
pub fn combinations(sweeps: &[&Sweep]) -> Vec<Vec<(String, String)>> {
    let mut combos = vec![vec![]];
    for sweep in sweeps {
        combos = combos
            .into_iter()
            .flat_map(|c: Vec<(String, String)>| {
                sweep.values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((sweep.key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    combos
}

/// A value as part of a file name: letters, digits and `.+-_` kept, anything else `_`.
fn file_name_safe(value: &str) -> String {
    let safe: String = value
        .trim_matches('"')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    safe
}

/// One run of the grid.
#[derive(Clone, Debug)]
struct Cell {
    name: String,
    dir: PathBuf,
    config_path: PathBuf,
    /// Its `train.steps` (a sweep may set them).
    steps: u64,
}

enum Progress {
    Done,
    Resume,
    Start,
}

fn progress(dir: &Path, steps: u64) -> Result<Progress> {
    let rd = RunDir::new(dir);
    if !rd.holds_run() {
        return Ok(Progress::Start);
    }
    match rd.latest_checkpoint()? {
        Some(ckpt) if TrainerState::read(&ckpt)?.step >= steps => Ok(Progress::Done),
        Some(_) => Ok(Progress::Resume),
        // Started but never checkpointed: start it again from scratch, unless a live
        // train-lm is writing it (then the lock says so).
        None => {
            drop(rd.lock()?);
            std::fs::remove_dir_all(dir)?;
            Ok(Progress::Start)
        }
    }
}

/// Runs the grid under `cfg.run_dir()` and writes the comparison; returns the experiment dir.
/// `exe` is the train-lm binary; `vocab_size_given` as in [`dynact_trainer::train::RunOptions`].
pub fn run_grid(
    cfg: &RunConfig,
    vocab_size_given: bool,
    grid: &Grid,
    exe: &Path,
) -> Result<PathBuf> {
    let base = cfg.run_dir();
    std::fs::create_dir_all(base.join("configs"))
        .with_context(|| format!("cannot create experiment dir {}", base.display()))?;
    // Whatever would stop a run (missing data, a bad config) stops the grid before any run.
    for v in &grid.variants {
        dynact_trainer::resolve::preflight(&v.config, vocab_size_given).with_context(|| {
            let set: Vec<String> = v.settings.iter().map(|(k, x)| format!("{k}={x}")).collect();
            format!("the {} runs with {}", v.ffn.name(), set.join(" "))
        })?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // On a machine with several GPUs, one run per GPU (unless --jobs says otherwise).
    let gpus = match cfg.device {
        DeviceSpec::Cuda(None | Some(0)) => visible_gpus(),
        _ => vec![],
    };
    let jobs = match (grid.jobs, gpus.len()) {
        (Some(j), _) => j.max(1),
        (None, n) => n.max(1),
    };
    let threads = (cores / jobs).max(1);
    let cells = write_cell_configs(cfg, vocab_size_given, grid, threads)?;

    let place = if gpus.len() > 1 {
        format!("spread over GPUs {}", gpus.join(", "))
    } else {
        format!("with {threads} thread(s) each")
    };
    eprintln!(
        "experiment {}: {} runs, {jobs} at a time {place}",
        base.display(),
        cells.len()
    );
    let start = Instant::now();
    run_cells(&cells, jobs, threads, &gpus, &base, exe)?;
    eprintln!(
        "experiment finished in {:.1} min",
        start.elapsed().as_secs_f64() / 60.0
    );

    let dirs: Vec<PathBuf> = cells.iter().map(|c| c.dir.clone()).collect();
    let opts = dynact_compare::CompareOptions::default();
    let comparison = dynact_compare::compare(&dirs, &opts)?;
    let out = base.join("comparison");
    dynact_compare::write_report(&comparison, &out)?;
    eprintln!("comparison written to {}", out.display());
    Ok(base)
}

/// One config per (seed, variant) under `<experiment>/configs/`: the variant's config with the
/// cell's seed, name, run directory and thread count.
fn write_cell_configs(
    cfg: &RunConfig,
    vocab_size_given: bool,
    grid: &Grid,
    threads: usize,
) -> Result<Vec<Cell>> {
    let base = cfg.run_dir();
    let mut cells = vec![];
    for &seed in &grid.seeds {
        for variant in &grid.variants {
            let name = variant.cell_name(seed, &grid.sweeps);
            let dir = base.join(&name);
            let mut c = variant.config.clone();
            c.seed = seed;
            c.name = format!("{}-{name}", cfg.name);
            c.run_dir = Some(dir.clone());
            c.train.threads = threads;
            let mut table: toml::Table = toml::from_str(&c.to_toml())?;
            if !vocab_size_given {
                // Let each run take the vocabulary size from its tokenizer.
                if let Some(toml::Value::Table(m)) = table.get_mut("model") {
                    m.remove("vocab_size");
                }
            }
            let config_path = base.join("configs").join(format!("{name}.toml"));
            atomic_write_bytes(&config_path, toml::to_string_pretty(&table)?.as_bytes())?;
            cells.push(Cell {
                dir,
                name,
                config_path,
                steps: c.train.steps,
            });
        }
    }
    Ok(cells)
}

/// The GPUs a child process may use: `CUDA_VISIBLE_DEVICES` when set, else one per line of
/// `nvidia-smi -L`, else none known.
fn visible_gpus() -> Vec<String> {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return parse_gpu_list(&v);
    }
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let n = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("GPU "))
                .count();
            (0..n).map(|i| i.to_string()).collect()
        })
        .unwrap_or_default()
}

fn parse_gpu_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The GPU (index into `gpus`) with the fewest of the `busy` runs on it.
fn least_busy(gpus: usize, busy: &[usize]) -> usize {
    (0..gpus)
        .min_by_key(|g| busy.iter().filter(|b| *b == g).count())
        .unwrap_or(0)
}

/// Runs the cells as child train-lm processes, `jobs` at a time, each logging to
/// `<experiment>/<cell>.log`; finished cells are skipped, unfinished ones resumed. The first
/// failure stops the others. With several `gpus`, each child sees only the least busy one
/// (`CUDA_VISIBLE_DEVICES`), as its `cuda:0`.
fn run_cells(
    cells: &[Cell],
    jobs: usize,
    threads: usize,
    gpus: &[String],
    base: &Path,
    exe: &Path,
) -> Result<()> {
    let start = Instant::now();
    let mut pending: Vec<&Cell> = cells.iter().rev().collect();
    let mut running: Vec<(&Cell, Child, usize)> = vec![];
    let mut evals_shown: HashMap<&str, u64> = HashMap::new();
    loop {
        while running.len() < jobs {
            let Some(cell) = pending.pop() else { break };
            let mut cmd = Command::new(exe);
            match progress(&cell.dir, cell.steps)? {
                Progress::Done => {
                    eprintln!("  {}: already finished", cell.name);
                    continue;
                }
                Progress::Resume => {
                    eprintln!("  {}: resuming", cell.name);
                    cmd.arg("--resume").arg(&cell.dir);
                }
                Progress::Start => {
                    eprintln!("  {}: starting", cell.name);
                    cmd.arg("--config").arg(&cell.config_path);
                }
            }
            let log_path = base.join(format!("{}.log", cell.name));
            let log = File::options()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("cannot open {}", log_path.display()))?;
            let busy: Vec<usize> = running.iter().map(|r| r.2).collect();
            let gpu = least_busy(gpus.len(), &busy);
            if gpus.len() > 1 {
                cmd.env("CUDA_VISIBLE_DEVICES", &gpus[gpu]);
            }
            let child = cmd
                .env("RAYON_NUM_THREADS", threads.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {}", exe.display()))?;
            running.push((cell, child, gpu));
        }
        if running.is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        for (cell, ..) in &running {
            show_new_evals(cell, &mut evals_shown);
        }
        let mut i = 0;
        while i < running.len() {
            if let Some(status) = running[i].1.try_wait()? {
                show_new_evals(running[i].0, &mut evals_shown);
                let (cell, ..) = running.remove(i);
                if !status.success() {
                    for (_, mut other, _) in running.drain(..) {
                        let _ = other.kill();
                    }
                    bail!(
                        "run {} failed ({status}); see {}; run the same command again to resume the grid",
                        cell.name,
                        base.join(format!("{}.log", cell.name)).display()
                    );
                }
                eprintln!(
                    "  {}: finished ({:.0} s into the experiment)",
                    cell.name,
                    start.elapsed().as_secs_f64()
                );
            } else {
                i += 1;
            }
        }
    }
}

/// Prints the evaluations `cell` logged since the last call, one line each: those past the
/// last step shown (a resumed run rewrites its log from its checkpoint on).
fn show_new_evals<'a>(cell: &'a Cell, shown: &mut HashMap<&'a str, u64>) {
    let Ok(text) = std::fs::read_to_string(cell.dir.join(EVAL_FILE)) else {
        return;
    };
    let last = shown.entry(cell.name.as_str()).or_insert(0);
    // Only whole lines: the child may be writing the next one.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in complete.lines() {
        let Ok(e) = serde_json::from_str::<EvalRecord>(line) else {
            continue;
        };
        if e.step <= *last {
            continue;
        }
        eprintln!(
            "  {}: step {}  val_ppl {:.4}  val_ce {:.4}  ({} of training)",
            cell.name,
            e.step,
            e.val_ppl,
            e.val_ce,
            dynact_trainer::peak_flops::format_duration(e.elapsed_s)
        );
        *last = e.step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_parse_split_and_combine() {
        let s: Sweep = "optim.dynact_lr_mult=1, 10,100".parse().unwrap();
        assert_eq!(s.key, "optim.dynact_lr_mult");
        assert_eq!(s.values, ["1", "10", "100"]);
        let arrays: Sweep = r#"eval.eval_at=[2,4],[4],"a,b""#.parse().unwrap();
        assert_eq!(arrays.values, ["[2,4]", "[4]", r#""a,b""#]);
        for bad in [
            "optim.lr",
            "optim.lr=",
            "optim.lr=1,,2",
            "=1,2",
            "optim.lr=1,1",
        ] {
            assert!(bad.parse::<Sweep>().is_err(), "{bad}");
        }
        let e = "seed=1,2".parse::<Sweep>().unwrap_err().to_string();
        assert!(e.contains("--seeds"), "{e}");

        let lr: Sweep = "optim.lr=1e-3,3e-3".parse().unwrap();
        let combos = combinations(&[&lr, &s]);
        assert_eq!(combos.len(), 6);
        assert_eq!(
            combos[1],
            [
                ("optim.lr".to_string(), "1e-3".to_string()),
                ("optim.dynact_lr_mult".to_string(), "10".to_string())
            ]
        );
        assert_eq!(combinations(&[]), vec![Vec::<(String, String)>::new()]);
        assert_eq!(file_name_safe("[2,4]"), "_2_4_");
        assert_eq!(file_name_safe("\"a/b\""), "a_b");
    }

    #[test]
    fn runs_go_to_the_least_busy_visible_gpu() {
        assert_eq!(parse_gpu_list(" 2, 5,,7 "), ["2", "5", "7"]);
        assert!(parse_gpu_list("").is_empty());
        // Three GPUs: the first three runs take one each, the fourth the first freed one.
        assert_eq!(least_busy(3, &[]), 0);
        assert_eq!(least_busy(3, &[0]), 1);
        assert_eq!(least_busy(3, &[0, 1]), 2);
        assert_eq!(least_busy(3, &[0, 2]), 1);
        assert_eq!(least_busy(3, &[0, 1, 2, 1]), 0);
        assert_eq!(least_busy(0, &[]), 0);
    }
}
