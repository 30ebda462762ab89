//! Renders a [`Comparison`] as text: one Markdown report (`comparison.md`, also printed by
//! `compare-runs`) with rounded numbers, and CSV files with full-precision numbers for further
//! analysis (`per_run.csv`, `per_group.csv`, `summary.csv`, `paired.csv`; empty fields mean "not
//! available").

use std::fmt::Write;

use crate::{Comparison, Welch};

/// Perplexity, 4 decimals.
pub fn fmt_ppl(x: f64) -> String {
    format!("{x:.4}")
}

/// A relative difference as a signed percentage, 2 decimals: `-10.35%`.
pub fn fmt_pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:+.2}%", x * 100.0)
    } else {
        "-".into()
    }
}

/// A p-value: 4 decimals, scientific below 1e-4.
pub fn fmt_p(p: f64) -> String {
    if p.is_nan() {
        "-".into()
    } else if p != 0.0 && p < 1e-4 {
        format!("{p:.2e}")
    } else {
        format!("{p:.4}")
    }
}

/// Steps to target: rounded to a whole step, or "not reached".
pub fn fmt_steps(s: Option<f64>) -> String {
    match s {
        Some(s) => format!("{s:.0}"),
        None => "not reached".into(),
    }
}

fn fmt_speedup(s: Option<f64>) -> String {
    match s {
        Some(s) => format!("{s:.2}x"),
        None => "-".into(),
    }
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn welch_cells(w: Option<&Welch>) -> String {
    match w {
        Some(w) => format!("{:.3} | {:.2} | {}", w.t, w.df, fmt_p(w.p)),
        None => "- | - | -".into(),
    }
}

/// The Markdown report.
pub fn markdown(cmp: &Comparison) -> String {
    let mut md = String::new();
    let steps: Vec<String> = cmp.steps.iter().map(|s| s.to_string()).collect();
    let mut keys = vec!["model.ffn".to_string()];
    keys.extend(cmp.group_keys.iter().cloned());
    let _ = writeln!(md, "# Run comparison\n");
    let _ = writeln!(md, "- Baseline: {}", cmp.baseline.label);
    let _ = writeln!(
        md,
        "- Target perplexity: {} ({})",
        fmt_ppl(cmp.target_ppl),
        cmp.target_source
    );
    let _ = writeln!(md, "- Evaluation steps compared: {}", steps.join(", "));
    let _ = writeln!(md, "- Groups defined by: {}", keys.join(", "));
    let _ = writeln!(
        md,
        "- Differences are relative to the baseline; negative means lower (better). AUC is the trapezoidal area under val_ce over steps. p: Welch's two-sided t-test against the baseline group, per step over seeds."
    );
    if !cmp.notices.is_empty() {
        let _ = writeln!(md, "\n## Notices\n");
        for n in &cmp.notices {
            let _ = writeln!(md, "- {n}");
        }
    }

    let _ = writeln!(md, "\n## Runs\n");
    let _ = writeln!(md, "| run | group | seed | directory |");
    let _ = writeln!(md, "|---|---|---|---|");
    for r in &cmp.runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            md_cell(&r.run.name),
            md_cell(&cmp.groups[r.group].label),
            r.run.seed.as_deref().unwrap_or("-"),
            md_cell(&r.run.dir.display().to_string())
        );
    }

    let _ = writeln!(
        md,
        "\n## Validation perplexity per run (difference to baseline)\n"
    );
    let _ = write!(md, "| step |");
    for r in &cmp.runs {
        let _ = write!(md, " {} |", md_cell(&r.run.name));
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---:|{}", "---:|".repeat(cmp.runs.len()));
    for (k, step) in cmp.steps.iter().enumerate() {
        let _ = write!(md, "| {step} |");
        for r in &cmp.runs {
            let _ = write!(md, " {} ({}) |", fmt_ppl(r.ppl[k]), fmt_pct(r.rel_ppl[k]));
        }
        let _ = writeln!(md);
    }

    let _ = writeln!(md, "\n## Validation perplexity per group (seeds pooled)\n");
    let _ = writeln!(
        md,
        "| step | group | seeds | mean ppl | std | min | max | vs baseline | Welch t | df | p |"
    );
    let _ = writeln!(
        md,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (k, step) in cmp.steps.iter().enumerate() {
        for g in &cmp.groups {
            let _ = writeln!(
                md,
                "| {step} | {} | {} | {} | {} | {} | {} | {} | {} |",
                md_cell(&g.label),
                g.members.len(),
                fmt_ppl(g.mean_ppl[k]),
                fmt_opt(g.std_ppl[k], 4),
                fmt_ppl(g.min_ppl[k]),
                fmt_ppl(g.max_ppl[k]),
                fmt_pct(g.rel_ppl[k]),
                welch_cells(g.welch[k].as_ref())
            );
        }
    }

    write_paired(&mut md, cmp);
    write_gap(&mut md, cmp);

    let _ = writeln!(md, "\n## Convergence AUC and steps to target per run\n");
    let _ = writeln!(
        md,
        "| run | group | final ppl | AUC | AUC vs baseline | steps to {} | speed-up |",
        fmt_ppl(cmp.target_ppl)
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    for r in &cmp.runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {} | {} | {} |",
            md_cell(&r.run.name),
            md_cell(&cmp.groups[r.group].label),
            fmt_ppl(*r.ppl.last().unwrap_or(&f64::NAN)),
            r.auc,
            fmt_pct(r.auc_rel),
            fmt_steps(r.steps_to_target),
            fmt_speedup(r.speedup)
        );
    }

    let _ = writeln!(md, "\n## Convergence AUC and steps to target per group\n");
    let _ = writeln!(
        md,
        "| group | seeds | final mean ppl | AUC mean | AUC std | AUC vs baseline | AUC p | steps to {} | speed-up |",
        fmt_ppl(cmp.target_ppl)
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for g in &cmp.groups {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} |",
            md_cell(&g.label),
            g.members.len(),
            fmt_ppl(*g.mean_ppl.last().unwrap_or(&f64::NAN)),
            g.auc_mean,
            fmt_opt(g.auc_std, 2),
            fmt_pct(g.auc_rel),
            g.auc_welch.map_or("-".into(), |w| fmt_p(w.p)),
            fmt_steps(g.steps_to_target),
            fmt_speedup(g.speedup)
        );
    }
    let _ = writeln!(
        md,
        "\nBaseline steps to target: {}.",
        fmt_steps(cmp.baseline_steps_to_target)
    );
    md
}

/// With groups split by settings (a sweep): each group against the SwiGLU group of its own
/// settings, per step.
fn write_paired(md: &mut String, cmp: &Comparison) {
    let paired: Vec<_> = cmp
        .groups
        .iter()
        .filter_map(|g| g.paired.as_ref().map(|p| (g, p)))
        .collect();
    if cmp.group_keys.is_empty() || paired.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Each setting against SwiGLU with the same settings\n\nSwiGLU reads no `model.dynact.*` or `optim.dynact_*` key (n/a), so one SwiGLU group can pair with several.\n"
    );
    let _ = writeln!(
        md,
        "| step | group | against | mean ppl | SwiGLU mean ppl | difference | Welch t | df | p |"
    );
    let _ = writeln!(md, "|---:|---|---|---:|---:|---:|---:|---:|---:|");
    for (k, step) in cmp.steps.iter().enumerate() {
        for (g, p) in &paired {
            let s = &cmp.groups[p.group];
            let _ = writeln!(
                md,
                "| {step} | {} | {} | {} | {} | {} | {} |",
                md_cell(&g.label),
                md_cell(&s.label),
                fmt_ppl(g.mean_ppl[k]),
                fmt_ppl(s.mean_ppl[k]),
                fmt_pct(p.rel_ppl[k]),
                welch_cells(p.welch[k].as_ref())
            );
        }
    }
}

/// Where the runs evaluated a slice of their training data: each group's val_ce - train_ce.
fn write_gap(md: &mut String, cmp: &Comparison) {
    let groups: Vec<_> = cmp
        .groups
        .iter()
        .filter(|g| g.mean_gap.iter().any(Option::is_some))
        .collect();
    if groups.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Generalisation gap (val_ce - train_ce, nats, mean over seeds)\n\ntrain_ce scores the first `eval.train_tokens` tokens of the training stream with dropout off.\n"
    );
    let _ = write!(md, "| step |");
    for g in &groups {
        let _ = write!(md, " {} |", md_cell(&g.label));
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---:|{}", "---:|".repeat(groups.len()));
    for (k, step) in cmp.steps.iter().enumerate() {
        let _ = write!(md, "| {step} |");
        for g in &groups {
            let _ = write!(md, " {} |", fmt_opt(g.mean_gap[k], 4));
        }
        let _ = writeln!(md);
    }
}

/// Quotes a CSV field when it holds a comma, quote or line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn num(x: f64) -> String {
    if x.is_finite() {
        x.to_string()
    } else {
        String::new()
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or(String::new(), num)
}

/// `run,group,step,val_ppl,val_ce,rel_diff_ppl,train_ce`: one row per run and shared step.
pub fn per_run_csv(cmp: &Comparison) -> String {
    let mut s = String::from("run,group,step,val_ppl,val_ce,rel_diff_ppl,train_ce\n");
    for r in &cmp.runs {
        for (k, step) in cmp.steps.iter().enumerate() {
            let _ = writeln!(
                s,
                "{},{},{step},{},{},{},{}",
                csv_field(&r.run.name),
                csv_field(&cmp.groups[r.group].label),
                num(r.ppl[k]),
                num(r.ce[k]),
                num(r.rel_ppl[k]),
                opt(r.train_ce[k])
            );
        }
    }
    s
}

/// One row per group and shared step, with Welch's test against the baseline group.
pub fn per_group_csv(cmp: &Comparison) -> String {
    let mut s = String::from(
        "group,step,seeds,mean_ppl,std_ppl,min_ppl,max_ppl,rel_diff_ppl,welch_t,welch_df,p_value\n",
    );
    for g in &cmp.groups {
        for (k, step) in cmp.steps.iter().enumerate() {
            let w = g.welch[k];
            let _ = writeln!(
                s,
                "{},{step},{},{},{},{},{},{},{},{},{}",
                csv_field(&g.label),
                g.members.len(),
                num(g.mean_ppl[k]),
                opt(g.std_ppl[k]),
                num(g.min_ppl[k]),
                num(g.max_ppl[k]),
                num(g.rel_ppl[k]),
                opt(w.map(|w| w.t)),
                opt(w.map(|w| w.df)),
                opt(w.map(|w| w.p))
            );
        }
    }
    s
}

/// One row per group paired with a SwiGLU group of its settings and per shared step (header
/// only when no group is).
pub fn paired_csv(cmp: &Comparison) -> String {
    let mut s = String::from(
        "group,against,step,mean_ppl,against_mean_ppl,rel_diff_ppl,welch_t,welch_df,p_value\n",
    );
    for g in &cmp.groups {
        let Some(p) = &g.paired else { continue };
        let against = &cmp.groups[p.group];
        for (k, step) in cmp.steps.iter().enumerate() {
            let w = p.welch[k];
            let _ = writeln!(
                s,
                "{},{},{step},{},{},{},{},{},{}",
                csv_field(&g.label),
                csv_field(&against.label),
                num(g.mean_ppl[k]),
                num(against.mean_ppl[k]),
                num(p.rel_ppl[k]),
                opt(w.map(|w| w.t)),
                opt(w.map(|w| w.df)),
                opt(w.map(|w| w.p))
            );
        }
    }
    s
}

/// One row per run (`kind=run`) and per group (`kind=group`): final perplexity, AUC,
/// steps to target and speed-up.
pub fn summary_csv(cmp: &Comparison) -> String {
    let mut s = String::from(
        "kind,name,group,seeds,final_ppl,auc,auc_std,auc_rel_diff,auc_p_value,target_ppl,steps_to_target,speedup\n",
    );
    for r in &cmp.runs {
        let _ = writeln!(
            s,
            "run,{},{},1,{},{},,{},,{},{},{}",
            csv_field(&r.run.name),
            csv_field(&cmp.groups[r.group].label),
            num(*r.ppl.last().unwrap_or(&f64::NAN)),
            num(r.auc),
            num(r.auc_rel),
            num(cmp.target_ppl),
            opt(r.steps_to_target),
            opt(r.speedup)
        );
    }
    for g in &cmp.groups {
        let _ = writeln!(
            s,
            "group,{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(&g.label),
            csv_field(&g.label),
            g.members.len(),
            num(*g.mean_ppl.last().unwrap_or(&f64::NAN)),
            num(g.auc_mean),
            opt(g.auc_std),
            num(g.auc_rel),
            opt(g.auc_welch.map(|w| w.p)),
            num(cmp.target_ppl),
            opt(g.steps_to_target),
            opt(g.speedup)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_pct(-0.103_455), "-10.35%");
        assert_eq!(fmt_pct(0.0), "+0.00%");
        assert_eq!(fmt_p(0.107_53), "0.1075");
        assert_eq!(fmt_p(3.0e-6), "3.00e-6");
        assert_eq!(fmt_steps(None), "not reached");
        assert_eq!(fmt_steps(Some(249.6)), "250");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
