//! Every config shipped in configs/ parses, passes validation and says what the README says.

use std::path::Path;

use dynact_trainer::config::{ConfigBuilder, DeviceSpec};

fn load(name: &str) -> dynact_trainer::config::RunConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name);
    ConfigBuilder::from_file(&path).unwrap().build().unwrap().0
}

#[test]
fn shipped_configs_are_valid() {
    let tiny = load("tiny.toml");
    assert_eq!(tiny.data.source, "builtin");
    assert_eq!(tiny.device, DeviceSpec::Cpu);
    let repro = load("cpu-repro.toml");
    assert_eq!(repro.train.steps, 3430);
    assert!(repro.eval.eval_at.contains(&562) && repro.eval.eval_at.contains(&3430));
    let paper = load("paper.toml");
    assert_eq!(paper.train.steps, 34300);
    assert_eq!(paper.eval.eval_at, vec![5620, 34300]);
    assert_eq!(paper.eval.eval_every, 500);
    assert_eq!(paper.model.dropout, 0.2);
    // The same model shape for both FFNs: only `ffn` is overridden.
    assert_eq!(repro.model.dynact, dynact_model::DynActConfig::default());
}
