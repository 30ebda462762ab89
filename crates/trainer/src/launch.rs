//! How a `train-lm` invocation starts a run: which config the flags override (a config file,
//! the run being resumed, or the built-in default), with which weights (`--init-from` or
//! `--resume`, never both) and in which run directory. The binary turns flags into config
//! keys between [`Launch::builder`] and [`Launch::finish`]; the policy is here.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::config::{ConfigBuilder, RunConfig};
use crate::resolve::RunOptions;

/// The default run when no config is given: the tiny CPU config, compiled in.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/tiny.toml");
/// Where [`DEFAULT_CONFIG`] comes from, for messages.
pub const DEFAULT_CONFIG_PATH: &str = "configs/tiny.toml";

/// What a run starts from, as the command line names it.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--resume DIR`: continue the run there.
    pub resume: Option<PathBuf>,
    /// `--init-from SOURCE`: a new run from these weights.
    pub init_from: Option<String>,
    /// `--run-dir DIR`.
    pub run_dir: Option<PathBuf>,
}

/// The built-in default config, parsed.
pub fn default_config() -> Result<ConfigBuilder> {
    Ok(ConfigBuilder::from_toml_str(
        DEFAULT_CONFIG,
        DEFAULT_CONFIG_PATH,
    )?)
}

impl Launch {
    /// The config the flags then override: `--config`, else the resumed run's own resolved
    /// config, else the built-in default (without its model and tokenizer when the weights
    /// come from `--init-from` or `--set init_from=...`, whose shape and tokenizer they keep).
    pub fn builder(&self, sets: &[String]) -> Result<ConfigBuilder> {
        let mut b = match (&self.config, &self.resume) {
            (Some(path), _) => ConfigBuilder::from_file(path)?,
            // Resuming without --config continues with the run's own resolved config.
            (None, Some(dir)) => {
                let run_toml = dir.join(dynact_run::RUN_CONFIG_FILE);
                if !run_toml.is_file() {
                    bail!(
                        "--resume {}: no run there (no {}); start it without --resume",
                        dir.display(),
                        dynact_run::RUN_CONFIG_FILE
                    );
                }
                ConfigBuilder::from_file(&run_toml)?
            }
            (None, None) => default_config()?,
        };
        b.resuming = self.resume.is_some();
        if let (Some(_), Some(_)) = (&self.init_from, &self.resume) {
            bail!("--init-from starts a new run and --resume continues one; give one of them");
        }
        // Only the built-in default is stripped (a resume's run.toml names init_from too).
        let from_default = self.config.is_none() && self.resume.is_none();
        let init_from_given =
            self.init_from.is_some() || sets.iter().any(|kv| kv.trim().starts_with("init_from"));
        if from_default && init_from_given {
            // The model's shape and tokenizer come from the source, not from the built-in default.
            b.remove("model");
            b.remove("data.tokenizer");
        }
        Ok(b)
    }

    /// The run directory the flags name: `--run-dir`, else the resumed run's; two different
    /// ones are refused.
    pub fn run_dir(&self) -> Result<Option<&Path>> {
        if let (Some(run_dir), Some(resume)) = (&self.run_dir, &self.resume) {
            if run_dir != resume {
                bail!(
                    "--resume {} and --run-dir {} name different runs; --resume alone continues a run where it is",
                    resume.display(),
                    run_dir.display()
                );
            }
        }
        Ok(self.run_dir.as_deref().or(self.resume.as_deref()))
    }

    /// The run's config (a new run from `init_from` takes its shape and tokenizer from the
    /// source, unless a key set here says otherwise) and its options, and the notices about
    /// the config to print.
    pub fn finish(&self, b: ConfigBuilder) -> Result<(RunConfig, RunOptions, Vec<String>)> {
        let vocab_size_given = b.has("model.vocab_size");
        let keys_set = b.keys_set();
        let (mut cfg, notices) = b.build()?;
        if self.resume.is_none() {
            crate::resolve::settle_config(&mut cfg, Some(&keys_set))?;
        }
        let opts = RunOptions {
            resume: self.resume.is_some(),
            vocab_size_given,
            ..Default::default()
        };
        Ok((cfg, opts, notices))
    }
}
