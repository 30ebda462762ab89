//! Reading run directories written by `train-lm`: `run.toml` (the resolved config, flattened to
//! dotted keys for grouping), `eval.jsonl` (one evaluation per line; required) and
//! `metrics.jsonl` (one logged training step per line; optional). Unknown keys are ignored and
//! missing optional ones tolerated, so logs of older or newer trainers still load.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::CompareError;

/// One line of `eval.jsonl`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EvalPoint {
    pub step: u64,
    #[serde(default)]
    pub tokens_seen: Option<u64>,
    /// Mean validation cross-entropy in nats; derived from `val_ppl` when absent.
    #[serde(default)]
    pub val_ce: Option<f64>,
    /// Validation perplexity; derived from `val_ce` when absent.
    #[serde(default)]
    pub val_ppl: Option<f64>,
    #[serde(default)]
    pub val_bpb: Option<f64>,
    #[serde(default)]
    pub elapsed_s: Option<f64>,
}

impl EvalPoint {
    /// Validation cross-entropy (nats), from `val_ce` or `ln(val_ppl)`.
    pub fn ce(&self) -> f64 {
        self.val_ce
            .or(self.val_ppl.map(f64::ln))
            .unwrap_or(f64::NAN)
    }

    /// Validation perplexity, from `val_ppl` or `exp(val_ce)`.
    pub fn ppl(&self) -> f64 {
        self.val_ppl
            .or(self.val_ce.map(f64::exp))
            .unwrap_or(f64::NAN)
    }
}

/// One line of `metrics.jsonl`. `alpha`/`beta` hold one value per layer (per-layer means under
/// per-channel granularity) and are absent for SwiGLU runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MetricPoint {
    pub step: u64,
    pub loss: f64,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub grad_norm: Option<f64>,
    #[serde(default)]
    pub tokens_per_s: Option<f64>,
    #[serde(default)]
    pub elapsed_s: Option<f64>,
    #[serde(default)]
    pub alpha: Option<Vec<f64>>,
    #[serde(default)]
    pub beta: Option<Vec<f64>>,
    #[serde(default)]
    pub alpha_std: Option<Vec<f64>>,
    #[serde(default)]
    pub beta_std: Option<Vec<f64>>,
}

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
    pub evals: Vec<EvalPoint>,
    /// Logged training steps sorted by step; empty without metrics.jsonl.
    pub metrics: Vec<MetricPoint>,
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
        let eval_path = dir.join("eval.jsonl");
        if !eval_path.is_file() {
            return Err(CompareError::MissingEval {
                dir: dir.to_path_buf(),
            });
        }
        let config = match read_config(&dir.join("run.toml"))? {
            Some(table) => flatten(&table),
            None => BTreeMap::new(),
        };
        let mut evals: Vec<EvalPoint> = read_jsonl(&eval_path)?;
        for (i, e) in evals.iter().enumerate() {
            if e.val_ce.is_none() && e.val_ppl.is_none() {
                return Err(CompareError::ParseLine {
                    path: eval_path.clone(),
                    line: i + 1,
                    msg: "neither val_ce nor val_ppl is present".into(),
                });
            }
        }
        if evals.is_empty() {
            return Err(CompareError::EmptyEval { path: eval_path });
        }
        dedup_by_step(&mut evals, |e| e.step);
        let metrics_path = dir.join("metrics.jsonl");
        let mut metrics: Vec<MetricPoint> = if metrics_path.is_file() {
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

/// Flattens nested tables into dotted keys; arrays and scalars are rendered as TOML.
pub fn flatten(table: &toml::Table) -> BTreeMap<String, String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => walk(&key, t, out),
                other => {
                    out.insert(key, other.to_string());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out);
    out
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
