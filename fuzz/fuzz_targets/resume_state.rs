//! What `train-lm --resume` reads besides the weights: trainer_state.json and
//! optimizer.safetensors (cut from one input at a 0xFF byte), put beside a real checkpoint's
//! weights, then restored into the optimizer and the batch loader as a resume does.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use dynact_data::{BatchLoader, TokenStream};
use dynact_run::checkpoint::TrainingCheckpoint;
use dynact_trainer::config::OptimConfig;
use dynact_trainer::optim::AdamW;
use libfuzzer_sys::fuzz_target;

/// A copy of a committed checkpoint's weights, config and tokenizer.
fn checkpoint() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/cli/tests/fixtures/run-v0/step-000003");
        let dir = dynact_fuzz::fresh_dir("resume");
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(fixture.join(f), dir.join(f)).expect("the fixture checkpoint");
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = checkpoint();
    let parts = dynact_fuzz::parts(data, 2);
    std::fs::write(dir.join("trainer_state.json"), parts[0]).unwrap();
    std::fs::write(dir.join("optimizer.safetensors"), parts[1]).unwrap();
    let Ok(ckpt) = TrainingCheckpoint::load(dir, &Device::Cpu) else {
        return;
    };
    let Ok(mut opt) = AdamW::new(&ckpt.weights.varmap, &OptimConfig::default()) else {
        return;
    };
    let _ = opt.restore(&ckpt.optimizer, ckpt.state.optimizer_steps);
    let stream = TokenStream::from_tokens((0..2000u32).map(|i| i % 7).collect());
    let mut loader = BatchLoader::new(stream, 16, 4, ckpt.state.seed, 0, 1)
        .expect("a loader over 2000 tokens")
        .with_prefetch(0);
    if loader.restore(&ckpt.state.loader).is_ok() {
        let _ = loader.next_batch();
    }
});
