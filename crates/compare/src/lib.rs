//! Compares `train-lm` runs: validation perplexity per evaluation step against a baseline,
//! seeds pooled into groups (mean, standard deviation, Welch's t-test), convergence AUC,
//! steps to a target perplexity, and plots.
//!
//! Design note. Reading, statistics, tables and plots are separate modules that depend one way:
//! `runs` turns directories into [`Run`]s, [`compare`] turns runs into a [`Comparison`] of plain
//! numbers (all statistics come from the pure functions in `stats`), and [`write_report`] renders
//! a comparison as Markdown, CSV and PNG/SVG files. Nothing is computed while writing, so an
//! experiment grid (dynact-cli) can call `compare` after its runs and inspect the numbers itself.
//!
//! Groups are formed by `model.ffn` plus every other run.toml key whose value differs between
//! runs, except `train.seed`, `name`, `run_dir`, keys named `*seed*`, and keys whose values
//! become equal once each run's seed, name and directory are replaced by placeholders (such as
//! an output path that contains the run name). All per-step numbers use only the evaluation
//! steps that every run has; the others are named in [`Comparison::notices`]. The baseline is a
//! group (its mean curve) or one run; by default the `swiglu` group, else the first run.
//!
//! A key that SwiGLU does not read (`model.dynact.*`, `optim.dynact_*`) does not split SwiGLU
//! runs (its value shows as `n/a`). With groups split by settings, as a sweep makes them, each
//! other group is also compared with the SwiGLU group of its own settings
//! ([`GroupSummary::paired`]), so every swept value has its own dynActGLU-vs-SwiGLU difference.

pub mod grouping;
pub mod plot;
pub mod runs;
pub mod stats;
pub mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dynact_run::config_keys::applies_to_ffn;
pub use dynact_run::{EvalRecord, MetricsRecord};
pub use grouping::grouping_keys;
pub use runs::{find_runs, Run};
pub use stats::Welch;

/// Everything that can go wrong; each message is one line that names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("no runs given: pass at least one run directory written by train-lm")]
    NoRuns,
    #[error("{}: not a directory (expected a run directory written by train-lm)", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error(
        "{}: no eval.jsonl; train-lm writes it at the run's first evaluation (see eval.eval_at in run.toml), so this run has not been evaluated yet",
        dir.display()
    )]
    MissingEval { dir: PathBuf },
    #[error("{}: holds no evaluation", path.display())]
    EmptyEval { path: PathBuf },
    #[error("{}:{line}: cannot parse line: {msg}", path.display())]
    ParseLine {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{}: cannot parse: {msg}", path.display())]
    ParseConfig { path: PathBuf, msg: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the runs share no evaluation step ({detail}); evaluate them at common steps (eval.eval_at)")]
    NoSharedSteps { detail: String },
    #[error("--baseline {given:?} matches no run directory, run name, FFN or group (available: {available})")]
    BaselineNotFound { given: String, available: String },
    #[error("--target-ppl {0} is not a positive finite number")]
    BadTarget(f64),
    #[error("--ema {0} is not in [0, 1)")]
    BadEma(f64),
    #[error("{}: cannot draw plot: {msg}", path.display())]
    Plot { path: PathBuf, msg: String },
}

/// Options for [`compare`].
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// A run directory, run name, FFN name or group label; `None` picks the `swiglu` group if
    /// there is one, else the first run.
    pub baseline: Option<String>,
    /// Perplexity to reach for steps-to-target; `None` uses the baseline's final perplexity.
    pub target_ppl: Option<f64>,
    /// EMA weight for the training-loss plot (0 = no smoothing).
    pub ema_weight: f64,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            baseline: None,
            target_ppl: None,
            ema_weight: 0.9,
        }
    }
}

/// What the comparison is measured against.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// Index into [`Comparison::groups`]: the group other groups are tested against.
    pub group: usize,
    /// Index into [`Comparison::runs`] when a single run is the reference curve; `None` when the
    /// reference is the group's mean curve.
    pub run: Option<usize>,
    /// Human-readable description.
    pub label: String,
}

/// One run's numbers at the shared evaluation steps.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run: Run,
    /// Index into [`Comparison::groups`].
    pub group: usize,
    /// Validation perplexity at each of [`Comparison::steps`].
    pub ppl: Vec<f64>,
    /// Validation cross-entropy (nats) at each shared step.
    pub ce: Vec<f64>,
    /// Cross-entropy on the slice of the training stream (`eval.train_tokens`) at each shared
    /// step, where the run evaluated it.
    pub train_ce: Vec<Option<f64>>,
    /// (ppl - baseline ppl) / baseline ppl at each shared step.
    pub rel_ppl: Vec<f64>,
    /// Trapezoidal area under val_ce over the shared steps.
    pub auc: f64,
    /// Relative difference of `auc` to the baseline's AUC.
    pub auc_rel: f64,
    /// Interpolated step at which the target perplexity is reached; `None`: not reached.
    pub steps_to_target: Option<f64>,
    /// Baseline steps-to-target / this run's; `None` when either was not reached.
    pub speedup: Option<f64>,
}

/// One group's numbers (seeds pooled) at the shared evaluation steps.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    /// `ffn` alone, or `ffn (key=value, ...)` with the other keys that set it apart.
    pub label: String,
    pub ffn: String,
    /// The differing config keys (besides `model.ffn`) and this group's values.
    pub settings: Vec<(String, String)>,
    /// Indices into [`Comparison::runs`].
    pub members: Vec<usize>,
    pub mean_ppl: Vec<f64>,
    /// Sample standard deviation over seeds; `None` with one seed.
    pub std_ppl: Vec<Option<f64>>,
    pub min_ppl: Vec<f64>,
    pub max_ppl: Vec<f64>,
    /// Relative difference of `mean_ppl` to the baseline curve.
    pub rel_ppl: Vec<f64>,
    /// Welch's test of this group's perplexities against the baseline group's, per step;
    /// `None` unless both have at least two seeds (and for the baseline group itself).
    pub welch: Vec<Option<Welch>>,
    pub auc_mean: f64,
    pub auc_std: Option<f64>,
    pub auc_rel: f64,
    /// Welch's test of the members' AUCs against the baseline group's.
    pub auc_welch: Option<Welch>,
    /// The generalisation gap, val_ce - train_ce (nats), averaged over the members, at each
    /// shared step where every member evaluated the training slice.
    pub mean_gap: Vec<Option<f64>>,
    /// Steps-to-target of the mean perplexity curve.
    pub steps_to_target: Option<f64>,
    pub speedup: Option<f64>,
    /// Against the SwiGLU group with the same settings (of the keys SwiGLU reads); `None` for
    /// SwiGLU groups and where no such group was run.
    pub paired: Option<Paired>,
}

/// A group's difference to the SwiGLU group run with the same settings.
#[derive(Debug, Clone)]
pub struct Paired {
    /// Index into [`Comparison::groups`]: the SwiGLU group.
    pub group: usize,
    /// Relative difference of the mean perplexity to that group's, per shared step.
    pub rel_ppl: Vec<f64>,
    /// Welch's test against that group's perplexities per step (two seeds or more in each).
    pub welch: Vec<Option<Welch>>,
}

/// The result of [`compare`]: plain numbers, ready to render or inspect.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Evaluation steps shared by every run, ascending.
    pub steps: Vec<u64>,
    pub runs: Vec<RunSummary>,
    pub groups: Vec<GroupSummary>,
    pub baseline: Baseline,
    /// Config keys (besides `model.ffn`) that define the groups.
    pub group_keys: Vec<String>,
    pub target_ppl: f64,
    /// Where `target_ppl` came from.
    pub target_source: String,
    /// Baseline reference perplexity curve at the shared steps.
    pub baseline_ppl: Vec<f64>,
    pub baseline_auc: f64,
    pub baseline_steps_to_target: Option<f64>,
    /// Non-fatal remarks (dropped evaluation steps), one line each.
    pub notices: Vec<String>,
    pub ema_weight: f64,
}

/// Loads every run directory and compares them; see the module note for the rules.
pub fn compare(dirs: &[PathBuf], opts: &CompareOptions) -> Result<Comparison, CompareError> {
    if dirs.is_empty() {
        return Err(CompareError::NoRuns);
    }
    if let Some(t) = opts.target_ppl {
        if !(t.is_finite() && t > 0.0) {
            return Err(CompareError::BadTarget(t));
        }
    }
    if !(0.0..1.0).contains(&opts.ema_weight) {
        return Err(CompareError::BadEma(opts.ema_weight));
    }
    let mut loaded = dirs
        .iter()
        .map(|d| Run::load(d))
        .collect::<Result<Vec<_>, _>>()?;
    disambiguate_names(&mut loaded);

    let (steps, notices) = shared_steps(&loaded)?;
    let xs: Vec<f64> = steps.iter().map(|&s| s as f64).collect();

    let group_keys = grouping_keys(&loaded);
    let (mut groups, run_group) = group_runs(&loaded, &group_keys);

    // Per-run curves at the shared steps.
    let curves: Vec<(Vec<f64>, Vec<f64>)> = loaded
        .iter()
        .map(|r| {
            let at = |s: u64| r.evals.iter().find(|e| e.step == s);
            let pts: Vec<&EvalRecord> = steps.iter().filter_map(|&s| at(s)).collect();
            (
                pts.iter().map(|e| e.val_ppl).collect(),
                pts.iter().map(|e| e.val_ce).collect(),
            )
        })
        .collect();
    let aucs: Vec<f64> = curves.iter().map(|(_, ce)| stats::auc(&xs, ce)).collect();
    let train_ces: Vec<Vec<Option<f64>>> = loaded
        .iter()
        .map(|r| {
            steps
                .iter()
                .map(|&s| r.evals.iter().find(|e| e.step == s)?.train_ce)
                .collect()
        })
        .collect();

    summarize_groups(&mut groups, &curves, &aucs);
    for g in groups.iter_mut() {
        g.mean_gap = (0..steps.len())
            .map(|k| {
                let gaps: Option<Vec<f64>> = g
                    .members
                    .iter()
                    .map(|&i| Some(curves[i].1[k] - train_ces[i][k]?))
                    .collect();
                gaps.map(|v| stats::mean(&v))
            })
            .collect();
    }

    let baseline = resolve_baseline(opts.baseline.as_deref(), &loaded, &groups, &run_group)?;
    let (baseline_ppl, baseline_auc) = match baseline.run {
        Some(i) => (curves[i].0.clone(), aucs[i]),
        None => {
            let g = &groups[baseline.group];
            (g.mean_ppl.clone(), g.auc_mean)
        }
    };
    let (target_ppl, target_source) = match opts.target_ppl {
        Some(t) => (t, "--target-ppl".to_string()),
        None => (
            *baseline_ppl.last().expect("steps is non-empty"),
            format!(
                "final perplexity of the baseline ({}) at step {}",
                baseline.label,
                steps[steps.len() - 1]
            ),
        ),
    };
    let baseline_steps_to_target = stats::steps_to_target(&xs, &baseline_ppl, target_ppl);

    let against = BaselineCurve {
        group: baseline.group,
        ppl: &baseline_ppl,
        auc: baseline_auc,
        steps_to_target: baseline_steps_to_target,
    };
    compare_groups(&mut groups, &against, &curves, &aucs, &xs, target_ppl);
    pair_with_swiglu(&mut groups, &curves);

    let runs = loaded
        .into_iter()
        .zip(curves)
        .zip(train_ces)
        .enumerate()
        .map(|(i, ((run, (ppl, ce)), train_ce))| {
            let steps_to_target = stats::steps_to_target(&xs, &ppl, target_ppl);
            RunSummary {
                group: run_group[i],
                rel_ppl: ppl
                    .iter()
                    .zip(&baseline_ppl)
                    .map(|(p, b)| stats::rel_diff(*p, *b))
                    .collect(),
                auc: aucs[i],
                auc_rel: stats::rel_diff(aucs[i], baseline_auc),
                steps_to_target,
                speedup: against.speedup(steps_to_target),
                run,
                ppl,
                ce,
                train_ce,
            }
        })
        .collect();

    Ok(Comparison {
        steps,
        runs,
        groups,
        baseline,
        group_keys,
        target_ppl,
        target_source,
        baseline_ppl,
        baseline_auc,
        baseline_steps_to_target,
        notices,
        ema_weight: opts.ema_weight,
    })
}

/// The evaluation steps every run has, and a notice for each run whose other steps are left
/// out.
fn shared_steps(loaded: &[Run]) -> Result<(Vec<u64>, Vec<String>), CompareError> {
    let mut notices = Vec::new();
    let mut shared: BTreeSet<u64> = loaded[0].evals.iter().map(|e| e.step).collect();
    for r in &loaded[1..] {
        let s: BTreeSet<u64> = r.evals.iter().map(|e| e.step).collect();
        shared = shared.intersection(&s).copied().collect();
    }
    if shared.is_empty() {
        let detail = loaded
            .iter()
            .map(|r| format!("{}: {}", r.name, step_list(r.evals.iter().map(|e| e.step))))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(CompareError::NoSharedSteps { detail });
    }
    for r in loaded {
        let dropped: Vec<u64> = r
            .evals
            .iter()
            .map(|e| e.step)
            .filter(|s| !shared.contains(s))
            .collect();
        if !dropped.is_empty() {
            notices.push(format!(
                "{}: evaluation steps {} are not shared by every run and are left out",
                r.name,
                step_list(dropped.into_iter())
            ));
        }
    }
    Ok((shared.into_iter().collect(), notices))
}

/// Runs grouped by FFN and the values of `group_keys`; returns the groups and each run's group.
fn group_runs(loaded: &[Run], group_keys: &[String]) -> (Vec<GroupSummary>, Vec<usize>) {
    let mut groups: Vec<GroupSummary> = Vec::new();
    let mut run_group = Vec::with_capacity(loaded.len());
    for (i, r) in loaded.iter().enumerate() {
        let settings: Vec<(String, String)> = group_keys
            .iter()
            .map(|k| {
                let v = if !applies_to_ffn(k, &r.ffn) {
                    Some(NOT_READ.to_string())
                } else {
                    r.config.get(k).map(|v| runs::unquote(v))
                };
                (k.clone(), v.unwrap_or_else(|| "(unset)".into()))
            })
            .collect();
        let g = match groups
            .iter()
            .position(|g| g.ffn == r.ffn && g.settings == settings)
        {
            Some(g) => g,
            None => {
                groups.push(empty_group(&r.ffn, settings));
                groups.len() - 1
            }
        };
        groups[g].members.push(i);
        run_group.push(g);
    }
    (groups, run_group)
}

/// The value shown for a key the group's FFN does not read.
const NOT_READ: &str = "n/a";

/// Each non-SwiGLU group against the SwiGLU group whose settings are its own on every key
/// SwiGLU reads: the per-step relative difference of the means and Welch's test.
fn pair_with_swiglu(groups: &mut [GroupSummary], curves: &[(Vec<f64>, Vec<f64>)]) {
    let same_for_swiglu = |a: &GroupSummary, swiglu: &GroupSummary| {
        a.settings
            .iter()
            .zip(&swiglu.settings)
            .all(|((k, va), (_, vb))| !applies_to_ffn(k, "swiglu") || va == vb)
    };
    for gi in 0..groups.len() {
        if groups[gi].ffn == "swiglu" {
            continue;
        }
        let Some(si) = (0..groups.len())
            .find(|&s| groups[s].ffn == "swiglu" && same_for_swiglu(&groups[gi], &groups[s]))
        else {
            continue;
        };
        let (g, s) = (&groups[gi], &groups[si]);
        let ppls = |members: &[usize], k: usize| -> Vec<f64> {
            members.iter().map(|&i| curves[i].0[k]).collect()
        };
        let paired = Paired {
            group: si,
            rel_ppl: g
                .mean_ppl
                .iter()
                .zip(&s.mean_ppl)
                .map(|(m, b)| stats::rel_diff(*m, *b))
                .collect(),
            welch: (0..g.mean_ppl.len())
                .map(|k| stats::welch(&ppls(&g.members, k), &ppls(&s.members, k)))
                .collect(),
        };
        groups[gi].paired = Some(paired);
    }
}

/// Per group and shared step: mean, standard deviation, minimum and maximum perplexity; and
/// the group's convergence AUC.
fn summarize_groups(groups: &mut [GroupSummary], curves: &[(Vec<f64>, Vec<f64>)], aucs: &[f64]) {
    let steps = curves.first().map_or(0, |c| c.0.len());
    for g in groups.iter_mut() {
        for k in 0..steps {
            let vals: Vec<f64> = g.members.iter().map(|&i| curves[i].0[k]).collect();
            g.mean_ppl.push(stats::mean(&vals));
            g.std_ppl.push(stats::std_dev(&vals));
            g.min_ppl
                .push(vals.iter().copied().fold(f64::INFINITY, f64::min));
            g.max_ppl
                .push(vals.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        }
        let ga: Vec<f64> = g.members.iter().map(|&i| aucs[i]).collect();
        g.auc_mean = stats::mean(&ga);
        g.auc_std = stats::std_dev(&ga);
    }
}

/// The baseline's curve, as the groups and runs are compared with it.
struct BaselineCurve<'a> {
    group: usize,
    ppl: &'a [f64],
    auc: f64,
    steps_to_target: Option<f64>,
}

impl BaselineCurve<'_> {
    /// How many times fewer steps than the baseline a curve needs to reach the target.
    fn speedup(&self, steps: Option<f64>) -> Option<f64> {
        match (self.steps_to_target, steps) {
            (Some(b), Some(s)) if s > 0.0 => Some(b / s),
            _ => None,
        }
    }
}

/// Every group against the baseline: relative perplexity, Welch's test per step and on the
/// AUC, steps to the target perplexity and the speed-up.
fn compare_groups(
    groups: &mut [GroupSummary],
    base: &BaselineCurve,
    curves: &[(Vec<f64>, Vec<f64>)],
    aucs: &[f64],
    xs: &[f64],
    target_ppl: f64,
) {
    let base_members = groups[base.group].members.clone();
    for (gi, g) in groups.iter_mut().enumerate() {
        g.rel_ppl = g
            .mean_ppl
            .iter()
            .zip(base.ppl)
            .map(|(m, b)| stats::rel_diff(*m, *b))
            .collect();
        g.welch = (0..xs.len())
            .map(|k| {
                if gi == base.group {
                    return None;
                }
                let a: Vec<f64> = g.members.iter().map(|&i| curves[i].0[k]).collect();
                let b: Vec<f64> = base_members.iter().map(|&i| curves[i].0[k]).collect();
                stats::welch(&a, &b)
            })
            .collect();
        g.auc_rel = stats::rel_diff(g.auc_mean, base.auc);
        if gi != base.group {
            let a: Vec<f64> = g.members.iter().map(|&i| aucs[i]).collect();
            let b: Vec<f64> = base_members.iter().map(|&i| aucs[i]).collect();
            g.auc_welch = stats::welch(&a, &b);
        }
        g.steps_to_target = stats::steps_to_target(xs, &g.mean_ppl, target_ppl);
        g.speedup = base.speedup(g.steps_to_target);
    }
}

/// Writes `comparison.md`, the CSV files and the plots into `out_dir` (created if needed) and
/// returns the paths written.
pub fn write_report(cmp: &Comparison, out_dir: &Path) -> Result<Vec<PathBuf>, CompareError> {
    let mut written = write_tables(cmp, out_dir)?;
    written.extend(plot::write_plots(cmp, out_dir)?);
    Ok(written)
}

/// Writes only `comparison.md` and the CSV files into `out_dir`.
pub fn write_tables(cmp: &Comparison, out_dir: &Path) -> Result<Vec<PathBuf>, CompareError> {
    std::fs::create_dir_all(out_dir).map_err(|source| CompareError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let files = [
        ("comparison.md", table::markdown(cmp)),
        ("per_run.csv", table::per_run_csv(cmp)),
        ("per_group.csv", table::per_group_csv(cmp)),
        ("summary.csv", table::summary_csv(cmp)),
        ("paired.csv", table::paired_csv(cmp)),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out_dir.join(name);
        std::fs::write(&path, text).map_err(|source| CompareError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

fn empty_group(ffn: &str, settings: Vec<(String, String)>) -> GroupSummary {
    let label = if settings.is_empty() {
        ffn.to_string()
    } else {
        let kv: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{ffn} ({})", kv.join(", "))
    };
    GroupSummary {
        label,
        ffn: ffn.to_string(),
        settings,
        members: Vec::new(),
        mean_ppl: Vec::new(),
        std_ppl: Vec::new(),
        min_ppl: Vec::new(),
        max_ppl: Vec::new(),
        rel_ppl: Vec::new(),
        welch: Vec::new(),
        auc_mean: f64::NAN,
        auc_std: None,
        auc_rel: f64::NAN,
        auc_welch: None,
        mean_gap: Vec::new(),
        steps_to_target: None,
        speedup: None,
        paired: None,
    }
}

fn resolve_baseline(
    given: Option<&str>,
    runs: &[Run],
    groups: &[GroupSummary],
    run_group: &[usize],
) -> Result<Baseline, CompareError> {
    let run_baseline = |i: usize| Baseline {
        group: run_group[i],
        run: Some(i),
        label: format!("run {}", runs[i].name),
    };
    let group_baseline = |g: usize| Baseline {
        group: g,
        run: None,
        label: if groups[g].members.len() == 1 {
            format!("group {}, 1 run", groups[g].label)
        } else {
            format!(
                "group {}, mean of {} runs",
                groups[g].label,
                groups[g].members.len()
            )
        },
    };
    let Some(given) = given else {
        return Ok(match groups.iter().position(|g| g.ffn == "swiglu") {
            Some(g) => group_baseline(g),
            None => run_baseline(0),
        });
    };
    // A run directory (compared by canonical path), then a run name.
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    if let Some(c) = canon(Path::new(given)) {
        if let Some(i) = runs.iter().position(|r| canon(&r.dir).as_ref() == Some(&c)) {
            return Ok(run_baseline(i));
        }
    }
    if let Some(i) = runs.iter().position(|r| r.name == given) {
        return Ok(run_baseline(i));
    }
    if let Some(g) = groups
        .iter()
        .position(|g| g.label == given || g.ffn == given)
    {
        return Ok(group_baseline(g));
    }
    let mut available: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    available.extend(groups.iter().map(|g| g.label.clone()));
    available.dedup();
    Err(CompareError::BaselineNotFound {
        given: given.to_string(),
        available: available.join(", "),
    })
}

/// Makes run names unique by falling back to the directory path for duplicates.
fn disambiguate_names(runs: &mut [Run]) {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in runs.iter() {
        *count.entry(r.name.clone()).or_default() += 1;
    }
    for r in runs.iter_mut() {
        if count[&r.name] > 1 {
            r.name = r.dir.display().to_string();
        }
    }
}

fn step_list(steps: impl Iterator<Item = u64>) -> String {
    let v: Vec<String> = steps.map(|s| s.to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
