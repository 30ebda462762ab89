//! What a run prints: the progress bar and the closing summary.

use super::*;

/// A progress bar on a terminal; hidden otherwise (then plain lines are printed).
pub(super) fn progress_bar(total: u64, start: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(start);
    bar
}

/// The table printed at the end of a run: every evaluation of this invocation, then speed.
pub fn print_summary(name: &str, r: &RunReport) {
    if r.already_complete {
        println!(
            "run {name} ({}) is already complete at step {}; nothing to do. To train it further, resume with more steps: train-lm --resume {} --steps {}",
            r.run_dir.display(),
            r.last_step,
            r.run_dir.display(),
            2 * r.last_step
        );
        return;
    }
    if !r.evals.is_empty() {
        println!("\nrun {name} ({})", r.run_dir.display());
        println!("| step | tokens seen | val_ce | val_ppl | val_bpb |");
        println!("|-----:|------------:|-------:|--------:|--------:|");
        for (step, tokens, e) in &r.evals {
            let bpb = e.bpb.map_or("-".to_string(), |b| format!("{b:.4}"));
            println!("| {step} | {tokens} | {:.4} | {:.4} | {bpb} |", e.ce, e.ppl);
        }
        println!("unigram baseline: val_ppl {:.4}", r.unigram_ppl);
    }
    println!(
        "{} steps, {:.3} s/step, {:.0} tokens/s (training only)",
        r.losses.len(),
        r.step_time_s,
        r.tokens_per_s
    );
}
