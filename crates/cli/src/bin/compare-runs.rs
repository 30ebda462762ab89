//! `compare-runs`: compares `train-lm` run directories (validation perplexity per step against
//! a baseline, seeds pooled with Welch's t-test, convergence AUC, steps to a target perplexity)
//! and writes `comparison.md`, CSV files and PNG/SVG plots. Arguments are parsed here; all the
//! work is `dynact_compare::compare` and `dynact_compare::write_report`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dynact_compare::{compare, find_runs, write_report, write_tables, CompareOptions};

/// Compare train-lm runs: perplexity per evaluation step, seeds pooled by FFN, AUC, speed-up.
#[derive(Debug, Parser)]
#[command(name = "compare-runs", version)]
struct Args {
    /// Run directories written by train-lm (each with eval.jsonl; run.toml and metrics.jsonl
    /// are used when present), or an experiment folder holding them; other paths are skipped
    /// with a notice.
    runs: Vec<PathBuf>,
    /// Baseline: a run directory, a run name, an FFN name (e.g. swiglu) or a group label.
    /// Default: the swiglu group if present, else the first run.
    #[arg(long)]
    baseline: Option<String>,
    /// Output directory for comparison.md, the CSV files and the plots.
    #[arg(long, default_value = "comparison")]
    out: PathBuf,
    /// Perplexity for steps-to-target. Default: the baseline's final perplexity.
    #[arg(long)]
    target_ppl: Option<f64>,
    /// EMA weight for smoothing the training-loss plot (0 = none).
    #[arg(long, default_value_t = 0.9)]
    ema: f64,
    /// Write only the Markdown and CSV files.
    #[arg(long)]
    no_plots: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    let opts = CompareOptions {
        baseline: args.baseline,
        target_ppl: args.target_ppl,
        ema_weight: args.ema,
    };
    let (runs, notices) = find_runs(&args.runs);
    if runs.is_empty() && !args.runs.is_empty() {
        let given: Vec<String> = args.runs.iter().map(|p| p.display().to_string()).collect();
        anyhow::bail!(
            "none of {} is a run directory; pass run directories written by train-lm (with eval.jsonl) or an experiment folder holding them",
            given.join(", ")
        );
    }
    for notice in &notices {
        eprintln!("notice: {notice}");
    }
    let cmp = compare(&runs, &opts)?;
    for notice in &cmp.notices {
        eprintln!("notice: {notice}");
    }
    let written = if args.no_plots {
        write_tables(&cmp, &args.out)?
    } else {
        write_report(&cmp, &args.out)?
    };
    print!("{}", dynact_compare::table::markdown(&cmp));
    eprintln!("wrote {} files to {}", written.len(), args.out.display());
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
