//! What `eval-ppl` scores: the run's validation set (exactly the stream `train-lm` evaluates),
//! or any `--data` source of the data crate, whole (`test`) or its held-out validation part
//! (`val`), tokenized with the model's own tokenizer.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use dynact_data::source::Resolved;
use dynact_data::{prepare_dataset, tokenize_source, DataConfig, TokenStream};

use crate::model_source::LoadedModel;

/// Which part of the evaluation data to score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The held-out validation part: a run's validation set, or the last `val_fraction` of
    /// `--data` cut as training cuts it.
    Val,
    /// All of `--data` (a test set is data of its own).
    Test,
}

impl std::str::FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Split> {
        match s {
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            other => bail!("--split `{other}`: expected val or test"),
        }
    }
}

/// Tokens to score, with the UTF-8 length of every id when the text is known (bits per byte).
pub struct EvalData {
    pub stream: TokenStream,
    pub byte_lengths: Option<Vec<u32>>,
    pub description: String,
}

/// The evaluation data for `src`: `data` (any source of the data crate) when given, else the
/// run's validation set. `cache_dir` overrides where tokenized text is cached.
pub fn eval_data(
    src: &LoadedModel,
    data: Option<&str>,
    split: Option<Split>,
    cache_dir: Option<&Path>,
) -> Result<EvalData> {
    let vocab = src.info.vocab_size;
    let mut base = src.run.as_ref().map(|r| r.data.clone()).unwrap_or_default();
    if let Some(dir) = cache_dir {
        base.cache_dir = dir.to_path_buf();
    }
    let Some(spec) = data else {
        let Some(run) = &src.run else {
            bail!("SOURCE is not a run directory, so there is no default evaluation set; pass --data (a text file, folder, glob, .bin token shards, builtin or hf://datasets/...)");
        };
        if split == Some(Split::Test) {
            bail!("a run has no test split (only its validation set); pass the test files with --data");
        }
        // Exactly the stream train-lm evaluates: the run's own [data] table.
        let ds = prepare_dataset(&base)
            .with_context(|| format!("preparing the run's validation set ({})", run.data.source))?;
        ds.val
            .check_vocab(vocab, "the run's validation set")
            .with_context(|| format!("the model's vocabulary is {vocab}"))?;
        return Ok(EvalData {
            stream: ds.val,
            byte_lengths: Some(ds.tokenizer.token_byte_lengths()),
            description: format!("validation set of the run ({})", ds.description),
        });
    };

    let split = split.unwrap_or(Split::Test);
    let resolved = dynact_data::source::resolve(spec)?;
    let (stream, byte_lengths, what) = if let Resolved::Bin(paths) = &resolved {
        let all = TokenStream::open(paths)?;
        let stream = match split {
            Split::Test => all,
            Split::Val => all.split_tail(base.val_fraction).1,
        };
        let lens = src.tokenizer.as_ref().map(|t| t.token_byte_lengths());
        (stream, lens, "token shards")
    } else {
        let tok = src.require_tokenizer(&format!("--data {spec} is text, which"))?;
        let path = src
            .tokenizer_path
            .as_ref()
            .ok_or_else(|| anyhow!("the tokenizer has no file"))?;
        let cfg = DataConfig {
            source: spec.to_string(),
            val_source: None,
            tokenizer: path.display().to_string(),
            ..base
        };
        let stream = match split {
            Split::Test => tokenize_source(spec, tok, &cfg)?,
            Split::Val => prepare_dataset(&cfg)?.val,
        };
        (stream, Some(tok.token_byte_lengths()), "text")
    };
    stream
        .check_vocab(vocab, spec)
        .with_context(|| format!("the model's vocabulary is {vocab}"))?;
    let part = match split {
        Split::Test => "all of",
        Split::Val => "validation part of",
    };
    Ok(EvalData {
        description: format!("{part} {spec} ({what}, {} tokens)", stream.len()),
        stream,
        byte_lengths,
    })
}
