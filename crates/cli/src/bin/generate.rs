//! `generate SOURCE --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K]
//! [--top-p P] [--seed S]`: what a checkpoint writes. The prompt and its continuation go to
//! stdout as they are produced (KV-cached decoding); the speed goes to stderr.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use dynact_cli::model_args::ModelArgs;
use dynact_trainer::sample::{generate, Sampler, SamplingConfig};

// glibc hands large tensor buffers back to the kernel after every step and page-faults them
// in again; mimalloc keeps them (about 30% faster training on CPU, see the train_step bench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Continue a prompt with a checkpoint, local or on the Hugging Face Hub.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 200)]
    max_new_tokens: usize,
    /// 0: greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample among the k most likely tokens only.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens that make up probability p.
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep going after the end-of-text token.
    #[arg(long)]
    ignore_eos: bool,
}

/// Prints the text of `ids` as it grows, holding back an incomplete UTF-8 character.
struct TextStream<'a> {
    tokenizer: &'a dynact_data::Tokenizer,
    ids: Vec<u32>,
    printed: String,
}

impl TextStream<'_> {
    fn push(&mut self, id: u32, out: &mut impl Write) -> Result<()> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        if let Some(new) = text.strip_prefix(self.printed.as_str()) {
            if !new.ends_with('\u{FFFD}') {
                write!(out, "{new}")?;
                out.flush()?;
                self.printed = text;
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut impl Write) -> Result<()> {
        let text = self.tokenizer.decode(&self.ids)?;
        match text.strip_prefix(self.printed.as_str()) {
            Some(rest) => writeln!(out, "{rest}")?,
            None => writeln!(out)?,
        }
        Ok(())
    }
}

fn run(args: Args) -> Result<()> {
    let (device, src) = args.model.load()?;
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    })?;
    let tokenizer = &src.require_tokenizer("generate")?.clone();
    let description = src.description.clone();
    let mut decoder = src.model.into_decoder();
    let mut prompt = tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        // An empty prompt starts a new document.
        prompt.push(tokenizer.eos_id());
    }
    let stop = (!args.ignore_eos).then(|| tokenizer.eos_id());

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write!(out, "{}", args.prompt)?;
    out.flush()?;
    let mut text = TextStream {
        tokenizer,
        ids: prompt.clone(),
        printed: tokenizer.decode(&prompt)?,
    };
    let start = Instant::now();
    let new = generate(
        decoder.as_mut(),
        &prompt,
        args.max_new_tokens,
        &mut sampler,
        stop,
        &device,
        |id| text.push(id, &mut out),
    )?;
    text.finish(&mut out)?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} new tokens in {secs:.2} s ({:.1} tokens/s) from {}",
        new.len(),
        new.len() as f64 / secs.max(1e-9),
        description
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    dynact_trainer::init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => dynact_trainer::report_error(&e),
    }
}
