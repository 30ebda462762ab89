//! A model's config.json, as it comes from the Hub or a checkpoint folder: this project's
//! Llama/dynActGLU reading and the architecture detection of other model types.
#![no_main]

use dynact_trainer::public_models::Architecture;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = dynact_fuzz::fresh_dir("config");
    let path = dir.join("config.json");
    std::fs::write(&path, data).unwrap();
    if let Ok(cfg) = dynact_model::checkpoint::read_config(&path) {
        let _ = cfg.validate();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Architecture::of_config(&path, text);
    }
});
