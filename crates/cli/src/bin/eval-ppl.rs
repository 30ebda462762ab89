//! `eval-ppl SOURCE [--data ...] [--split val|test] [--seq-len T] [--batch-size B]
//! [--max-tokens N] [--device ...] [--dtype ...] [--json]`: the perplexity of a checkpoint
//! (a .safetensors file, a checkpoint folder, a run directory or `hf://OWNER/NAME[@REV]`) on
//! the run's validation set or on `--data`, in the evaluation windows `train-lm` uses, so that
//! a run's checkpoint reproduces the `val_ppl` logged for it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use dynact_cli::model_args::ModelArgs;
use dynact_trainer::eval::{evaluate, EvalResult};
use dynact_trainer::eval_data::{eval_data, EvalData, Split};
use dynact_trainer::model_source::{LoadedModel, SourceKind};
use indicatif::{ProgressBar, ProgressStyle};

// glibc hands large tensor buffers back to the kernel after every step and page-faults them
// in again; mimalloc keeps them (about 30% faster training on CPU, see the train_step bench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Perplexity of a checkpoint, local or on the Hugging Face Hub.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Data to score: text/JSONL files, a folder, a glob, llm.c .bin token shards, `builtin` or
    /// hf://datasets/OWNER/NAME/PATH. Default for a run directory: the run's validation set.
    #[arg(long)]
    data: Option<String>,
    /// `val`: the held-out validation part (a run's validation set, or the last val_fraction of
    /// --data); `test`: all of --data. Default: val for a run without --data, else test.
    #[arg(long)]
    split: Option<Split>,
    /// Window length (default: the run's train.seq_len, else min(max_position_embeddings, 1024)).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Windows per forward pass (default: the run's eval.batch_size, else 8).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Score at most this many tokens (whole windows from the start); 0: all. Default for a
    /// run directory: the run's eval.max_tokens, else all.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Where tokenized text is cached (default: the run's data.cache_dir, else data/cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// How the data is cut into windows and batches.
struct Windows {
    seq_len: usize,
    batch_size: usize,
    /// At most this many windows (from --max-tokens).
    max_windows: Option<usize>,
}

/// Window length and batch size from the flags, else the run's settings, else defaults;
/// checked against the model.
fn windows(args: &Args, src: &LoadedModel) -> Result<Windows> {
    let info = &src.info;
    let seq_len = args.seq_len.unwrap_or_else(|| match &src.run {
        Some(r) => r.train.seq_len,
        None => info.max_positions.min(1024),
    });
    if seq_len == 0 {
        bail!("--seq-len must be at least 1");
    }
    if seq_len > info.max_positions {
        bail!(
            "--seq-len {seq_len} is above the model's maximum context (max_position_embeddings {}); lower it",
            info.max_positions
        );
    }
    let batch_size = args
        .batch_size
        .unwrap_or_else(|| src.run.as_ref().map_or(8, |r| r.eval.batch_size));
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    // A run is scored as train-lm scored it: with its eval.max_tokens, unless told otherwise.
    let max_tokens = args
        .max_tokens
        .or_else(|| src.run.as_ref().map(|r| r.eval.max_tokens as usize));
    let max_windows = match max_tokens {
        None | Some(0) => None,
        Some(n) if n < seq_len => {
            bail!("--max-tokens {n} is less than one window of --seq-len {seq_len}")
        }
        Some(n) => Some(n / seq_len),
    };
    Ok(Windows {
        seq_len,
        batch_size,
        max_windows,
    })
}

fn run(args: Args) -> Result<()> {
    let (device, mut src) = args.model.load()?;
    let w = windows(&args, &src)?;
    let data = eval_data(
        &src,
        args.data.as_deref(),
        args.split,
        args.cache_dir.as_deref(),
    )?;
    // Fail on data too short for one window before printing anything.
    dynact_data::eval_windows(data.stream.len(), w.seq_len)?;
    if !args.json {
        let info = &src.info;
        eprintln!(
            "model: {} ({}, {} layers, d_model {}, vocab {})",
            src.description,
            info.kind(),
            info.layers,
            info.hidden_size,
            info.vocab_size
        );
        eprintln!("data: {}", data.description);
    }

    let bar = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(0);
        if let Ok(style) =
            ProgressStyle::with_template("evaluating [{bar:40}] {pos}/{len} windows ({eta})")
        {
            pb.set_style(style);
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let r = evaluate(
        &mut src.model,
        &data.stream,
        w.seq_len,
        w.batch_size,
        w.max_windows,
        data.byte_lengths.as_deref(),
        &device,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", result_json(&r, &w, &src, &data, &args.model.device));
    } else {
        print_result(&r, w.seq_len);
    }
    Ok(())
}

/// The one JSON object of `--json`.
fn result_json(
    r: &EvalResult,
    w: &Windows,
    src: &LoadedModel,
    data: &EvalData,
    device: &str,
) -> serde_json::Value {
    let step = match &src.kind {
        SourceKind::Run { step } => *step,
        _ => None,
    };
    serde_json::json!({
        "ppl": r.ppl,
        "ce": r.ce,
        "bpb": r.bpb,
        "tokens": r.tokens,
        "windows": r.windows,
        "tail_tokens": r.tail_tokens,
        "seq_len": w.seq_len,
        "batch_size": w.batch_size,
        "seconds": r.seconds,
        "tokens_per_s": r.tokens as f64 / r.seconds.max(1e-9),
        "source": src.description,
        "step": step,
        "ffn": src.info.ffn.map(|f| f.name()),
        "model_type": src.info.model_type,
        "data": data.description,
        "device": device,
        "dtype": src.dtype.as_str(),
    })
}

fn print_result(r: &EvalResult, seq_len: usize) {
    println!("perplexity      {:.6}", r.ppl);
    println!("cross-entropy   {:.6} nats", r.ce);
    match r.bpb {
        Some(b) => println!("bits per byte   {b:.6}"),
        None => println!("bits per byte   n/a (the text is not known)"),
    }
    println!(
        "tokens scored   {} ({} windows of {seq_len}; {} tail tokens not scored)",
        r.tokens, r.windows, r.tail_tokens
    );
    println!("seconds         {:.3}", r.seconds);
    println!(
        "tokens/s        {:.0}",
        r.tokens as f64 / r.seconds.max(1e-9)
    );
}

fn main() -> ExitCode {
    let args = Args::parse();
    dynact_trainer::init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => dynact_trainer::report_error(&e),
    }
}
