//! Reading run directories written by `train-lm` (layout and record types: dynact-run):
//! `run.toml` (the resolved config, flattened to dotted keys for grouping), `eval.jsonl` (one
//! [`EvalRecord`] per line; required) and `metrics.jsonl` (one [`MetricsRecord`] per line;
//! optional). Unknown keys are ignored, so logs of newer trainers still load.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use dynact_run::{EvalRecord, MetricsRecord, EVAL_FILE, METRICS_FILE, RUN_CONFIG_FILE};
use serde::Deserialize;

use crate::CompareError;

/// A loaded run directory.
#[derive(Debug, Clone)]
pub struct Run {
    /// The directory as given.
    pub dir: PathBuf,
    /// `name` from run.toml, else the directory's file name.
    pub name: String,
    /// `model.ffn` from run.toml (`"swiglu"`, `"dynactglu"`), or `"unknown"` without one.
    pub ffn: String,
    /// The run's `seed` (top level of run.toml, or `train.seed`), when it has one.
    pub seed: Option<String>,
    /// run.toml flattened to dotted keys (`model.dynact.init_alpha`) with TOML-rendered values;
    /// empty when the run has no run.toml.
    pub config: BTreeMap<String, String>,
    /// Evaluations sorted by step; a step evaluated twice (a resumed run) keeps its last line.
    pub evals: Vec<EvalRecord>,
    /// Logged training steps sorted by step; empty without metrics.jsonl.
    pub metrics: Vec<MetricsRecord>,
}

/// The run directories among `paths` as a user gives them on the command line: a run
/// directory stands for itself; an experiment folder (no eval.jsonl or run.toml of its own)
/// for the run directories inside it; anything else (the grid's `.log` files a shell glob
/// also matches, `configs/`, `comparison/`) is skipped with a notice.
pub fn find_runs(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<String>) {
    let is_run = |p: &Path| p.join(EVAL_FILE).is_file() || p.join(RUN_CONFIG_FILE).is_file();
    let (mut runs, mut notices) = (vec![], vec![]);
    for p in paths {
        if is_run(p) {
            runs.push(p.clone());
            continue;
        }
        let inside: Vec<PathBuf> = match std::fs::read_dir(p) {
            Ok(entries) => {
                let mut v: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|c| c.is_dir() && is_run(c))
                    .collect();
                v.sort();
                v
            }
            Err(_) => vec![],
        };
        if inside.is_empty() {
            if p.is_dir() {
                // Let compare() say what is missing.
                runs.push(p.clone());
            } else {
                notices.push(format!("{} is not a run directory; skipped", p.display()));
            }
        } else {
            notices.push(format!(
                "{}: comparing the {} run directories inside it",
                p.display(),
                inside.len()
            ));
            runs.extend(inside);
        }
    }
    (runs, notices)
}

impl Run {
    /// Reads `dir/run.toml` (optional), `dir/eval.jsonl` (required) and `dir/metrics.jsonl`
    /// (optional).
    pub fn load(dir: &Path) -> Result<Run, CompareError> {
        if !dir.is_dir() {
            return Err(CompareError::NotADirectory {
                dir: dir.to_path_buf(),
            });
        }
        let eval_path = dir.join(EVAL_FILE);
        if !eval_path.is_file() {
            return Err(CompareError::MissingEval {
                dir: dir.to_path_buf(),
            });
        }
        let config = match read_config(&dir.join(RUN_CONFIG_FILE))? {
            Some(table) => flatten(&table),
            None => BTreeMap::new(),
        };
        let mut evals: Vec<EvalRecord> = read_jsonl(&eval_path)?;
        if evals.is_empty() {
            return Err(CompareError::EmptyEval { path: eval_path });
        }
        dedup_by_step(&mut evals, |e| e.step);
        let metrics_path = dir.join(METRICS_FILE);
        let mut metrics: Vec<MetricsRecord> = if metrics_path.is_file() {
            read_jsonl(&metrics_path)?
        } else {
            Vec::new()
        };
        dedup_by_step(&mut metrics, |m| m.step);

        let name = config
            .get("name")
            .map(|s| unquote(s))
            .or_else(|| dir.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        let ffn = config
            .get("model.ffn")
            .map(|s| unquote(s))
            .unwrap_or_else(|| "unknown".to_string());
        let seed = config
            .get("seed")
            .or_else(|| config.get("train.seed"))
            .cloned();
        Ok(Run {
            dir: dir.to_path_buf(),
            name,
            ffn,
            seed,
            config,
            evals,
            metrics,
        })
    }

    /// Whether the run logged dynAct parameters.
    pub fn has_alpha_beta(&self) -> bool {
        self.metrics
            .iter()
            .any(|m| m.alpha.is_some() || m.beta.is_some())
    }
}

fn read_config(path: &Path) -> Result<Option<toml::Table>, CompareError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(path).map_err(|source| CompareError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| CompareError::ParseConfig {
        path: path.to_path_buf(),
        msg: one_line(&e.to_string()),
    })?;
    Ok(Some(table))
}

/// Parses every non-blank line of a JSON-lines file; the first bad line fails with `file:line`.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, CompareError> {
    let text = fs::read_to_string(path).map_err(|source| CompareError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(line).map_err(|e| CompareError::ParseLine {
            path: path.to_path_buf(),
            line: i + 1,
            msg: one_line(&e.to_string()),
        })?;
        out.push(item);
    }
    Ok(out)
}

/// Sorts by step and keeps the last entry of each step (stable sort keeps file order).
fn dedup_by_step<T>(items: &mut Vec<T>, step: impl Fn(&T) -> u64) {
    items.sort_by_key(&step);
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items.drain(..) {
        match out.last_mut() {
            Some(last) if step(last) == step(&item) => *last = item,
            _ => out.push(item),
        }
    }
    *items = out;
}

/// run.toml as dotted keys (dynact-run's flattener), values rendered as TOML.
pub fn flatten(table: &toml::Table) -> BTreeMap<String, String> {
    let json = serde_json::to_value(table).expect("a TOML table is JSON");
    dynact_run::config_keys::flatten(&json)
        .into_iter()
        .map(|(k, v)| {
            let rendered =
                toml::Value::try_from(&v).map_or_else(|_| v.to_string(), |t| t.to_string());
            (k, rendered)
        })
        .collect()
}

/// `"swiglu"` -> `swiglu` (TOML strings are rendered quoted by `flatten`).
pub fn unquote(s: &str) -> String {
    s.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(s)
        .to_string()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
