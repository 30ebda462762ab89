//! dynact-cli: the command-line tools of dynact-lm (`train-lm`, `eval-ppl`, `generate`,
//! `compare-runs`), their flags, and the experiment grids `train-lm --ffn a,b --seeds ...`
//! runs. Training and evaluation are dynact-trainer's, comparing runs dynact-compare's; the two
//! are siblings that share only the run directory's format (dynact-run), and this crate is the
//! one place that uses both.
//!
//! [`train_lm`] (flags -> config keys -> one run, a grid or `--prepare-data`) ->
//! [`experiment`] (seeded grids of runs, compared at the end); [`model_args`] holds the flags
//! `eval-ppl` and `generate` share. The binaries in `src/bin/` only dispatch.

pub mod experiment;
pub mod model_args;
pub mod train_lm;
